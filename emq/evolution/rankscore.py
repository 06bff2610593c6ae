"""A candidate's slot table scored on one search split in one compiled pass (numba).

A campaign scores every candidate on every bench: the configuration scores (`SplitTarget.scores`), their
average ranks, the Spearman correlation with the split's target (`SplitTarget.spearman`) and the ranks of a
fixed subsample for the candidate's signature. Done with numpy, that is a dozen calls on arrays of a few
hundred values, each costing more in dispatch than in arithmetic: about a fifth of a four-network campaign.
Here it is one call. The scores are the same numbers (`SplitTarget.scores` also sums slot by slot, in slot
order); the correlation's sums run in another order than numpy's, so rho can differ in the last bit.
"""

from __future__ import annotations

import numba
import numpy as np

# what `score_split`'s status means: scored, or the screening reason (screening.REASONS) it was rejected for
REASONS = (None, "nonfinite_scores", "constant_scores")
NONFINITE, CONSTANT = 1, 2


@numba.njit(cache=True)
def _average_ranks(x: np.ndarray, out: np.ndarray) -> None:
    """out = 1-based ranks of x, ties given their average rank (as scipy's rankdata)."""
    order = np.argsort(x, kind="mergesort")
    n = x.shape[0]
    i = 0
    while i < n:
        j = i + 1
        xi = x[order[i]]
        while j < n and x[order[j]] == xi:
            j += 1
        r = (i + j + 1) / 2.0
        for k in range(i, j):
            out[order[k]] = r
        i = j


@numba.njit(cache=True)
def _centre(r: np.ndarray) -> float:
    """r -= its mean; the norm of the result (0 for no values)."""
    if r.shape[0] == 0:
        return 0.0
    mean = r.sum() / r.shape[0]
    ss = 0.0
    for i in range(r.shape[0]):
        r[i] -= mean
        ss += r[i] * r[i]
    return np.sqrt(ss)


@numba.njit(cache=True)
def score_split(
    table: np.ndarray,
    slot_idx: np.ndarray,
    target_rank_z: np.ndarray,
    sig_idx: np.ndarray,
    scores: np.ndarray,
    signature: np.ndarray,
) -> tuple[int, float]:
    """(0, Spearman rho) or (NONFINITE / CONSTANT, NaN). `table` is the flattened slot table [S * B],
    `slot_idx` [S, N] the flat index of each configuration's bit in each slot. Fills `scores` [N] and
    `signature` [K]: the centred, unit-norm ranks of the scores at `sig_idx` (orientation +1)."""
    S, N = slot_idx.shape
    if S == 0:  # no slot: every configuration scores the same
        return CONSTANT, np.nan
    for n in range(N):
        scores[n] = table[slot_idx[0, n]]
    for s in range(1, S):
        for n in range(N):
            scores[n] += table[slot_idx[s, n]]
    for n in range(N):
        if not np.isfinite(scores[n]):
            return NONFINITE, np.nan
    ranks = np.empty(N)
    _average_ranks(scores, ranks)
    norm = _centre(ranks)
    if norm == 0.0 or not np.isfinite(norm):
        return CONSTANT, np.nan
    rho = 0.0
    for n in range(N):
        rho += ranks[n] / norm * target_rank_z[n]
    K = sig_idx.shape[0]
    sub = np.empty(K)
    for k in range(K):
        sub[k] = scores[sig_idx[k]]
    _average_ranks(sub, signature)
    norm = _centre(signature)
    if norm > 0.0:
        for k in range(K):
            signature[k] /= norm
    return 0, rho
