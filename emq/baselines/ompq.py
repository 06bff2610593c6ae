"""OMPQ's orthogonality proxy (Ma et al., AAAI 2023), as a separable table.

Layers whose features resemble many other layers' carry redundant information; a layer
with unique features deserves more bits. On one calibration batch (the layer outputs Y in
the statistics), the similarity of layers i and j is linear CKA of their centred Gram
matrices; gamma_i = sum_{j != i} CKA(i, j); theta_i = exp(-beta * gamma_i). OMPQ maximises
sum_i (b_i / 8) * mean_{j >= i} theta_j (layers in forward order), which is separable:
row i of the table is (b / 8) * mean_{j >= i} theta_j, summed into slots.

beta: OMPQ treats it as a hyperparameter; we default to 1.0 (gamma is a sum of L-1 values in
[0, 1], so beta = 1 keeps theta inside [exp(-(L-1)), 1] without underflow).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import EmqError
from ..proxy import ProxyContext, SeparableProxy
from .registry import register_proxy
from .separable import require_stats, slot_table

DEFAULT_BETA = 1.0


def centred_gram(features: torch.Tensor) -> torch.Tensor:
    """H K H with K = X X^T for features X [n, ...] (samples first), in float64."""
    x = features.double().reshape(features.shape[0], -1)
    x = x - x.mean(dim=0, keepdim=True)  # centring X's columns == H (X X^T) H
    return x @ x.T


def linear_cka_matrix(features: list[torch.Tensor]) -> np.ndarray:
    """Pairwise linear CKA between layers' features (same samples, same order): [L, L]."""
    n = {f.shape[0] for f in features}
    if len(n) != 1:
        raise EmqError(
            f"OMPQ: layer features have different sample counts {sorted(n)}; the statistics are inconsistent"
        )
    grams = torch.stack([centred_gram(f).reshape(-1) for f in features])  # [L, n*n]
    norms = grams.norm(dim=1)
    if (norms <= 0).any():
        bad = int(torch.nonzero(norms <= 0)[0, 0])
        raise EmqError(f"OMPQ: the features of layer {bad} are constant on the calibration batch; CKA is undefined")
    return ((grams @ grams.T) / (norms[:, None] * norms[None, :])).numpy()


def ompq_importance(cka: np.ndarray, beta: float = DEFAULT_BETA) -> np.ndarray:
    """mean_{j >= i} theta_j with theta = exp(-beta * gamma), gamma_i = sum_{j != i} CKA(i, j)."""
    gamma = cka.sum(axis=1) - np.diag(cka)
    theta = np.exp(-beta * gamma)
    suffix = np.cumsum(theta[::-1])[::-1]
    return suffix / np.arange(len(theta), 0, -1)


@register_proxy
class OMPQ(SeparableProxy):
    name = "ompq"
    order = 70
    description = (
        "OMPQ orthogonality: (b/8) x mean_{j>=i} exp(-beta * sum_j CKA(i,j)) of layer outputs (Ma et al., AAAI 2023)"
    )
    orientation = 1
    cost = "statistics only (layer outputs on one calibration batch)"

    def __init__(self, beta: float = DEFAULT_BETA) -> None:
        if not np.isfinite(beta) or beta < 0:
            raise EmqError(f"OMPQ beta {beta}: use a finite value >= 0")
        self.beta = float(beta)

    def table(self, ctx: ProxyContext) -> np.ndarray:
        stats = require_stats(ctx)
        key = ("ompq-cka", id(stats))
        cka = ctx.cache.get(key)
        if cka is None:
            cka = ctx.cache[key] = linear_cka_matrix([layer.Y for layer in stats.layers])
        importance = ompq_importance(cka, self.beta)
        bits = np.asarray(stats.bits, dtype=np.float64) / 8.0
        return slot_table(stats, importance[:, None] * bits[None, :])
