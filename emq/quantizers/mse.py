"""The default rounding: per-output-channel uniform grid with the MSE-optimal clipping ratio."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..specs import check_weight_bits
from .base import WeightQuantizer, fake_quant

CLIP_GRID = 40  # candidate clipping ratios in the MSE search


def quantize_weight(w: torch.Tensor, bits: int, symmetric: bool = False, grid: int = CLIP_GRID) -> torch.Tensor:
    """Per-output-channel quantization with the clipping ratio that minimises the MSE.

    Symmetric: levels k*s for k in [-2^(b-1), 2^(b-1)-1], s from alpha*max|w|.
    Asymmetric: 2^b levels over [alpha*min, alpha*max] with a zero point.
    """
    check_weight_bits(bits)
    flat = w.detach().reshape(w.shape[0], -1)
    best = flat.clone()
    best_err = torch.full((flat.shape[0],), float("inf"), dtype=flat.dtype, device=flat.device)
    wmin = flat.min(dim=1, keepdim=True).values.clamp(max=0)
    wmax = flat.max(dim=1, keepdim=True).values.clamp(min=0)
    amax = torch.maximum(wmax, -wmin)
    for i in range(grid):
        alpha = 1.0 - i * (0.9 / grid)
        if symmetric:
            qlo, qhi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
            scale = (alpha * amax / 2 ** (bits - 1)).clamp_min(1e-12)
            q = torch.clamp(torch.round(flat / scale), qlo, qhi) * scale
        else:
            q = fake_quant(flat, alpha * wmin, alpha * wmax, bits)
        err = (q - flat).pow(2).sum(dim=1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better.unsqueeze(1), q, best)  # not a masked assignment: no host sync per candidate on a GPU
    return best.reshape(w.shape)


@dataclass
class Grid:
    """Per-output-channel uniform grids: level k of channel c is (k - zero[c]) * scale[c], k in [qmin, qmax]."""

    scale: torch.Tensor  # [C, 1]
    zero: torch.Tensor  # [C, 1]
    qmin: int
    qmax: int

    def to_int(self, flat: torch.Tensor, rounding=torch.round) -> torch.Tensor:
        """Grid indices of `flat` [C, K] under `rounding` (round, floor), clamped to the grid."""
        return (rounding(flat / self.scale) + self.zero).clamp(self.qmin, self.qmax)

    def dequant(self, q: torch.Tensor) -> torch.Tensor:
        return (q - self.zero) * self.scale

    def fake(self, flat: torch.Tensor) -> torch.Tensor:
        """Round-to-nearest onto the grid: what `quantize_weight` returns, as a [C, K] matrix."""
        return self.dequant(self.to_int(flat))


def mse_grid(w: torch.Tensor, bits: int, symmetric: bool = False, grid: int = CLIP_GRID) -> Grid:
    """The per-channel grids `quantize_weight` rounds onto (same clipping search), for methods
    that choose the rounding themselves (GPTQ, AdaRound) on the MSE-optimal grid."""
    check_weight_bits(bits)
    flat = w.detach().reshape(w.shape[0], -1)
    wmin = flat.min(dim=1, keepdim=True).values.clamp(max=0)
    wmax = flat.max(dim=1, keepdim=True).values.clamp(min=0)
    amax = torch.maximum(wmax, -wmin)
    best_err = torch.full((flat.shape[0], 1), float("inf"), dtype=flat.dtype, device=flat.device)
    scale = torch.ones_like(best_err)
    zero = torch.zeros_like(best_err)
    qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)
    for i in range(grid):
        alpha = 1.0 - i * (0.9 / grid)
        if symmetric:
            s = (alpha * amax / 2 ** (bits - 1)).clamp_min(1e-12)
            z = torch.zeros_like(s)
        else:
            s = ((alpha * wmax - alpha * wmin) / qmax).clamp_min(1e-12)
            z = torch.round(-alpha * wmin / s)
        cand = Grid(s, z, qmin, qmax)
        err = (cand.fake(flat) - flat).pow(2).sum(dim=1, keepdim=True)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        scale, zero = torch.where(better, s, scale), torch.where(better, z, zero)
    return Grid(scale, zero, qmin, qmax)


class MSEClipped(WeightQuantizer):
    name = "mse"
    description = (
        f"per-output-channel uniform rounding, clipping ratio searched over {CLIP_GRID} values for the least "
        "squared error"
    )

    def quantize(self, weight: torch.Tensor, bits: int, symmetric: bool = False, layer=None) -> torch.Tensor:
        return quantize_weight(weight, bits, symmetric)
