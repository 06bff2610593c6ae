"""`--proxy auto --evaluations K` (emq.allocation.auto): the frontier's recommendation for K."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from emq.allocation.allocator import Allocator
from emq.allocation.auto import FIT_FROM, AutoProxy
from emq.bench import Bench
from emq.cli.main import main
from emq.errors import EmqError
from emq.frontier import switch_budget
from emq.quant import PTQSettings
from emq.sensitivity import measure_sensitivity
from emq.specs import oriented
from emq.supervised import OneHotRidge
from emq.target import Target
from tests.test_sensitivity import setup  # noqa: F401  (the trained toy residual net and its data)

ROOT = Path(__file__).resolve().parents[1]
BITS = (2, 3, 4)
PTQ = PTQSettings(calib_size=40, batch_size=32)


@pytest.fixture()
def allocator(setup, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("EMQ_CACHE_DIR", str(tmp_path / "cache"))
    net, lm, data = setup
    return Allocator(Target("toy", net, lm, data), PTQ)


def test_zero_evaluations_allocate_with_the_measured_sensitivity(allocator, setup):  # noqa: F811
    net, lm, data = setup
    problem = allocator.problem({"avg-bits": 3.0}, bits_allowed=BITS)
    alloc = allocator.allocate(AutoProxy(0), problem, evaluate=True)
    sens = measure_sensitivity(net, lm, data, bits=BITS, ptq=PTQ)  # the cached measurement
    np.testing.assert_array_equal(allocator.table(AutoProxy(0), BITS), -sens.table("kl"))
    assert alloc.proxy_setup["strategy"] == "layer-kl" and alloc.proxy_setup["evaluations"] == 0
    assert alloc.kl is not None and "auto chose layer-kl" in alloc.summary()


def test_the_shipped_switch_is_the_rule_on_the_zoo_frontier():
    rows = json.loads((ROOT / "benchmarks/results/frontier_zoo/frontier.json").read_text())["rows"]
    assert switch_budget(rows) == FIT_FROM
    assert AutoProxy(FIT_FROM - 1).strategy == "layer-kl" and AutoProxy(FIT_FROM).strategy == "ridge-onehot"


def test_switch_budget_is_the_first_budget_with_a_mean_gain():
    def rows(gains):
        out = [{"bench": b, "method": "layer-kl", "k": 0, "rho": 0.9} for b in gains]
        for b, by_k in gains.items():
            out += [{"bench": b, "method": "ridge-onehot", "k": k, "rho": 0.9 + g} for k, g in by_k.items()]
        return out

    study = rows({"a": {10: -0.2, 50: -0.05, 100: 0.02}, "b": {10: -0.1, 50: 0.06, 100: 0.01}})
    assert switch_budget(study) == 50  # mean gain +0.005 at 50
    assert switch_budget(study, exclude=["b"]) == 100
    assert switch_budget(rows({"a": {10: -0.1}})) is None


def test_a_budget_from_the_switch_fits_ridge_on_measured_configurations_and_resumes(allocator, setup, tmp_path):  # noqa: F811
    net, lm, data = setup
    store = tmp_path / "measured.sqlite"
    problem = allocator.problem({"avg-bits": 3.0}, bits_allowed=BITS)
    k = 40
    proxy = AutoProxy(k, store, fit_from=k)
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
    again = AutoProxy(k, store, fit_from=k)  # a rerun (or a resumed one) evaluates nothing it stored
    Allocator(allocator.target, PTQ).allocate(again, problem)
    assert again.setup_cost(None)["evaluations"] == 0


def test_auto_bad_input(allocator, tmp_path, capsys):
    for bad in (-1, 2.5, True):
        with pytest.raises(EmqError, match="evaluations"):
            AutoProxy(bad)
        with pytest.raises(EmqError, match="fit_from"):
            AutoProxy(5, fit_from=bad)
    problem = allocator.problem({"avg-bits": 3.0}, bits_allowed=BITS)
    with pytest.raises(EmqError, match="configuration space holds only"):
        allocator.allocate(AutoProxy(10**6, tmp_path / "m.sqlite"), problem)
    assert not (tmp_path / "m.sqlite").exists()
    assert main(["allocate", "--proxy", "fisher", "--evaluations", "5", "--budget-avg-bits", "3"]) == 2
    assert "--proxy auto" in capsys.readouterr().err
    assert main(["allocate", "--proxy", "auto", "--evaluations", "-3", "--budget-avg-bits", "3"]) == 2
    assert "evaluations" in capsys.readouterr().err
