"""The evolutionary campaign: DEAP variation, our own generation loop, DPS, checkpoints.

Per generation: tournament selection, one-point crossover and one of several mutations
(subtree, node replacement, shrink, insert, constant), bloat control by static height and
size limits; offspring evaluated through the fitness cache and screening; with DPS, each
offspring duels a fresh random candidate and survivors are chosen without phenotypic
crowding; otherwise (mu + lambda) truncation. A generation ends with a JSONL log record and,
every `checkpoint_every` generations, an atomic checkpoint from which `resume` continues to
exactly the result of an uninterrupted run (same seed, same budget).

A campaign may fit several benches at once (one statistics and one FitnessData each): every
candidate is scored on all of them and the fitness aggregates them (`evaluator`). With
`parsimony` C > 0, selection (tournaments, DPS duels, survivors, the hall of fame's order)
uses fitness - C * size, size being the number of nodes; C = 0 is plain fitness.
"""

from __future__ import annotations

import json
import logging
import math
import operator
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import KW_ONLY, asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from deap import algorithms, base, creator, gp, tools
from tqdm import tqdm

from emq.search_space.evaluate import Token
from emq.search_space.netstats import NetworkStats
from emq.search_space.pset import SearchSpace, canonical, from_tokens, gen_half_and_half, to_tokens, token_types
from emq.search_space.terminals import DEFAULT_ACT_SAMPLES

from ..device import resolve_device
from ..errors import EmqError
from ..executors import Executor, make_executor
from ..fitness import FitnessData
from ..hashing import tensor_digest
from ..specs import ParameterError, setting
from ..threads import cap_native_pools
from . import checkpoint
from .dps import DPSConfig, diversity, pick_winners, select_survivors
from .evaluator import (
    AGGREGATES,
    DEFAULT_AGGREGATE,
    REJECTED,
    FitnessContext,
    Outcome,
    as_tuple,
    check_aggregate,
    evaluate_candidate,
)
from .screening import ScreeningCounts
from .variation import cx_one_point, mutate

log = logging.getLogger(__name__)

if not hasattr(creator, "EmqFitness"):
    creator.create("EmqFitness", base.Fitness, weights=(1.0,))
if not hasattr(creator, "EmqIndividual"):
    creator.create("EmqIndividual", gp.PrimitiveTree, fitness=creator.EmqFitness)

# fields that must match for a checkpoint to be resumed (generations and budget may grow)
HOF_TWIN = 0.9999  # hall-of-fame members must rank configurations differently

_RESUME_FIELDS = (
    "population",
    "seed",
    "cx_prob",
    "mut_prob",
    "tournament",
    "init_min",
    "init_max",
    "max_height",
    "max_size",
    "seed_handmade",
    "seed_trees",
    "act_samples",
    "dps",
    "aggregate",
    "aggregate_k",
    "parsimony",
)


