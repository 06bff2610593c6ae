"""The public Python API: the same capabilities, with the same names, as the CLI."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import nn

from .data import DataSplits
from .layermap import LayerMap
from .quant import PTQEngine, PTQSettings, QuantResult
from .target import resolve_target


def layers(model: str | nn.Module = "default", input_size: int | None = None, num_classes: int | None = None) -> LayerMap:
    """The layer map (slots, params, MACs) of a model; `emq layers`."""
    return resolve_target(model, num_classes=num_classes, input_size=input_size, need_data=False).layer_map


def quantize(
    model: str | nn.Module = "default",
    bits: Sequence[int] = (),
    data: str | DataSplits | None = None,
    settings: PTQSettings | None = None,
    weights: Path | None = None,
    input_size: int | None = None,
) -> QuantResult:
    """PTQ-quantize a model with a per-slot configuration and evaluate it; `emq quantize`."""
    target = resolve_target(model, data, weights=weights, input_size=input_size)
    bits = target.layer_map.validate(bits)
    return PTQEngine(target.model, target.layer_map, target.require_data(), settings).evaluate(bits)


from .search_space.stats import StatsSettings, compute_stats, stats, summarize  # noqa: E402
