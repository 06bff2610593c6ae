"""The proxy ranking report (`emq score`): every proxy's correlation with one bench, honestly.

Every proxy is measured in four cells: search or held-out configurations, on the fit or the
report test pool. Only held-out x report is data no choice has seen; it is shown with a
seeded 95 % bootstrap interval (resampling configurations and test sources), next to the
report pool's ceiling (sqrt of its reliability), the within-bench supervised reference
(ridge on one-hot features) and each proxy's *paired* difference to the best hand-made
proxy: the faithful statistics-only proxy with the highest search x fit correlation
(measured-sensitivity and whole-configuration proxies spend PTQ runs on data, so they are
rows with their cost, never "the best hand-made"). "A beats B" only where that paired
interval excludes 0. Separable proxies score every configuration (one gather-sum); whole-configuration
proxies quantize the network per configuration, so they score a seeded sample of at most
`limit` configurations per split.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .baselines import get_proxy, parse_proxy_names
from .bench_setup import BenchSetup
from .device import resolve_device
from .errors import EmqError
from .executors import Executor, executor_for, make_executor
from .fileio import atomic_write
from .fitness import correlations
from .proxy import Proxy, ProxyContext
from .specs import METRIC_ORIENTATION, check_metric, check_positive_int, oriented
from .supervised import DESCRIPTION as RIDGE_DESCRIPTION
from .supervised import NAME as RIDGE_NAME
from .supervised import OneHotRidge
from .target import ModelSpec, as_model_spec
from .threads import torch_threads
from .uncertainty import DEFAULT_RESAMPLES, Bootstrap

log = logging.getLogger(__name__)

CELLS = (("search", "fit"), ("heldout", "fit"), ("search", "report"), ("heldout", "report"))
REPORT_CELL = "heldout_report"
MEASURES = ("kendall", "pearson", "spearman@20", "spearman@50")  # besides Spearman, on held-out x report
DEFAULT_LIMIT = 200
SAMPLE_SEED = 0
BOOTSTRAP_SEED = 0


@dataclass(kw_only=True)
class ProxyScore:
    """One proxy's row: Spearman per cell ('spearman_<split>_<pool>'), the other measures on
    held-out x report, its interval there and its paired difference to the best hand-made."""

    name: str
    description: str
    kind: str  # "separable" | "whole-config" | "evolved" | "supervised"
    orientation: int
    cost: str
    n: dict[str, int]
    correlations: dict[str, float | None]
    seconds_per_config: float
    interval: dict[str, float | None] | None = None
    paired: dict[str, Any] | None = None
    scores: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]
    metric_values: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]
    rows: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]
    setup: dict[str, Any] | None = None  # one-off cost on this model: seconds, PTQ-equivalent evaluations

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("scores", "metric_values", "rows", "correlations")}
        out.update({k.replace("@", "_top"): v for k, v in self.correlations.items()})
        return out


@dataclass(kw_only=True)
class ScoreReport:
    bench: str
    model: str
    metric: str
    ceiling: float | None  # of held-out x report: sqrt of the report pool's combined reliability
    reliability: dict[str, Any] | None  # the metric's reliability entry (report pool)
    pools: dict[str, Any] | None  # sizes of the fit and report pools; None: one shared pool
    best_handmade: str | None
    resamples: int
    stats_seconds: float
    proxies: list[ProxyScore]
    skipped: dict[str, str] = field(default_factory=dict)  # proxy -> why it was not scored

    def to_json(self) -> dict[str, Any]:
        return {
            "bench": self.bench,
            "model": self.model,
            "metric": self.metric,
            "ceiling": self.ceiling,
            "reliability": self.reliability,
            "pools": self.pools,
            "best_handmade": self.best_handmade,
            "resamples": self.resamples,
            "stats_seconds": self.stats_seconds,
            "proxies": [p.to_json() for p in self.proxies],
            "skipped": self.skipped,
        }

    def to_markdown(self) -> str:
        """The proxy table with the protocol that makes its numbers readable."""
        from .tables import markdown_table

        headers, rows = table_rows(self)
        ceiling = "not measured" if self.ceiling is None else f"{self.ceiling:.3f}"
        held = next((p.n.get(REPORT_CELL) for p in self.proxies if p.kind != "whole-config"), None)
        if self.pools:
            pools = (
                f"fit pool {self.pools['fit']['images']} images / {self.pools['fit']['sources']} sources, report "
                f"pool {self.pools['report']['images']} / {self.pools['report']['sources']}"
            )
        else:
            pools = "no per-image outcomes: fit and report are the same test images (held-out numbers are optimistic)"
        lines = [
            markdown_table(headers, rows),
            "",
            f"bench {self.bench} ({self.model}), metric {self.metric}; {pools}.",
            f"held-out x report ({held} configurations): the only cell no choice has seen; [95 % bootstrap "
            f"interval, {self.resamples} resamples of configurations and test sources].",
            f"ceiling {ceiling}: sqrt of the report pool's reliability (test split-half and calibration retest "
            "combined), about the best a perfect predictor reaches.",
            "Δ: paired difference to the best statistics-only hand-made proxy chosen on search x fit "
            f"({self.best_handmade or 'none'}); a proxy beats it only where the interval excludes 0.",
        ]
        if any(p.setup for p in self.proxies):
            lines.append(
                "one-off cost: seconds the proxy spent once on this model when its inputs were computed (a cached "
                "result only loads), in PTQ-equivalent evaluations: seconds / one PTQ evaluation (quantize one "
                "configuration, evaluate the test split), timed by the measured proxies' computation."
            )
        if self.skipped:
            lines.append("not scored: " + "; ".join(f"{n} ({why})" for n, why in self.skipped.items()) + ".")
        if self.stats_seconds:
            lines.append(f"statistics for separable proxies: {self.stats_seconds:.1f} s once")
        return "\n".join(lines)

    def save(self, out: str | Path) -> list[Path]:
        """score.csv, score.json and one scatter PNG per proxy into `out`; returns the paths."""
        return write_report(self, out)


def _finite(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _sample(mask: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """Row indices of a split: all of them, or a seeded sample of `limit`, in bench order."""
    idx = np.flatnonzero(mask)
    if limit is None or limit <= 0 or len(idx) <= limit:
        return idx
    return np.sort(np.random.default_rng(seed).choice(idx, size=limit, replace=False))


def _load_evolved(paths: Sequence[Path]) -> list[Proxy]:
    if not paths:
        return []
    from .search_space.proxyfile import load_proxy

    return [load_proxy(Path(p)) for p in paths]


def _score_whole(
    ctx: ProxyContext, task: tuple[tuple[Proxy, ...], np.ndarray]
) -> tuple[list[float], float, list[float]]:
    """An executor task: every whole-configuration proxy's score of one configuration, the
    seconds of the PTQ pass they share and each proxy's own seconds. The context (target,
    settings and the proxies' shared cache: PTQ engine, FP references) is shipped once and
    kept by each worker."""
    from .baselines.whole_config import prepared

    proxies, config = task
    for proxy in proxies:  # once per worker: the FP references, before any configuration is prepared
        proxy.reference(ctx)
    t0 = time.perf_counter()
    prepared(ctx, config)
    shared = time.perf_counter() - t0
    scores, seconds = [], []
    for proxy in proxies:
        t0 = time.perf_counter()
        scores.append(float(proxy.oriented_scores(ctx, config[None])[0]))
        seconds.append(time.perf_counter() - t0)
    return scores, shared, seconds


ESTIMATE_AFTER = 3  # configurations timed before the run's length is announced
ANNOUNCE_SECONDS = 20.0  # runs estimated to take longer are announced


def _whole_config_scores(
    proxies: Sequence[Proxy], ctx: ProxyContext, configs: np.ndarray, *, progress: bool, executor: Executor | None
) -> tuple[np.ndarray, list[float]]:
    """Oriented scores [N, P] of whole-configuration proxies sharing one PTQ pass per
    configuration, and each proxy's seconds per configuration as if run alone (its own time
    plus the shared pass). How long the run will take is announced after the first few."""
    names = ", ".join(p.name for p in proxies)
    jobs = (executor or make_executor("serial")).map(_score_whole, [(tuple(proxies), c) for c in configs], context=ctx)
    bar = tqdm(jobs, total=len(configs), desc=names, unit="cfg", disable=not progress)
    rows, shared, own = [], 0.0, np.zeros(len(proxies))
    t0 = time.perf_counter()
    for k, (scores, pass_seconds, seconds) in enumerate(bar, start=1):
        rows.append(scores)
        shared += pass_seconds
        own += seconds
        if k == min(ESTIMATE_AFTER, len(configs)) and len(configs) > k:
            left = (time.perf_counter() - t0) / k * (len(configs) - k)
            text = (
                f"scoring {names} on {len(configs)} configurations: about {_duration(left)} more (from the first {k})"
            )
            log.info(text)
            if progress and left > ANNOUNCE_SECONDS:
                bar.write(text)
    out = np.array(rows, dtype=np.float64).reshape(len(configs), len(proxies))
    if not np.isfinite(out).all():
        bad = proxies[int(np.flatnonzero(~np.isfinite(out).all(axis=0))[0])]
        raise EmqError(f"proxy {bad.name}: produced NaN or infinite scores")
    n = max(len(configs), 1)
    return out, [(shared + o) / n for o in own]


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def _proxy_scores(proxy: Proxy, ctx: ProxyContext, configs: np.ndarray) -> tuple[np.ndarray, float]:
    """Oriented scores of `configs` by a separable (or evolved) proxy and seconds per configuration."""
    t0 = time.perf_counter()
    scores = proxy.oriented_scores(ctx, configs)
    if not np.isfinite(scores).all():
        raise EmqError(f"proxy {proxy.name}: produced NaN or infinite scores")
    return np.asarray(scores, dtype=np.float64), (time.perf_counter() - t0) / max(len(configs), 1)


class ReportCells:
    """The bench's oriented metric on each pool and the masks of the four cells."""

    def __init__(self, bench: Any, metric: str, resamples: int) -> None:
        self.bench, self.metric, self.resamples = bench, metric, resamples
        self.has_pools = bench.pools is not None
        self.values = {
            pool: oriented(metric, bench.pool_metric(metric, pool if self.has_pools else "all"))
            for pool in ("fit", "report")
        }
        self.ok = np.isfinite(self.values["fit"]) & np.isfinite(self.values["report"])
        if self.ok.sum() < 3:
            raise EmqError(f"bench {bench.path}: fewer than 3 configurations have a {metric!r} value")
        self.split = {"search": ~bench.heldout, "heldout": bench.heldout}
        self._boot: dict[bytes, Bootstrap] = {}
        self._report_table: tuple[np.ndarray, np.ndarray] | None = None

    def bootstrap(self, rows: np.ndarray) -> Bootstrap:
        """Replicates over held-out x report for these bench rows (one per row set, seeded)."""
        key = np.asarray(rows).tobytes()
        if key not in self._boot:
            if self.has_pools:
                if self._report_table is None:  # one table for every row set of the report
                    self._report_table = self.bench.source_table(self.metric, "report")
                sums, counts = self._report_table
                sums = sums[rows]
            else:
                sums, counts = self.bench.metrics[self.metric][rows][:, None], np.ones(1)
            self._boot[key] = Bootstrap(
                sums=sums,
                counts=counts,
                sign=METRIC_ORIENTATION[self.metric],
                resamples=self.resamples,
                seed=BOOTSTRAP_SEED,
            )
        return self._boot[key]

    def score(
        self,
        name: str,
        *,
        description: str,
        kind: str,
        orientation: int,
        cost: str,
        rows: np.ndarray,
        scores: np.ndarray,
        seconds: float,
    ) -> ProxyScore:
        corr: dict[str, float | None] = {}
        n: dict[str, int] = {}
        for split, pool in CELLS:
            sel = self.split[split][rows]
            key = f"{split}_{pool}"
            n[key] = int(sel.sum())
            res = correlations(scores[sel], self.values[pool][rows][sel]) if sel.sum() >= 3 else {}
            corr[f"spearman_{key}"] = _finite(res.get("spearman", float("nan")))
            if key == REPORT_CELL:
                for m in MEASURES:
                    corr[f"{m}_{key}"] = _finite(res.get(m, float("nan")))
        held = rows[self.split["heldout"][rows]]
        interval = None
        if len(held) >= 3:
            iv = self.bootstrap(held).interval(scores[self.split["heldout"][rows]])
            interval = {"low": _finite(iv.low), "high": _finite(iv.high)}
        return ProxyScore(
            name=name,
            description=description,
            kind=kind,
            orientation=orientation,
            cost=cost,
            n=n,
            correlations=corr,
            seconds_per_config=seconds,
            interval=interval,
            scores=scores,
            metric_values=self.values["report"][rows],
            rows=rows,
        )

    def paired(self, p: ProxyScore, base: ProxyScore) -> dict[str, Any] | None:
        """p minus base on the held-out rows both scored, with the paired bootstrap interval."""
        held = np.intersect1d(p.rows[self.split["heldout"][p.rows]], base.rows[self.split["heldout"][base.rows]])
        if len(held) < 3:
            return None
        pos_p = {r: i for i, r in enumerate(p.rows)}
        pos_b = {r: i for i, r in enumerate(base.rows)}
        a = p.scores[[pos_p[r] for r in held]]
        b = base.scores[[pos_b[r] for r in held]]
        iv = self.bootstrap(held).paired(a, b)
        return {
            "baseline": base.name,
            "estimate": _finite(iv.estimate),
            "low": _finite(iv.low),
            "high": _finite(iv.high),
            "configs": int(len(held)),
        }


