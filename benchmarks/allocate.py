"""ILP allocation speed: scipy milp (HiGHS) vs PuLP + CBC on the same problems.

For the default model and torchvision resnet18 / resnet50 layer maps: one solve under an
average-bit and a BitOps budget, and a 50-budget average-bit sweep. Both solvers get the
identical problem (one-hot binaries per slot and bit, integer budget rows, the same
table); times include building the model. Tables are seeded Gaussian draws: solve time
depends on the problem's shape and budgets, not on where the table came from. Objectives
are compared so a speed win cannot hide a wrong answer.

    python benchmarks/allocate.py [--repeats 3] [--json]

    Needs the bench extra (PuLP): pip install -e ".[bench]"
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

try:
    import pulp
except ModuleNotFoundError as e:  # a benchmark-only dependency
    raise ModuleNotFoundError(
        f"{e}: this benchmark needs the bench extra, pip install -e '.[bench]'", name=e.name
    ) from e

from emq.allocation import Budget, build_problem
from emq.allocation.ilp import group_matrices, solve_ilp
from emq.api import layers
from emq.specs import DEFAULT_BITS
from emq.tables import markdown_table

MODELS = ("default", "resnet18", "resnet50")
BITS = DEFAULT_BITS


def solve_pulp(problem, table: np.ndarray) -> tuple[float, float]:
    """Same ILP through PuLP + CBC; returns (objective, seconds)."""
    t0 = time.perf_counter()
    obj, costs, allowed = group_matrices(problem, table)
    G, B = obj.shape
    m = pulp.LpProblem("alloc", pulp.LpMaximize)
    x = [[pulp.LpVariable(f"x_{g}_{j}", cat="Binary", upBound=int(allowed[g, j])) for j in range(B)] for g in range(G)]
    m += pulp.lpSum(float(obj[g, j]) * x[g][j] for g in range(G) for j in range(B))
    for g in range(G):
        m += pulp.lpSum(x[g]) == 1
    for c, cons in zip(costs, problem.constraints):
        m += pulp.lpSum(float(c[g, j]) * x[g][j] for g in range(G) for j in range(B)) <= cons.limit
    m.solve(pulp.PULP_CBC_CMD(msg=False))
    if pulp.LpStatus[m.status] != "Optimal":
        raise RuntimeError(f"CBC: {pulp.LpStatus[m.status]}")
    return float(pulp.value(m.objective)), time.perf_counter() - t0


def bench_model(name: str, repeats: int) -> list[list]:
    lm = layers(name)
    S = lm.num_slots
    table = np.random.default_rng(0).normal(size=(S, len(BITS)))
    b_lo, b_hi = lm.bitops([2] * S, 8), lm.bitops([4] * S, 8)
    single = [Budget("avg-bits", 3.0), Budget("bitops", (b_lo + b_hi) / 2)]
    sweep = [[Budget("avg-bits", v)] for v in np.linspace(2.05, 3.95, 50)]
    rows = []
    for label, budget_sets in (("avg-bits 3.0 + BitOps mid", [single]), ("50-budget avg-bits sweep", sweep)):
        problems = [build_problem(lm, bs, BITS) for bs in budget_sets]
        t_h, t_c, worst = [], [], 0.0
        for _ in range(repeats):
            t0 = time.perf_counter()
            sols = [solve_ilp(p, table) for p in problems]
            t_h.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            cbc = [solve_pulp(p, table)[0] for p in problems]
            t_c.append(time.perf_counter() - t0)
            worst = max(worst, max(abs(s.objective - c) for s, c in zip(sols, cbc)))
        h, c = min(t_h), min(t_c)
        rows.append([name, S, label, len(problems), h * 1000, c * 1000, c / h, worst])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="best of N timings (default 3)")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = [r for m in args.models.split(",") for r in bench_model(m, args.repeats)]
    headers = ["model", "slots", "problem", "solves", "HiGHS ms", "CBC ms", "CBC/HiGHS", "max |obj diff|"]
    if args.json:
        print(json.dumps([dict(zip(headers, r)) for r in rows], indent=2))
    else:
        print(markdown_table(headers, rows))


if __name__ == "__main__":
    main()
