"""Compatibility screening: reject degenerate candidates before they cost a full evaluation.

Three stages, cheapest first (typing is enforced earlier by the typed primitive set):

1. static: a tree without a bit-dependent terminal (b, 2^-b, Q, E) has a bit-insensitive
   table and cannot rank configurations;
2. probe: the table of a few layers (first, middle, last) is checked for NaN/inf and for
   rows that do not vary with the bit-width;
3. full: the same checks on the whole table, then the bench scores must be finite (a finite
   table can overflow when summed over slots) and not constant.

Duplicates (same canonical form) never reach any stage: the fitness cache answers them.
Every rejection is counted by reason.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch

REASONS = (
    "duplicate",
    "no_bit_terminal",
    "probe_nonfinite",
    "probe_bit_insensitive",
    "nonfinite",
    "bit_insensitive",
    "nonfinite_scores",
    "constant_scores",
)
REL_TOL = 1e-9  # a table whose bit columns differ by less than this (relative) is bit-insensitive


def table_problem(table: torch.Tensor, prefix: str = "") -> str | None:
    """The reason a [L, B] table is unusable, or None."""
    t = table.detach().cpu().numpy()  # small: numpy's per-call cost is a fraction of torch's
    if not np.isfinite(t).all():
        return prefix + "nonfinite"
    spread = float(np.abs(t - t[:, :1]).max())
    scale = float(np.abs(t).max())
    if spread <= REL_TOL * scale or scale == 0.0:
        return prefix + "bit_insensitive"
    return None


class ScreeningCounts(Counter):
    """Rejections by reason, plus candidates seen and fully evaluated."""

    def summary(self) -> dict[str, float | int]:
        seen = self["seen"]
        saved = self["duplicate"] + self["no_bit_terminal"] + self["probe_nonfinite"] + self["probe_bit_insensitive"]
        out: dict[str, float | int] = {k: int(self[k]) for k in ("seen", "full_evaluations", *REASONS)}
        out["saved_share"] = saved / seen if seen else 0.0
        return out
