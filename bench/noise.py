"""The noise ceiling: how well a bench agrees with itself under an independent repeat.

A sample of configurations is re-evaluated with an independent calibration draw; the
Spearman correlation between the original and repeated metric is the best rank
correlation any proxy can honestly be expected to reach on this bench.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy.stats import spearmanr

from emq.specs import METRICS

CEILING_TARGET = 0.9


def sample_for_noise(plan_configs: Sequence[str], k: int, seed: int) -> list[str]:
    """k configurations of the plan, chosen by seed (the same on every resume)."""
    rng = np.random.default_rng(seed + 7919)
    pick = rng.choice(len(plan_configs), size=min(k, len(plan_configs)), replace=False)
    return [plan_configs[i] for i in sorted(pick)]


def ceilings(original: Mapping[str, Mapping[str, float]], repeat: Mapping[str, Mapping[str, float]]) -> dict[str, float | None]:
    """Spearman between original and repeated values of every metric (None if undefined)."""
    common = sorted(set(original) & set(repeat))
    out: dict[str, float | None] = {}
    for m in METRICS:
        a = np.array([original[c][m] for c in common], dtype=float)
        b = np.array([repeat[c][m] for c in common], dtype=float)
        ok = np.isfinite(a) & np.isfinite(b)
        if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
            out[m] = None
            continue
        rho = float(spearmanr(a[ok], b[ok]).statistic)
        out[m] = None if math.isnan(rho) else rho
    return out


def default_metric(ceiling: Mapping[str, float | None]) -> str:
    """top-1 if its ceiling reaches the target, else the metric with the highest ceiling."""
    if (ceiling.get("top1") or 0.0) >= CEILING_TARGET:
        return "top1"
    scored = [(v, m) for m, v in ceiling.items() if v is not None]
    return max(scored)[1] if scored else "top1"
