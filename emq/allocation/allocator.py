"""Allocate bits with any proxy under real budgets, and verify the result by quantizing.

Separable proxies go to the ILP (exact); whole-configuration proxies go to the
budget-constrained search. `Allocator` keeps the target, the proxy's tables and the PTQ
engine across calls so sweeps and comparisons pay for them once.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ..data import DataSplits
from ..errors import EmqError
from ..proxy import Proxy, ProxyContext, SeparableProxy, table_scores
from ..quant import PTQEngine, PTQSettings, QuantResult
from ..specs import DEFAULT_BITS
from ..target import Target, resolve_target
from .budgets import Budget, Problem, build_problem
from .ilp import solve_ilp
from .search import constrained_search

log = logging.getLogger(__name__)

BudgetSpec = Sequence[Budget] | Mapping[str, Any]


@dataclass
class Allocation:
    """A chosen per-slot configuration with its costs, the proxy's score and (optionally) PTQ results."""

    model: str
    proxy: str
    method: str  # "ilp", "search" or "uniform"
    bits: tuple[int, ...]
    slot_names: list[str]
    size_bytes: float
    bitops: float
    act_bits: int
    avg_bits: float  # parameter-weighted average weight bits
    predicted: float  # raw proxy score (orientation not applied)
    orientation: int
    solve_seconds: float
    budgets: list[dict] = field(default_factory=list)
    evaluations: int = 0  # proxy evaluations spent by the search
    top1: float | None = None
    loss: float | None = None
    kl: float | None = None

    def to_json(self) -> dict:
        return asdict(self) | {"bits": list(self.bits)}


def as_budgets(spec: BudgetSpec | None) -> list[Budget]:
    """Budgets from Budget objects or a mapping like {"size": "1.5MiB", "avg-bits": 3}."""
    if spec is None:
        return []
    if isinstance(spec, Mapping):
        return [b if isinstance(b, Budget) else Budget.parse(k, b) for k, b in spec.items()]
    return list(spec)


def resolve_proxy(spec: Proxy | str | Path) -> Proxy:
    """A Proxy instance, a proxy JSON file (emq.search_space.proxyfile) or a registered name
    (emq.baselines)."""
    if isinstance(spec, Proxy):
        return spec
    text = str(spec)
    if text.endswith(".json") or Path(text).is_file():
        return _optional("emq.search_space.proxyfile", "load_proxy", "proxy JSON files")(Path(text))
    return _optional("emq.baselines", "get_proxy", "named proxies")(text)


def _optional(module: str, attr: str, what: str) -> Any:
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise EmqError(f"{what} are not available in this installation ({module}.{attr} is missing)") from e


class _LazyStatsContext(ProxyContext):
    """A context whose statistics are computed on first access (and cached on disk by
    compute_stats): cost-only proxies never pay for Hessian work."""

    _stats: Any = None

    @property  # type: ignore[override]
    def stats(self) -> Any:
        if self._stats is None and self.target.data is not None:
            from ..search_space.stats import StatsSettings, compute_stats

            log.info("computing network statistics for bits %s", list(self.bits))
            self._stats = compute_stats(self.target, bits=self.bits, settings=StatsSettings.from_ptq(self.settings))
        return self._stats

    @stats.setter
    def stats(self, value: Any) -> None:
        self._stats = value


