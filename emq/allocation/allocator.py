"""Allocate bits with any proxy under real budgets, and verify the result by quantizing.

Separable proxies go to the ILP (exact); whole-configuration proxies go to the
budget-constrained search. `Allocator` keeps the target, the proxy's tables and the PTQ
engine across calls so sweeps and comparisons pay for them once.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data import DataSplits
from ..device import resolve_device
from ..errors import EmqError
from ..fileio import atomic_write_text
from ..layermap import LayerMap
from ..proxy import Proxy, ProxyContext, SeparableProxy, table_scores
from ..quant import PTQEngine, PTQSettings, QuantResult
from ..specs import DEFAULT_BITS, ParameterError
from ..tables import markdown_table
from ..target import ModelSpec, Target, as_model_spec
from .auto import NAME as AUTO_NAME
from .auto import AutoProxy
from .bitmap import save_bitmap
from .budgets import Budget, Problem, build_problem
from .ilp import solve_ilp
from .search import constrained_search

log = logging.getLogger(__name__)

BudgetSpec = Sequence[Budget] | Mapping[str, Any]


@dataclass(kw_only=True)
class Allocation:
    """A chosen per-slot configuration with its costs, the proxy's score and (optionally) PTQ results
    (built by keyword: twenty-one fields)."""

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
    test_images: int | None = None  # what the PTQ figures were measured on (a bench's own test images with --bench)
    # what the proxy spent once on this model (measured sensitivity, auto's measurements and choice)
    proxy_setup: dict | None = None
    # what `save` needs to write the bit map; not part of the JSON document
    layer_map: LayerMap | None = field(default=None, repr=False, compare=False, metadata={"json": False})
    ptq: PTQSettings | None = field(default=None, repr=False, compare=False, metadata={"json": False})
    source: str = field(
        default="", repr=False, compare=False, metadata={"json": False}
    )  # the proxy as the caller named it

    def to_json(self) -> dict:
        doc = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.metadata.get("json", True)}
        return doc | {"bits": list(self.bits)}

    def summary(self) -> str:
        """One line: method, proxy, costs, predicted score, solve time and PTQ results if measured."""
        measured = (
            f"; PTQ top-1 {self.top1:.2f} %, loss {self.loss:.4f}, KL {self.kl:.4f} on {self.test_images} test images"
            if self.top1 is not None
            else ""
        )
        setup = self.proxy_setup or {}
        chose = (
            f"\n{self.proxy} chose {setup['strategy']}: {setup['why']}; "
            f"spent {setup.get('evaluations', 0)} PTQ evaluations"
            f" and {setup.get('seconds', 0.0):.0f} s"
            + (f" (measurements: {setup['measurements']})" if setup.get("measurements") else "")
            if "strategy" in setup
            else ""
        )
        return (
            f"{self.method} with {self.proxy}: size {self.size_bytes:,.0f} bytes, {self.bitops:.4g} BitOps "
            f"(act {self.act_bits} bits), avg {self.avg_bits:.3f} bits, predicted {self.predicted:.6g}, solved "
            f"in {self.solve_seconds * 1000:.1f} ms{measured}{chose}"
        )

    def to_markdown(self) -> str:
        """The per-slot table and the summary line."""
        rows = [[i, name, b] for i, (name, b) in enumerate(zip(self.slot_names, self.bits))]
        return markdown_table(["slot", "name", "bits"], rows) + "\n\n" + self.summary()

    def save(self, out_dir: str | Path) -> list[Path]:
        """Write bitmap.json (keyed by module, for deployment) and allocation.json (this
        document) into `out_dir`; returns their paths, in that order."""
        if self.layer_map is None:
            raise EmqError(
                "this allocation has no layer map (it was not made by an Allocator); save it with save_bitmap"
            )
        out = Path(out_dir)
        paths = {"bitmap": out / "bitmap.json", "allocation": out / "allocation.json"}
        ptq = (self.ptq or PTQSettings(act_bits=self.act_bits)).to_json()
        provenance = {
            "proxy": self.source or self.proxy,
            "method": self.method,
            "predicted": self.predicted,
            "budgets": self.budgets,
            "ptq": ptq,
        }
        save_bitmap(paths["bitmap"], self.layer_map, self.bits, act_bits=self.act_bits, provenance=provenance)
        atomic_write_text(paths["allocation"], json.dumps(self.to_json(), indent=2) + "\n")
        return list(paths.values())


def as_budgets(spec: BudgetSpec | None) -> list[Budget]:
    """Budgets from Budget objects or a mapping like {"size": "1.5MiB", "avg-bits": 3}."""
    if spec is None:
        return []
    if isinstance(spec, Mapping):
        return [b if isinstance(b, Budget) else Budget.parse(k, b) for k, b in spec.items()]
    return list(spec)


def auto_or(
    proxy: Proxy | str | Path, evaluations: int | None, measurements: Path | None, seed: int
) -> Proxy | str | Path:
    """`proxy`, or for 'auto' the AutoProxy of `evaluations` (what only 'auto' takes)."""
    if str(proxy) != AUTO_NAME:
        if evaluations is not None or measurements is not None:
            raise ParameterError(
                "evaluations", evaluations, "only --proxy auto spends evaluations: drop it or use auto"
            )
        return proxy
    return AutoProxy(0 if evaluations is None else evaluations, measurements, seed)


def resolve_proxy(spec: Proxy | str | Path) -> Proxy:
    """A Proxy instance, a proxy JSON file (emq.search_space.proxyfile) or a registered name
    (emq.baselines)."""
    if isinstance(spec, Proxy):
        return spec
    text = str(spec)
    if text == AUTO_NAME:
        return AutoProxy()
    if text.endswith(".json") or Path(text).is_file():
        from ..search_space.proxyfile import load_proxy

        return load_proxy(Path(text))
    from ..baselines import get_proxy

    return get_proxy(text)


class _LazyStatsContext(ProxyContext):
    """A context whose statistics are computed on first access (and cached on disk by
    compute_stats): cost-only proxies never pay for Hessian work."""

    _stats: Any = None
    stats_settings: Any = None  # emq.search_space.stats.StatsSettings; None: matched to the PTQ settings

    @property  # type: ignore[override]
    def stats(self) -> Any:
        if self._stats is None and self.target.data is not None:
            from ..search_space.stats import StatsSettings, compute_stats

            log.info("computing network statistics for bits %s", list(self.bits))
            settings = self.stats_settings or StatsSettings.from_ptq(self.settings)
            self._stats = compute_stats(self.target, bits=self.bits, settings=settings, device=self.device)
        return self._stats

    @stats.setter
    def stats(self, value: Any) -> None:
        self._stats = value


class Allocator:
    """One target and PTQ setting; allocate with any number of proxies and budgets."""

    def __init__(
        self,
        target: Target,
        settings: PTQSettings | None = None,
        *,
        stats: Any = None,
        stats_settings: Any = None,
        device: str | torch.device = "cpu",
    ) -> None:
        """`stats`: precomputed NetworkStats to reuse when their bits match a problem's columns;
        otherwise statistics are computed when a proxy first needs them, with `stats_settings`
        (a bench's, see `allocator_for`) or settings matched to the PTQ ones. `device` is where
        statistics, whole-configuration proxies and the verifying PTQ run (emq.device)."""
        self.device = resolve_device(device)
        self.target = target
        self.settings = settings or PTQSettings()
        self.stats = stats
        self.stats_settings = stats_settings
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
            ctx = _LazyStatsContext(self.target, bits, self.settings, given, device=self.device)
            ctx.stats_settings = self.stats_settings
            self._contexts[bits] = ctx
        return self._contexts[bits]

    def problem(
        self,
        budgets: BudgetSpec | None = None,
        bits_allowed: Sequence[int] = DEFAULT_BITS,
        *,
        pins: Mapping[str | int, int] | None = None,
        slot_bits: Mapping[str | int, Sequence[int]] | None = None,
        ties: Sequence[Sequence[str | int]] = (),
    ) -> Problem:
        return build_problem(
            self.layer_map,
            as_budgets(budgets),
            bits_allowed,
            pins=pins,
            slot_bits=slot_bits,
            ties=ties,
            act_bits=self.settings.act_bits,
        )

    def table(self, proxy: SeparableProxy, bits: tuple[int, ...]) -> np.ndarray:
        key = (f"{proxy.name}@{id(proxy)}", bits)
        if key not in self._tables:
            t = np.asarray(proxy.table(self.context(bits)), dtype=np.float64)
            if t.shape != (self.layer_map.num_slots, len(bits)):
                raise EmqError(
                    f"proxy {proxy.name}: table has shape {t.shape}, expected ({self.layer_map.num_slots}, {len(bits)})"
                )
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
            self._engine = PTQEngine(self.target, self.settings, device=self.device)
        return self._engine

    def allocate(
        self,
        proxy: Proxy | str | Path,
        problem: Problem,
        *,
        evaluate: bool = False,
        seed_proxy: SeparableProxy | None = None,
        search_evaluations: int = 200,
        seed: int = 0,
    ) -> Allocation:
        """Best configuration for `proxy` inside `problem`'s budgets; PTQ-evaluated if asked.

        Raises InfeasibleBudget (before any proxy work) when the budgets cannot be met."""
        source = proxy.name if isinstance(proxy, Proxy) else str(proxy)
        proxy = resolve_proxy(proxy)
        problem.check_feasible()
        ctx = self.context(problem.bits)
        setup = None
        if proxy.separable:
            table = self.table(proxy, problem.bits)  # type: ignore[arg-type]
            setup = proxy.setup_cost(ctx)
            sol = solve_ilp(problem, proxy.orientation * table)
            index, seconds, evals, method = sol.index, sol.seconds, 0, "ilp"
            predicted = float(table_scores(table, index[None, :])[0])
        else:
            cheap = proxy_table_or_size(self, seed_proxy, problem)
            seeds = [solve_ilp(problem, cheap).index]
            cols = np.asarray(problem.bits)
            res = constrained_search(
                problem,
                lambda idx: proxy.oriented_scores(ctx, cols[idx]),
                seeds=seeds,
                evaluations=search_evaluations,
                seed=seed,
            )
            index, seconds, evals, method = res.index, res.seconds, res.evaluations, "search"
            predicted = proxy.orientation * res.score
        alloc = self.finish(
            proxy.name,
            orientation=proxy.orientation,
            method=method,
            bits=problem.to_bits(index),
            predicted=predicted,
            seconds=seconds,
            problem=problem,
            evaluate=evaluate,
            evaluations=evals,
            source=source,
        )
        alloc.proxy_setup = setup
        return alloc

    def finish(
        self,
        name: str,
        *,
        orientation: int,
        method: str,
        bits: tuple[int, ...],
        predicted: float,
        seconds: float,
        problem: Problem | None,
        evaluate: bool,
        evaluations: int = 0,
        source: str = "",
    ) -> Allocation:
        lm = self.layer_map
        alloc = Allocation(
            model=lm.model,
            proxy=name,
            method=method,
            bits=bits,
            slot_names=lm.slot_names,
            size_bytes=float(lm.size_bytes(bits)),
            bitops=float(lm.bitops(bits, self.settings.act_bits)),
            act_bits=self.settings.act_bits,
            avg_bits=float(np.dot(bits, lm.params) / lm.params.sum()),
            predicted=float(predicted),
            orientation=orientation,
            solve_seconds=seconds,
            budgets=[asdict(c.budget) for c in problem.constraints] if problem else [],
            evaluations=evaluations,
            layer_map=lm,
            ptq=self.settings,
            source=source or name,
        )
        if evaluate:
            self.measure(alloc)
        return alloc

    def measure(self, alloc: Allocation) -> QuantResult:
        """PTQ-evaluate an allocation in place (top-1, loss, KL to full precision)."""
        engine = self.engine()
        r = engine.evaluate(alloc.bits)
        alloc.top1, alloc.loss, alloc.kl = r.top1, r.loss, r.kl
        alloc.test_images = len(engine.data.test)  # type: ignore[arg-type]
        return r


def proxy_table_or_size(allocator: Allocator, seed_proxy: SeparableProxy | None, problem: Problem) -> np.ndarray:
    """The cheap oriented table that seeds the search: a given separable proxy, or weight bits
    (params x bits, i.e. 'use as much of the budget as possible')."""
    if seed_proxy is not None:
        return seed_proxy.orientation * allocator.table(seed_proxy, problem.bits)
    return np.outer(allocator.layer_map.params, np.asarray(problem.bits, dtype=np.float64))


def needs_data(model: Any, data: Any, evaluate: bool) -> bool:
    """The one rule for whether an allocation loads data: to PTQ-evaluate, when data is given,
    and for the default model (its data is embedded and cheap, and statistics-based proxies
    need it). A torchvision model without data can still be allocated with cost-only proxies."""
    return bool(evaluate) or data is not None or (isinstance(model, str) and model == "default")


def allocator_for(
    spec: ModelSpec | None = None,
    *,
    settings: PTQSettings | Mapping[str, Any] | None = None,
    evaluate: bool = False,
    bench: Any = None,
    stats: Any = None,
    device: str | torch.device = "cpu",
) -> Allocator:
    """An Allocator for a model, or for a bench's model with the bench's settings; networks run on `device`.

    Without `bench`, the model of `spec` (default 'default') and its data are resolved and
    `settings` is the PTQ setting. With `bench` (a path, 'default' or an opened
    emq.bench.Bench) the model and data default to the bench's, the model is checked against
    it (weights hash, slots), and PTQ and statistics settings are the bench's; `settings` (a
    PTQSettings or a mapping of some of its fields) may only repeat them, and any field that
    contradicts the bench is refused.
    """
    spec = spec or ModelSpec()
    device = resolve_device(device)  # before any model work
    if bench is None:
        if settings is not None and not isinstance(settings, PTQSettings):
            settings = PTQSettings(**settings)
        model = "default" if spec.model is None else spec.model
        target = spec.resolve(need_data=needs_data(model, spec.data, evaluate))
        return Allocator(target, settings, stats=stats, device=device)
    from ..bench import Bench
    from ..bench_setup import BenchSetup, ptq_settings

    b = bench if isinstance(bench, Bench) else Bench.open(bench)
    check_bench_settings(settings, ptq_settings(b), b.path)  # before any model work
    model = b.meta.get("model", "default") if spec.model is None else spec.model
    need = needs_data(model, spec.data if spec.data is not None else b.meta.get("data"), evaluate)
    setup = BenchSetup.of(b, spec, need_data=need)
    return Allocator(setup.target, setup.ptq, stats=stats, stats_settings=setup.stats, device=device)


def check_bench_settings(given: PTQSettings | Mapping[str, Any] | None, bench_ptq: PTQSettings, path: Any) -> None:
    """Refuse PTQ settings that contradict the bench's, naming the first field that differs."""
    if given is None:
        return
    wanted = asdict(given) if isinstance(given, PTQSettings) else dict(given)
    known = bench_ptq.to_json()
    for key, value in wanted.items():
        if key not in known:
            raise ParameterError("settings", dict(wanted), f"{key!r} is not a PTQ setting; use {', '.join(known)}")
        if value != known[key]:
            raise ParameterError(
                key, value, f"bench {path} was built with {known[key]!r}; leave it out to use the bench's PTQ settings"
            )


