"""A campaign's run directory: best_proxy.json, hall_of_fame.csv, config.json, summary.json,
fitness.png and diversity.png (log.jsonl and checkpoint.npz are written while it runs).

Plots use `matplotlib.figure.Figure` directly, so the caller's matplotlib backend (a
notebook's, say) is never switched.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from emq.fileio import atomic_write, atomic_write_text
from emq.search_space.proxyfile import EvolvedProxy, save_proxy

from .halloffame import json_safe

if TYPE_CHECKING:
    from .engine import Campaign
    from .estimator import SearchResult


def write_result_files(out_dir: Path, result: SearchResult) -> list[Path]:
    """best_proxy.json, hall_of_fame.csv, summary.json, fitness.png and diversity.png: what the
    result alone holds (`SearchResult.save`); returns their paths."""
    best = result.best
    paths = [out_dir / n for n in ("best_proxy.json", "hall_of_fame.csv", "summary.json")]
    save_proxy(
        EvolvedProxy(best.tokens, best.orientation, name="best_proxy", act_samples=best.act_samples, meta=best.meta),
        paths[0],
    )
    (result.hall_of_fame + result.baselines).to_csv(paths[1])
    atomic_write_text(paths[2], json.dumps(result.summary, indent=2) + "\n")
    return paths + plot_log(result.log, out_dir)


def write_run_files(out_dir: Path, result: SearchResult, camp: Campaign) -> list[Path]:
    """The result's files and config.json (the campaign's search and space settings)."""
    config = out_dir / "config.json"
    atomic_write_text(
        config, json.dumps(json_safe({"search": camp.config.to_json(), "space": camp.space.to_json()}), indent=2) + "\n"
    )
    return [*write_result_files(out_dir, result), config]


def _figure(title: str, ylabel: str) -> tuple[Any, Any]:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(6, 3.5), dpi=110)
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xlabel("generation")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig, ax


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def plot_log(records: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """fitness.png (hall-of-fame best and population median) and diversity.png per generation; returns their paths."""
    gen = [r["generation"] for r in records]

    def series(key: str) -> list[float]:
        return [np.nan if r.get(key) is None else r[key] for r in records]

    fig, ax = _figure("Fitness per generation", "Spearman ρ")
    for key, style, label in (
        ("hof_best_search", "-", "best, search split"),
        ("median_search", ":", "population median, search split"),
    ):
        ax.plot(gen, series(key), style, label=label)
    ax.legend(fontsize=8)
    _save(fig, out_dir / "fitness.png")
    fig, ax = _figure("Population diversity per generation", "share")
    ax.plot(gen, series("unique_share"), label="distinct canonical forms (share of population)")
    ax.plot(gen, series("mean_abs_corr"), label="mean pairwise |corr| of scores")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    _save(fig, out_dir / "diversity.png")
    return [out_dir / "fitness.png", out_dir / "diversity.png"]


TIMING_KEYS = frozenset({"seconds", "evals_per_s"})  # log entries that differ between identical campaigns


def run_fingerprint(out_dir: str | Path) -> dict[str, str]:
    """What a finished run directory says, its timings left out: two runs of the same campaign
    (one of them killed and resumed, say) must give equal fingerprints."""
    out_dir = Path(out_dir)
    log = [
        {k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
        for line in (out_dir / "log.jsonl").read_text().splitlines()
    ]
    return {
        "best": (out_dir / "best_proxy.json").read_text(),
        "hof": (out_dir / "hall_of_fame.csv").read_text(),
        "log": json.dumps(log, sort_keys=True),
    }
