"""The shipped default bench: big enough, measured for noise, and built from the shipped model."""

import json

import numpy as np
import pytest
from scipy.stats import spearmanr

from emq.bench import Bench
from emq.cli.main import main
from emq.hashing import state_dict_digest
from emq.models import build_model


def test_default_bench_info_json(capsys):
    assert main(["bench", "info", "default", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["records"] >= 1000 and len(info["slots"]) == 20 and info["allowed_bits"] == [2, 3, 4]
    rel = info["reliability"]
    assert set(rel) == set(info["ceiling"]) == {"top1", "loss", "kl"}
    default = rel[info["default_metric"]]
    # the shipped default target is reliable: split-half by source digit, corrected, >= 0.95
    assert default["split_half"]["corrected"] >= 0.95 and default["split_half"]["splits"] >= 100
    assert "by test source" in default["split_half"]["method"] and default["test_retest"]["configs"] >= 100
    assert info["ceiling"][info["default_metric"]] == pytest.approx(default["combined"] ** 0.5)
    pools = info["test_pools"]
    assert (
        pools["fit"]["sources"] + pools["report"]["sources"] == 500
        and pools["fit"]["images"] + pools["report"]["images"] == 3000
    )


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


def test_score_on_the_shipped_bench_uses_fit_and_report_pools():
    from emq.proxy import linear_cost
    from emq.ranking import score

    b = Bench.open("default")
    report = score("default", proxies="bitsum,size", resamples=200)
    bitsum = next(p for p in report.proxies if p.name == "bitsum")
    metric = report.metric
    sign = b.meta["metric_orientation"][metric]
    cost = linear_cost(b.configs, np.ones(b.configs.shape[1]))
    for split, pool in (("search", "fit"), ("heldout", "report"), ("heldout", "fit")):
        rows = ~b.heldout if split == "search" else b.heldout
        want = spearmanr(cost[rows], sign * b.pool_metric(metric, pool)[rows]).statistic
        assert bitsum.correlations[f"spearman_{split}_{pool}"] == pytest.approx(want)
    assert bitsum.interval["low"] < bitsum.correlations["spearman_heldout_report"] < bitsum.interval["high"]
    assert (
        report.ceiling == b.ceiling[metric]
        and report.pools["report"]["sources"] == b.pools.summary()["report"]["sources"]
    )
    assert report.best_handmade in ("bitsum", "size") and any(p.kind == "supervised" for p in report.proxies)
