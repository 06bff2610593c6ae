"""Hand-made separable proxies: a per-layer, per-bit term summed into slots.

Every table is computed from the statistics in `ctx.stats` (emq.search_space.netstats
layout), one row per layer, then summed into bit slots with `stats.layer_slot`, so the
same table drives ranking and the allocation ILP. Two conventions cover the families:

- *perturbation* proxies (HAWQ, Fisher) estimate the loss increase caused by the weight
  quantization noise E_b = Q_b(W) - W; a larger value predicts *lower* accuracy
  (orientation -1);
- *importance* proxies (SNIP, Synflow, QE) give each layer a bit-independent importance and
  inject bits as importance x b (EMQ's convention); a larger value predicts *higher*
  accuracy (orientation +1).
"""

from __future__ import annotations

from abc import abstractmethod

import numpy as np
import torch

from ..errors import EmqError
from ..proxy import ProxyContext, SeparableProxy, linear_cost_table
from ..search_space.netstats import LayerStats, NetworkStats
from ..specs import DEFAULT_ACT_BITS
from .registry import register_proxy


def require_stats(ctx: ProxyContext) -> NetworkStats:
    """The context's statistics, checked against its bits (a mismatch would misalign columns)."""
    stats = ctx.stats
    if stats is None:
        raise EmqError(
            "this proxy needs network statistics: build the context with emq.search_space.stats.compute_stats"
        )
    if tuple(stats.bits) != tuple(ctx.bits):
        raise EmqError(
            f"the statistics were computed for bits {list(stats.bits)}, but the proxy is asked "
            f"for {list(ctx.bits)}: recompute them"
        )
    return stats


def slot_table(stats: NetworkStats, per_layer: np.ndarray) -> np.ndarray:
    """Sum a per-layer table [L, B] into the slot table [S, B] (tied layers add up)."""
    per_layer = np.asarray(per_layer, dtype=np.float64)
    if not np.isfinite(per_layer).all():
        raise EmqError(
            "the proxy table contains NaN or infinite values: the statistics are degenerate (check the model and "
            "calibration data)"
        )
    out = np.zeros((stats.num_slots, per_layer.shape[1]), dtype=np.float64)
    np.add.at(out, np.asarray(stats.layer_slot), per_layer)
    return out


def _bits_row(stats: NetworkStats) -> np.ndarray:
    return np.asarray(stats.bits, dtype=np.float64)


def _noise_energy(layer: LayerStats, weight: torch.Tensor | float = 1.0) -> np.ndarray:
    """sum(weight * E_b^2) for every bit b: [B]."""
    e2 = layer.E.double().pow(2)
    w = weight.double() if isinstance(weight, torch.Tensor) else weight
    return (e2 * w).reshape(e2.shape[0], -1).sum(dim=1).numpy()


class _LayerwiseProxy(SeparableProxy):
    """A proxy given by one function of a layer's statistics -> its row [B]."""

    @abstractmethod
    def row(self, layer: LayerStats, stats: NetworkStats, ctx: ProxyContext) -> np.ndarray:
        """The layer's row of the table: one value per bit of `stats.bits`."""

    def table(self, ctx: ProxyContext) -> np.ndarray:
        stats = require_stats(ctx)
        return slot_table(stats, np.stack([self.row(layer, stats, ctx) for layer in stats.layers]))


@register_proxy
class HawqV1(_LayerwiseProxy):
    name = "hawq-v1"
    formula = "hawq-v1"
    description = "top Hessian eigenvalue x ||Q_b(W)-W||^2 per layer (HAWQ, Dong et al., ICCV 2019)"
    orientation = -1
    cost = "statistics only (Hessian eigenvalue per layer)"

    def row(self, layer, stats, ctx):
        return float(layer.eig) * _noise_energy(layer)