class Allocator:
    """One target and PTQ setting; allocate with any number of proxies and budgets."""

    def __init__(self, target: Target, settings: PTQSettings | None = None, stats: Any = None) -> None:
        """`stats`: precomputed NetworkStats to reuse when their bits match a problem's columns;
        otherwise statistics are computed when a proxy first needs them."""
        self.target = target
        self.settings = settings or PTQSettings()
        self.stats = stats
        self._contexts: dict[tuple[int, ...], ProxyContext] = {}
        self._tables: dict[tuple[str, tuple[int, ...]], np.ndarray] = {}
        self._engine: PTQEngine | None = None

    @property
    def layer_map(self):
        return self.target.layer_map

    def context(self, bits: tuple[int, ...]) -> ProxyContext:
        """One context per column set, so proxies' own caches are shared across budgets."""
        if bits not in self._contexts:
            given = self.stats if self.stats is not None and tuple(self.stats.bits) == bits else None
            self._contexts[bits] = _LazyStatsContext(self.target, bits, self.settings, given)
        return self._contexts[bits]

    def problem(self, budgets: BudgetSpec | None = None, bits_allowed: Sequence[int] = DEFAULT_BITS, pins: Mapping[str | int, int] | None = None,
                slot_bits: Mapping[str | int, Sequence[int]] | None = None, ties: Sequence[Sequence[str | int]] = ()) -> Problem:
        return build_problem(self.layer_map, as_budgets(budgets), bits_allowed, pins, slot_bits, ties, self.settings.act_bits)

    def table(self, proxy: SeparableProxy, bits: tuple[int, ...]) -> np.ndarray:
        key = (f"{proxy.name}@{id(proxy)}", bits)
        if key not in self._tables:
            t = np.asarray(proxy.table(self.context(bits)), dtype=np.float64)
            if t.shape != (self.layer_map.num_slots, len(bits)):
                raise EmqError(f"proxy {proxy.name}: table has shape {t.shape}, expected ({self.layer_map.num_slots}, {len(bits)})")
            self._tables[key] = t
        return self._tables[key]

    def predict(self, proxy: Proxy, bits: tuple[int, ...], configs: np.ndarray) -> np.ndarray:
        """Raw proxy scores of configurations [N, S] (bit values); separable tables are reused."""
        ctx = self.context(bits)
        if proxy.separable:
            return table_scores(self.table(proxy, bits), ctx.bit_index(np.asarray(configs)))  # type: ignore[arg-type]
        return proxy.score_configs(ctx, np.asarray(configs))

    def engine(self) -> PTQEngine:
        if self._engine is None:
            self._engine = PTQEngine(self.target.model, self.layer_map, self.target.require_data(), self.settings)
        return self._engine

    def allocate(self, proxy: Proxy | str | Path, problem: Problem, evaluate: bool = False, seed_proxy: SeparableProxy | None = None,
                 search_evaluations: int = 200, seed: int = 0) -> Allocation:
        """Best configuration for `proxy` inside `problem`'s budgets; PTQ-evaluated if asked."""
        proxy = resolve_proxy(proxy)
        problem.check_feasible()
        ctx = self.context(problem.bits)
        if proxy.separable:
            table = self.table(proxy, problem.bits)  # type: ignore[arg-type]
            sol = solve_ilp(problem, proxy.orientation * table)
            index, seconds, evals, method = sol.index, sol.seconds, 0, "ilp"
            predicted = float(table_scores(table, index[None, :])[0])
        else:
            cheap = proxy_table_or_size(self, seed_proxy, problem)
            seeds = [solve_ilp(problem, cheap).index]
            cols = np.asarray(problem.bits)
            res = constrained_search(problem, lambda idx: proxy.oriented_scores(ctx, cols[idx]), seeds, search_evaluations, seed=seed)
            index, seconds, evals, method = res.index, res.seconds, res.evaluations, "search"
            predicted = proxy.orientation * res.score
        return self.finish(proxy.name, proxy.orientation, method, problem.to_bits(index), predicted, seconds, problem, evaluate, evals)

    def finish(self, name: str, orientation: int, method: str, bits: tuple[int, ...], predicted: float, seconds: float,
               problem: Problem | None, evaluate: bool, evaluations: int = 0) -> Allocation:
        lm = self.layer_map
        alloc = Allocation(
            lm.model, name, method, bits, lm.slot_names, float(lm.size_bytes(bits)), float(lm.bitops(bits, self.settings.act_bits)),
            self.settings.act_bits, float(np.dot(bits, lm.params) / lm.params.sum()), float(predicted), orientation, seconds,
            [asdict(c.budget) for c in problem.constraints] if problem else [], evaluations,
        )
        if evaluate:
            self.measure(alloc)
        return alloc

    def measure(self, alloc: Allocation) -> QuantResult:
        """PTQ-evaluate an allocation in place (top-1, loss, KL to full precision)."""
        r = self.engine().evaluate(alloc.bits)
        alloc.top1, alloc.loss, alloc.kl = r.top1, r.loss, r.kl
        return r


def proxy_table_or_size(allocator: Allocator, seed_proxy: SeparableProxy | None, problem: Problem) -> np.ndarray:
    """The cheap oriented table that seeds the search: a given separable proxy, or weight bits
    (params x bits, i.e. 'use as much of the budget as possible')."""
    if seed_proxy is not None:
        return seed_proxy.orientation * allocator.table(seed_proxy, problem.bits)
    return np.outer(allocator.layer_map.params, np.asarray(problem.bits, dtype=np.float64))


def allocate(
    model: str | nn.Module = "default",
    proxy: Proxy | str | Path | None = None,
    budgets: BudgetSpec | None = None,
    bits_allowed: Sequence[int] = DEFAULT_BITS,
    pins: Mapping[str | int, int] | None = None,
    slot_bits: Mapping[str | int, Sequence[int]] | None = None,
    ties: Sequence[Sequence[str | int]] = (),
    evaluate: bool = False,
    settings: PTQSettings | None = None,
    data: str | DataSplits | None = None,
    weights: Path | None = None,
    input_size: int | None = None,
    num_classes: int | None = None,
    stats: Any = None,
    seed_proxy: SeparableProxy | None = None,
    search_evaluations: int = 200,
    seed: int = 0,
) -> Allocation:
    """Allocate per-slot bits with `proxy` under `budgets` (e.g. {"avg-bits": 3.0}); with
    evaluate=True the result is PTQ-quantized and its top-1 / loss / KL filled in. `emq allocate`."""
    if proxy is None:
        raise EmqError("give a proxy: a Proxy, a proxy JSON file or a proxy name")
    need_data = evaluate or data is not None or model == "default"
    target = resolve_target(model, data, weights=weights, num_classes=num_classes, input_size=input_size, need_data=need_data)
    alloc = Allocator(target, settings, stats)
    return alloc.allocate(proxy, alloc.problem(budgets, bits_allowed, pins, slot_bits, ties), evaluate, seed_proxy, search_evaluations, seed)