def score(
    bench: str | Path = "default",
    *,
    proxies: str | Sequence[str] = "all",
    proxy_files: Sequence[str | Path] = (),
    metric: str | None = None,
    limit: int | None = DEFAULT_LIMIT,
    ompq_beta: float | None = None,
    model: ModelSpec | str | None = None,
    data: str | None = None,
    weights: Path | None = None,
    stats: Any = None,
    progress: bool = False,
    executor: Executor | str | None = None,
    workers: int = 1,
    resamples: int = DEFAULT_RESAMPLES,
    reference: bool = True,
    device: str | torch.device = "cpu",
    threads: int | None = None,
) -> ScoreReport:
    """Score hand-made (`proxies`: 'all' or names) and evolved (`proxy_files`) proxies on a bench.

    `limit` caps the configurations per split that whole-configuration proxies quantize
    (seeded sample; None or 0 = all), through `executor` (a name or an Executor; default
    serial, or a process pool for `workers` > 1). `stats` reuses precomputed NetworkStats.
    `resamples` bootstrap replicates give the intervals; `reference` adds the ridge row.
    `device` is where statistics and whole-configuration proxies run the network (emq.device;
    every worker uses it); the configurations sampled and the images seen do not depend on it.
    `threads` is torch's intra-op thread count for the run (None: emq.threads chooses; the caller's is restored).
    """
    with torch_threads(threads):
        from .bench import Bench

        check_positive_int(resamples, "resamples")
        device = resolve_device(device)
        b = Bench.open(bench)
        metric = check_metric(metric or b.default_metric)
        names = parse_proxy_names(proxies if isinstance(proxies, str) else ",".join(proxies)) if proxies else []
        instances = [
            get_proxy(n, **({"beta": ompq_beta} if n == "ompq" and ompq_beta is not None else {})) for n in names
        ]
        kinds = ["separable" if p.separable else "whole-config" for p in instances]
        evolved = _load_evolved([Path(p) for p in proxy_files])
        instances += evolved
        kinds += ["evolved"] * len(evolved)
        if not instances:
            raise EmqError("no proxy to score: give --proxies and/or --proxy FILE")
        setup = BenchSetup.of(b, as_model_spec(model, data=data, weights=weights))
        target, settings = setup.target, setup.ptq
        cells = ReportCells(b, metric, resamples)
        stats_seconds = 0.0
        if stats is None and any(p.separable for p in instances):
            t0 = time.perf_counter()
            stats = setup.network_stats(progress, device)
            stats_seconds = time.perf_counter() - t0
        ctx = ProxyContext(target, tuple(b.bits), settings, stats, device=device)
        skipped = {}
        if target.data is None:  # a bundle without its data: proxies that quantize the model on it are skipped
            skipped = {
                p.name: "needs the bench's data (it quantizes the model on it); install the data or pass --data"
                for p in instances
                if p.needs_data_for(ctx)
            }
            for name, reason in skipped.items():
                log.warning("not scoring %s: %s", name, reason)
            keep = [i for i, p in enumerate(instances) if p.name not in skipped]
            instances, kinds = [instances[i] for i in keep], [kinds[i] for i in keep]
            if not instances:
                raise EmqError(
                    f"bench {b.path}: its data is not installed, and every proxy asked for ({', '.join(skipped)}) "
                    "needs it; install the data or pass --data"
                )
        whole_ctx = ProxyContext(
            target, tuple(b.bits), settings, device=device
        )  # without statistics: what executors ship to workers
        search, heldout = cells.ok & ~b.heldout, cells.ok & b.heldout
        results = []
        scored: dict[int, tuple[np.ndarray, np.ndarray, float]] = {}  # instance -> rows, scores, s/config
        for k, proxy in enumerate(instances):
            if proxy.separable:
                rows = np.flatnonzero(cells.ok)
                log.info("scoring %s on %d configurations", proxy.name, len(rows))
                scored[k] = (rows, *_proxy_scores(proxy, ctx, b.configs[rows]))
        whole = [k for k, p in enumerate(instances) if not p.separable]
        if whole:
            rows = np.union1d(_sample(search, limit, SAMPLE_SEED), _sample(heldout, limit, SAMPLE_SEED + 1))
            proxies_whole = [instances[k] for k in whole]
            log.info("scoring %s on %d configurations", ", ".join(p.name for p in proxies_whole), len(rows))
            with executor_for(executor, workers) as pool:
                table, seconds = _whole_config_scores(
                    proxies_whole, whole_ctx, b.configs[rows], progress=progress, executor=pool
                )
            for j, k in enumerate(whole):
                scored[k] = (rows, table[:, j], seconds[j])
        results = []
        for k, (proxy, kind) in enumerate(zip(instances, kinds, strict=True)):
            rows, scores, seconds = scored[k]
            results.append(
                cells.score(
                    proxy.name,
                    description=proxy.description,
                    kind=kind,
                    orientation=proxy.orientation,
                    cost=proxy.cost,
                    rows=rows,
                    scores=scores,
                    seconds=seconds,
                )
            )
            results[-1].setup = proxy.setup_cost(ctx) if proxy.separable else None
        _statistics_cost(results, instances, stats)
        if reference:
            rows = np.flatnonzero(cells.ok)
            fit_rows = np.flatnonzero(search)
            t0 = time.perf_counter()
            ridge = OneHotRidge(b.bits).fit(b.configs[fit_rows], cells.values["fit"][fit_rows])
            pred = ridge.predict(b.configs[rows])
            results.append(
                cells.score(
                    RIDGE_NAME,
                    description=f"{RIDGE_DESCRIPTION}; alpha {ridge.alpha_:g}",
                    kind="supervised",
                    orientation=1,
                    cost="fit on the bench",
                    rows=rows,
                    scores=pred,
                    seconds=(time.perf_counter() - t0) / len(rows),
                )
            )
        eligible = {p.name for p in instances if p.faithful and p.statistics_only}
        handmade = [
            p
            for p in results
            if p.kind == "separable" and p.name in eligible and p.correlations["spearman_search_fit"] is not None
        ]
        best = max(handmade, key=lambda p: p.correlations["spearman_search_fit"], default=None)
        if best is not None:
            for p in results:
                if p is not best:
                    p.paired = cells.paired(p, best)
        rel = b.reliability.get(metric) if b.pools is not None else None
        return ScoreReport(
            bench=str(b.path),
            model=target.name,
            metric=metric,
            ceiling=b.ceiling.get(metric),
            reliability=rel,
            pools=b.pools.summary() if b.pools is not None else None,
            best_handmade=best.name if best else None,
            resamples=resamples,
            stats_seconds=stats_seconds,
            proxies=results,
            skipped=skipped,
        )


