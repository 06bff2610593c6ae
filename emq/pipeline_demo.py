"""`emq demo`: the whole pipeline on the embedded default, end to end, in a few minutes.

Load the default model and bench, compute statistics, evolve a proxy for a short campaign,
export it, allocate bits at 2.5, 3.0 and 3.5 average weight bits with it, with `emq-zoo` (the
proxy evolved on the whole bench zoo), Fisher, HAWQ-V2 and `auto` (what the cost-quality frontier
recommends with 0 PTQ evaluations of the network, which is the measured sensitivity `layer-kl`,
and with `evaluations`), quantize and evaluate every allocation for real, and compare with the
best bench configuration in the same budget (the oracle). Everything lands in one run directory.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .allocation import Allocation, Allocator
from .allocation.auto import RULE, AutoProxy
from .baselines import get_proxy
from .bench import Bench
from .bench_setup import BenchSetup
from .device import resolve_device
from .evolution import search
from .evolution.engine import DEMO_CAMPAIGN
from .fileio import atomic_write, atomic_write_text
from .rendering import export
from .search_space.stats import compute_stats
from .target import resolve_target

REFERENCE_PROXIES = ("emq-zoo", "fisher", "hawq-v2")
DEMO_BUDGETS = (2.5, 3.0, 3.5)  # average weight bits: a tight, a mid and a loose budget between 2 and 4 bits
DEMO_EVALUATIONS = RULE[1][0]  # the smallest budget at which `auto` fits a model on measured configurations
RANDOM_BAND = 0.25  # "random within budget" = bench configurations with avg bits in (budget - band, budget]


@dataclass(kw_only=True)
class MethodResult:
    method: str
    bits: tuple[int, ...]
    avg_bits: float
    size_bytes: float
    top1: float
    loss: float
    kl: float

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "bits": list(self.bits)}


def _from_allocation(name: str, a: Allocation) -> MethodResult:
    return MethodResult(
        method=name,
        bits=a.bits,
        avg_bits=a.avg_bits,
        size_bytes=a.size_bytes,
        top1=float(a.top1),
        loss=float(a.loss),
        kl=float(a.kl),
    )


def compare_allocations(
    allocator: Allocator, bench: Bench, proxies: dict[str, Any], budget_avg_bits: float
) -> tuple[list[MethodResult], dict[str, Any]]:
    """Allocate with each proxy at one average-bit budget and PTQ-evaluate; add uniform bits,
    the bench oracle and the median random bench configuration in the same budget."""
    problem = allocator.problem({"avg-bits": budget_avg_bits}, bits_allowed=bench.bits)
    rows = [_from_allocation(name, allocator.allocate(p, problem, evaluate=True)) for name, p in proxies.items()]
    lm = allocator.layer_map
    uniform = max((b for b in bench.bits if b <= budget_avg_bits), default=None)
    if uniform is not None:
        u = allocator.finish(
            "uniform",
            orientation=1,
            method="uniform",
            bits=(uniform,) * lm.num_slots,
            predicted=float("nan"),
            seconds=0.0,
            problem=problem,
            evaluate=True,
        )
        rows.append(_from_allocation(f"uniform {uniform}-bit", u))
    configs, metrics = bench.arrays("all")
    avg = configs @ lm.params / lm.params.sum()
    inside = avg <= budget_avg_bits + 1e-9
    extra: dict[str, Any] = {"bench_configs_in_budget": int(inside.sum())}
    if inside.any():
        best = int(np.flatnonzero(inside)[np.argmax(metrics["top1"][inside])])
        o = allocator.finish(
            "oracle",
            orientation=1,
            method="bench",
            bits=tuple(int(b) for b in configs[best]),
            predicted=float("nan"),
            seconds=0.0,
            problem=problem,
            evaluate=True,
        )
        rows.append(_from_allocation("best bench config (oracle)", o))
    band = inside & (avg > budget_avg_bits - RANDOM_BAND)
    if band.any():
        extra["median_random_top1"] = float(np.median(metrics["top1"][band]))
        extra["random_configs"] = int(band.sum())
        extra["random_band_avg_bits"] = [
            budget_avg_bits - RANDOM_BAND,
            budget_avg_bits,
        ]  # (low, high]: near the budget, as an allocation uses it
    return rows, extra


def demo(
    out: str | Path | None = None,
    bench: str | Path = "default",
    *,
    generations: int = DEMO_CAMPAIGN.generations,
    population: int = DEMO_CAMPAIGN.population,
    seed: int = DEMO_CAMPAIGN.seed,
    budgets: Sequence[float] = DEMO_BUDGETS,
    evaluations: int = DEMO_EVALUATIONS,
    progress: bool = False,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Run the end-to-end pipeline on the embedded default; returns the summary (`emq demo`).
    `progress` shows the steps (and the search's generations) on stderr: a first run
    computes the statistics for minutes, and silence would look like a hang. `device` is
    where statistics, fitness tables and PTQ run (cpu, cuda or cuda:N). `evaluations` (> 0) adds
    `auto` with that many PTQ evaluations, measured into the run directory (0: only auto's
    zero-evaluation choice)."""
    from tqdm import tqdm

    device = resolve_device(device)  # before the run directory is made
    t0 = time.perf_counter()
    out_dir = Path(out) if out is not None else Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = resolve_target("default")
    b = Bench.open(bench)
    seconds: dict[str, float] = {}
    steps = tqdm(
        total=3,
        desc="demo",
        unit="step",
        disable=not progress,
        bar_format="{desc}: step {n_fmt}/{total_fmt} [{elapsed}] {postfix}",
    )

    t = time.perf_counter()
    steps.set_postfix_str("network statistics (cached after the first run)")
    setup = BenchSetup.of(b, target)  # the bench's PTQ and statistics settings, so the oracle row is comparable
    stats = compute_stats(target, bits=setup.bits, settings=setup.stats, device=device)
    seconds["statistics"] = time.perf_counter() - t

    t = time.perf_counter()
    steps.update()
    steps.set_postfix_str(f"proxy search, {generations} generations")
    result = search(
        bench=b,
        model=target,
        stats=stats,
        generations=generations,
        population=population,
        seed=seed,
        out=out_dir / "search",
        progress=progress,
        device=str(device),
    )
    seconds["search"] = time.perf_counter() - t
    files = export(result.best, to="all", out=out_dir / "proxy")

    t = time.perf_counter()
    steps.update()
    proxies = {"evolved": result.best, **{name: get_proxy(name) for name in REFERENCE_PROXIES}}
    proxies["auto, 0 evaluations"] = AutoProxy(0)
    if evaluations > 0:
        proxies[f"auto, {evaluations} evaluations"] = AutoProxy(evaluations, out_dir / "auto_measurements.sqlite", seed)
    steps.set_postfix_str(
        f"allocation and PTQ of {len(budgets) * (len(proxies) + 2)} configurations (auto measures {evaluations})"
    )
    allocator = Allocator(target, setup.ptq, stats=stats, stats_settings=setup.stats, device=device)
    per_budget = []
    for budget in budgets:
        rows, extra = compare_allocations(allocator, b, proxies, budget)
        per_budget.append((budget, rows, extra))
    seconds["allocation+PTQ"] = time.perf_counter() - t
    steps.update()
    steps.close()
    seconds["total"] = time.perf_counter() - t0

    summary = {
        "run_dir": str(out_dir),
        "best_expression": result.summary["best_expression"],
        "best_search_spearman": result.summary["best_search_spearman"],
        "best_heldout_spearman": result.summary["best_heldout_spearman"],
        "best_handmade": result.summary["best_handmade"],
        "best_handmade_heldout_spearman": result.summary["best_handmade_heldout_spearman"],
        "ceiling": result.summary["ceiling"],
        "metric": result.summary["metric"],
        "fp_top1": allocator.engine().evaluate_fp().top1,
        "budgets": [
            {"budget_avg_bits": budget, "allocations": [r.to_json() for r in rows], **extra}
            for budget, rows, extra in per_budget
        ],
        "exported": {k: str(v) for k, v in files.items()},
        "seconds": seconds,
        "device": str(device),
    }
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write(out_dir / "allocations.png", lambda tmp: _plot(per_budget, tmp))
    return summary


def _plot(per_budget: list[tuple[float, list[MethodResult], dict[str, Any]]], path: str) -> None:
    """One panel per budget: every method's PTQ top-1, and the median bench configuration near the budget."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(per_budget), 3.4), dpi=110)
    axes = fig.subplots(1, len(per_budget), sharey=True, squeeze=False)[0]
    for ax, (budget, rows, extra) in zip(axes, per_budget, strict=True):
        bars = ax.barh([r.method for r in rows], [r.top1 for r in rows], color="tab:blue")
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
        if "median_random_top1" in extra:
            lo, hi = extra["random_band_avg_bits"]
            ax.axvline(
                extra["median_random_top1"],
                color="tab:red",
                ls="--",
                label=f"median bench config, avg bits in ({lo:g}, {hi:g}]",
            )
            ax.legend(loc="lower right", fontsize=6)
        ax.set_xlim(0, 1.1 * max(100.0, max(r.top1 for r in rows)))  # from 0: a cut axis exaggerates differences
        ax.set_xlabel("PTQ top-1 (%)")
        ax.set_title(f"{budget:g} average weight bits", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png")
