"""The hall of fame as a table: one row per proxy, with its correlations on both splits.

Rows are plain dicts (rank, name, expression, size, orientation, canonical form, fitness,
search / held-out Spearman and Kendall of every bench, all correlations, whether it is on
the size-fitness Pareto front, the proxy itself), so they print, serialise and index like a
small data frame without a pandas dependency. With one bench its numbers are top-level
columns; with several they are under `benches` (in the CSV, `column:bench`).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emq.fileio import atomic_write_text
from emq.search_space.netstats import NetworkStats
from emq.search_space.proxyfile import EvolvedProxy

from ..fitness import FitnessData
from .evaluator import as_tuple

CSV_FIELDS = (
    "rank",
    "expression",
    "size",
    "search_spearman",
    "heldout_spearman",
    "search_kendall",
    "heldout_kendall",
    "orientation",
    "canonical",
    "fitness",
    "pareto",
)
MARKDOWN_FIELDS = (
    ("rank", "rank"),
    ("proxy", "expression"),
    ("size", "size"),
    ("search rho", "search_spearman"),
    ("held-out rho", "heldout_spearman"),
    ("held-out tau", "heldout_kendall"),
    ("orient.", "orientation"),
)
BENCH_COLUMNS = (
    "search_spearman",
    "heldout_spearman",
    "search_kendall",
    "heldout_kendall",
)  # per bench, as `column:bench` with several benches


def json_safe(x: Any) -> Any:
    """NaN/inf -> None, numpy scalars -> Python, recursively."""
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def bench_labels(data: Sequence[FitnessData]) -> list[str]:
    """Short distinct names for the benches' columns: the file's stem ('default', 'vgg-digits'), else bench<i>."""
    names = [Path(d.source).stem if d.source else f"bench{i + 1}" for i, d in enumerate(data)]
    return [n if names.count(n) == 1 else f"{n}#{i + 1}" for i, n in enumerate(names)]


def _cells(rep: dict[str, dict[str, float]]) -> dict[str, Any]:
    held = rep.get("heldout", {})
    return {
        "search_spearman": rep["search"]["spearman"],
        "heldout_spearman": held.get("spearman", float("nan")),
        "search_kendall": rep["search"]["kendall"],
        "heldout_kendall": held.get("kendall", float("nan")),
        "correlations": rep,
    }


def proxy_row(
    rank: int | str,
    proxy: EvolvedProxy,
    tables: torch.Tensor | Sequence[torch.Tensor],
    data: FitnessData | Sequence[FitnessData],
    *,
    labels: Sequence[str] | None = None,
) -> dict[str, Any]:
    """One table row: the proxy's correlations on both splits of each bench (`benches`, by
    label) with its orientation applied; with one bench they are top-level columns as well."""
    tables, data = as_tuple(tables), as_tuple(data)
    labels = list(labels or bench_labels(data))
    benches = {label: _cells(d.report(t, proxy.orientation)) for label, t, d in zip(labels, tables, data, strict=True)}
    row: dict[str, Any] = {
        "rank": rank,
        "name": proxy.name,
        "expression": proxy.expression,
        "size": len(proxy.tokens),
        "orientation": proxy.orientation,
        "canonical": proxy.key,
    }
    if len(benches) == 1:
        row |= next(iter(benches.values()))
    return row | {"benches": benches, "proxy": proxy}


def tokens_row(
    rank: int | str,
    name: str,
    tokens: list,
    *,
    stats: NetworkStats | Sequence[NetworkStats],
    data: FitnessData | Sequence[FitnessData],
    act_samples: int,
    orientation: int | None = None,
    meta: dict | None = None,
    labels: Sequence[str] | None = None,
) -> dict[str, Any]:
    """A row for a token list (one statistics per bench); without an orientation (hand-made
    proxies) the one that helps it on the *search* splits is used (sign of the mean signed
    Spearman, as in a campaign), never the held-out one."""
    proxy = EvolvedProxy(tokens, 1, name=name, act_samples=act_samples, meta=meta)
    stats, data = as_tuple(stats), as_tuple(data)
    tables = [proxy.stats_table(s) for s in stats]
    if orientation is None:
        rho = float(np.mean([d.search.spearman(d.search.scores(t)) for d, t in zip(data, tables, strict=True)]))
        orientation = -1 if rho < 0 else 1
    proxy.orientation = orientation
    return proxy_row(rank, proxy, tables, data, labels=labels)


def pareto_mask(sizes: Sequence[int], fitness: Sequence[float]) -> list[bool]:
    """True where no other member is at most as large and at least as fit, and better in one
    (smaller size, higher fitness); members without a finite fitness are never on the front."""

    def dominated(i: int) -> bool:
        return any(
            s <= sizes[i] and f >= fitness[i] and (s < sizes[i] or f > fitness[i])
            for s, f in zip(sizes, fitness, strict=True)
            if math.isfinite(f)
        )

    return [math.isfinite(fitness[i]) and not dominated(i) for i in range(len(sizes))]


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    """A row's scalar columns, per-bench cells as `column:bench`."""
    out = {k: v for k, v in row.items() if k not in ("proxy", "benches", "correlations")}
    for label, cells in row.get("benches", {}).items():
        out |= {f"{c}:{label}": cells[c] for c in BENCH_COLUMNS}
    return out