def allocate(
    model: ModelSpec | str | nn.Module | None = None,
    proxy: Proxy | str | Path | None = None,
    budgets: BudgetSpec | None = None,
    *,
    bits_allowed: Sequence[int] = DEFAULT_BITS,
    pins: Mapping[str | int, int] | None = None,
    slot_bits: Mapping[str | int, Sequence[int]] | None = None,
    ties: Sequence[Sequence[str | int]] = (),
    evaluate: bool = False,
    settings: PTQSettings | Mapping[str, Any] | None = None,
    data: str | DataSplits | None = None,
    weights: Path | None = None,
    input_size: int | None = None,
    num_classes: int | None = None,
    stats: Any = None,
    seed_proxy: SeparableProxy | None = None,
    search_evaluations: int = 200,
    seed: int = 0,
    bench: Any = None,
    device: str | torch.device = "cpu",
    evaluations: int | None = None,
    measurements: Path | None = None,
) -> Allocation:
    """Allocate per-slot bits with `proxy` under `budgets` (e.g. {"avg-bits": 3.0}); with
    evaluate=True the result is PTQ-quantized and its top-1 / loss / KL filled in. `model` (a
    name, an nn.Module or a ModelSpec holding the data, weights, ... too) defaults to 'default',
    or to the bench's model when `bench` is given (then the bench's PTQ and statistics settings
    are used, see `allocator_for`). `device` (cpu, cuda, cuda:N) is where statistics and PTQ
    run; it does not change the allocation's draws. `emq allocate`."""
    if proxy is None:
        raise ParameterError("proxy", None, "give a Proxy, a proxy JSON file or a proxy name")
    proxy = auto_or(proxy, evaluations, measurements, seed)
    alloc = allocator_for(
        as_model_spec(model, data=data, weights=weights, num_classes=num_classes, input_size=input_size),
        settings=settings,
        evaluate=evaluate,
        bench=bench,
        stats=stats,
        device=device,
    )
    return alloc.allocate(
        proxy,
        alloc.problem(budgets, bits_allowed, pins=pins, slot_bits=slot_bits, ties=ties),
        evaluate=evaluate,
        seed_proxy=seed_proxy,
        search_evaluations=search_evaluations,
        seed=seed,
    )
