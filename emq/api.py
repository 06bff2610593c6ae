"""The public Python API: the same capabilities, with the same names, as the CLI.

`emq layers` -> `layers`, `emq quantize` -> `quantize`, `emq bench build|info|import|export`
-> `bench_build` / `bench_info` / `bench_import` / `bench_export` (and `Bench` for queries),
`emq stats` -> `stats`, `emq search` -> `search` (and the estimator `ProxySearch`), `emq export` -> `export`, `emq score` ->
`score`, `emq allocate` -> `allocate` / `sweep`, `emq demo` -> `demo`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from .allocation import Allocation, Allocator, allocate, load_bitmap, save_bitmap, sweep
from .baselines import PROXIES, get_proxy
from .bench import Bench, bench_build, bench_export, bench_import, bench_info
from .data import DataSplits
from .device import resolve_device
from .evolution import HallOfFame, ProxySearch, SearchResult, search
from .executors import Executor, make_executor
from .layermap import LayerMap
from .pipeline_demo import demo
from .quant import PTQEngine, PTQSettings, QuantResult
from .ranking import score
from .rendering import export
from .search_space.proxyfile import load_proxy, save_proxy
from .search_space.pset import make_space
from .search_space.stats import StatsSettings, compute_stats, stats
from .specs import ParameterError
from .target import ModelSpec, as_model_spec, resolve_target

__all__ = [
    "PROXIES",
    "Allocation",
    "Allocator",
    "Bench",
    "Executor",
    "HallOfFame",
    "ModelSpec",
    "PTQEngine",
    "PTQSettings",
    "ProxySearch",
    "QuantResult",
    "SearchResult",
    "make_executor",
    "StatsSettings",
    "allocate",
    "bench_build",
    "bench_export",
    "bench_import",
    "bench_info",
    "compute_stats",
    "demo",
    "export",
    "get_proxy",
    "layers",
    "load_bitmap",
    "load_proxy",
    "make_space",
    "quantize",
    "resolve_target",
    "save_bitmap",
    "save_proxy",
    "score",
    "search",
    "stats",
    "sweep",
]


def layers(
    model: str | nn.Module = "default", input_size: int | None = None, num_classes: int | None = None
) -> LayerMap:
    """The layer map (slots, params, MACs) of a model; `emq layers`."""
    return resolve_target(model, num_classes=num_classes, input_size=input_size, need_data=False).layer_map


def quantize(
    model: ModelSpec | str | nn.Module = "default",
    bits: Sequence[int] | None = None,
    *,
    data: str | DataSplits | None = None,
    settings: PTQSettings | None = None,
    weights: Path | None = None,
    input_size: int | None = None,
    num_classes: int | None = None,
    bitmap: str | Path | None = None,
    progress: bool = False,
    device: str | torch.device = "cpu",
) -> QuantResult:
    """PTQ-quantize a model with a per-slot configuration (`bits`) or a bit map file from
    `emq allocate --out` / `Allocation.save` (`bitmap`, checked against the model) and
    evaluate it; `emq quantize`. `model` is a name, an nn.Module or a ModelSpec (that holds
    the data, weights, ... too). The model is built and traced once; it runs on `device`
    (cpu, cuda or cuda:N), which changes no setting and no calibration draw."""
    if (bits is None or len(bits) == 0) == (bitmap is None):
        raise ParameterError(
            "bits",
            bits,
            "give the configuration as bits (one bit-width per slot; see `layers`) or as bitmap=PATH, not both",
        )
    device = resolve_device(device)  # before any model work
    target = as_model_spec(model, data, weights, num_classes, input_size).resolve()
    config = load_bitmap(bitmap, target.layer_map) if bitmap is not None else target.layer_map.validate(bits)
    return PTQEngine(
        target.model, target.layer_map, target.require_data(), settings, progress=progress, device=device
    ).evaluate(config)