@dataclass
class SearchConfig:
    """A campaign's settings, declared once: `ProxySearch`'s parameters and the search flags of
    `emq search`, `emq demo` and `emq transfer` are derived from these fields (see `setting`)."""

    generations: int = setting(30, "generations (default {default})")
    population: int = setting(64, "population size (default {default})")
    seed: int = setting(0, "random seed (default {default})")
    max_evaluations: int | None = setting(
        None, "stop after this many candidate evaluations"
    )  # budget in evaluations (stops early when reached)
    cx_prob: float = 0.6
    mut_prob: float = 0.4
    tournament: int = 3
    init_min: int = 1
    init_max: int = 4
    max_height: int = 8
    max_size: int = 30
    hof_size: int = 20
    seed_handmade: bool = True
    # token lists ([kind, value] pairs, e.g. another campaign's hall of fame: checkpoint.hall_of_fame)
    # that join the initial population after the hand-made forms: a warm start from earlier campaigns
    seed_trees: tuple = ()
    act_samples: int = DEFAULT_ACT_SAMPLES
    checkpoint_every: int = setting(
        5, "generations between checkpoints (default {default}); a kill loses at most this many"
    )
    workers: int = 1
    device: str = "cpu"  # where tables are computed ("cuda" on a GPU machine)
    threads: int = (
        1  # torch threads per evaluating process: tables are small, and extra threads oversubscribe shared cores
    )
    dps: DPSConfig = field(default_factory=DPSConfig)
    aggregate: str = setting(
        DEFAULT_AGGREGATE,
        "with several benches: how the per-bench Spearmans make the fitness "
        "(default {default}: best on held-out networks, README)",
        choices=AGGREGATES,
    )  # per-bench fitness -> one number: mean, min or mean-std (evaluator.AGGREGATES)
    aggregate_k: float = setting(1.0, "the k of --aggregate mean-std: fitness = mean - k x std (default {default:g})")
    parsimony: float = setting(
        0.0, "size pressure: selection uses fitness - C x nodes (default {default:g} = none)"
    )  # selection uses fitness - parsimony * size

    def __post_init__(self) -> None:
        if isinstance(self.dps, dict):
            self.dps = DPSConfig(**self.dps)
        self.device = str(resolve_device(self.device))  # a string: the config is stored as JSON
        if self.population < 4:
            raise ParameterError("population", self.population, "use at least 4")
        if self.generations < 0:
            raise ParameterError("generations", self.generations, "use 0 or more")
        if self.max_evaluations is not None and self.max_evaluations < 1:
            raise ParameterError("max_evaluations", self.max_evaluations, "use a positive number")
        if self.checkpoint_every < 1:
            raise ParameterError("checkpoint_every", self.checkpoint_every, "use 1 or more generations")
        check_aggregate(self.aggregate, self.aggregate_k)
        try:
            self.seed_trees = tuple(
                tuple((str(k), float(v) if k == "c" else str(v)) for k, v in t) for t in self.seed_trees
            )
        except (TypeError, ValueError) as e:
            raise ParameterError(
                "seed_trees", type(self.seed_trees).__name__, "give lists of [kind, value] tokens"
            ) from e
        if not (isinstance(self.parsimony, (int, float)) and math.isfinite(self.parsimony) and self.parsimony >= 0):
            raise ParameterError("parsimony", self.parsimony, "use a finite number >= 0 (0 = no size penalty)")

    def to_json(self) -> dict[str, Any]:
        """JSON's shape (tuples as lists), so a checkpoint's copy compares equal on resume."""
        return json.loads(json.dumps(asdict(self)))


# the campaigns of `emq demo` (short, minutes on a laptop), of each cell of `emq transfer` and of
# each warm-started point of `emq frontier --warm` (seconds per fit; only its best proxy is reported)
DEMO_CAMPAIGN = SearchConfig(generations=20)
TRANSFER_CAMPAIGN = SearchConfig(population=48)
WARM_CAMPAIGN = SearchConfig(generations=10, population=32, hof_size=1)


def _check_pair(stats: NetworkStats, data: FitnessData, which: str) -> None:
    """Refuse statistics that are not of the bench's model and bits."""
    if stats.num_slots != data.search.configs.shape[1]:
        raise EmqError(
            f"{which}the statistics have {stats.num_slots} bit slots but the bench configurations "
            f"have {data.search.configs.shape[1]}: use statistics of the bench's model"
        )
    if tuple(stats.bits) != tuple(data.bits):
        raise EmqError(
            f"{which}the statistics cover bits {list(stats.bits)} but the fitness data uses {list(data.bits)}"
        )