def _statistics_cost(results: list[ProxyScore], instances: list[Proxy], stats: Any) -> None:
    """The statistics' compute seconds (when they were computed, shared by every statistics proxy)
    as the one-off cost of the separable proxies that read them; in PTQ-equivalent evaluations
    when a measured proxy of the report timed one PTQ evaluation."""
    ref = next((r.setup.get("ptq_evaluation_seconds") for r in results if r.setup), None)
    if stats is None:
        return
    seconds = float(sum(stats.meta.get("seconds", {}).values()))
    shared = {"seconds": seconds, "shared": "statistics", "ptq_equivalents": seconds / ref if ref else None}
    for r, proxy in zip(results, instances, strict=False):
        if r.setup is None and proxy.separable and proxy.cost != "free":
            r.setup = dict(shared)
        elif r.setup is not None and getattr(proxy, "reads_statistics", False):  # an evolved tree over both
            own = r.setup
            r.setup = own | {
                "seconds": (own.get("seconds") or 0.0) + seconds,
                "statistics_seconds": seconds,
                "ptq_equivalents": None
                if own.get("ptq_equivalents") is None or shared["ptq_equivalents"] is None
                else own["ptq_equivalents"] + shared["ptq_equivalents"],
            }


def paired_difference(report: ScoreReport, a: ProxyScore, b: ProxyScore) -> dict[str, Any] | None:
    """rho(a) - rho(b) on held-out x report with the report's paired bootstrap (same replicates
    as its intervals): how two proxies of one report are compared when neither is the best
    hand-made one, e.g. two evolved proxies."""
    from .bench import Bench

    return ReportCells(Bench.open(report.bench), report.metric, report.resamples).paired(a, b)


