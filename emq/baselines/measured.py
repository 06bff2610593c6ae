"""Measured per-layer sensitivity as separable proxies (AIMET's AMP, Sony MCT, Qualcomm's SQNR method).

Each table is emq.sensitivity's: slot s alone at bit b (every other slot at 8 bits), measured
on calibration images against the full-precision network; a configuration's score is the sum
over its slots. Higher = worse for all three (orientation -1). The tables of one context are
measured once and shared by the three proxies (and cached on disk).

`layer-kl-mid` is emq's variant (its own name, not faithful to a published method): the same
measurement with every other slot at the middle bit-width of the bit set (3 of {2, 3, 4}), so a
slot's table is its effect inside a typical mixed configuration rather than beside 8-bit
neighbours, whose errors do not add up the way a low-bit configuration's do.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..proxy import ProxyContext, SeparableProxy
from ..quant import PTQSettings
from ..sensitivity import (
    SensitivitySettings,
    context_key,
    context_sensitivity,
    in_context,
    measured_keys,
    measurement_cost,
    stored_sensitivity,
)
from .registry import register_proxy

COST = "one single-slot PTQ run per (slot, bit) on calibration images (prefix reused)"


class _MeasuredProxy(SeparableProxy):
    """A table of emq.sensitivity: measured on the target's data, or carried by its statistics."""

    needs_data = True
    orientation = -1
    cost = COST

    @property
    @abstractmethod
    def metric(self) -> str:
        """The emq.sensitivity table this proxy sums (a subclass sets it as a class attribute)."""

    def measurement(self, ctx: ProxyContext) -> SensitivitySettings | None:
        """How the tables are measured (None: the default settings, which shipped bundles carry)."""
        return None

    def needs_data_for(self, ctx: ProxyContext) -> bool:
        settings = self.measurement(ctx)
        if context_key(settings) in ctx.cache:
            return False
        return stored_sensitivity(ctx.stats, ctx.bits, ctx.settings or PTQSettings(), settings) is None

    def table(self, ctx: ProxyContext) -> np.ndarray:
        return context_sensitivity(ctx, self.measurement(ctx)).table(self.metric).copy()

    def setup_cost(self, ctx: ProxyContext) -> dict[str, Any]:
        return measurement_cost(ctx, self.measurement(ctx))


@register_proxy
class LayerKL(_MeasuredProxy):
    name = "layer-kl"
    formula = "layer-kl"
    metric = "kl"
    description = (
        "measured sensitivity: KL(FP || slot alone at b bits, others at 8) on calibration images, summed over slots"
    )


@register_proxy
class LayerLoss(_MeasuredProxy):
    name = "layer-loss"
    formula = "layer-loss"
    metric = "loss"
    description = (
        "measured sensitivity: cross-entropy change with the slot alone at b bits (others at 8) on calibration "
        "images, summed over slots"
    )


@register_proxy
class LayerSQNR(_MeasuredProxy):
    name = "layer-sqnr"
    formula = "layer-sqnr"
    metric = "nsr"
    description = (
        "measured sensitivity: output noise-to-signal ratio 10^(-SQNR/10) of the logits with the slot alone at b bits "
        "(others at 8) on calibration images, summed over slots (Pandey et al., 2023's per-layer SQNR)"
    )


@register_proxy
class LayerKLMid(_MeasuredProxy):
    name = "layer-kl-mid"
    formula = "layer-kl-mid"
    metric = "kl"
    description = (
        "measured sensitivity in context: KL(FP || slot at b bits, every other slot at the middle bit-width of the "
        "bit set) on calibration images, summed over slots: emq's variant of layer-kl, not a published method"
    )
    faithful = False  # emq's variant of the measured sensitivity, not a published method

    def measurement(self, ctx: ProxyContext) -> SensitivitySettings:
        return in_context(ctx.bits)


def table_proxies(terminals: Sequence[str]) -> list[str]:
    """The measured proxies whose tables a set of terminals reads (`layer-kl` for MKL, MDL and MNSR,
    `layer-kl-mid` for MKLM): what a formula over them costs on a network, in those proxies' own costs."""
    from ..search_space.primitives import MEASURED_KEY, MEASURED_MID_KEY

    read = measured_keys(terminals)
    return [name for key, name in ((MEASURED_KEY, LayerKL.name), (MEASURED_MID_KEY, LayerKLMid.name)) if key in read]
