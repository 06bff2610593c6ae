"""AdaRound (Nagel et al., 2020): learned up/down rounding per weight on the MSE-clipped grid.

Each weight is floor(W/s) + h(V) with the rectified sigmoid h(V) = clip(sigmoid(V)(zeta -
gamma) + gamma, 0, 1); V minimises the layer's output reconstruction error against its
full-precision calibration inputs plus lambda * sum(1 - |2h(V) - 1|^beta), beta annealed
from 20 to 2 after a warm-up without the regulariser (BRECQ's schedule), which drives every
h(V) to 0 or 1; the final rounding is h(V) >= 0.5. MQ-Bench-101 ran 20,000 iterations per
layer on a GPU at Adam's default learning rate (1e-3); the default here is 2,000 at 1e-2, which
reaches the same all-0/1 rounding on CPU (tested); both are options, recorded in the bench.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import EmqError
from ..registry import Option
from .base import LayerInputs, WeightQuantizer
from .mse import mse_grid

ZETA, GAMMA = 1.1, -0.1


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    return (torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA).clamp(0, 1)


def beta_at(step: int, iters: int, *, warmup: float, start: float, end: float) -> float | None:
    """The regulariser's beta at `step`, None during the warm-up (no regulariser)."""
    begin = int(warmup * iters)
    if step < begin:
        return None
    rel = (step - begin) / max(iters - begin, 1)
    return end + (start - end) * max(0.0, 1.0 - rel)


def adaround(
    weight: torch.Tensor, layer: LayerInputs, bits: int, *, symmetric: bool, p: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rounded weight, final soft rounding h(V)) of one layer."""
    grid = mse_grid(weight, bits, symmetric)
    flat = weight.detach().reshape(weight.shape[0], -1)
    base = torch.floor(flat / grid.scale)
    rest = (flat / grid.scale - base).clamp(0, 1)
    v = (-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1)).clamp(-8, 8).requires_grad_(True)  # h(V0) = rest
    opt = torch.optim.Adam([v], lr=float(p["lr"]))
    gen = torch.Generator().manual_seed(int(p["seed"]))
    n = layer.inputs.shape[0]
    batch = min(int(p["batch"]), n)

    def soft_weight() -> torch.Tensor:
        q = (base + rectified_sigmoid(v) + grid.zero).clamp(grid.qmin, grid.qmax)
        return grid.dequant(q).reshape(weight.shape)

    iters = int(p["iters"])
    for step in range(iters):
        idx = torch.randint(0, n, (batch,), generator=gen)  # drawn on the CPU: the same batches on every device
        x = layer.inputs[idx.to(layer.inputs.device)]
        with torch.no_grad():
            target = layer.output(weight, x)
        out = layer.output(soft_weight(), x)
        loss = (out - target).pow(2).sum(1).mean()
        beta = beta_at(step, iters, warmup=float(p["warmup"]), start=float(p["beta_start"]), end=float(p["beta_end"]))
        if beta is not None:
            h = rectified_sigmoid(v)
            loss = loss + float(p["reg"]) * (1 - (2 * h - 1).abs().pow(beta)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        h = rectified_sigmoid(v)
        hard = (base + (h >= 0.5).to(flat.dtype) + grid.zero).clamp(grid.qmin, grid.qmax)
        return grid.dequant(hard).reshape(weight.shape).to(weight.dtype), h.detach()


class AdaRound(WeightQuantizer):
    name = "adaround"
    description = (
        "AdaRound: learned rounding on the MSE-clipped grid, layer-wise reconstruction against full-precision "
        "calibration inputs (BRECQ's schedule)"
    )
    needs_inputs = True
    options = (
        Option("iters", int, 2000, "optimisation steps per layer and bit-width"),
        Option("batch", int, 32, "calibration inputs per step"),
        Option("lr", float, 1e-2, "Adam's learning rate"),
        Option("reg", float, 0.01, "weight lambda of the rounding regulariser"),
        Option("beta_start", float, 20.0, "the regulariser's beta after the warm-up"),
        Option("beta_end", float, 2.0, "its beta at the last step"),
        Option("warmup", float, 0.2, "fraction of the steps without the regulariser"),
        Option("seed", int, 0, "seed of the calibration batch draws"),
    )

    def quantize(
        self, weight: torch.Tensor, bits: int, symmetric: bool = False, layer: LayerInputs | None = None
    ) -> torch.Tensor:
        if layer is None:
            raise EmqError("AdaRound reconstructs a layer's output: it needs the layer's calibration inputs")
        if int(self.params["iters"]) < 1 or int(self.params["batch"]) < 1:
            raise EmqError("AdaRound options iters and batch must be at least 1")
        with torch.enable_grad():
            return adaround(weight, layer, bits, symmetric=symmetric, p=self.params)[0]