# ------------------------------------------------------------------------------ output

TABLE_COLUMNS = [
    ("proxy", "name"),
    ("kind", "kind"),
    ("ρ search×fit", "spearman_search_fit"),
    ("ρ held-out×fit", "spearman_heldout_fit"),
    ("ρ search×report", "spearman_search_report"),
    ("ρ held-out×report [95 % CI]", "interval"),
    ("Δρ vs best hand-made [95 % CI]", "paired"),
    ("τ held-out×report", "kendall_heldout_report"),
    ("s / config", "seconds_per_config"),
    ("one-off cost", "setup"),
]


def _with_interval(v: float | None, low: float | None, high: float | None, signed: bool = False) -> str:
    if v is None:
        return "n/a"
    text = f"{v:+.3f}" if signed else f"{v:.3f}"
    return (
        text
        if low is None or high is None
        else f"{text} [{low:+.3f}, {high:+.3f}]"
        if signed
        else f"{text} [{low:.3f}, {high:.3f}]"
    )


def _cost_text(setup: dict[str, Any] | None) -> str:
    """'312 s = 24.1 PTQ evals' (PTQ-equivalent evaluations: seconds / one PTQ evaluation's)."""
    if not setup or setup.get("seconds") is None:
        return "-"
    eq = setup.get("ptq_equivalents")
    shared = " (shared statistics)" if setup.get("shared") else ""
    return f"{setup['seconds']:.0f} s" + (f" = {eq:.1f} PTQ evals" if eq is not None else "") + shared


