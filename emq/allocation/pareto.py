"""Pareto sweeps: allocate over a range of budgets and chart score and accuracy against size.

One sweep allocates with the main proxy at every budget value and, for comparison, with
any baseline proxies at the same budgets and with the uniform configurations. With
evaluate=True every point is PTQ-quantized, so the chart shows what the bits really buy.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..data import DataSplits
from ..fileio import atomic_write, atomic_write_text
from ..proxy import Proxy
from ..quant import PTQSettings
from ..specs import DEFAULT_BITS, ParameterError
from ..tables import markdown_table
from ..target import ModelSpec, as_model_spec
from .allocator import Allocation, Allocator, allocator_for, as_budgets, resolve_proxy
from .budgets import Budget, InfeasibleBudget

log = logging.getLogger(__name__)

CSV_FIELDS = [
    "series",
    "method",
    "budget_kind",
    "budget",
    "size_bytes",
    "bitops",
    "avg_bits",
    "predicted",
    "solve_seconds",
    "top1",
    "loss",
    "kl",
    "bits",
]


def parse_sweep(text: str, kind: str) -> np.ndarray:
    """'A:B:N' -> N budget values from A to B (ends in the kind's unit, e.g. '1MiB:2MiB:10')."""
    parts = str(text).split(":")
    if len(parts) != 3:
        raise ParameterError("sweep", text, "give START:STOP:COUNT, e.g. 2.5:4:8")
    try:
        n = int(parts[2])
    except ValueError as e:
        raise ParameterError("sweep", text, "COUNT must be an integer") from e
    if not 1 <= n <= 10000:
        raise ParameterError("sweep", text, "COUNT must be in 1..10000")
    try:
        a, b = (Budget.parse(kind, p).value for p in parts[:2])
    except ParameterError as e:
        raise ParameterError("sweep", text, f"{e.value!r}: {e.problem}") from e
    return np.linspace(a, b, n)


@dataclass
class SweepResult:
    kind: str
    values: list[float]
    points: list[Allocation] = field(default_factory=list)
    skipped: list[tuple[str, float, str]] = field(default_factory=list)  # (series, budget, why)
    model: str = ""

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for a in self.points:
            budget = next((b["value"] for b in a.budgets if b["kind"] == self.kind), "")
            out.append(
                {
                    "series": a.proxy,
                    "method": a.method,
                    "budget_kind": self.kind,
                    "budget": budget,
                    "size_bytes": a.size_bytes,
                    "bitops": a.bitops,
                    "avg_bits": a.avg_bits,
                    "predicted": a.predicted,
                    "solve_seconds": a.solve_seconds,
                    "top1": a.top1,
                    "loss": a.loss,
                    "kl": a.kl,
                    "bits": " ".join(map(str, a.bits)),
                }
            )
        return out

    @property
    def allocated(self) -> bool:
        """Whether any budget value was feasible for any proxy (uniform points aside)."""
        return any(a.method != "uniform" for a in self.points)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "points": [a.to_json() for a in self.points],
            "skipped": [{"series": s, "budget": v, "reason": r} for s, v, r in self.skipped],
        }

    def to_markdown(self) -> str:
        """One row per point, and a note on the skipped (infeasible) budget values."""
        rows = [
            [
                r["series"],
                r["budget"],
                r["size_bytes"],
                r["avg_bits"],
                r["predicted"],
                "" if r["top1"] is None else r["top1"],
            ]
            for r in self.rows()
        ]
        text = markdown_table(
            ["series", f"budget ({self.kind})", "size (bytes)", "avg bits", "predicted", "top-1 %"], rows
        )
        if self.skipped:
            text += f"\n\n{len(self.skipped)} infeasible budget value(s) skipped, e.g. {self.skipped[0][2]}"
        return text

    def title(self) -> str:
        return f"{self.model}: {self.points[0].proxy if self.points else ''} over {self.kind}"

    def save(self, out_dir: str | Path) -> list[Path]:
        """Write sweep.csv and sweep.png into `out_dir`; returns their paths, in that order."""
        out = Path(out_dir)
        paths = [out / "sweep.csv", out / "sweep.png"]
        write_csv(paths[0], self)
        plot_png(paths[1], self, self.title())
        return paths