class HallOfFame(Sequence):
    """Rows of proxies, best first; `pareto`, `to_csv`, `to_markdown`, `to_json`."""

    def __init__(self, rows: Sequence[dict[str, Any]]) -> None:
        self.rows = list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):  # type: ignore[override]
        return self.rows[i]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)

    def __add__(self, other: HallOfFame) -> HallOfFame:
        return HallOfFame(self.rows + list(other))

    def pareto(self) -> HallOfFame:
        """The Pareto front of size (nodes, smaller better) against fitness (higher better),
        as PySR shows it: the best proxy of each complexity that beats every smaller one;
        sorted by size."""
        mask = pareto_mask([r["size"] for r in self.rows], [r.get("fitness", math.nan) for r in self.rows])
        return HallOfFame(
            sorted((r for r, m in zip(self.rows, mask, strict=True) if m), key=lambda r: (r["size"], -r["fitness"]))
        )

    def bench_labels(self) -> list[str]:
        return list(self.rows[0].get("benches", {})) if self.rows else []

    def to_json(self) -> list[dict[str, Any]]:
        """Rows without the proxy objects, JSON-safe (the proxy is under `proxy_json`)."""
        return [
            json_safe({k: v for k, v in r.items() if k != "proxy"} | {"proxy_json": r["proxy"].to_json()})
            for r in self.rows
        ]

    def _csv_fields(self) -> list[str]:
        labels = self.bench_labels()
        if len(labels) <= 1:
            return list(CSV_FIELDS)
        return [
            "rank",
            "expression",
            "size",
            *(f"{c}:{label}" for label in labels for c in BENCH_COLUMNS),
            "orientation",
            "canonical",
            "fitness",
            "pareto",
        ]

    def csv_text(self) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self._csv_fields(), extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(json_safe(_flat(r)) for r in self.rows)
        return buf.getvalue()

    def to_csv(self, path: str | Path) -> None:
        atomic_write_text(path, self.csv_text())

    def _markdown_fields(self) -> list[tuple[str, str]]:
        labels = self.bench_labels()
        if len(labels) <= 1:
            return list(MARKDOWN_FIELDS)
        return [
            ("rank", "rank"),
            ("proxy", "expression"),
            ("size", "size"),
            ("fitness", "fitness"),
            *((f"held-out rho {label}", f"heldout_spearman:{label}") for label in labels),
            ("orient.", "orientation"),
        ]

    def to_markdown(self, top: int | None = None) -> str:
        from ..tables import markdown_table

        fields = self._markdown_fields()
        rows = [
            [(f"{r[k]:+d}" if k == "orientation" else r[k]) for _, k in fields] for r in map(_flat, self.rows[:top])
        ]
        return markdown_table([h for h, _ in fields], rows)
