"""`--proxy auto --evaluations K` (emq.allocation.auto): the frontier's recommendation for K."""

from __future__ import annotations

import numpy as np
import pytest

from emq.allocation.allocator import Allocator
from emq.allocation.auto import FIT_FROM, AutoProxy
from emq.bench import Bench
from emq.cli.main import main
from emq.errors import EmqError
from emq.quant import PTQSettings
from emq.sensitivity import measure_sensitivity
from emq.specs import oriented
from emq.supervised import OneHotRidge
from emq.target import Target
from tests.test_sensitivity import setup  # noqa: F401  (the trained toy residual net and its data)

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


def test_a_budget_from_the_crossover_fits_ridge_on_measured_configurations_and_resumes(allocator, setup, tmp_path):  # noqa: F811
    net, lm, data = setup
    store = tmp_path / "measured.sqlite"
    problem = allocator.problem({"avg-bits": 3.0}, bits_allowed=BITS)
    proxy = AutoProxy(FIT_FROM, store)
    alloc = allocator.allocate(proxy, problem)
    assert alloc.proxy_setup["strategy"] == "ridge-onehot" and alloc.proxy_setup["evaluations"] == FIT_FROM
    bench = Bench.open(store)
    assert len(bench) == FIT_FROM
    # the table is the ridge fitted here, independently, on the stored measurements: its ILP optimum too
    ridge = OneHotRidge(BITS).fit(bench.configs, oriented("kl", bench.metrics["kl"]))
    table = allocator.table(proxy, BITS)
    some = bench.configs[:20]
    idx = np.searchsorted(BITS, some)
    np.testing.assert_allclose(table[np.arange(lm.num_slots), idx].sum(1), ridge.predict(some), rtol=1e-9, atol=1e-12)
    again = AutoProxy(FIT_FROM, store)  # a rerun (or a resumed one) evaluates nothing it stored
    Allocator(allocator.target, PTQ).allocate(again, problem)
    assert again.setup_cost(None)["evaluations"] == 0


def test_auto_bad_input(allocator, tmp_path, capsys):
    for bad in (-1, 2.5, True):
        with pytest.raises(EmqError, match="evaluations"):
            AutoProxy(bad)
    problem = allocator.problem({"avg-bits": 3.0}, bits_allowed=BITS)
    with pytest.raises(EmqError, match="configuration space holds only"):
        allocator.allocate(AutoProxy(10**6, tmp_path / "m.sqlite"), problem)
    assert not (tmp_path / "m.sqlite").exists()
    assert main(["allocate", "--proxy", "fisher", "--evaluations", "5", "--budget-avg-bits", "3"]) == 2
    assert "--proxy auto" in capsys.readouterr().err
    assert main(["allocate", "--proxy", "auto", "--evaluations", "-3", "--budget-avg-bits", "3"]) == 2
    assert "evaluations" in capsys.readouterr().err
