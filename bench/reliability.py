"""A bench's reliability per metric, and the proxy ceiling it implies.

Two independent noise sources make a configuration's measured accuracy differ from its true
one: which test images it is measured on, and which calibration images PTQ used. The first is
measured by split-half reliability over test *sources* (renders of one digit are correlated,
so halves are split by source), the second by a test-retest of a sample of configurations
with a *disjoint* calibration pool on the same test images. Their combination (see
`emq.uncertainty.combined_reliability`) is the share of the metric's variance that is signal;
a perfect predictor of the signal reaches about its square root, the *ceiling* reported next
to every correlation. All of it is measured on the report pool, where held-out numbers are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from emq.specs import METRICS
from emq.uncertainty import DEFAULT_SPLITS, ceiling, combined_reliability, split_half

RELIABILITY_TARGET = 0.95
SPLIT_METHOD = "split-half by test source, Spearman-Brown corrected, mean over random splits"
RETEST_METHOD = "calibration test-retest: the other half of the calibration sources, same test images"


def sample_for_retest(plan_configs: Sequence[str], k: int, seed: int) -> list[str]:
    """k configurations of the plan, chosen by seed (the same on every resume)."""
    rng = np.random.default_rng(seed + 7919)
    pick = rng.choice(len(plan_configs), size=min(k, len(plan_configs)), replace=False)
    return [plan_configs[i] for i in sorted(pick)]


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return None
    rho = float(spearmanr(a[ok], b[ok]).statistic)
    return None if np.isnan(rho) else rho


def reliability(
    bench: Any, pool: str = "report", splits: int = DEFAULT_SPLITS, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """{metric: split_half, test_retest, combined, ceiling} of an opened bench on one test pool."""
    out: dict[str, dict[str, Any]] = {}
    if bench.pools is None:
        return {
            m: {
                "split_half": None,
                "test_retest": None,
                "combined": None,
                "ceiling": None,
                "note": "no per-image outcomes",
            }
            for m in METRICS
        }
    retest = [c for c in bench.repeats if c in bench._index_by_text]
    for m in METRICS:
        sums, counts = bench.source_table(m, pool)
        half = split_half(sums, counts, splits, seed)
        rt = None
        if retest and pool == "report" and bench.has_repeat_outcomes(retest):  # retests store the report pool
            rows = [bench._index_by_text[c] for c in retest]
            rep_sums, _ = bench.source_table(m, pool, retest, repeat=True)
            rt = _spearman(sums[rows].sum(1), rep_sums.sum(1))
        comb = combined_reliability(half.corrected, rt)
        out[m] = {
            "pool": pool,
            "split_half": {**half.to_json(), "method": SPLIT_METHOD},
            "test_retest": None if rt is None else {"rho": rt, "configs": len(retest), "method": RETEST_METHOD},
            "combined": comb,
            "ceiling": ceiling(comb),
        }
    return out


def default_metric(rel: Mapping[str, Mapping[str, Any]]) -> str:
    """top-1 if its corrected split-half reliability reaches the target, else the most reliable metric."""

    def corrected(m: str) -> float:
        half = (rel.get(m) or {}).get("split_half") or {}
        v = half.get("corrected")
        return float(v) if v is not None and np.isfinite(v) else -1.0

    if corrected("top1") >= RELIABILITY_TARGET:
        return "top1"
    best = max(METRICS, key=corrected)
    return best if corrected(best) > -1.0 else "top1"
