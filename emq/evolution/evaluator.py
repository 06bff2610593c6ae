"""Evaluate candidate trees: screening, table, fitness; through any `emq.executors` executor.

Evaluation is a pure function of the tree (no randomness), so a process pool returns exactly
what the serial path returns, in the same order. Fitness is |Spearman| on the search split
(search configurations x fit test pool); the sign becomes the proxy's orientation (explicit:
`Outcome.orientation`). A campaign's data has no held-out split (`FitnessData.for_campaign`):
held-out numbers are measured after the campaign, never during it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats as sps

from emq.search_space.evaluate import TableEvaluator, Token, is_bit_dependent
from emq.search_space.netstats import NetworkStats
from emq.search_space.pset import SearchSpace

from ..fitness import FitnessData
from .screening import table_problem

REJECTED = -1.0


@dataclass
class Outcome:
    fitness: float  # |rho| on the search split, REJECTED when screened out
    rho_search: float  # oriented (>= 0 unless rejected)
    orientation: int
    reason: str | None
    signature: np.ndarray | None  # z-scored ranks of oriented scores on a search subsample

    @property
    def valid(self) -> bool:
        return self.reason is None


def _rejected(reason: str) -> Outcome:
    return Outcome(REJECTED, float("nan"), 1, reason, None)


class CandidateEvaluator:
    """Everything one process needs to turn a token list into an Outcome."""

    def __init__(self, stats: NetworkStats, data: FitnessData, space: SearchSpace, act_samples: int, signature_size: int = 256, device: str = "cpu") -> None:
        self.tables = TableEvaluator(stats, space.terminals, space.prims, act_samples, device)
        self.data = data
        n = len(data.search)
        self.sig_idx = np.random.default_rng(0).permutation(n)[: min(n, signature_size)]

    def evaluate(self, tokens: Sequence[Token]) -> Outcome:
        if not is_bit_dependent(tokens):
            return _rejected("no_bit_terminal")
        with torch.no_grad():
            problem = table_problem(self.tables.layer_table(tokens, self.tables.probe_packed), "probe_")
            if problem:
                return _rejected(problem)
            table = self.tables.table(tokens)
        problem = table_problem(table)
        if problem:
            return _rejected(problem)
        scores = self.data.search.scores(table)
        if not np.isfinite(scores).all():  # a finite table can still overflow when summed over slots
            return _rejected("nonfinite_scores")
        rho = self.data.search.spearman(scores)
        if math.isnan(rho):
            return _rejected("constant_scores")
        sign = 1 if rho >= 0 else -1
        ranks = sps.rankdata(sign * scores[self.sig_idx])
        d = ranks - ranks.mean()
        norm = float(np.sqrt((d * d).sum()))
        sig = (d / norm if norm > 0 else d).astype(np.float32)
        return Outcome(abs(rho), abs(rho), sign, None, sig)


@dataclass(frozen=True, eq=False)
class FitnessContext:
    """The shared part of fitness evaluation, shipped once to each executor worker."""

    stats: NetworkStats
    data: FitnessData
    space: SearchSpace
    act_samples: int
    device: str = "cpu"


_LAST: tuple[FitnessContext, CandidateEvaluator] | None = None


def evaluate_candidate(ctx: FitnessContext, tokens: Sequence[Token]) -> Outcome:
    """An executor task: the Outcome of one tree. Each process builds its evaluator once per
    context and keeps only the latest, so finished campaigns do not pin memory."""
    global _LAST
    if _LAST is None or _LAST[0] is not ctx:
        _LAST = (ctx, CandidateEvaluator(ctx.stats, ctx.data, ctx.space, ctx.act_samples, device=ctx.device))
    return _LAST[1].evaluate(tokens)
