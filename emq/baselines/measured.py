"""Measured per-layer sensitivity as separable proxies (AIMET's AMP, Sony MCT, Qualcomm's SQNR method).

Each table is emq.sensitivity's: slot s alone at bit b (every other slot at 8 bits), measured
on calibration images against the full-precision network; a configuration's score is the sum
over its slots. Higher = worse for all three (orientation -1). The tables of one context are
measured once and shared by the three proxies (and cached on disk).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import numpy as np

from ..proxy import ProxyContext, SeparableProxy
from ..quant import PTQSettings
from ..sensitivity import context_sensitivity, stored_sensitivity
from .registry import register_proxy

COST = "one single-slot PTQ run per (slot, bit) on calibration images (prefix reused)"


def _table(ctx: ProxyContext, metric: str) -> np.ndarray:
    return context_sensitivity(ctx).table(metric).copy()


class _MeasuredProxy(SeparableProxy):
    """A table of emq.sensitivity: measured on the target's data, or carried by its statistics."""

    needs_data = True
    orientation = -1
    cost = COST

    @property
    @abstractmethod
    def metric(self) -> str:
        """The emq.sensitivity table this proxy sums (a subclass sets it as a class attribute)."""

    def needs_data_for(self, ctx: ProxyContext) -> bool:
        if "sensitivity" in ctx.cache:
            return False
        return stored_sensitivity(ctx.stats, ctx.bits, ctx.settings or PTQSettings()) is None

    def table(self, ctx: ProxyContext) -> np.ndarray:
        return _table(ctx, self.metric)

    def setup_cost(self, ctx: ProxyContext) -> dict[str, Any]:
        return measurement_cost(ctx)


def measurement_cost(ctx: ProxyContext) -> dict[str, Any]:
    m = context_sensitivity(ctx).meta
    keys = ("seconds", "rounding_seconds", "ptq_evaluation_seconds", "ptq_equivalents", "single_slot_evaluations")
    return {k: m.get(k) for k in keys} | {
        "images": m.get("images"),
        "cache_hit": bool((m.get("cache") or {}).get("hit")),
    }


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
