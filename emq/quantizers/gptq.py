"""GPTQ (Frantar et al., 2023): rounding one weight column at a time, each column's error
compensated on the columns not yet rounded through the inverse Hessian of the layer's
reconstruction loss, H = 2 X X^T over the layer's full-precision calibration inputs.

Grid: the per-output-channel MSE-clipped grid of the default method (GPTQ's quantizer with
its MSE grid search), fixed before the column sweep. Grouped and depthwise convolutions get
one Hessian per group. The sweep is column by column: GPTQ's lazy block updates only change
the order of floating-point work, not the result.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import EmqError
from ..registry import Option
from .base import LayerInputs, WeightQuantizer
from .mse import mse_grid


def layer_hessian(layer: LayerInputs, batch_size: int = 64) -> torch.Tensor:
    """H = 2/n sum x x^T over the layer's input columns, one [d, d] block per group: [g, d, d]."""
    m = layer.module
    groups = m.groups if isinstance(m, nn.Conv2d) else 1
    h = None
    count = 0
    for i in range(0, layer.inputs.shape[0], batch_size):
        x = layer.inputs[i : i + batch_size].double()
        if isinstance(m, nn.Conv2d):
            cols = F.unfold(x, m.kernel_size, m.dilation, m.padding, m.stride)  # [N, C*k, L]
            n, ck, length = cols.shape
            cols = (
                cols.reshape(n, groups, ck // groups, length)
                .permute(1, 2, 0, 3)
                .reshape(groups, ck // groups, n * length)
            )
        else:
            cols = x.reshape(-1, x.shape[-1]).T.unsqueeze(0)
        part = cols @ cols.transpose(1, 2)
        h = part if h is None else h + part
        count += cols.shape[-1]
    if h is None:
        raise EmqError("GPTQ needs at least one calibration input per layer")
    return 2.0 * h / count


def gptq_round(weight: torch.Tensor, hessian: torch.Tensor, bits: int, *, symmetric: bool, damp: float) -> torch.Tensor:
    """The GPTQ-rounded weight (same shape) given the per-group Hessians [g, d, d]."""
    groups, d = hessian.shape[0], hessian.shape[1]
    cout = weight.shape[0]
    grid = mse_grid(weight, bits, symmetric)
    w = weight.detach().reshape(groups, cout // groups, d).double().clone()
    scale = grid.scale.double().reshape(groups, cout // groups)
    zero = grid.zero.double().reshape(groups, cout // groups)
    h = hessian.clone()
    diag = torch.diagonal(h, dim1=1, dim2=2)
    dead = diag == 0  # inputs that are always zero: their weights never matter
    diag[dead] = 1.0
    w[dead.unsqueeze(1).expand_as(w)] = 0.0
    diag += damp * diag.mean(dim=1, keepdim=True)
    try:
        hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    except RuntimeError as e:
        raise EmqError(
            f"GPTQ: the layer Hessian is not positive definite even with damping {damp}; raise the damp option"
        ) from e
    q = torch.empty_like(w)
    for j in range(d):
        col = w[:, :, j]
        qc = ((torch.round(col / scale) + zero).clamp(grid.qmin, grid.qmax) - zero) * scale
        q[:, :, j] = qc
        err = (col - qc) / hinv[:, j, j].unsqueeze(1)
        w[:, :, j:] -= err.unsqueeze(2) * hinv[:, j, j:].unsqueeze(1)
    return q.reshape(weight.shape).to(weight.dtype)


class GPTQ(WeightQuantizer):
    name = "gptq"
    description = (
        "GPTQ: column-wise rounding with inverse-Hessian error compensation against the layer's full-precision "
        "calibration inputs, on the MSE-clipped grid"
    )
    needs_inputs = True
    options = (Option("damp", float, 0.01, "dampening added to the layer Hessian's diagonal, relative to its mean"),)

    def quantize(
        self, weight: torch.Tensor, bits: int, symmetric: bool = False, layer: LayerInputs | None = None
    ) -> torch.Tensor:
        if layer is None:
            raise EmqError("GPTQ reconstructs a layer's output: it needs the layer's calibration inputs")
        return gptq_round(weight, layer_hessian(layer), bits, symmetric=symmetric, damp=float(self.params["damp"]))
