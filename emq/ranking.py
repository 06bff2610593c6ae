"""The proxy ranking report (`emq score`): every proxy's correlation with one bench.

Users trust an evolved proxy only when it beats every known proxy on the same bench, so
this scores hand-made and evolved proxies alike through the one proxy interface and puts
them next to the bench's noise ceiling (the best correlation the bench's own repeat
reaches). Separable proxies score every configuration (one gather-sum); whole-configuration
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
from tqdm import tqdm

from .baselines import get_proxy, parse_proxy_names
from .bench_setup import BenchSetup
from .errors import EmqError
from .executors import Executor, executor_for, make_executor
from .fileio import atomic_write
from .fitness import correlations
from .proxy import Proxy, ProxyContext
from .specs import check_metric, oriented

log = logging.getLogger(__name__)

SPLITS = ("search", "heldout", "all")
MEASURES = ("spearman", "kendall", "pearson", "spearman@20", "spearman@50")
DEFAULT_LIMIT = 200
SAMPLE_SEED = 0


@dataclass
class ProxyScore:
    """One proxy's row of the report; correlations are keyed '<measure>_<split>'."""

    name: str
    description: str
    kind: str  # "separable" | "whole-config" | "evolved"
    orientation: int
    cost: str
    n: dict[str, int]
    correlations: dict[str, float | None]
    seconds_per_config: float
    scores: np.ndarray = field(repr=False)
    metric_values: np.ndarray = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("scores", "metric_values", "correlations")}
        out.update({k.replace("@", "_top"): v for k, v in self.correlations.items()})
        return out


@dataclass
class ScoreReport:
    bench: str
    model: str
    metric: str
    noise_ceiling: float | None
    noise_ceilings: dict[str, float | None] | None
    stats_seconds: float
    proxies: list[ProxyScore]

    def to_json(self) -> dict[str, Any]:
        return {
            "bench": self.bench,
            "model": self.model,
            "metric": self.metric,
            "noise_ceiling": self.noise_ceiling,
            "noise_ceilings": self.noise_ceilings,
            "stats_seconds": self.stats_seconds,
            "proxies": [p.to_json() for p in self.proxies],
        }

    def to_markdown(self) -> str:
        """The proxy table, the bench's noise ceiling and the one-off statistics time."""
        from .tables import markdown_table

        headers, rows = table_rows(self)
        ceiling = "n/a" if self.noise_ceiling is None else f"{self.noise_ceiling:.3f}"
        lines = [markdown_table(headers, rows), "", f"bench {self.bench} ({self.model}), metric {self.metric}; noise ceiling (Spearman of the bench with its own repeat): {ceiling}"]
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


def _score_one(ctx: ProxyContext, task: tuple[Proxy, np.ndarray]) -> float:
    """An executor task: one whole-configuration score. The context (target, settings and the
    proxies' shared cache: PTQ engine, FP references) is shipped once and kept by each worker."""
    proxy, config = task
    return float(proxy.oriented_scores(ctx, config[None])[0])


def score_proxy(
    proxy: Proxy, ctx: ProxyContext, configs: np.ndarray, values: np.ndarray, splits: dict[str, np.ndarray], kind: str, progress: bool = False,
    executor: Executor | None = None,
) -> ProxyScore:
    """Correlations of one proxy on each split; `splits` holds row indices into `configs`.

    `values` is the oriented bench metric (higher = better), `configs` the rows to score.
    Whole-configuration proxies quantize per configuration, so they go through `executor`
    with `ctx` as the shared context (give one without statistics: it is shipped to workers).
    """
    t0 = time.perf_counter()
    if proxy.separable:
        scores = proxy.oriented_scores(ctx, configs)
    else:
        jobs = (executor or make_executor("serial")).map(_score_one, [(proxy, c) for c in configs], context=ctx)
        scores = np.array(list(tqdm(jobs, total=len(configs), desc=proxy.name, unit="cfg", disable=not progress)), dtype=np.float64)
    seconds = (time.perf_counter() - t0) / max(len(configs), 1)
    if not np.isfinite(scores).all():
        raise EmqError(f"proxy {proxy.name}: produced NaN or infinite scores")
    corr: dict[str, float | None] = {}
    n = {}
    for split, rows in splits.items():
        n[split] = int(len(rows))
        res = correlations(scores[rows], values[rows]) if len(rows) >= 3 else {}
        for m in MEASURES:
            corr[f"{m}_{split}"] = _finite(res.get(m, float("nan")))
    return ProxyScore(proxy.name, proxy.description, kind, proxy.orientation, proxy.cost, n, corr, seconds, scores, values)


