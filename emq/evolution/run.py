"""`search()`: a whole campaign from a bench and a model to a run directory of results."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emq.fileio import atomic_write_text
from emq.search_space.netstats import NetworkStats
from emq.search_space.proxyfile import EvolvedProxy, save_proxy
from emq.search_space.pset import SearchSpace, make_space

from ..errors import EmqError
from ..fitness import FitnessData
from .dps import DPSConfig
from .engine import Campaign, SearchConfig

log = logging.getLogger(__name__)


@dataclass
class SearchResult:
    best: EvolvedProxy
    hall_of_fame: list[dict[str, Any]]  # rank, expression, size, correlations, proxy
    baselines: list[dict[str, Any]]  # the hand-made proxies of the space, same columns
    summary: dict[str, Any]
    log: list[dict[str, Any]]
    out_dir: Path | None


def _clean(x: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def _row(rank: int | str, proxy: EvolvedProxy, table: torch.Tensor, data: FitnessData) -> dict[str, Any]:
    rep = data.report(table, proxy.orientation)
    return {
        "rank": rank,
        "name": proxy.name,
        "expression": proxy.expression,
        "size": len(proxy.tokens),
        "orientation": proxy.orientation,
        "canonical": proxy.key,
        "search_spearman": rep["search"]["spearman"],
        "heldout_spearman": rep["heldout"]["spearman"],
        "search_kendall": rep["search"]["kendall"],
        "heldout_kendall": rep["heldout"]["kendall"],
        "correlations": rep,
        "proxy": proxy,
    }


def _table_row(rank: int | str, name: str, tokens: list, stats: NetworkStats, data: FitnessData, act_samples: int, orientation: int | None = None, meta: dict | None = None) -> dict[str, Any]:
    proxy = EvolvedProxy(tokens, 1, name, act_samples, meta)
    table = proxy.stats_table(stats)
    if orientation is None:  # hand-made proxies: orient them the way that helps them most
        rho = data.search.spearman(data.search.scores(table))
        orientation = -1 if rho < 0 else 1
    proxy.orientation = orientation
    return _row(rank, proxy, table, data)


def load_fitness_data(bench: Any, metric: str | None, bits: tuple[int, ...] | None = None) -> tuple[FitnessData, Any]:
    if isinstance(bench, FitnessData):
        return bench, None
    if isinstance(bench, (str, Path)):
        from emq.bench import Bench

        bench = Bench.open(bench)
    return FitnessData.from_bench(bench, metric, bits), bench


def search(
    bench: Any = "default",
    model: Any = "default",
    stats: NetworkStats | None = None,
    generations: int = 30,
    population: int = 64,
    seed: int = 0,
    workers: int = 1,
    out: str | Path | None = None,
    resume: bool = False,
    metric: str | None = None,
    space: SearchSpace | None = None,
    max_evaluations: int | None = None,
    dps: bool | DPSConfig = True,
    config: SearchConfig | None = None,
    progress: bool = False,
) -> SearchResult:
    """Evolve proxies on a bench; `emq search`.

    `bench` is a path, 'default', an opened Bench or a FitnessData; `stats` defaults to
    the statistics of `model` (a name, nn.Module or emq.target.Target) on its calibration
    data (cached on disk by emq.search_space.stats).
    `config` overrides the individual settings when given.
    """
    data, bench_obj = load_fitness_data(bench, metric)
    if stats is None:
        from emq.search_space.stats import compute_stats
        from emq.target import Target, resolve_target

        stats = compute_stats(model if isinstance(model, Target) else resolve_target(model), bits=data.bits)
    space = space or make_space()
    dps_cfg = dps if isinstance(dps, DPSConfig) else DPSConfig(enabled=bool(dps))
    cfg = config or SearchConfig(generations=generations, population=population, seed=seed, workers=workers, max_evaluations=max_evaluations, dps=dps_cfg)
    out_dir = Path(out) if out is not None else None
    if out_dir is not None and not resume and (out_dir / "checkpoint.npz").exists():
        raise EmqError(f"--out {out_dir} already holds a campaign: pass --resume to continue it or choose another directory")
    camp = Campaign(stats, data, space, cfg, out_dir, progress)
    camp.run(resume=resume)
    if not camp.hof:
        raise EmqError("no valid proxy was found (every candidate was screened out): enlarge the search space or the budget")
    provenance = {"bench": data.source, "metric": data.metric, "seed": cfg.seed, "stats": {k: v for k, v in stats.meta.items() if k in ("cache",)}, "bits": list(data.bits)}
    hof = []
    for rank, key in enumerate(camp.hof, 1):
        o = camp.cache[key]
        meta = {"fitness": {"search_spearman": o.rho_search, "heldout_spearman": o.rho_heldout}, "provenance": provenance}
        hof.append(_table_row(rank, f"evolved_{rank}", camp.tokens[key], stats, data, cfg.act_samples, o.orientation, meta))
    baselines = [_table_row("-", name, toks, stats, data, cfg.act_samples) for name, (_, toks) in space.handmade().items()]
    best = hof[0]
    best_base = max((b for b in baselines if not math.isnan(b["heldout_spearman"])), key=lambda b: b["heldout_spearman"], default=None)
    summary = _clean({
        "best_expression": best["expression"],
        "best_orientation": best["orientation"],
        "best_search_spearman": best["search_spearman"],
        "best_heldout_spearman": best["heldout_spearman"],
        "best_correlations": best["correlations"],
        "best_handmade": best_base["name"] if best_base else None,
        "best_handmade_heldout_spearman": best_base["heldout_spearman"] if best_base else None,
        "handmade": {b["name"]: {"expression": b["expression"], "heldout_spearman": b["heldout_spearman"], "search_spearman": b["search_spearman"]} for b in baselines},
        "noise_ceiling": data.noise_ceiling,
        "metric": data.metric,
        "search_configs": len(data.search),
        "heldout_configs": len(data.heldout),
        "generations": camp.generation,
        "evaluations": camp.evaluations,
        "candidates": camp.counts["seen"],
        "seconds": camp.seconds,
        "candidates_per_s": camp.counts["seen"] / camp.seconds if camp.seconds > 0 else None,
        "screening": camp.counts.summary(),
        "final_diversity": {k: camp.log[-1][k] for k in ("unique_forms", "mean_abs_corr")},
        "seed": cfg.seed,
        "dps": cfg.dps.enabled,
        "out_dir": str(out_dir) if out_dir else None,
    })
    if out_dir is not None:
        _write_run_files(out_dir, best["proxy"], hof, baselines, summary, camp, cfg, space)
    return SearchResult(best["proxy"], hof, baselines, summary, camp.log, out_dir)


def _write_run_files(out_dir: Path, best: EvolvedProxy, hof: list[dict], baselines: list[dict], summary: dict, camp: Campaign, cfg: SearchConfig, space: SearchSpace) -> None:
    from ..export import hall_of_fame_csv

    best_file = EvolvedProxy(best.tokens, best.orientation, "best_proxy", best.act_samples, best.meta)
    save_proxy(best_file, out_dir / "best_proxy.json")
    hall_of_fame_csv([_clean({k: v for k, v in r.items() if k != "proxy"}) for r in hof + baselines], out_dir / "hall_of_fame.csv")
    atomic_write_text(out_dir / "config.json", json.dumps(_clean({"search": cfg.to_json(), "space": space.to_json()}), indent=2) + "\n")
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    plot_log(camp.log, out_dir)


def plot_log(records: list[dict[str, Any]], out_dir: Path) -> None:
    """fitness.png (best/median, search and held-out) and diversity.png per generation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..export import _save_fig

    gen = [r["generation"] for r in records]
    val = lambda k: [np.nan if r.get(k) is None else r[k] for r in records]  # noqa: E731
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for k, style in (("hof_best_search", "-"), ("hof_best_heldout", "--"), ("median_search", ":")):
        ax.plot(gen, val(k), style, label=k.replace("_", " "))
    ax.set_xlabel("generation")
    ax.set_ylabel("Spearman")
    ax.legend(fontsize=8)
    _save_fig(fig, out_dir / "fitness.png")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(gen, val("unique_share"), label="unique canonical forms (share)")
    ax.plot(gen, val("mean_abs_corr"), label="mean pairwise |corr| of scores")
    ax.set_xlabel("generation")
    ax.legend(fontsize=8)
    _save_fig(fig, out_dir / "diversity.png")
