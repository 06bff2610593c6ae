"""Evaluate candidate trees: screening, table, fitness; through any `emq.executors` executor.

Evaluation is a pure function of the tree (no randomness), so a process pool returns exactly
what the serial path returns, in the same order. A candidate is scored on every bench of the
campaign with that bench's own statistics and search split (search configurations x fit test
pool): a tree is a per-layer formula over statistics, so it applies to any network. Its
orientation is one sign for all benches, that of the mean signed Spearman; the oriented
per-bench Spearmans are aggregated into the fitness (`aggregate`). With one bench, fitness
is |Spearman| and the sign is the orientation (explicit: `Outcome.orientation`). A
campaign's data has no held-out split (`FitnessData.for_campaign`): held-out numbers are
measured after the campaign, never during it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass
from typing import TypeVar

import numpy as np
import torch

from emq.search_space.evaluate import SubtreeIds, TableEvaluator, Token, is_bit_dependent
from emq.search_space.netstats import NetworkStats
from emq.search_space.pset import SearchSpace

from ..allocator import keep_freed_memory
from ..fitness import FitnessData
from ..specs import ParameterError
from .screening import table_problem

REJECTED = -1.0
# How per-bench oriented Spearmans become one fitness. The default, mean-std, was chosen by
# benchmarks/aggregation.py (leave one network out, 3 seeds): it gave the highest held-out rho
# on 4 of 5 benches and beat "mean" in 8 of 15 paired cells, losing 2; "min" was worst (one
# bench's noisy rho). README, "Transfer across networks".
AGGREGATES = ("mean", "min", "mean-std")
DEFAULT_AGGREGATE = "mean-std"

T = TypeVar("T")


def as_tuple(x: T | Sequence[T]) -> tuple[T, ...]:
    """One object or a list/tuple of them, as a tuple (benches, statistics, models)."""
    return tuple(x) if isinstance(x, (list, tuple)) else (x,)  # type: ignore[arg-type]


def check_aggregate(aggregate: str, k: float) -> None:
    if aggregate not in AGGREGATES:
        raise ParameterError("aggregate", aggregate, f"use one of {', '.join(AGGREGATES)}")
    if not (isinstance(k, (int, float)) and math.isfinite(k) and k >= 0):
        raise ParameterError("aggregate_k", k, "use a finite number >= 0")


def aggregate(rhos: Sequence[float], how: str = DEFAULT_AGGREGATE, k: float = 1.0) -> float:
    """One fitness from per-bench oriented Spearmans: their mean, their minimum, or mean - k * std
    (population std, so one bench gives its own rho under every rule). Never below REJECTED,
    so a valid candidate never ranks under a screened-out one."""
    values = np.asarray(rhos, dtype=np.float64)
    if how == "min":
        value = float(values.min())
    else:
        value = float(values.mean())
        if how == "mean-std":
            value -= k * float(values.std())
    return max(value, REJECTED)


@dataclass
class Outcome:
    # aggregate of the oriented per-bench rhos on the search splits (one bench: |rho|), REJECTED when screened out
    fitness: float
    _: KW_ONLY
    rho_search: float  # mean oriented rho over the benches (>= 0 unless rejected)
    orientation: int
    reason: str | None
    signature: (
        np.ndarray | None
    )  # z-scored ranks of oriented scores on a search subsample, per bench, concatenated / sqrt(benches)
    per_bench: tuple[float, ...] = ()  # oriented rho on each bench's search split, in bench order

    @property
    def valid(self) -> bool:
        return self.reason is None


def _rejected(reason: str) -> Outcome:
    return Outcome(REJECTED, rho_search=float("nan"), orientation=1, reason=reason, signature=None)


class _BenchScorer:
    """One bench's part of evaluation: its statistics' tables and its search split."""

    def __init__(
        self,
        stats: NetworkStats,
        data: FitnessData,
        space: SearchSpace,
        *,
        act_samples: int,
        signature_size: int,
        device: str,
        subtrees: SubtreeIds,
    ) -> None:
        from . import rankscore  # numba loads with the first evaluator, not with every command

        self.tables = TableEvaluator(
            stats, space.terminals, space.prims, act_samples=act_samples, device=device, subtrees=subtrees
        )
        self.data = data
        self._score, self._reasons = rankscore.score_split, rankscore.REASONS
        n = len(data.search)
        self.sig_idx = np.random.default_rng(0).permutation(n)[: min(n, signature_size)]
        self._scores = np.empty(n)

    def measure(self, tokens: Sequence[Token], walk_probe: bool) -> tuple[str | None, float, np.ndarray | None]:
        """(rejection reason or None, signed Spearman on the search split, signature at orientation +1).

        The probe's verdict needs its own tree walk only where it saves one: on the first bench (it rejects
        most of what any bench's probe rejects before a full table is computed) and where the probe is not
        the full table's rows. Elsewhere it is read off the full layer table, the same rows: a walk saved
        for nearly every candidate, the same verdict."""
        with torch.no_grad():
            layers = None
            if walk_probe or not self.tables.probe_is_rows(tokens):
                probe = self.tables.probe(tokens)
            else:
                layers = self.tables.layer_table(tokens)
                probe = layers[self.tables.probe_layers]
            problem = table_problem(probe, "probe_")
            if problem:
                return problem, math.nan, None
            table = self.tables.slot_table(self.tables.layer_table(tokens) if layers is None else layers)
        problem = table_problem(table)
        if problem:
            return problem, math.nan, None
        split, signature = self.data.search, np.empty(len(self.sig_idx))
        status, rho = self._score(
            table.cpu().numpy().reshape(-1), split.slot_idx, split.target_rank_z, self.sig_idx, self._scores, signature
        )
        reason = self._reasons[status]  # a finite table can still overflow when summed over slots
        return (reason, math.nan, None) if reason else (None, rho, signature)


class CandidateEvaluator:
    """Everything one process needs to turn a token list into an Outcome; `stats` and `data`
    are one bench's or sequences of them, one per bench in the same order."""

    def __init__(
        self,
        stats: NetworkStats | Sequence[NetworkStats],
        data: FitnessData | Sequence[FitnessData],
        space: SearchSpace,
        act_samples: int,
        *,
        signature_size: int = 256,
        device: str = "cpu",
        aggregate: str = DEFAULT_AGGREGATE,
        aggregate_k: float = 1.0,
    ) -> None:
        all_stats, all_data = as_tuple(stats), as_tuple(data)
        keep_freed_memory()
        if len(all_stats) != len(all_data):
            raise ParameterError("stats", len(all_stats), f"give one statistics per bench ({len(all_data)})")
        check_aggregate(aggregate, aggregate_k)
        subtrees = SubtreeIds()  # a candidate is parsed once for all benches; freed with the evaluator
        self.benches = [
            _BenchScorer(
                s, d, space, act_samples=act_samples, signature_size=signature_size, device=device, subtrees=subtrees
            )
            for s, d in zip(all_stats, all_data, strict=True)
        ]
        self.aggregate, self.aggregate_k = aggregate, aggregate_k

    def evaluate(self, tokens: Sequence[Token]) -> Outcome:
        if not is_bit_dependent(tokens):
            return _rejected("no_bit_terminal")
        rhos, signatures = [], []
        for k, bench in enumerate(self.benches):  # rejected on one bench: rejected
            problem, rho, sig = bench.measure(tokens, walk_probe=k == 0)
            if problem:
                return _rejected(problem)
            rhos.append(rho)
            signatures.append(sig)
        sign = 1 if float(np.mean(rhos)) >= 0 else -1
        per_bench = tuple(sign * r for r in rhos)
        # ranks of the negated scores are the ranks reflected: their centred values change sign, exactly
        sig = sign * np.concatenate(signatures) / math.sqrt(len(self.benches))
        return Outcome(
            aggregate(per_bench, self.aggregate, self.aggregate_k),
            rho_search=float(np.mean(per_bench)),
            orientation=sign,
            reason=None,
            signature=sig.astype(np.float32),
            per_bench=per_bench,
        )


@dataclass(frozen=True, eq=False)
class FitnessContext:
    """The shared part of fitness evaluation, shipped once to each executor worker; `stats`
    and `data` hold one entry per bench."""

    stats: tuple[NetworkStats, ...]
    data: tuple[FitnessData, ...]
    space: SearchSpace
    _: KW_ONLY
    act_samples: int
    device: str = "cpu"
    aggregate: str = DEFAULT_AGGREGATE
    aggregate_k: float = 1.0


_LAST: tuple[FitnessContext, CandidateEvaluator] | None = None


def evaluate_candidate(ctx: FitnessContext, tokens: Sequence[Token]) -> Outcome:
    """An executor task: the Outcome of one tree. Each process builds its evaluator once per
    context and keeps only the latest, so finished campaigns do not pin memory."""
    global _LAST
    if _LAST is None or _LAST[0] is not ctx:
        _LAST = (
            ctx,
            CandidateEvaluator(
                ctx.stats,
                ctx.data,
                ctx.space,
                ctx.act_samples,
                device=ctx.device,
                aggregate=ctx.aggregate,
                aggregate_k=ctx.aggregate_k,
            ),
        )
    return _LAST[1].evaluate(tokens)