def score(
    bench: str | Path = "default",
    proxies: str | Sequence[str] = "all",
    proxy_files: Sequence[str | Path] = (),
    metric: str | None = None,
    limit: int | None = DEFAULT_LIMIT,
    ompq_beta: float | None = None,
    model: str | None = None,
    data: str | None = None,
    weights: Path | None = None,
    stats: Any = None,
    progress: bool = False,
    executor: Executor | str | None = None,
    workers: int = 1,
) -> ScoreReport:
    """Score hand-made (`proxies`: 'all' or names) and evolved (`proxy_files`) proxies on a bench.

    `limit` caps the configurations per split that whole-configuration proxies quantize
    (seeded sample; None or 0 = all), through `executor` (a name or an Executor; default
    serial, or a process pool for `workers` > 1). `stats` reuses precomputed NetworkStats.
    """
    from .bench import Bench

    b = Bench.open(bench)
    metric = check_metric(metric or b.default_metric)
    names = parse_proxy_names(proxies if isinstance(proxies, str) else ",".join(proxies)) if proxies else []
    instances = [get_proxy(n, **({"beta": ompq_beta} if n == "ompq" and ompq_beta is not None else {})) for n in names]
    kinds = ["separable" if p.separable else "whole-config" for p in instances]
    evolved = _load_evolved([Path(p) for p in proxy_files])
    instances += evolved
    kinds += ["evolved"] * len(evolved)
    if not instances:
        raise EmqError("no proxy to score: give --proxies and/or --proxy FILE")
    setup = BenchSetup.of(b, model, data, weights)
    target, settings = setup.target, setup.ptq
    values_all = oriented(metric, b.metrics[metric])
    ok = np.isfinite(values_all)
    if ok.sum() < 3:
        raise EmqError(f"bench {b.path}: fewer than 3 configurations have a {metric!r} value")
    stats_seconds = 0.0
    if stats is None and any(p.separable for p in instances):
        t0 = time.perf_counter()
        from .search_space.stats import compute_stats

        stats = compute_stats(target, bits=setup.bits, settings=setup.stats)
        stats_seconds = time.perf_counter() - t0
    ctx = ProxyContext(target, tuple(b.bits), settings, stats)
    whole_ctx = ProxyContext(target, tuple(b.bits), settings)  # without statistics: what executors ship to workers
    search, heldout = ok & ~b.heldout, ok & b.heldout
    results = []
    with executor_for(executor, workers) as pool:
        for proxy, kind in zip(instances, kinds, strict=True):
            if proxy.separable:
                rows = np.flatnonzero(ok)
            else:
                rows = np.union1d(_sample(search, limit, SAMPLE_SEED), _sample(heldout, limit, SAMPLE_SEED + 1))
            is_heldout = b.heldout[rows]
            splits = {"search": np.flatnonzero(~is_heldout), "heldout": np.flatnonzero(is_heldout), "all": np.arange(len(rows))}
            log.info("scoring %s on %d configurations", proxy.name, len(rows))
            results.append(score_proxy(proxy, ctx if proxy.separable else whole_ctx, b.configs[rows], values_all[rows], splits, kind, progress, pool))
    ceilings = b.noise_ceiling
    return ScoreReport(str(b.path), target.name, metric, (ceilings or {}).get(metric), ceilings, stats_seconds, results)


# ------------------------------------------------------------------------------ output

TABLE_COLUMNS = [
    ("proxy", "name"),
    ("kind", "kind"),
    ("ρ search", "spearman_search"),
    ("ρ held-out", "spearman_heldout"),
    ("ρ all", "spearman_all"),
    ("τ held-out", "kendall_heldout"),
    ("r held-out", "pearson_heldout"),
    ("ρ@20% held-out", "spearman@20_heldout"),
    ("ρ@50% held-out", "spearman@50_heldout"),
    ("s / config", "seconds_per_config"),
]


def table_rows(report: ScoreReport) -> tuple[list[str], list[list[Any]]]:
    """Headers and rows of the terminal / README table (None shown as 'n/a')."""
    rows = []
    for p in report.proxies:
        row = []
        for _, key in TABLE_COLUMNS:
            v = getattr(p, key) if hasattr(p, key) else p.correlations.get(key)
            row.append("n/a" if v is None else (round(v, 3) if isinstance(v, float) and key != "seconds_per_config" else v))
        rows.append(row)
    return [h for h, _ in TABLE_COLUMNS], rows


def _csv_text(report: ScoreReport) -> str:
    buf = io.StringIO()
    keys = ["name", "kind", "orientation", "n_search", "n_heldout", "n_all", *[f"{m}_{s}" for s in SPLITS for m in MEASURES], "seconds_per_config", "description"]
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([k.replace("@", "_top") for k in keys])
    for p in report.proxies:
        flat = {"name": p.name, "kind": p.kind, "orientation": p.orientation, "seconds_per_config": p.seconds_per_config, "description": p.description}
        flat.update({f"n_{s}": c for s, c in p.n.items()})
        flat.update(p.correlations)
        w.writerow(["" if flat.get(k) is None else flat[k] for k in keys])
    return buf.getvalue()


def _scatter(p: ProxyScore, metric: str, path: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5, 3.6), dpi=110)
    ax = fig.add_subplot()
    rho = p.correlations.get("spearman_all")
    ax.scatter(p.orientation * p.scores, oriented(metric, p.metric_values), s=6, alpha=0.6)
    ax.set_xlabel(f"{p.name} score" + (" (lower predicts better)" if p.orientation < 0 else ""))
    ax.set_ylabel(metric)
    ax.set_title(f"{p.name}: ρ = {'n/a' if rho is None else f'{rho:.3f}'} (n = {p.n['all']})")
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