@dataclass
class Campaign:
    """State of one search campaign (see module docstring). `stats` and `data` are one
    bench's, or sequences with one entry per bench; after construction both are tuples."""

    stats: NetworkStats | Sequence[NetworkStats]
    data: FitnessData | Sequence[FitnessData]
    space: SearchSpace
    config: SearchConfig
    _: KW_ONLY
    out_dir: Path | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        self.stats = as_tuple(self.stats)
        self.data = tuple(
            d.for_campaign() for d in as_tuple(self.data)
        )  # held-out configurations and the report pool never reach a campaign
        if len(self.stats) != len(self.data) or not self.data:
            raise EmqError(
                f"a campaign needs one statistics per bench: {len(self.stats)} statistics for {len(self.data)} benches"
            )
        for i, (stats, data) in enumerate(zip(self.stats, self.data, strict=True)):
            _check_pair(stats, data, f"bench {i + 1}: " if len(self.data) > 1 else "")
        self.cache: dict[str, Outcome] = {}
        self.tokens: dict[str, list[Token]] = {}
        self.counts = ScreeningCounts()
        self.evaluations = 0
        self.generation = 0
        self.population: list[gp.PrimitiveTree] = []
        self.hof: list[str] = []
        self.log: list[dict[str, Any]] = []
        self.seconds = 0.0
        self.rng_state = random.Random(
            self.config.seed
        ).getstate()  # DEAP draws from `random`: swapped in only while running
        self.context = FitnessContext(
            self.stats,
            self.data,
            self.space,
            act_samples=self.config.act_samples,
            device=self.config.device,
            aggregate=self.config.aggregate,
            aggregate_k=self.config.aggregate_k,
        )
        tb = base.Toolbox()
        tb.register("mate", cx_one_point)
        tb.register("mutate", mutate, space=self.space)
        for op in ("mate", "mutate"):
            tb.decorate(op, gp.staticLimit(key=operator.attrgetter("height"), max_value=self.config.max_height))
            tb.decorate(op, gp.staticLimit(key=len, max_value=self.config.max_size))
        self.toolbox = tb

    # --- evaluation -------------------------------------------------------------------
    def _individual(self, nodes: list) -> gp.PrimitiveTree:
        return creator.EmqIndividual(nodes)

    def _random(self) -> gp.PrimitiveTree:
        return self._individual(gen_half_and_half(self.space, self.config.init_min, self.config.init_max))

    def key_of(self, ind: gp.PrimitiveTree) -> str:
        return canonical(to_tokens(ind), self.space.prims)

    def evaluate(self, inds: list[gp.PrimitiveTree], executor: Executor) -> None:
        """Fitness for every individual: cache first, then screening and full evaluation."""
        keys = [self.key_of(i) for i in inds]
        self.counts["seen"] += len(inds)
        todo: dict[str, list[Token]] = {}
        for ind, k in zip(inds, keys, strict=True):
            if k in self.cache or k in todo:
                self.counts["duplicate"] += 1
            else:
                todo[k] = to_tokens(ind)
        batch = list(todo.values())
        if executor.workers > 1 and len(batch) >= 2 * executor.workers:
            outs = list(
                executor.map(
                    evaluate_candidate,
                    batch,
                    context=self.context,
                    chunksize=math.ceil(len(batch) / (2 * executor.workers)),
                )
            )
        else:  # too few to be worth shipping: the same function, here
            outs = [evaluate_candidate(self.context, t) for t in batch]
        for k, out in zip(todo, outs, strict=True):
            self.cache[k] = out
            self.tokens[k] = todo[k]
            if out.reason != "no_bit_terminal":
                self.evaluations += 1
            if out.reason:
                self.counts[out.reason] += 1
            else:
                self.counts["full_evaluations"] += 1
                self._hof_add(k)
        for ind, k in zip(inds, keys, strict=True):
            ind.fitness.values = (self.selection_fitness(k, len(ind)),)

    def selection_fitness(self, key: str, size: int) -> float:
        """What selection compares: fitness - parsimony * size (plain fitness at parsimony 0)."""
        return self.cache[key].fitness - self.config.parsimony * size

    def _hof_rank(self, key: str) -> tuple[float, int, str]:
        size = len(self.tokens[key])
        return (-self.selection_fitness(key, size), size, key)

    def _hof_add(self, key: str) -> None:
        """Keep the best distinct proxies: distinct canonical forms *and* distinct rankings.

        Of phenotypic twins (rank correlation of their scores above HOF_TWIN, on every bench
        at once), only the fitter one stays (under parsimony pressure), the shorter one on a tie.
        """
        if key in self.hof:
            return
        sig = self.cache[key].signature
        for other in self.hof:
            if float(np.abs(self.cache[other].signature @ sig)) > HOF_TWIN:
                if self._hof_rank(key) >= self._hof_rank(other):
                    return
                self.hof.remove(other)
                break
        self.hof.append(key)
        self.hof.sort(key=self._hof_rank)
        del self.hof[self.config.hof_size :]

    # --- the loop ---------------------------------------------------------------------
    def _initial_population(self) -> list[gp.PrimitiveTree]:
        pop: list[gp.PrimitiveTree] = []
        if self.config.seed_handmade:
            pop += [self._individual(from_tokens(self.space, t)) for _, t in self.space.handmade().values()]
        trees = self.config.seed_trees
        inside = [t for t in trees if all(self.space.has(tok) for tok in t)]
        for tokens in inside:
            token_types(self.space, tokens)
            pop.append(self._individual(from_tokens(self.space, tokens)))
        if len(inside) < len(trees):
            log.warning(
                "%d of %d seed trees use operators outside the search space: left out",
                len(trees) - len(inside),
                len(trees),
            )
        while len(pop) < self.config.population:
            pop.append(self._random())
        return pop[: self.config.population]

    def _budget_left(self) -> bool:
        return self.config.max_evaluations is None or self.evaluations < self.config.max_evaluations

    def _generation(self, executor: Executor) -> None:
        cfg = self.config
        parents = tools.selTournament(self.population, len(self.population), tournsize=cfg.tournament)
        offspring = algorithms.varAnd(parents, self.toolbox, cfg.cx_prob, cfg.mut_prob)
        if cfg.dps.enabled and cfg.dps.challengers:
            challengers = [self._random() for _ in offspring]
            self.evaluate(offspring + challengers, executor)
            wins = pick_winners([o.fitness.values[0] for o in offspring], [c.fitness.values[0] for c in challengers])
            offspring = [o if w else c for o, c, w in zip(offspring, challengers, wins, strict=True)]
        else:
            self.evaluate(offspring, executor)
        pool = self.population + offspring
        keys = [self.key_of(i) for i in pool]
        idx = select_survivors(
            [i.fitness.values[0] for i in pool],
            keys,
            [self.cache[k].signature for k in keys],
            cfg.population,
            threshold=cfg.dps.crowding_threshold if cfg.dps.enabled else None,
        )
        self.population = [pool[i] for i in idx]

    def _record(self, seconds: float, evals_before: int) -> dict[str, Any]:
        keys = [self.key_of(i) for i in self.population]
        outs = [self.cache[k] for k in keys]
        valid = [o for o in outs if o.valid]
        best = max(valid, key=lambda o: o.fitness) if valid else None
        rec = {
            "generation": self.generation,
            "evaluations": self.evaluations,
            "best_search": best.fitness if best else None,
            "median_search": float(np.median([o.fitness for o in valid])) if valid else None,
            "hof_best_search": self.cache[self.hof[0]].fitness if self.hof else None,
            "valid_share": len(valid) / len(outs),
            **diversity(keys, [o.signature for o in outs]),
            "screening": self.counts.summary(),
            "seconds": round(seconds, 4),
            "evals_per_s": (self.evaluations - evals_before) / seconds if seconds > 0 else None,
        }
        self.log.append(rec)
        return rec

    def continue_with(self, config: SearchConfig) -> None:
        """Go on under a new config (more generations, a larger budget), the rest unchanged."""
        _check_same_campaign(self.config.to_json(), config, "the earlier fit", len(self.data))
        self.config = config

    @contextmanager
    def _own_rng(self) -> Iterator[None]:
        """Run with the campaign's generator as `random` (DEAP's source) and put the caller's back."""
        outer = random.getstate()
        random.setstate(self.rng_state)
        try:
            yield
        finally:
            self.rng_state = random.getstate()
            random.setstate(outer)

    def run(self, executor: Executor | None = None) -> None:
        """Evolve until `config.generations` (or the evaluation budget); continues where a
        restored or earlier run stopped. The caller owns `executor` (default: serial)."""
        cfg = self.config
        ckpt = self.out_dir / "checkpoint.npz" if self.out_dir else None
        executor = executor or make_executor("serial")
        bar = tqdm(
            total=cfg.generations,
            initial=self.generation,
            desc="search",
            unit="gen",
            disable=not self.progress,
            leave=False,
        )
        threads = torch.get_num_threads()
        pools = cap_native_pools(max(1, cfg.threads))
        torch.set_num_threads(max(1, cfg.threads))
        try:
            with self._own_rng():
                if not self.population:
                    t0 = time.perf_counter()
                    self.population = self._initial_population()
                    self.evaluate(self.population, executor)
                    dt = time.perf_counter() - t0
                    self.seconds += dt
                    self._record(dt, 0)
                    self._after_generation(ckpt, force=cfg.generations == 0)
                while self.generation < cfg.generations and self._budget_left():
                    t0, before = time.perf_counter(), self.evaluations
                    self.generation += 1
                    self._generation(executor)
                    dt = time.perf_counter() - t0
                    self.seconds += dt
                    rec = self._record(dt, before)
                    bar.update(1)
                    bar.set_postfix(best=f"{rec['hof_best_search'] or 0:.3f}", evals=self.evaluations)
                    self._after_generation(ckpt, force=self.generation == cfg.generations or not self._budget_left())
        finally:
            bar.close()
            pools.restore_original_limits()
            torch.set_num_threads(threads)

    # --- files ------------------------------------------------------------------------
    def _after_generation(self, ckpt: Path | None, force: bool) -> None:
        if self.out_dir is None:
            return
        from emq.fileio import atomic_write_text

        atomic_write_text(self.out_dir / "log.jsonl", "".join(json.dumps(r) + "\n" for r in self.log))
        if ckpt is not None and (force or self.generation % self.config.checkpoint_every == 0):
            self._save(ckpt)

    def _inputs_fingerprint(self) -> dict[str, str]:
        """Of every bench and its statistics, in order (one bench: its own fingerprints)."""
        return {
            "bench": ",".join(d.fingerprint for d in self.data),
            "stats": ",".join(
                tensor_digest([t for layer in s.layers for t in (layer.W, layer.G, layer.H)], str(s.bits))
                for s in self.stats
            ),
            "space": json.dumps(self.space.to_json(), sort_keys=True),
        }

    def _save(self, path: Path) -> None:
        keys = list(self.cache)
        sig_keys = [k for k in keys if self.cache[k].signature is not None]
        sigs = np.stack([self.cache[k].signature for k in sig_keys]) if sig_keys else np.zeros((0, 0), np.float32)
        state = {
            "config": self.config.to_json(),
            "inputs": self._inputs_fingerprint(),
            "generation": self.generation,
            "evaluations": self.evaluations,
            "seconds": self.seconds,
            "counts": dict(self.counts),
            "population": [to_tokens(i) for i in self.population],
            "hof": self.hof,
            "cache": [
                [k, self.tokens[k], o.fitness, o.rho_search, o.orientation, o.reason, list(o.per_bench)]
                for k, o in self.cache.items()
            ],
            "signature_keys": sig_keys,
            "log": self.log,
            "rng": checkpoint.rng_to_json(
                random.getstate()
            ),  # saved only while running, when `random` is the campaign's generator
        }
        checkpoint.save(path, state, {"signatures": sigs})

    def restore(self, path: Path) -> None:
        """Continue from a checkpoint: refused when it was made with other settings or inputs."""
        state, arrays = checkpoint.load(path)
        _check_same_campaign(state["config"], self.config, f"checkpoint {path}", len(self.data))
        if state.get("inputs") != self._inputs_fingerprint():
            raise EmqError(
                f"checkpoint {path} was made with a different bench, statistics or search space; resume with the "
                "same inputs or use a new run directory"
            )
        sig = dict(zip(state["signature_keys"], arrays["signatures"], strict=True))
        for k, toks, fit, rs, orient, reason, *per_bench in state[
            "cache"
        ]:  # per-bench rhos: absent from checkpoints of one-bench-only versions
            tokens = [(a, float(b) if a == "c" else b) for a, b in toks]
            self.tokens[k] = tokens
            self.cache[k] = Outcome(
                fit if fit is not None else REJECTED,
                rho_search=rs if rs is not None else float("nan"),
                orientation=orient,
                reason=reason,
                signature=sig.get(k),
                per_bench=tuple(per_bench[0]) if per_bench else (),
            )
        self.population = []
        for toks in state["population"]:
            ind = self._individual(from_tokens(self.space, [(a, float(b) if a == "c" else b) for a, b in toks]))
            ind.fitness.values = (self.selection_fitness(self.key_of(ind), len(ind)),)
            self.population.append(ind)
        self.hof = list(state["hof"])
        self.counts = ScreeningCounts(state["counts"])
        self.generation, self.evaluations, self.seconds = state["generation"], state["evaluations"], state["seconds"]
        self.log = state["log"]
        self.rng_state = checkpoint.rng_from_json(state["rng"])
        log.info("resumed %s at generation %d (%d evaluations)", path, self.generation, self.evaluations)


def _check_same_campaign(saved: dict[str, Any], config: SearchConfig, what: str, benches: int) -> None:
    """Only generations and the budget may change when a campaign is continued. With one bench
    the aggregate changes nothing (every rule gives that bench's rho), so a campaign saved
    under another default aggregate still continues."""
    now, default = config.to_json(), SearchConfig().to_json()
    fields = [f for f in _RESUME_FIELDS if benches > 1 or f not in ("aggregate", "aggregate_k")]
    diff = [
        f for f in fields if saved.get(f, default[f]) != now.get(f)
    ]  # a field added since the checkpoint was made has its default there
    if diff:
        raise EmqError(
            f"{what} was made with different settings ({', '.join(diff)}); continue with the same settings or use "
            "a new run directory"
        )
