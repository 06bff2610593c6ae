"""The public Python API: the same capabilities, with the same names, as the CLI.

`emq layers` -> `layers`, `emq quantize` -> `quantize`, `emq bench build|info|import|export`
-> `bench_build` / `bench_info` / `bench_import` / `bench_export` (and `Bench` for queries),
`emq stats` -> `stats`, `emq search` -> `search` (and the estimator `ProxySearch`), `emq export` -> `export`,
`emq score` -> `score`, `emq allocate` -> `allocate` / `sweep`, `emq demo` -> `demo`.

The CLI (emq.cli) reaches the library only through this module (tests/test_layering.py): besides
`__all__` it uses the names re-exported below as `from .x import name as name` and the aliases
after the imports (its flags' choices and defaults, parsers, table and formula rendering).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from . import device, rendering
from .allocation import Allocation, Allocator, allocate, load_bitmap, save_bitmap, sweep
from .allocation import Budget as Budget
from .allocation import allocator_for as allocator_for
from .allocation import parse_sweep as parse_sweep
from .allocation.allocator import auto_or as auto_or
from .allocation.allocator import resolve_proxy as resolve_proxy
from .allocation.kinds import budget_kinds as budget_kinds
from .allocation.kinds import get_kind as get_kind
from .baselines import PROXIES, get_proxy
from .bench import Bench, bench_build, bench_export, bench_import, bench_info, importer
from .bench import bench_list as bench_list
from .bench.sampling import SAMPLERS as SAMPLERS
from .data import DataSplits
from .device import resolve_device
from .errors import EmqError
from .evolution import DPSConfig as DPSConfig
from .evolution import HallOfFame, ProxySearch, SearchResult, checkpoint, search
from .evolution.engine import DEMO_CAMPAIGN as DEMO_CAMPAIGN
from .evolution.engine import TRANSFER_CAMPAIGN as TRANSFER_CAMPAIGN
from .evolution.engine import SearchConfig as SearchConfig
from .evolution.evaluator import AGGREGATES as AGGREGATES
from .evolution.evaluator import DEFAULT_AGGREGATE as DEFAULT_AGGREGATE
from .executors import Executor, make_executor
from .executors import executor_classes as executor_classes
from .fileio import os_reason as os_reason
from .fileio import writable_dir as writable_dir
from .frontier import BUDGETS as BUDGETS
from .frontier import DRAWS as DRAWS
from .frontier import FrontierResult as FrontierResult
from .frontier import FrontierStudy as FrontierStudy
from .layermap import LayerMap
from .models import EMBEDDED_MODELS as EMBEDDED_MODELS
from .models import build_model as build_model
from .pipeline_demo import DEMO_BUDGETS as DEMO_BUDGETS
from .pipeline_demo import DEMO_EVALUATIONS as DEMO_EVALUATIONS
from .pipeline_demo import demo
from .quant import PTQEngine, PTQSettings, QuantResult
from .quantizers import QUANTIZERS as QUANTIZERS
from .ranking import DEFAULT_LIMIT as DEFAULT_LIMIT
from .ranking import ScoreReport as ScoreReport
from .ranking import score
from .rendering import export
from .rendering import simplify as simplify
from .rendering import to_sympy as to_sympy
from .search_space.netstats import save_stats as save_stats
from .search_space.primitives import PRESETS as PRESETS
from .search_space.proxyfile import load_proxy, save_proxy
from .search_space.pset import make_space
from .search_space.stats import NEGATIVE_TRACE_POLICIES as NEGATIVE_TRACE_POLICIES
from .search_space.stats import StatsSettings, compute_stats, stats
from .search_space.stats import convergence_summary as convergence_summary
from .search_space.stats import default_cache_dir as default_cache_dir
from .search_space.stats import summarize as summarize
from .sensitivity import attach_sensitivity as attach_sensitivity
from .sensitivity import in_context as in_context
from .sensitivity import measure_sensitivity as measure_sensitivity
from .specs import DEFAULT_ACT_BITS as DEFAULT_ACT_BITS
from .specs import DEFAULT_BITS_TEXT as DEFAULT_BITS_TEXT
from .specs import METRICS as METRICS
from .specs import WEIGHT_BITS_MAX as WEIGHT_BITS_MAX
from .specs import WEIGHT_BITS_MIN as WEIGHT_BITS_MIN
from .specs import ParameterError
from .specs import check_bit_set as check_bit_set
from .specs import parse_config as parse_config
from .tables import markdown_table as markdown_table
from .target import ModelSpec, as_model_spec, resolve_target
from .threads import set_threads as set_threads
from .threads import threads_restored as threads_restored
from .transfer import DEFAULT_PROTOCOLS as DEFAULT_PROTOCOLS
from .transfer import PROTOCOLS as PROTOCOLS
from .transfer import SEEDS as SEEDS
from .transfer import WHOLE_CONFIG as WHOLE_CONFIG
from .transfer import WHOLE_LIMIT as WHOLE_LIMIT
from .transfer import TransferStudy as TransferStudy
from .uncertainty import DEFAULT_RESAMPLES as DEFAULT_RESAMPLES

IMPORT_FORMATS = importer.FORMATS  # `emq bench import --format`
EXPORT_FORMATS = rendering.FORMATS  # `emq export --to`
DEVICES = device.ACCEPTED  # the text `--device` accepts
load_checkpoint = checkpoint.load

__all__ = [
    "PROXIES",
    "Allocation",
    "Allocator",
    "Bench",
    "EmqError",
    "Executor",
    "FrontierResult",
    "FrontierStudy",
    "HallOfFame",
    "ModelSpec",
    "PTQEngine",
    "PTQSettings",
    "ParameterError",
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
    target = as_model_spec(model, data=data, weights=weights, num_classes=num_classes, input_size=input_size).resolve()
    config = load_bitmap(bitmap, target.layer_map) if bitmap is not None else target.layer_map.validate(bits)
    return PTQEngine(target, settings, progress=progress, device=device).evaluate(config)
