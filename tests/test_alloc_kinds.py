"""A new budget kind is one class: registered here, in the test only, and used by the
problem builder, the ILP, the Allocator, the Python API and the CLI without other edits."""

import json

import numpy as np
import pytest
from helpers import NoiseProxy, Target, brute_force, tiny_layer_map

from emq.allocation import Allocator, Budget, InfeasibleBudget, build_problem
from emq.allocation.kinds import (
    COUNT_UNITS,
    BudgetKind,
    budget_kinds,
    register_kind,
    unregister_kind,
)
from emq.allocation.pareto import parse_sweep
from emq.cli.main import main
from emq.proxy import ProxyContext

LM = tiny_layer_map()


class WeightBitOps(BudgetKind):
    """MACs x weight bits: BitOps without the activation factor."""

    name = "weight-bitops"
    help = "MACs x weight bits, e.g. 2M"
    units = COUNT_UNITS
    example = "2M"
    suffix = " weight-BitOps"

    def per_bit(self, lm, act_bits):
        return lm.macs.astype(np.float64)


@pytest.fixture
def kind():
    register_kind(WeightBitOps)
    yield WeightBitOps()
    unregister_kind(WeightBitOps.name)


def weight_bitops(bits):
    return float(np.dot(LM.macs, bits))


def test_registered_kind_is_listed_and_parsed(kind):
    assert "weight-bitops" in budget_kinds()
    assert Budget.parse("weight-bitops", "1.5k").value == 1500
    assert parse_sweep("1k:2k:3", "weight-bitops").tolist() == [1000, 1500, 2000]


def test_registered_kind_is_exact_at_its_limit(kind):
    bits = [2, 3, 4, 2, 3]
    p = build_problem(LM, [Budget("weight-bitops", weight_bitops(bits))])
    idx = p.to_index(bits)
    assert p.feasible(idx)[0]
    worse = idx.copy()
    worse[int(np.argmax(np.where(idx < 2, LM.macs, 0)))] += 1
    assert not p.feasible(worse)[0]
    assert kind.value_of(LM, bits, 8) == weight_bitops(bits)


def test_allocate_with_registered_kind_is_optimal(kind):
    limit = weight_bitops([3] * 5)
    alloc = Allocator(Target())
    p = alloc.problem({"weight-bitops": str(limit)})
    a = alloc.allocate(NoiseProxy(), p)
    assert weight_bitops(a.bits) <= limit
    assert a.budgets == [{"kind": "weight-bitops", "value": limit}]
    table = NoiseProxy().table(ProxyContext(Target(), p.bits))
    best, idx = brute_force(p, -table)
    assert a.bits == p.to_bits(idx) and a.predicted == pytest.approx(-best)


def test_infeasible_registered_kind_uses_its_own_format(kind):
    p = build_problem(LM, [Budget("weight-bitops", 10.0)])
    with pytest.raises(
        InfeasibleBudget,
        match=f"the weight-bitops budget 10 is below the smallest feasible value {weight_bitops([2] * 5):.0f}.* "
        "weight-BitOps",
    ):
        p.check_feasible()


def test_cli_offers_registered_kind(kind, tmp_path, capsys, noise_proxy):
    rc = main(["allocate", "--proxy", "test-noise", "--budget-weight-bitops", "15M", "--out", str(tmp_path), "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["avg_bits"] > 2  # the budget binds above all-2 bits
    assert doc["budgets"] == [{"kind": "weight-bitops", "value": 15e6}]
    assert json.loads((tmp_path / "bitmap.json").read_text())["provenance"]["budgets"] == doc["budgets"]
    rc = main(["allocate", "--proxy", "test-noise", "--budget-weight-bitops", "9Q"])
    assert rc == 2 and "--budget-weight-bitops 9Q: give a number with an optional unit" in capsys.readouterr().err
