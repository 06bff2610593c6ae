"""Fitness of a proxy: rank correlation of its scores with bench accuracy.

The bench's ranks are computed once per split (`SplitTarget`), so scoring a candidate is a
gather-sum of its table and one rank of its scores. Targets are oriented "higher = better
accuracy" (loss and KL are negated), so a positive correlation always means a useful proxy
with orientation +1. Ties are average-ranked on both sides.

Reported with every proxy: Spearman, Kendall tau, Pearson, and EMQ's rho_s@k (Spearman over
the configurations the proxy ranks in its top k %), on the search and held-out splits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass

import numpy as np
import torch
from scipy import stats as sps

from .errors import EmqError
from .specs import check_metric, oriented

TOP_K = (20, 50)


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given their average rank: scipy's rankdata(x) for finite 1-D x,
    without its per-call overhead (the fitness path ranks every candidate's scores)."""
    x = np.asarray(x)
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts = np.flatnonzero(np.concatenate(([True], xs[1:] != xs[:-1])))
    ranks = np.empty(len(x), dtype=np.float64)
    if len(starts) == len(x):  # no ties
        ranks[order] = np.arange(1, len(x) + 1, dtype=np.float64)
        return ranks
    ends = np.append(starts[1:], len(x))
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def _zscore(x: np.ndarray) -> np.ndarray | None:
    d = x - x.mean()
    n = float(np.sqrt((d * d).sum()))
    return None if n == 0.0 or not np.isfinite(n) else d / n


@dataclass
class SplitTarget:
    """One bench split, prepared for fast scoring: table indices per slot and target ranks."""

    name: str
    configs: np.ndarray  # [N, S] bit values
    _: KW_ONLY
    slot_idx: np.ndarray  # [S, N]: where configuration n's bit of slot s is in the flattened table [S * B]
    target: np.ndarray  # oriented metric, higher = better
    target_rank_z: np.ndarray  # centred, unit-norm average ranks of `target`

    @classmethod
    def build(
        cls,
        name: str,
        configs: np.ndarray,
        metric_values: np.ndarray,
        metric: str,
        *,
        bits: Sequence[int],
    ) -> SplitTarget:
        configs = np.asarray(configs, dtype=np.int64)
        values = np.asarray(metric_values, dtype=np.float64)
        if configs.ndim != 2 or configs.shape[0] != values.shape[0]:
            raise EmqError(
                f"bench split {name!r}: {configs.shape[0]} configurations but {values.shape[0]} metric values"
            )
        if configs.shape[0] < 3:
            raise EmqError(
                f"bench split {name!r} has {configs.shape[0]} configurations: at least 3 are needed for a rank "
                "correlation"
            )
        if not np.isfinite(values).all():
            raise EmqError(f"bench split {name!r}: metric {metric!r} holds NaN or inf values")
        lut = {b: i for i, b in enumerate(bits)}
        bad = sorted(set(np.unique(configs).tolist()) - set(lut))
        if bad:
            raise EmqError(f"bench split {name!r}: bit-widths {bad} are not among the statistics' bits {list(bits)}")
        bit_idx = np.vectorize(lut.__getitem__)(configs)
        flat = np.arange(configs.shape[1])[None, :] * len(bits) + bit_idx
        target = oriented(metric, values)
        z = _zscore(sps.rankdata(target))
        if z is None:
            raise EmqError(f"bench split {name!r}: metric {metric!r} is constant; no ranking to predict")
        return cls(name, configs, slot_idx=np.ascontiguousarray(flat.T), target=target, target_rank_z=z)

    def __len__(self) -> int:
        return self.configs.shape[0]

    def scores(self, table: torch.Tensor) -> np.ndarray:
        """score[n] = sum_s table[s, config_n[s]] for every configuration of the split, summed slot by slot
        in slot order (numpy adds the rows of a gather along axis 0 one after another), as
        emq.evolution.rankscore does."""
        return table.detach().cpu().numpy().reshape(-1)[self.slot_idx].sum(axis=0)

    def spearman(self, scores: np.ndarray) -> float:
        """Spearman rho against the split's precomputed target ranks (NaN if scores constant)."""
        z = _zscore(average_ranks(scores))
        return float("nan") if z is None else float(z @ self.target_rank_z)