def table_rows(report: ScoreReport) -> tuple[list[str], list[list[Any]]]:
    """Headers and rows of the terminal / README table (None shown as 'n/a')."""
    rows = []
    for p in report.proxies:
        row: list[Any] = []
        for _, key in TABLE_COLUMNS:
            if key == "interval":
                iv = p.interval or {}
                row.append(_with_interval(p.correlations.get("spearman_heldout_report"), iv.get("low"), iv.get("high")))
            elif key == "paired":
                row.append(
                    "(best hand-made)"
                    if p.name == report.best_handmade and p.paired is None
                    else _with_interval(p.paired["estimate"], p.paired["low"], p.paired["high"], signed=True)
                    if p.paired
                    else "n/a"
                )
            elif key == "seconds_per_config":
                row.append(f"{p.seconds_per_config:.2g}")
            elif key == "setup":
                row.append(_cost_text(p.setup))
            else:
                v = getattr(p, key) if hasattr(p, key) else p.correlations.get(key)
                row.append("n/a" if v is None else (f"{v:.3f}" if isinstance(v, float) else v))
        rows.append(row)
    return [h for h, _ in TABLE_COLUMNS], rows


def _csv_text(report: ScoreReport) -> str:
    buf = io.StringIO()
    cells = [f"{s}_{p}" for s, p in CELLS]
    keys = [
        "name",
        "kind",
        "orientation",
        *[f"n_{c}" for c in cells],
        *[f"spearman_{c}" for c in cells],
        "ci_low",
        "ci_high",
        *[f"{m}_{REPORT_CELL}" for m in MEASURES],
        "paired_baseline",
        "paired_estimate",
        "paired_low",
        "paired_high",
        "seconds_per_config",
        "setup_seconds",
        "setup_ptq_equivalents",
        "description",
    ]
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([k.replace("@", "_top") for k in keys])
    for p in report.proxies:
        flat: dict[str, Any] = {
            "name": p.name,
            "kind": p.kind,
            "orientation": p.orientation,
            "seconds_per_config": p.seconds_per_config,
            "setup_seconds": (p.setup or {}).get("seconds"),
            "setup_ptq_equivalents": (p.setup or {}).get("ptq_equivalents"),
            "description": p.description,
        }
        flat.update({f"n_{c}": v for c, v in p.n.items()})
        flat.update(p.correlations)
        flat.update({"ci_low": (p.interval or {}).get("low"), "ci_high": (p.interval or {}).get("high")})
        if p.paired:
            flat.update(
                {
                    "paired_baseline": p.paired["baseline"],
                    "paired_estimate": p.paired["estimate"],
                    "paired_low": p.paired["low"],
                    "paired_high": p.paired["high"],
                }
            )
        w.writerow(["" if flat.get(k) is None else flat[k] for k in keys])
    return buf.getvalue()


