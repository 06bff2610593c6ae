"""Constrained search for whole-configuration proxies: stays in budget, deterministic, finds optima."""

import numpy as np
import pytest
from helpers import NoiseProxy, OutputErrorProxy, Target, brute_force

from emq.allocation import Allocator, build_problem
from emq.allocation.budgets import Budget
from emq.allocation.search import constrained_search
from emq.proxy import ProxyContext


def test_search_never_leaves_budget_and_beats_its_seeds():
    alloc = Allocator(Target())
    problem = alloc.problem({"avg-bits": 3.0, "bitops": 8.0e5}, pins={"10": 4})
    seen: list = []
    a = alloc.allocate(OutputErrorProxy(seen), problem, search_evaluations=60, seed=3)
    assert a.method == "search" and 0 < a.evaluations <= 60 and len(set(seen)) == len(seen) == a.evaluations
    assert problem.feasible(np.stack([problem.to_index(b) for b in seen])).all()
    assert problem.feasible(problem.to_index(a.bits))[0] and a.bits[-1] == 4
    ctx = alloc.context(problem.bits)
    uniform2 = OutputErrorProxy().score_one(ctx, (2, 2, 2, 2, 4))
    assert a.predicted <= uniform2 and a.predicted == pytest.approx(
        min(OutputErrorProxy().score_configs(ctx, np.array(seen)))
    )


def test_search_is_deterministic_per_seed():
    alloc = Allocator(Target())
    problem = alloc.problem({"avg-bits": 3.2})
    runs = [alloc.allocate(OutputErrorProxy(), problem, search_evaluations=16, seed=s).bits for s in (1, 1, 2)]
    assert runs[0] == runs[1]


def test_search_reaches_brute_force_optimum_on_small_model():
    target = Target()
    for budget in (Budget("avg-bits", 2.9), Budget("size", 620), Budget("bitops", 8.0e5)):
        p = build_problem(target.layer_map, [budget])
        table = -NoiseProxy().table(ProxyContext(target, p.bits))
        best, _ = brute_force(p, table)
        s = np.arange(5)
        res = constrained_search(p, lambda idx, t=table, s=s: t[s[None, :], idx].sum(axis=1), evaluations=150, seed=0)
        assert p.feasible(res.index)[0]
        assert res.score == pytest.approx(best)
        assert res.history == sorted(res.history)