def correlations(scores: np.ndarray, target: np.ndarray, top_k: Sequence[int] = TOP_K) -> dict[str, float]:
    """Spearman, Kendall, Pearson and rho_s@k of oriented scores against an oriented target."""
    out = {
        "spearman": float(sps.spearmanr(scores, target).statistic),
        "kendall": float(sps.kendalltau(scores, target).statistic),
        "pearson": float(sps.pearsonr(scores, target).statistic) if np.ptp(scores) > 0 else float("nan"),
    }
    order = np.argsort(-scores, kind="stable")
    for k in top_k:
        sel = order[: max(3, int(round(len(scores) * k / 100)))]
        out[f"spearman@{k}"] = (
            float(sps.spearmanr(scores[sel], target[sel]).statistic) if np.ptp(scores[sel]) > 0 else float("nan")
        )
    return out


@dataclass
class FitnessData:
    """What a campaign fits on and what it is reported on, for one target metric.

    `search` is the search configurations measured on the *fit* test pool: all that fitness
    and every choice made during a campaign may see. `heldout` is the held-out
    configurations measured on the *report* pool, used only to report; a campaign is given
    `for_campaign()`, which has no `heldout` at all.
    """

    metric: str
    bits: tuple[int, ...]
    search: SplitTarget
    heldout: SplitTarget | None  # None: no held-out split (a campaign's data, or none measured)
    _: KW_ONLY
    ceiling: float | None = None  # of the held-out numbers: sqrt of the report pool's reliability
    source: str = ""
    pools: str = "fit/report"  # or "shared" for a bench without per-image outcomes

    @classmethod
    def from_arrays(
        cls,
        bits: Sequence[int],
        search: tuple[np.ndarray, np.ndarray],
        heldout: tuple[np.ndarray, np.ndarray] | None,
        *,
        metric: str = "top1",
        ceiling: float | None = None,
        source: str = "",
        pools: str = "fit/report",
    ) -> FitnessData:
        check_metric(metric)
        bits = tuple(int(b) for b in bits)
        return cls(
            metric,
            bits,
            SplitTarget.build("search", *search, metric, bits=bits),
            SplitTarget.build("heldout", *heldout, metric, bits=bits) if heldout is not None else None,
            ceiling=ceiling,
            source=source,
            pools=pools,
        )

    @classmethod
    def from_bench(
        cls,
        bench: object,
        metric: str | None = None,
        bits: Sequence[int] | None = None,
    ) -> FitnessData:
        """Search x fit pool and held-out x report pool of an opened `emq.bench.Bench`;
        `bits` = the statistics' bit order. A bench without per-image outcomes has one
        test pool for both (`pools` says "shared")."""
        metric = check_metric(metric or getattr(bench, "default_metric", "top1"))
        has_pools = getattr(bench, "pools", None) is not None
        splits = {}
        for split, pool in (("search", "fit"), ("heldout", "report")):
            configs, metrics = bench.arrays(split, pool=pool if has_pools else "all")  # type: ignore[attr-defined]
            if metric not in metrics:
                raise EmqError(
                    f"bench {getattr(bench, 'path', '')}: no {metric!r} values; choose one of {', '.join(metrics)}"
                )
            keep = np.isfinite(metrics[metric])  # records without this metric are left out
            splits[split] = (configs[keep], metrics[metric][keep])
        if len(splits["heldout"][0]) < 3:
            splits["heldout"] = None  # nothing to report on; a campaign never needs it
        ceiling = (getattr(bench, "ceiling", None) or {}).get(metric)
        source = str(getattr(bench, "path", ""))
        return cls.from_arrays(
            bits or bench.bits,
            splits["search"],
            splits["heldout"],
            metric=metric,
            ceiling=ceiling,
            source=source,
            pools="fit/report" if has_pools else "shared",
        )  # type: ignore[attr-defined]

    def for_campaign(self) -> FitnessData:
        """The same data without the held-out split: what a campaign is allowed to see."""
        return FitnessData(
            self.metric, self.bits, self.search, None, ceiling=None, source=self.source, pools=self.pools
        )

    @property
    def fingerprint(self) -> str:
        """Hash of the splits' configurations and targets (detects a changed bench)."""
        h = hashlib.sha256(self.metric.encode())
        for split in (self.search, self.heldout):
            if split is not None:
                h.update(np.ascontiguousarray(split.configs).tobytes())
                h.update(np.ascontiguousarray(split.target).tobytes())
        return h.hexdigest()[:16]

    def report(self, table: torch.Tensor, orientation: int) -> dict[str, dict[str, float]]:
        """All correlations of a table on each split there is (orientation applied)."""
        return {
            s.name: correlations(orientation * s.scores(table), s.target)
            for s in (self.search, self.heldout)
            if s is not None
        }
