"""Bit allocation with any proxy under model-size / BitOps / average-bit budgets.

kinds    - the budget kinds (size, bitops, avg-bits, frac8): one registered class each
budgets  - user budgets, pins, allowed bits and ties -> one integer-cost Problem
ilp      - separable proxies: exact ILP (scipy milp / HiGHS)
search   - whole-configuration proxies: budget-constrained evolutionary search (DEAP)
bitmap   - bit map JSON keyed by module name, save and checked load
pareto   - budget sweeps -> CSV and PNG
allocator- the entry points: `allocate`, `Allocator`, `allocator_for`, `Allocation`
"""

from .allocator import Allocation, Allocator, allocate, allocator_for, needs_data, resolve_proxy
from .bitmap import load_bitmap, save_bitmap
from .budgets import Budget, InfeasibleBudget, Problem, build_problem
from .kinds import BudgetKind, budget_kinds, get_kind, register_kind
from .pareto import SweepResult, parse_sweep, sweep

__all__ = [
    "Allocation",
    "Allocator",
    "Budget",
    "BudgetKind",
    "InfeasibleBudget",
    "Problem",
    "SweepResult",
    "allocate",
    "allocator_for",
    "budget_kinds",
    "build_problem",
    "get_kind",
    "load_bitmap",
    "needs_data",
    "parse_sweep",
    "register_kind",
    "resolve_proxy",
    "save_bitmap",
    "sweep",
]
