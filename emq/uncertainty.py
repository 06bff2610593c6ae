"""How far a bench's numbers can be trusted: split-half reliability and bootstrap intervals.

Both resample test *sources* (independent units: a digit with its renders, or one image), so
correlated test images never pass for independent evidence. The inputs are per-configuration
per-source sums S [N, K] of a per-image metric and per-source image counts c [K]; a
configuration's metric over a set of sources with multiplicities w is (S @ w) / (c @ w).

- Split-half reliability: the Spearman correlation between the metric measured on two random
  halves of the sources, averaged over many splits, then stepped up to the full pool by the
  Spearman-Brown formula 2r / (1 + r).
- Bootstrap: each replicate draws configurations and sources with replacement; a proxy's
  interval is the percentile interval of its Spearman over replicates, and a *paired*
  interval for a difference of two proxies uses the same replicates for both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

DEFAULT_SPLITS = 200
DEFAULT_RESAMPLES = 1000
LEVEL = 0.95


def _row_spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman of each row of a with the same row of b ([R, N] each; NaN where constant)."""
    ra = rankdata(a, axis=1)
    rb = rankdata(b, axis=1)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    den = np.sqrt((ra * ra).sum(1) * (rb * rb).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(1) / np.where(den > 0, den, 1.0), np.nan)


def spearman_brown(r: float, factor: float = 2.0) -> float:
    """Reliability of a measurement `factor` times longer than one with reliability r."""
    return float(factor * r / (1.0 + (factor - 1.0) * r))


@dataclass(frozen=True)
class SplitHalf:
    raw: float  # mean Spearman between halves
    corrected: float  # Spearman-Brown step-up of `raw` to the whole pool
    sd: float  # spread of the per-split Spearman
    splits: int

    def to_json(self) -> dict:
        return {"raw": self.raw, "corrected": self.corrected, "sd": self.sd, "splits": self.splits}


def split_half(sums: np.ndarray, counts: np.ndarray, splits: int = DEFAULT_SPLITS, seed: int = 0) -> SplitHalf:
    """Split-half reliability of a metric over configurations, splitting sources at random."""
    sums = np.asarray(sums, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    k = counts.shape[0]
    if k < 2 or sums.shape[0] < 3:
        return SplitHalf(float("nan"), float("nan"), float("nan"), 0)
    rng = np.random.default_rng(seed)
    halves = np.zeros((splits, k))
    for i in range(splits):
        halves[i, rng.permutation(k)[: k // 2]] = 1.0
    other = 1.0 - halves
    a = (sums @ halves.T) / (counts @ halves.T)
    b = (sums @ other.T) / (counts @ other.T)
    rho = _row_spearman(a.T, b.T)
    rho = rho[np.isfinite(rho)]
    if rho.size == 0:
        return SplitHalf(float("nan"), float("nan"), float("nan"), splits)
    raw = float(rho.mean())
    return SplitHalf(raw, spearman_brown(raw), float(rho.std()), splits)


def combined_reliability(split_half_corrected: float, test_retest: float | None) -> float | None:
    """Reliability against both noise sources: test images (split-half) and calibration draw.

    With independent additive noise, split-half reliability counts the calibration noise as
    signal and a test-retest on the same images counts the test-image noise as signal, so the
    share of variance that is neither is r_split + r_retest - 1.
    """
    if test_retest is None or not np.isfinite(split_half_corrected) or not np.isfinite(test_retest):
        return None
    return float(max(0.0, split_half_corrected + test_retest - 1.0))


def ceiling(reliability: float | None) -> float | None:
    """The best Spearman a perfect predictor of the true values can expect: sqrt(reliability)."""
    return None if reliability is None else float(np.sqrt(max(reliability, 0.0)))


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float

    def to_json(self) -> dict:
        return {"estimate": self.estimate, "low": self.low, "high": self.high}

    @property
    def excludes_zero(self) -> bool:
        return bool(self.low > 0 or self.high < 0)


def _interval(estimate: float, reps: np.ndarray, level: float) -> Interval:
    reps = reps[np.isfinite(reps)]
    if reps.size == 0:
        return Interval(estimate, float("nan"), float("nan"))
    lo, hi = np.percentile(reps, [50 * (1 - level), 50 * (1 + level)])
    return Interval(float(estimate), float(lo), float(hi))


@dataclass(kw_only=True)
class Bootstrap:
    """Seeded replicates of (configurations x sources) shared by every proxy of one report."""

    sums: np.ndarray  # [N, K]
    counts: np.ndarray  # [K]
    sign: int  # +1 if higher metric is better, -1 for loss / KL
    resamples: int = DEFAULT_RESAMPLES
    seed: int = 0
    level: float = LEVEL

    def __post_init__(self) -> None:
        self.sums = np.asarray(self.sums, dtype=np.float64)
        self.counts = np.asarray(self.counts, dtype=np.float64)
        n, k = self.sums.shape
        rng = np.random.default_rng(self.seed)
        self.rows = rng.integers(0, n, size=(self.resamples, n))
        weights = rng.multinomial(k, np.full(k, 1.0 / k), size=self.resamples).astype(np.float64)
        values = (self.sums @ weights.T) / (self.counts @ weights.T)  # [N, R]
        self.targets = self.sign * np.take_along_axis(values.T, self.rows, axis=1)  # [R, N], oriented
        self.target = self.sign * self.sums.sum(1) / self.counts.sum()

    def _replicates(self, scores: np.ndarray) -> np.ndarray:
        return _row_spearman(np.asarray(scores, dtype=np.float64)[self.rows], self.targets)

    def _point(self, scores: np.ndarray) -> float:
        return float(_row_spearman(np.asarray(scores, dtype=np.float64)[None], self.target[None])[0])

    def interval(self, scores: np.ndarray) -> Interval:
        """Spearman of oriented scores with the oriented metric, and its percentile interval."""
        return _interval(self._point(scores), self._replicates(scores), self.level)

    def paired(self, scores_a: np.ndarray, scores_b: np.ndarray) -> Interval:
        """rho(a) - rho(b) with the interval of the difference over the same replicates."""
        diff = self._replicates(scores_a) - self._replicates(scores_b)
        return _interval(self._point(scores_a) - self._point(scores_b), diff, self.level)

    def intervals(self, scores: Mapping[str, np.ndarray]) -> dict[str, Interval]:
        return {name: self.interval(s) for name, s in scores.items()}