@register_proxy
class HawqV2(_LayerwiseProxy):
    name = "hawq-v2"
    formula = "hawq-v2"
    description = "average Hessian trace Tr(H)/n x ||Q_b(W)-W||^2 per layer (HAWQ-V2, Dong et al., NeurIPS 2020)"
    orientation = -1
    cost = "statistics only (Hutchinson trace per layer)"

    def row(self, layer, stats, ctx):
        return float(layer.trace) / float(layer.params) * _noise_energy(layer)


@register_proxy
class Fisher(_LayerwiseProxy):
    name = "fisher"
    formula = "fisher"
    description = (
        "empirical Fisher sum(E_x[g_x^2] * (Q_b(W)-W)^2) per layer, g_x per-sample gradients "
        "(Fisher pruning, Theis et al., 2018; as used for MQ by Liu et al., 2021)"
    )
    orientation = -1
    cost = "statistics only (per-sample gradients)"

    def row(self, layer, stats, ctx):
        return _noise_energy(layer, layer.FD)


@register_proxy
class FisherBatch(_LayerwiseProxy):
    name = "fisher-batch"
    faithful = False  # a variant: never chosen as "the best hand-made proxy"
    description = (
        "sum(G^2 * (Q_b(W)-W)^2) per layer with G the batch-mean gradient squared: not the per-sample empirical Fisher"
    )
    orientation = -1
    cost = "statistics only (gradients)"

    def row(self, layer, stats, ctx):
        return _noise_energy(layer, layer.G.pow(2))


@register_proxy
class Snip(_LayerwiseProxy):
    name = "snip"
    formula = "snip"
    description = "bit-weighted SNIP: sum|G * W| x b per layer (Lee et al., ICLR 2019; EMQ's bit convention)"
    orientation = 1
    cost = "statistics only (gradients)"

    def row(self, layer, stats, ctx):
        return float((layer.G.double() * layer.W.double()).abs().sum()) * _bits_row(stats)


@register_proxy
class Synflow(_LayerwiseProxy):
    """Synflow as published: sum |W| * dR/d|W| over the layer, in the network linearised with |parameters|."""

    name = "synflow"
    formula = "synflow"
    description = (
        "bit-weighted Synflow: sum| |W| * dR/d|W| | x b per layer, R = sum of the |parameter|-linearised "
        "network's output on an all-ones input, data-free (Tanaka et al., NeurIPS 2020; EMQ's bit convention)"
    )
    orientation = 1
    cost = "statistics only (linearised virtual gradients)"

    def row(self, layer, stats, ctx):
        return float((layer.SG.double() * layer.W.double().abs()).abs().sum()) * _bits_row(stats)


@register_proxy
class SynflowSigned(_LayerwiseProxy):
    name = "synflow-signed"
    faithful = False  # a variant: never chosen as "the best hand-made proxy"
    description = (
        "sum|VG * W| x b per layer with signed weights (no |W| linearisation): a Synflow-like variant, not the "
        "published Synflow"
    )
    orientation = 1
    cost = "statistics only (virtual gradients)"

    def row(self, layer, stats, ctx):
        return float((layer.VG.double() * layer.W.double()).abs().sum()) * _bits_row(stats)


def gaussian_entropy(x: torch.Tensor) -> float:
    """Differential entropy 0.5*log(2*pi*e*var) of x under a Gaussian assumption (nats)."""
    var = float(x.double().var())
    if var <= 0:
        raise EmqError("QE: a layer's input activations are constant (zero variance); entropy is undefined")
    return 0.5 * float(np.log(2 * np.pi * np.e * var))


@register_proxy
class QE(_LayerwiseProxy):
    name = "qe"
    formula = "qe"
    description = (
        "QE-style entropy: Gaussian entropy 0.5*log(2*pi*e*Var(A)) of the layer input x b (Sun et al., NeurIPS 2022)"
    )
    orientation = 1
    cost = "statistics only (activations)"

    def row(self, layer, stats, ctx):
        return gaussian_entropy(layer.A) * _bits_row(stats)


