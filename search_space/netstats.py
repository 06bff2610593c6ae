"""The container of per-layer network statistics: the inputs (terminals) of every proxy.

Layout (all tensors float32, CPU unless moved):

- weight-shaped, per layer: ``W`` (weights), ``G`` (task-loss gradient), ``VG`` (data-free
  virtual gradient, Synflow-style), ``H`` (Hutchinson Hessian diagonal);
- activation-shaped, per layer: ``A`` (layer input), ``Y`` (layer output), ``GY`` (gradient
  w.r.t. the output), ``AE`` (activation quantization noise Q(A)-A at the activation bits);
  the leading dimension is the (possibly capped) sample count;
- bit-dependent, per layer: ``Q`` and ``E`` of shape [B, *W.shape] holding Q_b(W) and
  Q_b(W)-W for every b in ``NetworkStats.bits`` (same quantizer as the PTQ engine);
- scalars, per layer: ``trace`` (Tr H), ``eig`` (top Hessian eigenvalue), ``params``,
  ``macs``, ``out_channels``.

Layers are in the layer map's forward order, each named by its module name; ``layer_slot``
maps every layer to its bit slot.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

TENSOR_FIELDS = ("W", "G", "VG", "H", "A", "Y", "GY", "AE", "Q", "E")
SCALAR_FIELDS = ("trace", "eig", "params", "macs", "out_channels")


@dataclass
class LayerStats:
    name: str
    W: torch.Tensor
    G: torch.Tensor
    VG: torch.Tensor
    H: torch.Tensor
    A: torch.Tensor
    Y: torch.Tensor
    GY: torch.Tensor
    AE: torch.Tensor
    Q: torch.Tensor
    E: torch.Tensor
    trace: float
    eig: float
    params: int
    macs: int
    out_channels: int


@dataclass
class NetworkStats:
    bits: tuple[int, ...]
    layers: list[LayerStats]
    layer_slot: list[int]
    meta: dict = field(default_factory=dict)  # settings, hashes, seconds per statistic

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    @property
    def num_slots(self) -> int:
        return max(self.layer_slot) + 1 if self.layer_slot else 0
