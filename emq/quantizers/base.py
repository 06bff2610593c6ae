"""The weight-quantizer interface, its registry and the uniform affine primitive."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import Option, Registry
from ..specs import ParameterError

QUANTIZERS: Registry[type[WeightQuantizer]] = Registry("weight quantizer", "weight_quantizer")


def fake_quant(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int) -> torch.Tensor:
    """Uniform affine quantize-dequantize of x onto 2^bits levels spanning [lo, hi]."""
    qmax = 2**bits - 1
    scale = ((hi - lo) / qmax).clamp_min(1e-12)
    zero = torch.round(-lo / scale)
    q = torch.div(x, scale).round_().add_(zero).clamp_(0, qmax)  # in place: one buffer, same arithmetic
    return q.sub_(zero).mul_(scale)


@dataclass
class LayerInputs:
    """What a data-aware rounding method reconstructs against: the layer (for its geometry:
    stride, padding, groups) and its full-precision inputs on calibration images [N, ...]."""

    module: nn.Module
    inputs: torch.Tensor

    def output(self, weight: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """The layer's pre-activation output with `weight` (no bias: it cancels in an error)."""
        x = self.inputs if x is None else x
        m = self.module
        if isinstance(m, nn.Conv2d):
            return F.conv2d(x, weight, None, m.stride, m.padding, m.dilation, m.groups)
        return F.linear(x, weight)

    def error(self, weight: torch.Tensor, reference: torch.Tensor, batch_size: int = 256) -> float:
        """Mean squared output error of `weight` against `reference` on all inputs."""
        total, count = 0.0, 0
        with torch.no_grad():
            for i in range(0, self.inputs.shape[0], batch_size):
                x = self.inputs[i : i + batch_size]
                d = self.output(weight, x) - self.output(reference, x)
                total += float(d.double().pow(2).sum())
                count += d.numel()
        return total / max(count, 1)


class WeightQuantizer(ABC):
    """Q_b(W): one layer's full-precision weight [C_out, ...] -> its dequantized b-bit weight.

    Subclasses set `name` (the `PTQSettings.weight_quantizer` value) and `description`;
    defining the class registers it. `quantize` must be deterministic and must not modify
    its input: the engine caches its result per (layer, bits) and the statistics store it.
    Methods that reconstruct a layer's output set `needs_inputs`; they receive the layer's
    full-precision calibration inputs, so their result still depends only on (layer, bits)
    and is cached on disk (emq.rounding). `options` describe the method's settings (name,
    type, default, help: what `--quantizer-option KEY=VALUE` accepts and its help lists); the
    values used are in `self.params` and recorded in bench metadata.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    needs_inputs: ClassVar[bool] = False
    options: ClassVar[tuple[Option, ...]] = ()

    def __init__(self, **options: Any) -> None:
        self.params = resolve_options(self.name, type(self).options, options)

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:  # else an abstract intermediate class
            QUANTIZERS.add(cls.name, cls)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Option name -> default value."""
        return {o.name: o.default for o in cls.options}

    @abstractmethod
    def quantize(
        self, weight: torch.Tensor, bits: int, symmetric: bool = False, layer: LayerInputs | None = None
    ) -> torch.Tensor:
        """The dequantized weight, same shape and dtype as `weight` (`layer` given iff `needs_inputs`)."""


def resolve_options(
    method: str, options: Sequence[Option], given: Mapping[str, Any], param: str = "quantizer_options"
) -> dict[str, Any]:
    """The defaults updated by `given`, each value coerced to its option's type; unknown keys refused."""
    described = {o.name: o for o in options}
    out = {o.name: o.default for o in options}
    for key, value in given.items():
        if key not in described:
            known = ", ".join(described) or "none"
            raise ParameterError(
                param, f"{key}={value}", f"weight quantizer {method!r} has no option {key!r} (its options: {known})"
            )
        kind = described[key].type
        try:
            out[key] = (
                (str(value).lower() in ("1", "true", "yes")) if kind is bool and isinstance(value, str) else kind(value)
            )
        except (TypeError, ValueError) as e:
            raise ParameterError(
                param, f"{key}={value}", f"must be {'an integer' if kind is int else 'a ' + kind.__name__}"
            ) from e
        if kind in (int, float) and out[key] < 0:
            raise ParameterError(param, f"{key}={value}", "must not be negative")
    return out


def check_quantizer_name(name: str, param: str = "weight_quantizer") -> str:
    """`name` if a weight quantizer is registered under it, else a ParameterError listing the choices."""
    if name not in QUANTIZERS:
        raise ParameterError(param, name, f"unknown weight quantizer; use one of {', '.join(QUANTIZERS)}")
    return name


def get_weight_quantizer(
    name: str, options: Mapping[str, Any] | None = None, param: str = "weight_quantizer"
) -> WeightQuantizer:
    """A fresh instance of the registered weight quantizer `name` with `options`."""
    return QUANTIZERS[check_quantizer_name(name, param)](**(options or {}))
