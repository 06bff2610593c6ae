"""Small real models and real separable / whole-configuration proxies for the allocation tests."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from emq.allocation.budgets import Problem
from emq.data import DataSplits
from emq.layermap import build_layer_map
from emq.proxy import ProxyContext, SeparableProxy, WholeConfigProxy
from emq.quant import quantize_weight


def image_splits(name: str, x: torch.Tensor, y: torch.Tensor, calib: int, num_classes: int) -> DataSplits:
    """Images `x` (N, C, S, S) labelled `y` as data splits: the first `calib` calibrate, the rest test."""
    return DataSplits(
        name=name,
        num_classes=num_classes,
        in_channels=x.shape[1],
        input_size=x.shape[-1],
        calib_pool=(x[:calib], y[:calib]),
        test=TensorDataset(x[calib:], y[calib:]),
    )


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    ).eval()


def tiny_layer_map():
    return build_layer_map(tiny_model(), 8, "tiny", in_channels=1)


class Target:
    """What a ProxyContext needs from a target here: the model and its layer map."""

    def __init__(self) -> None:
        self.name = "tiny"
        self.model = tiny_model()
        self.layer_map = build_layer_map(self.model, 8, "tiny", in_channels=1)
        self.data = None


class NoiseProxy(SeparableProxy):
    """Real per-slot weight quantization noise ||Q_b(W) - W||^2 (lower = better)."""

    name = "test-noise"
    orientation = -1

    def table(self, ctx: ProxyContext) -> np.ndarray:
        if "noise" not in ctx.cache:
            ctx.cache["noise"] = self._table(ctx)
        return ctx.cache["noise"]

    def _table(self, ctx: ProxyContext) -> np.ndarray:
        mods = dict(ctx.target.model.named_modules())
        lm = ctx.target.layer_map
        out = np.zeros((lm.num_slots, len(ctx.bits)))
        for layer, s in zip(lm.layers, lm.layer_slot):
            w = mods[layer.name].weight.detach()
            for j, b in enumerate(ctx.bits):
                out[s, j] += float((quantize_weight(w, b) - w).pow(2).sum())
        return out


class TableProxy(SeparableProxy):
    """A fixed table (e.g. drawn by a test); orientation configurable."""

    name = "test-table"

    def __init__(self, table: np.ndarray, orientation: int = 1) -> None:
        self._t, self.orientation = table, orientation

    def table(self, ctx: ProxyContext) -> np.ndarray:
        return self._t


class OutputErrorProxy(WholeConfigProxy):
    """Whole-configuration: MSE between the FP and the weight-quantized network's outputs on a
    fixed input, by actually quantizing the weights (lower = better)."""

    name = "test-output-error"
    orientation = -1

    def __init__(self, log: list | None = None) -> None:
        self.log = log if log is not None else []

    def score_one(self, ctx: ProxyContext, bits: Sequence[int]) -> float:
        self.log.append(tuple(bits))
        model, lm = ctx.target.model, ctx.target.layer_map
        x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
        mods = dict(model.named_modules())
        saved = {layer.name: mods[layer.name].weight.detach().clone() for layer in lm.layers}
        with torch.no_grad():
            ref = model(x)
            try:
                for layer, s in zip(lm.layers, lm.layer_slot):
                    key = ("q", layer.name, bits[s])
                    if key not in ctx.cache:
                        ctx.cache[key] = quantize_weight(saved[layer.name], bits[s])
                    mods[layer.name].weight.copy_(ctx.cache[key])
                out = model(x)
            finally:
                for name, w in saved.items():
                    mods[name].weight.copy_(w)
        return float((out - ref).pow(2).mean())


def brute_force(problem: Problem, oriented: np.ndarray) -> tuple[float, np.ndarray]:
    """Best feasible oriented table sum over every configuration (small problems only)."""
    S, B = oriented.shape
    idx = np.array(list(itertools.product(range(B), repeat=S)), dtype=np.int64)
    ok = problem.feasible(idx)
    scores = oriented[np.arange(S)[None, :], idx].sum(axis=1)
    scores[~ok] = -np.inf
    k = int(np.argmax(scores))
    return float(scores[k]), idx[k]


def heldout_report_spearman(proxy, bench_name: str, metric: str | None = None) -> float:
    """A proxy's held-out x report Spearman on a shipped bench, computed here from the bench's
    raw arrays with scipy: independent of emq's scoring, fitness and ranking code."""
    from scipy.stats import spearmanr

    from emq.bench import Bench
    from emq.bench_setup import BenchSetup
    from emq.specs import oriented

    bench = Bench.open(bench_name)
    metric = metric or bench.default_metric
    stats = BenchSetup.of(bench).network_stats(progress=False)
    table = proxy.stats_table(stats).cpu().numpy()
    column = {b: i for i, b in enumerate(stats.bits)}
    configs, metrics = bench.arrays("heldout", pool="report")
    keep = np.isfinite(metrics[metric])
    scores = [sum(float(table[s, column[int(b)]]) for s, b in enumerate(c)) for c in configs[keep]]
    return float(spearmanr(proxy.orientation * np.array(scores), oriented(metric, metrics[metric][keep]))[0])
