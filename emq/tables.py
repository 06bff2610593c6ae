"""Markdown tables: the one formatter behind every printed table (CLI and `to_markdown`)."""

from __future__ import annotations

from typing import Any


def fmt(v: Any) -> str:
    """Numbers as people read them: 4 significant digits; large values in full with thousands separators."""
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return str(v)


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A pipe table with aligned columns."""
    cells = [[fmt(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]

    def line(vals: list[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths, strict=True)) + " |"

    out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in cells]
    return "\n".join(out)
