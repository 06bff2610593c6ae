"""Allocation for whole-configuration proxies: a budget-constrained evolutionary search.

Such proxies score one configuration at a time (often one quantized forward pass each), so
the search spends a fixed number of evaluations. It starts from the ILP solution of a
cheap separable table and from every uniform configuration that fits, and every child is
repaired back inside the budget before it is scored: the search never leaves the budget.
Repair lowers one over-budget group at a time; since all budgets grow with every bit, the
all-lowest configuration is always reachable and repair always terminates.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from deap import base, creator, tools

from .budgets import Problem

log = logging.getLogger(__name__)

if not hasattr(creator, "EmqAllocFitness"):
    creator.create("EmqAllocFitness", base.Fitness, weights=(1.0,))
    creator.create("EmqAllocIndividual", list, fitness=creator.EmqAllocFitness)


@dataclass(kw_only=True)
class ConfigSearchResult:
    index: np.ndarray  # column index per slot of the best configuration
    score: float  # its oriented score (higher = better)
    evaluations: int
    seconds: float
    history: list[float] = field(default_factory=list)  # best score after each generation


class _Space:
    """Genes are column indices per decision group; expands them to per-slot indices."""

    def __init__(self, problem: Problem, rng: random.Random) -> None:
        self.problem = problem
        self.rng = rng
        self.choices = problem.group_choices()
        self.limits = np.array([c.limit for c in problem.constraints])
        self.gcost = [np.stack([c.cost[g].sum(axis=0) for g in problem.groups]) for c in problem.constraints]

    def expand(self, genes: Sequence[int]) -> np.ndarray:
        idx = np.empty(self.problem.num_slots, dtype=np.int64)
        for g, j in zip(self.problem.groups, genes):
            idx[g] = j
        return idx

    def genes_of(self, idx: np.ndarray) -> list[int]:
        return [int(idx[g[0]]) for g in self.problem.groups]

    def _over(self, genes: Sequence[int]) -> bool:
        return any(c[np.arange(len(genes)), genes].sum() > lim for c, lim in zip(self.gcost, self.limits))

    def repair(self, ind: list[int]) -> list[int]:
        """Lower random groups one allowed step at a time until every budget holds."""
        while self._over(ind):
            movable = [g for g, j in enumerate(ind) if j > self.choices[g][0]]
            g = self.rng.choice(movable)
            lower = self.choices[g][self.choices[g] < ind[g]]
            ind[g] = int(lower[-1])
        return ind

    def mutate(self, ind: list[int], indpb: float) -> list[int]:
        for g in range(len(ind)):
            if len(self.choices[g]) > 1 and self.rng.random() < indpb:
                ind[g] = int(self.rng.choice([c for c in self.choices[g] if c != ind[g]]))
        return ind


def constrained_search(
    problem: Problem,
    score: Callable[[np.ndarray], np.ndarray],
    *,
    seeds: Sequence[np.ndarray] = (),
    evaluations: int = 200,
    population: int = 16,
    cx_prob: float = 0.6,
    seed: int = 0,
) -> ConfigSearchResult:
    """Maximise `score` (oriented: configurations [N, S] as column indices -> [N]) within budget.

    `seeds` are per-slot column-index configurations placed in the first population along
    with the feasible uniform ones; the rest is filled with repaired random configurations.
    """
    t0 = time.perf_counter()
    rng = random.Random(seed)
    saved = random.getstate()
    random.seed(seed)  # DEAP's operators draw from the global generator
    try:
        space = _Space(problem, rng)
        cache: dict[tuple[int, ...], float] = {}
        history: list[float] = []

        def evaluate(inds: list) -> None:
            fresh = list({tuple(i) for i in inds if tuple(i) not in cache})
            fresh = fresh[: max(0, evaluations - len(cache))]
            if fresh:
                vals = np.asarray(score(np.stack([space.expand(f) for f in fresh])), dtype=np.float64)
                cache.update({f: (float(v) if np.isfinite(v) else -np.inf) for f, v in zip(fresh, vals)})
            for i in inds:
                i.fitness.values = (cache.get(tuple(i), -np.inf),)

        starts: list[list[int]] = [space.genes_of(np.asarray(s)) for s in seeds]
        for j in range(len(problem.bits)):
            genes = [j if j in ch else int(ch[0]) for ch in space.choices]
            if not space._over(genes):
                starts.append(genes)
        for _ in range(4 * population):
            if len(starts) >= population:
                break
            starts.append(space.repair([int(rng.choice(ch)) for ch in space.choices]))
        pop = [creator.EmqAllocIndividual(space.repair(list(s))) for s in starts]
        evaluate(pop)
        hof = tools.HallOfFame(1)
        hof.update(pop)
        history.append(hof[0].fitness.values[0])
        stall = 0
        while len(cache) < evaluations and stall < 20:
            before = len(cache)
            parents = tools.selTournament(pop, population, tournsize=3)
            kids = [creator.EmqAllocIndividual(list(p)) for p in parents]
            for a, b in zip(kids[::2], kids[1::2]):
                if rng.random() < cx_prob:
                    tools.cxUniform(a, b, 0.5)
            kids = [creator.EmqAllocIndividual(space.repair(space.mutate(k, 1.5 / len(k)))) for k in kids]
            evaluate(kids)
            pop = tools.selBest(pop + kids, population)
            hof.update(pop)
            history.append(hof[0].fitness.values[0])
            stall = stall + 1 if len(cache) == before else 0
            log.info("constrained search: %d evaluations, best %.6g", len(cache), history[-1])
    finally:
        random.setstate(saved)
    best = space.expand(hof[0])
    return ConfigSearchResult(
        index=best,
        score=float(hof[0].fitness.values[0]),
        evaluations=len(cache),
        seconds=time.perf_counter() - t0,
        history=history,
    )
