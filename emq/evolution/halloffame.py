"""The hall of fame as a table: one row per proxy, with its correlations on both splits.

Rows are plain dicts (rank, name, expression, size, orientation, canonical form,
search / held-out Spearman and Kendall, all correlations, the proxy itself), so they
print, serialise and index like a small data frame without a pandas dependency.
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

CSV_FIELDS = ("rank", "expression", "size", "search_spearman", "heldout_spearman", "search_kendall", "heldout_kendall", "orientation", "canonical")
MARKDOWN_FIELDS = (("rank", "rank"), ("proxy", "expression"), ("size", "size"), ("search rho", "search_spearman"), ("held-out rho", "heldout_spearman"), ("held-out tau", "heldout_kendall"), ("orient.", "orientation"))


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


def proxy_row(rank: int | str, proxy: EvolvedProxy, table: torch.Tensor, data: FitnessData) -> dict[str, Any]:
    """One table row: the proxy's correlations on both splits with its orientation applied."""
    rep = data.report(table, proxy.orientation)
    return {
        "rank": rank,
        "name": proxy.name,
        "expression": proxy.expression,
        "size": len(proxy.tokens),
        "orientation": proxy.orientation,
        "canonical": proxy.key,
        "search_spearman": rep["search"]["spearman"],
        "heldout_spearman": rep.get("heldout", {}).get("spearman", float("nan")),
        "search_kendall": rep["search"]["kendall"],
        "heldout_kendall": rep.get("heldout", {}).get("kendall", float("nan")),
        "correlations": rep,
        "proxy": proxy,
    }


def tokens_row(rank: int | str, name: str, tokens: list, stats: NetworkStats, data: FitnessData, act_samples: int, orientation: int | None = None, meta: dict | None = None) -> dict[str, Any]:
    """A row for a token list; without an orientation (hand-made proxies) the one that helps
    it on the *search* split is used, never the held-out one."""
    proxy = EvolvedProxy(tokens, 1, name, act_samples, meta)
    table = proxy.stats_table(stats)
    if orientation is None:
        rho = data.search.spearman(data.search.scores(table))
        orientation = -1 if rho < 0 else 1
    proxy.orientation = orientation
    return proxy_row(rank, proxy, table, data)


class HallOfFame(Sequence):
    """Rows of proxies, best first; `to_csv`, `to_markdown`, `to_json`."""

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

    def to_json(self) -> list[dict[str, Any]]:
        """Rows without the proxy objects, JSON-safe (the proxy is under `proxy_json`)."""
        return [json_safe({k: v for k, v in r.items() if k != "proxy"} | {"proxy_json": r["proxy"].to_json()}) for r in self.rows]

    def csv_text(self) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(json_safe({k: v for k, v in r.items() if k != "proxy"}) for r in self.rows)
        return buf.getvalue()

    def to_csv(self, path: str | Path) -> None:
        atomic_write_text(path, self.csv_text())

    def to_markdown(self, top: int | None = None) -> str:
        from ..tables import markdown_table

        rows = [[(f"{r[k]:+d}" if k == "orientation" else r[k]) for _, k in MARKDOWN_FIELDS] for r in self.rows[:top]]
        return markdown_table([h for h, _ in MARKDOWN_FIELDS], rows)
