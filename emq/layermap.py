"""The layer map: quantizable layers in forward order, grouped into bit slots, with costs.

A configuration is one bit-width per *slot*. Most models have one slot per layer; for
ResNets the MQ-Bench-101 policy ties each stage's 1x1 downsample conv to the block conv
executed just before it, so torchvision's resnet18 has exactly 18 slots.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .errors import EmqError
from .specs import DEFAULT_ACT_BITS, check_weight_bits

QUANTIZABLE = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True, kw_only=True)
class Layer:
    """One quantizable module."""

    name: str
    kind: str  # "conv" or "linear"
    params: int  # weight elements
    bias: int  # bias elements (kept at 32 bits)
    macs: int  # multiply-accumulates per input sample
    out_channels: int


@dataclass(frozen=True, kw_only=True)
class Slot:
    """One bit-width decision; several tied layers may share it."""

    name: str
    modules: tuple[str, ...]
    params: int
    bias: int
    macs: int


@dataclass(kw_only=True)
class LayerMap:
    model: str
    input_size: int
    layers: list[Layer]
    slots: list[Slot]
    layer_slot: list[int] = field(default_factory=list)  # slot index of every layer

    @property
    def num_slots(self) -> int:
        return len(self.slots)

    @property
    def slot_names(self) -> list[str]:
        return [s.name for s in self.slots]

    @property
    def params(self) -> np.ndarray:
        return np.array([s.params for s in self.slots], dtype=np.float64)

    @property
    def macs(self) -> np.ndarray:
        return np.array([s.macs for s in self.slots], dtype=np.float64)

    @property
    def bias_bytes(self) -> float:
        return 4.0 * sum(s.bias for s in self.slots)

    @property
    def fp_size_bytes(self) -> float:
        """Size of the quantizable weights and biases at 32-bit float."""
        return 4.0 * float(self.params.sum()) + self.bias_bytes

    def validate(self, bits: Sequence[int], what: str = "--bits") -> tuple[int, ...]:
        """Check a configuration's length and range; returns it as a tuple of ints."""
        bits = tuple(int(b) for b in bits)
        if len(bits) != self.num_slots:
            raise EmqError(
                f"{what}: {len(bits)} bit-widths given, but {self.model} has {self.num_slots} slots "
                f"(see `emq layers --model {self.model}`)"
            )
        return tuple(check_weight_bits(b, "bits") for b in bits)

    def size_bytes(self, bits: Sequence[int] | np.ndarray) -> np.ndarray | float:
        """Model size: weights at their bits plus 32-bit biases. Accepts [S] or [N, S]."""
        b = np.asarray(bits, dtype=np.float64)
        out = b @ self.params / 8.0 + self.bias_bytes
        return float(out) if out.ndim == 0 else out

    def bitops(self, bits: Sequence[int] | np.ndarray, act_bits: int = DEFAULT_ACT_BITS) -> np.ndarray | float:
        """BitOps = sum of MACs x weight bits x activation bits (activation bits explicit)."""
        b = np.asarray(bits, dtype=np.float64)
        out = b @ self.macs * float(act_bits)
        return float(out) if out.ndim == 0 else out

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "input_size": self.input_size,
            "slots": [
                {"name": s.name, "modules": list(s.modules), "params": s.params, "bias": s.bias, "macs": s.macs}
                for s in self.slots
            ],
            "fp_size_bytes": self.fp_size_bytes,
        }


def _trace_layers(model: nn.Module, example: torch.Tensor) -> list[Layer]:
    """Run one forward pass and record quantizable modules in the order they execute."""
    names = {m: n for n, m in model.named_modules() if isinstance(m, QUANTIZABLE)}
    seen: dict[str, Layer] = {}
    hooks = []

    def hook(mod: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        name = names[mod]
        if name in seen:
            raise EmqError(f"module {name} runs twice in one forward pass; weight sharing is not supported")
        per_sample = out[0].numel()
        if isinstance(mod, nn.Conv2d):
            k = mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
            seen[name] = Layer(
                name=name,
                kind="conv",
                params=mod.weight.numel(),
                bias=0 if mod.bias is None else mod.bias.numel(),
                macs=per_sample * k,
                out_channels=mod.out_channels,
            )
        else:
            seen[name] = Layer(
                name=name,
                kind="linear",
                params=mod.weight.numel(),
                bias=0 if mod.bias is None else mod.bias.numel(),
                macs=per_sample * mod.in_features,
                out_channels=mod.out_features,
            )

    for m in names:
        hooks.append(m.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if not seen:
        raise EmqError("the model has no Conv2d or Linear layer to quantize")
    return list(seen.values())


def _is_resnet_downsample(name: str) -> bool:
    return name.endswith("downsample.0")


def build_layer_map(
    model: nn.Module,
    input_size: int,
    model_name: str = "model",
    *,
    in_channels: int | None = None,
    policy: str = "auto",
) -> LayerMap:
    """Trace the model and group its layers into slots.

    policy: "auto" ties ResNet downsample convs to the preceding layer (MQ-Bench-101) when
    the model has them; "per-layer" gives every layer its own slot.
    """
    if in_channels is None:
        first = next((m for m in model.modules() if isinstance(m, QUANTIZABLE)), None)
        in_channels = first.in_channels if isinstance(first, nn.Conv2d) else 3
    param = next(model.parameters(), torch.zeros(()))
    example = torch.zeros(1, in_channels, input_size, input_size, dtype=param.dtype, device=param.device)
    layers = _trace_layers(model, example)
    if policy not in ("auto", "per-layer"):
        raise EmqError(f"slot policy {policy!r}: use 'auto' or 'per-layer'")
    groups: list[list[Layer]] = []
    for layer in layers:
        if policy == "auto" and _is_resnet_downsample(layer.name) and groups:
            groups[-1].append(layer)
        else:
            groups.append([layer])
    slots = [
        Slot(
            name=g[0].name,
            modules=tuple(x.name for x in g),
            params=sum(x.params for x in g),
            bias=sum(x.bias for x in g),
            macs=sum(x.macs for x in g),
        )
        for g in groups
    ]
    layer_slot = [i for i, g in enumerate(groups) for _ in g]
    return LayerMap(model=model_name, input_size=input_size, layers=layers, slots=slots, layer_slot=layer_slot)
