"""Search, score and allocate take the statistics and PTQ settings from the bench.

Before, each command chose its own: a bench built with other activation bits was searched
on 8-bit statistics, and scoring a 16-bit-activation bench failed outright.
"""

import pytest

import emq
import emq.search_space.stats as stats_module
from emq.evolution import ProxySearch
from emq.quant import PTQSettings


@pytest.fixture(scope="module")
def bench16(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "a16.sqlite"
    emq.bench_build(
        path,
        model="default",
        configs=40,
        seed=0,
        noise_samples=3,
        test_limit=150,
        settings=PTQSettings(act_bits=16, calib_size=64),
        progress=False,
    )
    return path


@pytest.fixture
def seen_settings(monkeypatch):
    seen = []
    real = stats_module.compute_stats

    def spy(*args, **kwargs):
        ns = real(*args, **kwargs)
        seen.append(ns.meta["settings"])
        return ns

    monkeypatch.setattr(stats_module, "compute_stats", spy)
    return seen


@pytest.mark.slow
def test_search_score_and_allocate_use_the_benchs_activation_bits(bench16, seen_settings):
    ProxySearch(generations=1, population=8).fit(bench16)
    emq.score(bench16, proxies="hawq-v2")
    alloc = emq.allocate(model="default", proxy="hawq-v2", budgets={"avg-bits": 3.0}, bench=bench16)
    assert [s["act_bits"] for s in seen_settings] == [16, 16, 16]
    assert alloc.act_bits == 16


def test_a_bench_with_other_weights_is_refused(bench16):
    from torch import nn

    from emq.bench import Bench
    from emq.bench_setup import BenchSetup
    from emq.errors import EmqError
    from emq.target import resolve_target

    target = resolve_target("default")
    first = next(m for m in target.model.modules() if isinstance(m, nn.Conv2d))
    first.weight.data.mul_(1.01)
    with pytest.raises(EmqError, match="other weights"):
        BenchSetup.of(Bench.open(bench16), target)


def test_a_retest_stores_only_the_report_pools_outcomes(bench16):
    """The retest reliability reads the report pool alone, so the fit pool's images are NaN in the file."""
    import numpy as np

    from emq.bench import Bench

    b = Bench.open(bench16)
    report = b.pools.mask("report")
    assert len(b.repeats) == 3 and 0 < report.sum() < report.size
    for config in b.repeats:
        out = b.outcomes(config, repeat=True)
        assert np.isnan(out.loss[~report]).all() and np.isnan(out.kl[~report]).all() and not out.correct[~report].any()
        assert np.isfinite(out.loss[report]).all() and np.isfinite(out.kl[report]).all()
    assert b.reliability["kl"]["test_retest"]["configs"] == 3
