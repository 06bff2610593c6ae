"""Diversity-prompting selection (DPS) and population diversity measures.

EMQ's mechanism: every offspring must beat a freshly sampled random candidate to enter the
population, so random genetic material keeps flowing in. On top, survivors are chosen so
that phenotypically near-identical candidates (score vectors over the bench correlating
above a threshold) do not crowd the population: of such a group only the fittest survives
while there are enough distinct candidates.

Signatures are z-scored ranks of a candidate's oriented scores on a fixed subsample of the
search split, so the dot product of two signatures is their Spearman correlation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..specs import ParameterError, setting


@dataclass(frozen=True)
class DPSConfig:
    enabled: bool = setting(True, "switch diversity-prompting selection off (ablation)", flag="--no-dps")
    challengers: bool = True  # offspring compete with fresh random candidates
    crowding_threshold: float = setting(
        0.98, "DPS: |corr| above which two candidates count as one phenotype (default {default})", flag="--crowding"
    )

    def __post_init__(self) -> None:
        t = self.crowding_threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= 1:  # NaN fails too
            raise ParameterError(
                "crowding_threshold",
                t,
                "a correlation threshold must be in (0, 1]; |corr| never exceeds 1, so a larger one turns crowding off "
                "silently (use --no-dps to switch DPS off)",
            )


def pick_winners(offspring_fit: Sequence[float], challenger_fit: Sequence[float]) -> list[bool]:
    """True where the offspring keeps its place (ties go to the offspring)."""
    return [o >= c for o, c in zip(offspring_fit, challenger_fit, strict=True)]


def select_survivors(
    fitness: Sequence[float],
    keys: Sequence[str],
    signatures: Sequence[np.ndarray | None],
    k: int,
    *,
    threshold: float | None,
) -> list[int]:
    """Indices of k survivors, fittest first (ties broken by key, so it is deterministic).

    With a threshold: a candidate is skipped while it duplicates a survivor's canonical form
    or correlates with one above the threshold; skipped ones, then screened-out ones (no
    signature), fill any remaining places.
    Without: plain truncation (mu + lambda).
    """
    order = sorted(range(len(fitness)), key=lambda i: (-fitness[i], keys[i]))
    if threshold is None:
        return order[:k]
    chosen: list[int] = []
    skipped: list[int] = []
    invalid: list[int] = []
    seen: set[str] = set()
    sigs: list[np.ndarray] = []
    for i in order:
        if len(chosen) == k:
            break
        s = signatures[i]
        if s is None:
            invalid.append(i)
        elif keys[i] in seen or (sigs and float(np.max(np.abs(np.stack(sigs) @ s))) > threshold):
            skipped.append(i)
        else:
            chosen.append(i)
            seen.add(keys[i])
            sigs.append(s)
    return (chosen + skipped + invalid)[:k]


def diversity(keys: Sequence[str], signatures: Sequence[np.ndarray | None]) -> dict[str, float]:
    """Unique canonical forms and mean pairwise |Spearman| of the valid members' scores."""
    sigs = [s for s in signatures if s is not None]
    out = {"unique_forms": float(len(set(keys))), "unique_share": len(set(keys)) / max(1, len(keys))}
    if len(sigs) >= 2:
        m = np.abs(np.stack(sigs).astype(np.float64) @ np.stack(sigs).astype(np.float64).T)
        n = m.shape[0]
        out["mean_abs_corr"] = float((m.sum() - np.trace(m)) / (n * (n - 1)))
    else:
        out["mean_abs_corr"] = float("nan")
    return out
