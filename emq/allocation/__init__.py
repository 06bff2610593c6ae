"""Bit allocation with any proxy under model-size / BitOps / average-bit budgets.

budgets  - user budgets, pins, allowed bits and ties -> one integer-cost Problem
ilp      - separable proxies: exact ILP (scipy milp / HiGHS)
search   - whole-configuration proxies: budget-constrained evolutionary search (DEAP)
bitmap   - bit map JSON keyed by module name, save and checked load
pareto   - budget sweeps -> CSV and PNG
allocator- the entry points: `allocate`, `Allocator`, `Allocation`
"""

from .allocator import Allocation, Allocator, allocate, resolve_proxy
from .bitmap import load_bitmap, save_bitmap
from .budgets import Budget, Problem, build_problem
from .pareto import SweepResult, parse_sweep, sweep

__all__ = ["Allocation", "Allocator", "Budget", "Problem", "SweepResult", "allocate", "build_problem", "load_bitmap", "parse_sweep", "resolve_proxy", "save_bitmap", "sweep"]
