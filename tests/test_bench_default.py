"""The shipped default bench: big enough, measured for noise, and built from the shipped model."""

import json

import numpy as np
from scipy.stats import spearmanr

from emq.bench import Bench
from emq.cli.main import main
from emq.hashing import state_dict_digest
from emq.models import build_model


def test_default_bench_info_json(capsys):
    assert main(["bench", "info", "default", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["records"] >= 1000 and len(info["slots"]) == 20 and info["allowed_bits"] == [2, 3, 4]
    ceiling = info["noise_ceiling"]
    assert set(ceiling) == {"top1", "loss", "kl"}
    assert ceiling[info["default_metric"]] >= 0.9


def test_default_bench_matches_the_shipped_model_and_is_consistent():
    b = Bench.open("default")
    assert b.meta["weights_hash"] == state_dict_digest(build_model("default"))
    cfgs, m = b.arrays("all")
    assert len(np.unique(cfgs, axis=0)) == len(cfgs)
    # sizes are recomputable from the stored per-slot params; more bits never shrink the model
    params = np.array([s["params"] for s in b.meta["slots"]], dtype=float)
    bias = m["size_bytes"] - cfgs @ params / 8
    assert np.allclose(bias, bias[0])
    assert spearmanr(cfgs.sum(1), m["kl"]).statistic < 0
    s, _ = b.arrays("search")
    h, _ = b.arrays("heldout")
    assert len(s) + len(h) == len(b) and 0.15 < len(h) / len(b) < 0.25