# OMPQ's orthogonality proxy (Ma et al., AAAI 2023), as a separable table.
#
# Layers whose features resemble many other layers' carry redundant information; a layer
# with unique features deserves more bits. On one calibration batch (the layer outputs Y in
# the statistics), the similarity of layers i and j is linear CKA of their centred Gram
# matrices; gamma_i = sum_{j != i} CKA(i, j); theta_i = exp(-beta * gamma_i). OMPQ maximises
# sum_i (b_i / 8) * mean_{j >= i} theta_j (layers in forward order), which is separable:
# row i of the table is (b / 8) * mean_{j >= i} theta_j, summed into slots.
#
# beta: OMPQ treats it as a hyperparameter; we default to 1.0 (gamma is a sum of L-1 values in
# [0, 1], so beta = 1 keeps theta inside [exp(-(L-1)), 1] without underflow).

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


def _slot_sum(stats: NetworkStats, per_layer: list[float]) -> np.ndarray:
    out = np.zeros(stats.num_slots, dtype=np.float64)
    np.add.at(out, np.asarray(stats.layer_slot), np.asarray(per_layer, dtype=np.float64))
    return out


@register_proxy
class BitSum(SeparableProxy):
    name = "bitsum"
    formula = "bitsum"
    description = "sum of the slot bit-widths (the trivial baseline)"
    orientation = 1
    cost = "free"

    def table(self, ctx: ProxyContext) -> np.ndarray:
        return linear_cost_table(np.ones(require_stats(ctx).num_slots), ctx.bits)


@register_proxy
class ModelSize(SeparableProxy):
    name = "size"
    formula = "size"
    description = "weight size in bytes, sum(params x b / 8) (the size constraint of HAWQ-V3 / OMPQ)"
    orientation = 1
    cost = "free"

    def table(self, ctx: ProxyContext) -> np.ndarray:
        stats = require_stats(ctx)
        return linear_cost_table(_slot_sum(stats, [layer.params / 8.0 for layer in stats.layers]), stats.bits)


@register_proxy
class BitOps(SeparableProxy):
    name = "bitops"
    formula = "bitops"
    description = "BitOps, sum(MACs x b_w x b_a) with the context's activation bits (HAWQ-V3 / OMPQ convention)"
    orientation = 1
    cost = "free"

    def table(self, ctx: ProxyContext) -> np.ndarray:
        stats = require_stats(ctx)
        act_bits = getattr(ctx.settings, "act_bits", DEFAULT_ACT_BITS)
        return linear_cost_table(
            _slot_sum(stats, [float(layer.macs) * float(act_bits) for layer in stats.layers]), stats.bits
        )


@register_proxy
class EmqPublished(_LayerwiseProxy):
    """EMQ's released best genotype (Dong et al., ICCV 2023), decoded into emq's terminals.

    Per layer: mean(softmax_dim0(log|VG|)) x mean(sqrt(relu(Q_b(W)))), averaged over layers.
    Bits enter through the quantized weights Q_b(W). softmax over dim 0 averages to exactly
    1/C_out, so the gradient half only carries the layer's shape: kept as decoded, on purpose.
    """

    name = "emq-published"
    formula = "emq-published"
    description = (
        "EMQ's published best genotype, decoded: mean(softmax_dim0(log|VG|)) x mean(sqrt(relu(Q_b(W)))) (Dong et "
        "al., ICCV 2023)"
    )
    orientation = 1
    cost = "statistics only (virtual gradients, quantized weights)"

    def row(self, layer, stats, ctx):
        logvg = torch.log(layer.VG.double().abs() + 1e-12)
        grad_half = float(torch.softmax(logvg, dim=0).mean())
        q = layer.Q.double()
        weight_half = torch.sqrt(torch.relu(q)).reshape(q.shape[0], -1).mean(dim=1).numpy()
        return grad_half * weight_half / len(stats.layers)
