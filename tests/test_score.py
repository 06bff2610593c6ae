"""`emq score`: correlations against a hand computation, output files, CLI and bad input."""

from __future__ import annotations

import json
from contextlib import closing

import numpy as np
import pytest
import torch
from scipy.stats import kendalltau, spearmanr

from emq.bench import store
from emq.bench.space import ConfigSpace, config_text, is_heldout
from emq.cli.main import main
from emq.errors import EmqError
from emq.hashing import state_dict_digest
from emq.quant import PTQSettings, quantize_weight
from emq.ranking import score, table_rows, write_report
from emq.search_space.netstats import LayerStats, NetworkStats
from emq.target import resolve_target

BITS = (2, 3, 4)


@pytest.fixture(scope="module")
def target():
    return resolve_target("default")


@pytest.fixture(scope="module")
def bench_path(tmp_path_factory, target):
    """A bench file of the default model with 80 configurations and a known metric (no
    per-image outcomes, like an imported bench: one shared test pool)."""
    lm = target.layer_map
    rng = np.random.default_rng(3)
    configs = rng.choice(BITS, size=(80, lm.num_slots))
    top1 = 40 + 0.02 * (configs @ lm.params) / lm.params.sum() * 100 + rng.normal(0, 0.5, 80)
    settings = PTQSettings(calib_size=64)
    meta = {
        "kind": "ptq-build",
        "model": "default",
        "data": "default",
        "weights_hash": state_dict_digest(target.model),
        "ptq_settings": settings.to_json(),
        "space": ConfigSpace.for_layer_map(lm, BITS).to_json(),
        "schema_version": store.SCHEMA_VERSION,
        "default_metric": "top1",
    }
    path = tmp_path_factory.mktemp("bench") / "b.sqlite"
    texts = [config_text(c) for c in configs]
    rows = [
        {
            "idx": i,
            "config": t,
            "top1": float(v),
            "loss": 1.0,
            "kl": 0.1,
            "size_bytes": 0.0,
            "bitops": 0.0,
            "seconds": 0.0,
            "seed": 0,
            "source": "test",
        }
        for i, (t, v) in enumerate(zip(texts, top1, strict=True))
    ]
    with closing(store.connect(path)) as con:
        store.init_bench(con, meta, [(t, "test") for t in texts])
        store.insert_records(con, rows)
    assert 3 <= sum(is_heldout(t) for t in texts) < 80
    return path


@pytest.fixture(scope="module")
def stats(target):
    """Statistics in the documented layout: real weights and quantization noise, seeded rest."""
    g = torch.Generator().manual_seed(5)
    modules = dict(target.model.named_modules())
    layers = []
    for i, layer in enumerate(target.layer_map.layers):
        w = modules[layer.name].weight.detach()
        q = torch.stack([quantize_weight(w, b) for b in BITS])
        small = torch.randn(4, 3, generator=g)
        layers.append(
            LayerStats(
                name=layer.name,
                W=w,
                G=torch.randn(w.shape, generator=g),
                VG=w,
                H=w,
                A=small,
                Y=small,
                GY=small,
                AE=small,
                Q=q,
                E=q - w[None],
                trace=float(i + 1),
                eig=1.0,
                params=layer.params,
                macs=layer.macs,
                out_channels=layer.out_channels,
                SG=w.abs(),
                FD=w * w,
            )
        )
    return NetworkStats(BITS, layers, list(target.layer_map.layer_slot))


def test_correlations_match_hand_computation(bench_path, stats, target):
    from emq.bench import Bench

    report = score(bench_path, proxies="size,hawq-v2,bitsum", stats=stats)
    b = Bench.open(bench_path)
    sizes = b.configs @ target.layer_map.params / 8
    held = b.heldout
    size = next(p for p in report.proxies if p.name == "size")
    assert size.correlations["spearman_heldout_report"] == pytest.approx(
        spearmanr(sizes[held], b.metrics["top1"][held]).statistic
    )
    assert size.correlations["spearman_search_fit"] == pytest.approx(
        spearmanr(sizes[~held], b.metrics["top1"][~held]).statistic
    )
    assert size.correlations["kendall_heldout_report"] == pytest.approx(
        kendalltau(sizes[held], b.metrics["top1"][held]).statistic
    )
    assert size.n == {
        "search_fit": int((~held).sum()),
        "heldout_fit": int(held.sum()),
        "search_report": int((~held).sum()),
        "heldout_report": int(held.sum()),
    }
    assert size.correlations["spearman_search_fit"] > 0.6  # the metric was built from the size, plus noise
    assert size.interval["low"] <= size.correlations["spearman_heldout_report"] <= size.interval["high"]
    hawq = next(p for p in report.proxies if p.name == "hawq-v2")
    assert hawq.orientation == -1 and hawq.kind == "separable"
    assert (
        report.ceiling is None and report.pools is None and report.metric == "top1"
    )  # no per-image outcomes: nothing measured
    assert "same test images" in report.to_markdown()
    ridge = next(p for p in report.proxies if p.kind == "supervised")
    assert ridge.name == "ridge" and ridge.correlations["spearman_search_fit"] > 0.6
    best = next(p for p in report.proxies if p.name == report.best_handmade)
    assert best.correlations["spearman_search_fit"] == max(
        p.correlations["spearman_search_fit"] for p in report.proxies if p.kind == "separable"
    )
    assert best.paired is None and all(p.paired["baseline"] == best.name for p in report.proxies if p is not best)
    headers, rows = table_rows(report)
    assert len(rows) == 4 and headers[5].startswith("ρ held-out×report")


def test_whole_config_sample_outputs_and_model_untouched(bench_path, target, tmp_path):
    before = state_dict_digest(target.model)
    report = score(bench_path, proxies="kl", limit=3)
    kl = report.proxies[0]
    assert kl.kind == "whole-config" and kl.n["search_fit"] == 3 and 1 <= kl.n["heldout_report"] <= 3
    assert kl.seconds_per_config > 0 and np.isfinite(kl.scores).all()
    written = write_report(report, tmp_path / "out")
    names = sorted(p.name for p in written)
    assert names == ["scatter_kl.png", "scatter_ridge.png", "score.csv", "score.json"]
    obj = json.loads((tmp_path / "out" / "score.json").read_text())
    assert (
        obj["proxies"][0]["name"] == "kl" and "spearman_heldout_report" in obj["proxies"][0] and obj["ceiling"] is None
    )
    assert (tmp_path / "out" / "scatter_kl.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]
    assert state_dict_digest(target.model) == before


def test_cli_json_and_errors(bench_path, capsys, tmp_path):
    assert main(["score", "--bench", str(bench_path), "--proxies", "seam", "--limit", "3", "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert [p["name"] for p in obj["proxies"]] == ["seam", "ridge"] and "kendall_heldout_report" in obj["proxies"][0]
    assert main(["score", "--bench", str(bench_path), "--proxies", "hawq-v9"]) == 2
    assert "unknown proxy" in capsys.readouterr().err
    assert main(["score", "--bench", str(tmp_path / "missing.sqlite"), "--proxies", "kl"]) == 2
    with pytest.raises(EmqError, match="no proxy"):
        score(bench_path, proxies="")
