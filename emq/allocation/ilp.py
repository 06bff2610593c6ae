"""Allocation for separable proxies: an integer linear program solved by HiGHS (scipy milp).

One binary variable x[g, j] per decision group g (a slot, or slots tied together) and
table column j (bit-width bits[j]); sum_j x[g, j] = 1; every budget is one linear row
with integer coefficients. The objective maximises sum orientation * P[s, j] * x, so the
proxy's orientation is respected without the caller thinking about it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix

from ..errors import EmqError
from .budgets import Problem

_LIBC = ctypes.CDLL(None)


@dataclass(frozen=True)
class IlpSolution:
    index: np.ndarray  # column index per slot
    objective: float  # sum of the oriented table over the chosen entries
    seconds: float


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Discard anything written to file descriptor 1 while HiGHS runs: it prints solver
    logs from C even with disp=False in some builds, which would break a --json caller's
    stdout or, sent to stderr, clutter every sweep. Its status is in milp's result."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        sys.stdout.flush()
        _LIBC.fflush(None)  # HiGHS writes through C stdio: flush its buffer while fd 1 is stderr
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def group_matrices(problem: Problem, oriented: np.ndarray) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Per-group objective [G, B], per-constraint costs [K][G, B] and allowed mask [G, B]."""
    obj = np.stack([oriented[g].sum(axis=0) for g in problem.groups])
    costs = [np.stack([c.cost[g].sum(axis=0) for g in problem.groups]) for c in problem.constraints]
    allowed = np.stack([problem.allowed[g].all(axis=0) for g in problem.groups])
    return obj, costs, allowed


def solve_ilp(problem: Problem, oriented_table: np.ndarray, time_limit: float = 60.0) -> IlpSolution:
    """Maximise the oriented table's sum under the problem's budgets; exact (HiGHS branch and bound).

    Infeasible budgets are refused before solving, naming the smallest feasible values.
    """
    problem.check_feasible()
    table = np.asarray(oriented_table, dtype=np.float64)
    if table.shape != problem.allowed.shape:
        raise EmqError(
            f"the proxy table has shape {table.shape}, and the problem has {problem.allowed.shape} (slots x bit-widths)"
        )
    if not np.isfinite(table[problem.allowed]).all():
        raise EmqError(
            "the proxy table has NaN or infinite entries at allowed bit-widths; check the proxy's statistics"
        )
    t0 = time.perf_counter()
    obj, costs, allowed = group_matrices(problem, np.where(problem.allowed, table, 0.0))
    G, B = obj.shape
    rows = np.repeat(np.arange(G), B)
    one_hot = coo_matrix((np.ones(G * B), (rows, np.arange(G * B))), shape=(G, G * B))
    cons = [LinearConstraint(one_hot, 1, 1)]
    if costs:
        A = np.stack([c.reshape(-1) for c in costs])
        cons.append(LinearConstraint(A, -np.inf, np.array([c.limit for c in problem.constraints])))
    upper = allowed.reshape(-1).astype(np.float64)
    with quiet_stdout():
        res = milp(
            -obj.reshape(-1),
            constraints=cons,
            integrality=np.ones(G * B),
            bounds=Bounds(0, upper),
            options={"time_limit": time_limit, "disp": False},
        )
    seconds = time.perf_counter() - t0
    if res.x is None:
        raise EmqError(
            f"HiGHS found no solution in {time_limit:g} s ({res.message}) although the budgets are feasible; "
            "allow fewer bit-widths per slot or loosen the budgets (a smaller problem)"
        )
    choice = res.x.reshape(G, B).argmax(axis=1)
    index = np.empty(problem.num_slots, dtype=np.int64)
    for g, j in zip(problem.groups, choice):
        index[g] = j
    if not problem.feasible(index)[0]:  # an internal invariant, not a user error: keep the traceback
        raise RuntimeError("the ILP solution violates a budget; please report this with the model and budgets")
    s = np.arange(problem.num_slots)
    return IlpSolution(index, float(table[s, index].sum()), seconds)
