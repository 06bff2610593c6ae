"""The weight-quantizer interface, its registry and the uniform affine primitive."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch

from ..errors import EmqError
from ..specs import ParameterError

QUANTIZERS: dict[str, type[WeightQuantizer]] = {}


def fake_quant(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int) -> torch.Tensor:
    """Uniform affine quantize-dequantize of x onto 2^bits levels spanning [lo, hi]."""
    qmax = 2**bits - 1
    scale = ((hi - lo) / qmax).clamp_min(1e-12)
    zero = torch.round(-lo / scale)
    q = torch.div(x, scale).round_().add_(zero).clamp_(0, qmax)  # in place: one buffer, same arithmetic
    return q.sub_(zero).mul_(scale)


class WeightQuantizer(ABC):
    """Q_b(W): one layer's full-precision weight [C_out, ...] -> its dequantized b-bit weight.

    Subclasses set `name` (the `PTQSettings.weight_quantizer` value) and `description`;
    defining the class registers it. `quantize` must be deterministic and must not modify
    its input: the engine caches its result per (layer, bits) and the statistics store it.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.name:
            return  # an abstract intermediate class
        if cls.name in QUANTIZERS:
            raise EmqError(f"weight quantizer {cls.name!r} is defined twice ({QUANTIZERS[cls.name].__qualname__} and {cls.__qualname__})")
        QUANTIZERS[cls.name] = cls

    @abstractmethod
    def quantize(self, weight: torch.Tensor, bits: int, symmetric: bool = False) -> torch.Tensor:
        """The dequantized weight, same shape and dtype as `weight`."""


def check_quantizer_name(name: str, param: str = "weight_quantizer") -> str:
    """`name` if a weight quantizer is registered under it, else a ParameterError listing the choices."""
    if name not in QUANTIZERS:
        raise ParameterError(param, name, f"unknown weight quantizer; use one of {', '.join(QUANTIZERS)}")
    return name


def get_weight_quantizer(name: str, param: str = "weight_quantizer") -> WeightQuantizer:
    """A fresh instance of the registered weight quantizer `name`."""
    return QUANTIZERS[check_quantizer_name(name, param)]()
