"""`--proxy auto --evaluations K` (emq.allocation.auto): the frontier's recommendation for K."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import RidgeCV
from sklearn.preprocessing import StandardScaler
from test_sensitivity import setup  # noqa: F401  (the trained toy residual net and its data)

from emq.allocation.allocator import Allocator
from emq.allocation.auto import RULE, AutoProxy, feature_proxies
from emq.baselines import get_proxy
from emq.bench import Bench
from emq.cli.main import main
from emq.errors import EmqError
from emq.frontier import recommend
from emq.quant import PTQSettings
from emq.search_space.stats import StatsSettings
from emq.sensitivity import in_context, measure_sensitivity
from emq.specs import oriented
from emq.supervised import ALPHAS, OneHotRidge
from emq.target import Target

ROOT = Path(__file__).resolve().parents[1]
FEW_PROBES = {"hessian_images": 16, "hessian_batch_size": 16, "hessian_min_probes": 4, "hessian_max_probes": 8}
BITS = (2, 3, 4)
PTQ = PTQSettings(calib_size=40, batch_size=32)


@pytest.fixture()
def allocator(setup, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("EMQ_CACHE_DIR", str(tmp_path / "cache"))
    net, lm, data = setup
    return Allocator(Target("toy", net, lm, data), PTQ)


@pytest.mark.parametrize("strategy,settings", [("layer-kl", None), ("layer-kl-mid", in_context(BITS))])
def test_zero_evaluations_allocate_with_the_measured_sensitivity(allocator, strategy, settings):
    problem = allocator.problem({"avg-bits": 3.0}, bits_allowed=BITS)
    auto = AutoProxy(0, rule=[(0, strategy), (50, "ridge-proxies")])
    alloc = allocator.allocate(auto, problem, evaluate=True)
    sens = measure_sensitivity(allocator.target, bits=BITS, ptq=PTQ, settings=settings)  # the cached measurement
    np.testing.assert_array_equal(allocator.table(auto, BITS), -sens.table("kl"))
    assert alloc.proxy_setup["strategy"] == strategy and alloc.proxy_setup["evaluations"] == 0
    assert alloc.kl is not None and f"auto chose {strategy}" in alloc.summary()


def test_the_shipped_rule_is_the_recommendation_of_the_zoo_frontier():
    rows = json.loads((ROOT / "benchmarks/results/frontier_zoo/frontier.json").read_text())["rows"]
    assert recommend(rows) == RULE
    for (k, strategy), nxt in zip(RULE, [*RULE[1:], None], strict=True):
        assert AutoProxy(k).strategy == strategy
        if nxt is not None:
            assert AutoProxy(nxt[0] - 1).strategy == strategy


def test_recommend_picks_the_best_mean_rho_per_budget_with_the_zero_budget_choice_at_every_budget():
    def rows(gains):
        out = [{"bench": b, "method": "layer-kl", "k": 0, "rho": 0.9} for b in ("a", "b")]
        for (m, b), by_k in gains.items():
            out += [{"bench": b, "method": m, "k": k, "rho": 0.9 + g} for k, g in by_k.items()]
        return out

    study = rows(
        {
            ("ridge-onehot", "a"): {10: -0.2, 50: -0.05, 100: 0.04},
            ("ridge-onehot", "b"): {10: -0.1, 50: 0.06, 100: 0.02},
            ("ridge-proxies", "a"): {10: -0.01, 50: 0.00, 100: 0.01},
            ("ridge-proxies", "b"): {10: -0.01, 50: 0.02, 100: 0.01},
        }
    )
    assert recommend(study) == ((0, "layer-kl"), (50, "ridge-proxies"), (100, "ridge-onehot"))
    assert recommend(study, exclude=["b"]) == ((0, "layer-kl"), (100, "ridge-onehot"))  # 50: a tie stays layer-kl
    assert recommend(rows({("ridge-onehot", "a"): {10: -0.1}, ("ridge-onehot", "b"): {10: -0.1}})) == ((0, "layer-kl"),)


def test_a_budget_from_the_switch_fits_ridge_on_measured_configurations_and_resumes(allocator, setup, tmp_path):  # noqa: F811
    net, lm, data = setup
    store = tmp_path / "measured.sqlite"
    problem = allocator.problem({"avg-bits": 3.0}, bits_allowed=BITS)
    k = 40
    proxy = AutoProxy(k, store, rule=[(0, "layer-kl"), (k, "ridge-onehot")])
    alloc = allocator.allocate(proxy, problem)
    assert alloc.proxy_setup["strategy"] == "ridge-onehot" and alloc.proxy_setup["evaluations"] == k
    bench = Bench.open(store)
    assert len(bench) == k
    # the table is the ridge fitted here, independently, on the stored fit-pool measurements: its ILP optimum too
    configs, metrics = bench.arrays("all", metrics=["kl"], pool="fit")
    ridge = OneHotRidge(BITS).fit(configs, oriented("kl", metrics["kl"]))
    table = allocator.table(proxy, BITS)
    some = bench.configs[:20]
    idx = np.searchsorted(BITS, some)
    np.testing.assert_allclose(table[np.arange(lm.num_slots), idx].sum(1), ridge.predict(some), rtol=1e-9, atol=1e-12)
    again = AutoProxy(k, store, rule=[(0, "layer-kl"), (k, "ridge-onehot")])  # a rerun evaluates nothing stored
    Allocator(allocator.target, PTQ).allocate(again, problem)
    assert again.setup_cost(None)["evaluations"] == 0
    # ridge-proxies on the same measurements: ridge on the standardized oriented scores of the feature proxies
    # (their statistics with few Hessian probes: this checks the fit, not the statistics)
    allocator = Allocator(allocator.target, PTQ, stats_settings=replace(StatsSettings.from_ptq(PTQ), **FEW_PROBES))
    on_proxies = AutoProxy(k, store, rule=[(0, "layer-kl"), (k, "ridge-proxies")])
    alloc = allocator.allocate(on_proxies, problem)
    assert alloc.proxy_setup["strategy"] == "ridge-proxies" and alloc.proxy_setup["evaluations"] == 0
    assert list(alloc.proxy_setup["features"]) == feature_proxies()
    features = [get_proxy(n) for n in feature_proxies()]
    x = np.stack([p.orientation * allocator.predict(p, BITS, configs) for p in features], axis=1)
    scaler = StandardScaler().fit(x)
    model = RidgeCV(alphas=ALPHAS).fit(scaler.transform(x), oriented("kl", metrics["kl"]))
    x_some = np.stack([p.orientation * allocator.predict(p, BITS, some) for p in features], axis=1)
    table = allocator.table(on_proxies, BITS)
    np.testing.assert_allclose(
        table[np.arange(lm.num_slots), idx].sum(1), model.predict(scaler.transform(x_some)), rtol=1e-7, atol=1e-9
    )


def test_auto_bad_input(allocator, tmp_path, capsys):
    for bad in (-1, 2.5, True):
        with pytest.raises(EmqError, match="evaluations"):
            AutoProxy(bad)
    for rule in ([], [(5, "layer-kl")], [(0, "layer-kl"), (0, "ridge-onehot")], [(0, "oracle")], [3]):
        with pytest.raises(EmqError, match="rule"):
            AutoProxy(5, rule=rule)
    problem = allocator.problem({"avg-bits": 3.0}, bits_allowed=BITS)
    with pytest.raises(EmqError, match="configuration space holds only"):
        allocator.allocate(AutoProxy(10**6, tmp_path / "m.sqlite"), problem)
    assert not (tmp_path / "m.sqlite").exists()
    assert main(["allocate", "--proxy", "fisher", "--evaluations", "5", "--budget-avg-bits", "3"]) == 2
    assert "--proxy auto" in capsys.readouterr().err
    assert main(["allocate", "--proxy", "auto", "--evaluations", "-3", "--budget-avg-bits", "3"]) == 2
    assert "evaluations" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # argparse: not an integer
        main(["allocate", "--proxy", "auto", "--evaluations", "ten", "--budget-avg-bits", "3"])
    assert e.value.code == 2 and "--evaluations" in capsys.readouterr().err
    store = tmp_path / "never.sqlite"  # a budget nothing can meet: refused before any evaluation is spent
    args = [
        "allocate",
        "--proxy",
        "auto",
        "--evaluations",
        "60",
        "--measurements",
        str(store),
        "--budget-avg-bits",
        "1",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "budget" in err and len(err.strip().splitlines()) == 1 and not store.exists()