def sweep(
    model: Allocator | ModelSpec | str | nn.Module | None,
    proxy: Proxy | str | Path,
    kind: str,
    values: Sequence[float],
    *,
    fixed: Sequence[Budget] | Mapping[str, Any] | None = None,
    baselines: Sequence[Proxy | str | Path] = (),
    uniform: bool = True,
    evaluate: bool = False,
    bits_allowed: Sequence[int] = DEFAULT_BITS,
    pins: Mapping[str | int, int] | None = None,
    search_evaluations: int = 200,
    seed: int = 0,
    settings: PTQSettings | Mapping[str, Any] | None = None,
    data: str | DataSplits | None = None,
    weights: Path | None = None,
    input_size: int | None = None,
    num_classes: int | None = None,
    bench: Any = None,
    device: str | torch.device = "cpu",
) -> SweepResult:
    """Allocate with `proxy` (and each baseline) at every budget value of `kind`, plus the
    uniform configurations. `model` is a model name / nn.Module / ModelSpec (resolved with the data and
    settings given; with `bench`, the bench's model and settings as in `allocate`) or an
    Allocator to reuse its tables and PTQ engine (and its device; `device` is for a new one).
    Budget values below the smallest feasible one are skipped and recorded, not fatal; any
    other error propagates."""
    allocator = (
        model
        if isinstance(model, Allocator)
        else allocator_for(
            as_model_spec(model, data=data, weights=weights, num_classes=num_classes, input_size=input_size),
            settings=settings,
            evaluate=evaluate,
            bench=bench,
            device=device,
        )
    )
    proxies = [resolve_proxy(p) for p in [proxy, *baselines]]
    fixed = as_budgets(fixed)
    result = SweepResult(kind, [float(v) for v in values], model=allocator.layer_map.model)
    jobs = [(p, float(v)) for p in proxies for v in values]
    for p, v in tqdm(jobs, desc="sweep", disable=not log.isEnabledFor(logging.INFO)):
        problem = allocator.problem([*fixed, Budget(kind, v)], bits_allowed, pins=pins)
        try:
            result.points.append(
                allocator.allocate(p, problem, evaluate=evaluate, search_evaluations=search_evaluations, seed=seed)
            )
        except InfeasibleBudget as e:
            result.skipped.append((p.name, v, str(e)))
    if uniform:
        base = allocator.problem(fixed, bits_allowed, pins=pins)
        main = proxies[0]
        for b in sorted(set(bits_allowed)):
            bits = tuple(base.pins.get(s, b) for s in range(base.num_slots))
            idx = base.to_index(bits)
            if not base.feasible(idx)[0]:
                continue
            predicted = float(allocator.predict(main, base.bits, np.array([bits]))[0])
            result.points.append(
                allocator.finish(
                    f"uniform-{b}",
                    orientation=main.orientation,
                    method="uniform",
                    bits=bits,
                    predicted=predicted,
                    seconds=0.0,
                    problem=base,
                    evaluate=evaluate,
                )
            )
    return result


def write_csv(path: str | Path, result: SweepResult) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
    w.writeheader()
    for r in result.rows():
        w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    atomic_write_text(path, buf.getvalue())


def plot_png(path: str | Path, result: SweepResult, title: str = "") -> None:
    """Predicted score (and measured top-1 when present) against model size, one line per proxy."""
    from matplotlib.figure import Figure

    measured = any(a.top1 is not None for a in result.points)
    fig = Figure(figsize=(11 if measured else 6, 4.2))
    axes = fig.subplots(1, 2 if measured else 1, squeeze=False)
    series: dict[str, list[Allocation]] = {}
    for a in result.points:
        series.setdefault("uniform" if a.method == "uniform" else a.proxy, []).append(a)
    main = result.points[0].proxy if result.points else ""
    panels = [("predicted", "predicted score (main proxy's scale)")] + (
        [("top1", "measured PTQ top-1 (%)")] if measured else []
    )
    for ax, (attr, label) in zip(axes[0], panels):
        for name, pts in series.items():
            if attr == "predicted" and name not in (main, "uniform"):
                continue  # other proxies' scores are on other scales
            pts = sorted(pts, key=lambda a: a.size_bytes)
            x = [a.size_bytes / 1024 for a in pts]
            y = [getattr(a, attr) for a in pts]
            if name == "uniform":
                ax.scatter(x, y, marker="s", color="black", label="uniform bits", zorder=3)
                for a, xi, yi in zip(pts, x, y):
                    ax.annotate(a.proxy.split("-")[-1], (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
            else:
                ax.plot(x, y, marker="o", ms=3, label=name)
        ax.set_xlabel("model size (KiB)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title or f"allocation sweep over {result.kind}")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