def _scatter(p: ProxyScore, metric: str, path: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5, 3.6), dpi=110)
    ax = fig.add_subplot()
    rho = p.correlations.get(f"spearman_{REPORT_CELL}")
    ax.scatter(p.orientation * p.scores, oriented(metric, p.metric_values), s=6, alpha=0.6)
    ax.set_xlabel(f"{p.name} score" + (" (lower predicts better)" if p.orientation < 0 else ""))
    ax.set_ylabel(f"{metric} on the report pool")
    ax.set_title(
        f"{p.name}: held-out×report ρ = {'n/a' if rho is None else f'{rho:.3f}'} (all {len(p.scores)} scored "
        "configurations shown)"
    )
    fig.tight_layout()
    fig.savefig(path, format="png")


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def write_report(report: ScoreReport, out: str | Path) -> list[Path]:
    """score.csv, score.json and one scatter PNG per proxy into `out`; returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    csv_path, json_path = out / "score.csv", out / "score.json"

    def text(s: str):
        return lambda tmp: Path(tmp).write_text(s, encoding="utf-8")

    atomic_write(csv_path, text(_csv_text(report)))
    atomic_write(json_path, text(json.dumps(report.to_json(), indent=2) + "\n"))
    written += [csv_path, json_path]
    for p in report.proxies:
        png = out / f"scatter_{_safe_name(p.name)}.png"
        atomic_write(png, lambda tmp, p=p: _scatter(p, report.metric, tmp))
        written.append(png)
    return written
