"""Test pools: which test images fit a proxy and which report on it, split by source.

Two disjoint pools of test *sources* (for the default task a source is one UCI digit with its
six renders, which are correlated; for image folders and CIFAR every image is its own
source): the *fit* pool is all a campaign may see, the *report* pool is what held-out numbers
are measured on, so a formula cannot fit image-specific patterns of the images it is judged
on. The split is deterministic and class-stratified: each class's sources are shuffled with a
fixed seed and alternately dealt to fit and report, so both pools have the class balance of
the test set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from emq.errors import EmqError

POOLS = ("fit", "report", "all")
POOL_SEED = 20231
METHOD = "by source, class-stratified, seeded"


@dataclass(frozen=True)
class TestPools:
    """Per test image: its source id, and the report pool as a set of sources."""

    __test__ = False  # not a pytest class, despite the name

    sources: np.ndarray  # int [n_images]
    report_sources: np.ndarray  # sorted int

    @classmethod
    def split(cls, sources: Sequence[int], labels: Sequence[int], seed: int = POOL_SEED) -> TestPools:
        """The class-stratified split by source of one test set."""
        sources = np.asarray(sources, dtype=np.int64)
        labels = np.asarray(labels, dtype=np.int64)
        if sources.shape != labels.shape:
            raise EmqError(f"test pools: {sources.shape[0]} source ids for {labels.shape[0]} labels")
        uniq, first = np.unique(sources, return_index=True)
        source_label = labels[first]
        if len(uniq) < 4:
            raise EmqError(
                f"test pools: the test set has {len(uniq)} independent sources; at least 4 are needed to split it"
            )
        rng = np.random.default_rng(seed)
        report: list[int] = []
        for label in np.unique(source_label):
            members = uniq[source_label == label]
            members = members[rng.permutation(len(members))]
            report.extend(members[1::2].tolist())
        return cls(sources, np.sort(np.array(report, dtype=np.int64)))

    @classmethod
    def from_json(cls, obj: dict) -> TestPools:
        return cls(np.asarray(obj["sources"], dtype=np.int64), np.asarray(obj["report_sources"], dtype=np.int64))

    def to_json(self) -> dict:
        return {
            "method": METHOD,
            "seed": POOL_SEED,
            "sources": self.sources.tolist(),
            "report_sources": self.report_sources.tolist(),
        }

    @property
    def n_images(self) -> int:
        return int(self.sources.shape[0])

    def mask(self, pool: str) -> np.ndarray:
        """Boolean image mask of a pool: 'fit', 'report' or 'all'."""
        if pool not in POOLS:
            raise EmqError(f"test pool {pool!r}: use one of {', '.join(POOLS)}")
        if pool == "all":
            return np.ones(self.n_images, dtype=bool)
        in_report = np.isin(self.sources, self.report_sources)
        return in_report if pool == "report" else ~in_report

    def source_index(self, pool: str) -> tuple[np.ndarray, np.ndarray]:
        """(image indices of the pool, their source's position 0..K-1 within the pool)."""
        idx = np.flatnonzero(self.mask(pool))
        _, pos = np.unique(self.sources[idx], return_inverse=True)
        return idx, pos

    def summary(self) -> dict:
        out = {"method": METHOD}
        for pool in ("fit", "report"):
            m = self.mask(pool)
            out[pool] = {"images": int(m.sum()), "sources": int(len(np.unique(self.sources[m])))}
        return out
