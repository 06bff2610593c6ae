"""Per-layer network statistics: the inputs (terminals) of every proxy, computed once and cached.

For a model, its layer map and a calibration batch, every quantizable layer gets (aligned by
module name, in forward order; layout in `netstats`): W, G, VG, H, A, Y, GY, AE, Q_b(W),
E_b = Q_b(W) - W, Tr(H), the top Hessian eigenvalue, params, MACs and output channels.

Choices that make the numbers trustworthy:

- everything runs on a private deep copy in eval mode (BatchNorm with running statistics);
  the caller's weights, .grad, train/eval mode, hooks and requires_grad flags are untouched,
  and the caller's own hooks are removed from the copy, so they never fire for our passes;
- gradients come from `torch.autograd.grad` (nothing accumulates in .grad) of the mean
  cross-entropy over the calibration images, accumulated over batches weighted by size;
  GY is the gradient of that same loss w.r.t. the layer output (so G = Σ GY ⊗ A);
- VG, the data-free "virtual" gradient: gradient of the summed outputs for one all-ones
  input (Synflow's probe), with the weights as they are (no sign linearisation);
- Q_b(W) uses the weight quantizer named by `weight_quantizer` (emq.quantizers), the same
  registry and name the PTQ engine deploys (`StatsSettings.from_ptq` copies it); AE uses
  `emq.quantizers.fake_quant` with a per-tensor [min(x,0), max(x,0)] range over all calibration
  images at the activation bits, like the engine's activation quantizer (zero at 32 bits);
- A, Y, GY, AE keep only the first `act_cap` samples (memory), recorded in meta;
- Hessian statistics come from `hessian` on the first `hessian_images` calibration images;
  negative traces follow `negative_trace`: "clamp" (to 0, the default: Tr H of a trained
  network is a curvature magnitude and a negative estimate is probe noise), "keep", "abs"
  or "error"; the raw estimates are kept in meta either way.

Statistics are cached on disk keyed by (weights hash, data hash, settings, bits, layers).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emq.data import DataSplits
from emq.errors import EmqError
from emq.hashing import state_dict_digest, tensor_digest
from emq.layermap import QUANTIZABLE, LayerMap
from emq.quant import PTQSettings
from emq.quantizers import check_quantizer_name, fake_quant, get_weight_quantizer
from emq.specs import (
    DEFAULT_ACT_BITS,
    DEFAULT_BITS,
    UNQUANTIZED_ACT_BITS,
    check_act_bits,
    check_bit_set,
    check_weight_bits,
)
from emq.target import Target, resolve_target

from .hessian import HessianProblem, hutchinson, power_iteration
from .netstats import FORMAT, TENSOR_FIELDS, LayerStats, NetworkStats, load_stats, save_stats

log = logging.getLogger(__name__)

NEGATIVE_TRACE_POLICIES = ("clamp", "keep", "abs", "error")


@dataclass(frozen=True)
class StatsSettings:
    """How statistics are computed; every field is part of the cache key."""

    calib_size: int = 256  # calibration images drawn from the data (ignored for a given batch)
    calib_seed: int = 0
    batch_size: int = 256  # forward/backward batch for A, Y, G, GY
    hessian_images: int = 64  # first images of the calibration batch used for Hessian work
    hessian_batch_size: int = 64  # smaller = less memory; >1 batch recomputes graphs per probe
    hessian_min_probes: int = 8
    hessian_max_probes: int = 32
    hessian_tol: float = 1e-2
    eig_iters: int = 10  # power-iteration steps per layer (0: skip, eig = 0)
    eig_tol: float = 1e-2
    seed: int = 0  # Hutchinson probes and power-iteration starts
    act_bits: int = DEFAULT_ACT_BITS
    weight_symmetric: bool = False
    act_cap: int = 64  # samples of A, Y, GY, AE stored per layer
    negative_trace: str = "clamp"
    weight_quantizer: str = "mse"  # must be the PTQ engine's (see from_ptq): Q_b(W) is what it deploys

    def __post_init__(self) -> None:
        positive = ("calib_size", "batch_size", "hessian_images", "hessian_batch_size", "hessian_min_probes", "hessian_max_probes", "act_cap")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise EmqError(f"stats setting {name}={getattr(self, name)}: must be at least 1")
        if self.hessian_min_probes > self.hessian_max_probes:
            raise EmqError(f"stats setting hessian_min_probes={self.hessian_min_probes} exceeds hessian_max_probes={self.hessian_max_probes}")
        if self.eig_iters < 0 or self.hessian_tol < 0 or self.eig_tol < 0:
            raise EmqError("stats settings eig_iters, hessian_tol and eig_tol must not be negative")
        check_act_bits(self.act_bits)
        if self.negative_trace not in NEGATIVE_TRACE_POLICIES:
            raise EmqError(f"stats setting negative_trace={self.negative_trace!r}: use one of {', '.join(NEGATIVE_TRACE_POLICIES)}")
        check_quantizer_name(self.weight_quantizer)

    @classmethod
    def from_ptq(cls, ptq: PTQSettings, **overrides) -> StatsSettings:
        """Settings whose quantizers match a PTQ configuration (activation bits, weight rounding, symmetry)."""
        return cls(act_bits=ptq.act_bits, weight_symmetric=ptq.weight_symmetric, weight_quantizer=ptq.weight_quantizer, **overrides)

    def to_json(self) -> dict:
        return asdict(self)


def default_cache_dir() -> Path:
    """`$EMQ_CACHE_DIR/stats` when the variable is set (the root of all emq caches), else ~/.cache/emq/stats."""
    root = os.environ.get("EMQ_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "emq") / "stats"


def _check_bits(bits: Sequence[int]) -> tuple[int, ...]:
    return check_bit_set({check_weight_bits(b, "bits") for b in bits}, "bits")


def _private_copy(model: nn.Module, layer_map: LayerMap) -> tuple[nn.Module, list[nn.Module]]:
    """Eval-mode copy without the caller's hooks and grads; only mapped weights require grad."""
    work = copy.deepcopy(model).eval()
    for m in work.modules():
        for hooks in (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, m._backward_pre_hooks, m._state_dict_hooks):
            hooks.clear()
    for p in work.parameters():
        p.grad = None
        p.requires_grad_(False)
    modules = dict(work.named_modules())
    layers = []
    for layer in layer_map.layers:
        m = modules.get(layer.name)
        if not isinstance(m, QUANTIZABLE) or m.weight.numel() != layer.params:
            raise EmqError(f"layer map ({layer_map.model}) does not match the model: module {layer.name!r} is missing or not the mapped Conv2d/Linear; rebuild the layer map from this model")
        m.weight.requires_grad_(True)
        layers.append(m)
    return work, layers


def _activation_pass(work: nn.Module, layers: list[nn.Module], x: torch.Tensor, y: torch.Tensor, batch_size: int, cap: int) -> dict:
    """One pass over the calibration images: G (batch-weighted), capped A/Y/GY, activation ranges."""
    n = x.shape[0]
    weights = [m.weight for m in layers]
    ins: dict[int, torch.Tensor] = {}
    outs: dict[int, torch.Tensor] = {}
    lo = [torch.tensor(float("inf"))] * len(layers)
    hi = [torch.tensor(float("-inf"))] * len(layers)

    def make_hook(i: int):
        def hook(mod: nn.Module, inp: tuple, out: torch.Tensor) -> None:
            a = inp[0].detach()
            lo[i] = torch.minimum(lo[i], a.min().clamp(max=0).cpu())
            hi[i] = torch.maximum(hi[i], a.max().clamp(min=0).cpu())
            ins[i], outs[i] = inp[0], out

        return hook

    grads = [torch.zeros_like(w) for w in weights]
    kept: dict[str, list[list[torch.Tensor]]] = {"A": [[] for _ in layers], "Y": [[] for _ in layers], "GY": [[] for _ in layers]}
    stored = 0
    handles = [m.register_forward_hook(make_hook(i)) for i, m in enumerate(layers)]
    try:
        for start in range(0, n, batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            loss = F.cross_entropy(work(xb), yb) * (xb.shape[0] / n)
            keep = min(cap - stored, xb.shape[0])
            targets = weights + ([outs[i] for i in range(len(layers))] if keep > 0 else [])
            g = torch.autograd.grad(loss, targets, allow_unused=True)
            for acc, gw in zip(grads, g[: len(weights)], strict=True):
                if gw is not None:
                    acc.add_(gw)
            if keep > 0:
                for i in range(len(layers)):
                    gy = g[len(weights) + i]
                    kept["A"][i].append(ins[i][:keep].detach().clone())
                    kept["Y"][i].append(outs[i][:keep].detach().clone())
                    kept["GY"][i].append(torch.zeros_like(kept["Y"][i][-1]) if gy is None else gy[:keep].detach().clone())
                stored += keep
            ins.clear()
            outs.clear()
    finally:
        for h in handles:
            h.remove()
    return {
        "G": grads,
        **{k: [torch.cat(parts) for parts in v] for k, v in kept.items()},
        "lo": lo,
        "hi": hi,
    }


def _virtual_grad(work: nn.Module, layers: list[nn.Module], sample_shape: torch.Size) -> list[torch.Tensor]:
    """Gradient of sum(outputs) for one all-ones input: a data-free probe of signal flow."""
    w = layers[0].weight
    ones = torch.ones((1, *sample_shape), dtype=w.dtype, device=w.device)
    return list(torch.autograd.grad(work(ones).sum(), [m.weight for m in layers], allow_unused=False))


def _apply_trace_policy(raw: np.ndarray, names: list[str], policy: str) -> np.ndarray:
    negative = raw < 0
    if negative.any() and policy == "error":
        bad = [names[i] for i in np.flatnonzero(negative)]
        raise EmqError(f"negative Hessian trace estimates for {', '.join(bad)}; raise hessian probes or choose negative_trace clamp/keep/abs")
    if policy == "clamp":
        return np.maximum(raw, 0.0)
    if policy == "abs":
        return np.abs(raw)
    return raw.copy()


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(device="cpu", dtype=torch.float32).contiguous()


def _compute(model: nn.Module, layer_map: LayerMap, x: torch.Tensor, y: torch.Tensor, bits: tuple[int, ...], s: StatsSettings) -> NetworkStats:
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = seconds.get(name, 0.0) + now - clock
        clock = now

    work, layers = _private_copy(model, layer_map)
    device = layers[0].weight.device
    x, y = x.to(device), y.to(device)
    names = [layer.name for layer in layer_map.layers]
    lap("setup")

    act = _activation_pass(work, layers, x, y, s.batch_size, s.act_cap)
    lap("gradients_activations")
    vg = _virtual_grad(work, layers, x.shape[1:])
    lap("virtual_grad")

    xh, yh = x[: s.hessian_images], y[: s.hessian_images]
    hb = s.hessian_batch_size
    problem = HessianProblem(work, [m.weight for m in layers], [(xh[i : i + hb], yh[i : i + hb]) for i in range(0, xh.shape[0], hb)])
    hutch = hutchinson(problem, s.hessian_min_probes, s.hessian_max_probes, s.hessian_tol, s.seed)
    lap("hessian_trace_diag")
    if s.eig_iters > 0:
        eig, eig_used = power_iteration(problem, s.eig_iters, s.eig_tol, s.seed)
    else:
        eig, eig_used = np.zeros(len(layers)), np.zeros(len(layers), dtype=np.int64)
    del problem
    lap("hessian_eig")
    trace = _apply_trace_policy(hutch.trace, names, s.negative_trace)

    weights = [_f32(m.weight) for m in layers]
    rounding = get_weight_quantizer(s.weight_quantizer)
    quant = [torch.stack([rounding.quantize(w, b, s.weight_symmetric) for b in bits]) for w in weights]
    lap("weight_noise")
    act_noise = []
    for i, a in enumerate(act["A"]):
        a = _f32(a)
        act_noise.append(torch.zeros_like(a) if s.act_bits >= UNQUANTIZED_ACT_BITS else fake_quant(a, act["lo"][i], act["hi"][i], s.act_bits) - a)
    lap("activation_noise")

    out = []
    for i, layer in enumerate(layer_map.layers):
        fields = {
            "W": weights[i],
            "G": _f32(act["G"][i]),
            "VG": _f32(vg[i]),
            "H": _f32(hutch.diag[i]),
            "A": _f32(act["A"][i]),
            "Y": _f32(act["Y"][i]),
            "GY": _f32(act["GY"][i]),
            "AE": act_noise[i],
            "Q": quant[i],
            "E": quant[i] - weights[i].unsqueeze(0),
        }
        for f, t in fields.items():
            if not torch.isfinite(t).all():
                raise EmqError(f"statistic {f} of layer {layer.name} is not finite (NaN/inf): check the model's weights and the calibration data")
        out.append(LayerStats(layer.name, **fields, trace=float(trace[i]), eig=float(eig[i]), params=layer.params, macs=layer.macs, out_channels=layer.out_channels))
    meta = {
        "format": FORMAT,
        "model": layer_map.model,
        "settings": s.to_json(),
        "calib_images": int(x.shape[0]),
        "act_cap": int(min(s.act_cap, x.shape[0])),
        "act_ranges": [[float(lo), float(hi)] for lo, hi in zip(act["lo"], act["hi"], strict=True)],
        "hessian": {
            "images": int(xh.shape[0]),
            "probes": hutch.probes,
            "converged": hutch.converged,
            "raw_trace": [float(t) for t in hutch.trace],
            "negative_layers": [names[i] for i in np.flatnonzero(hutch.trace < 0)],
            "negative_policy": s.negative_trace,
            "eig_iterations": [int(k) for k in eig_used],
        },
        "seconds": seconds,
    }
    return NetworkStats(bits, out, list(layer_map.layer_slot), meta)


def _calibration(data: DataSplits | tuple[torch.Tensor, torch.Tensor], s: StatsSettings) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(data, DataSplits):
        return data.calibration(s.calib_size, s.calib_seed)
    try:
        x, y = data
    except (TypeError, ValueError) as e:
        raise EmqError("calibration data: give a DataSplits or an (images, labels) pair of tensors") from e
    if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)) or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise EmqError(f"calibration data: images and labels must be non-empty tensors of equal length (got {getattr(x, 'shape', None)} and {getattr(y, 'shape', None)})")
    if y.dtype != torch.long or y.dim() != 1:
        raise EmqError("calibration data: labels must be a 1-D tensor of class indices (torch.long)")
    return x, y


def cache_key(model: nn.Module, layer_map: LayerMap, x: torch.Tensor, y: torch.Tensor, bits: tuple[int, ...], s: StatsSettings) -> str:
    """Content key: weights and buffers, the exact calibration batch, settings, bits, layer map."""
    parts = {
        "format": FORMAT,
        "weights": state_dict_digest(model),
        "data": tensor_digest([x, y]),
        "settings": s.to_json(),
        "bits": list(bits),
        "layers": [layer.name for layer in layer_map.layers],
        "layer_slot": list(layer_map.layer_slot),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def compute_stats(
    target_or_model: Target | nn.Module,
    layer_map: LayerMap | None = None,
    data: DataSplits | tuple[torch.Tensor, torch.Tensor] | None = None,
    bits: Sequence[int] = DEFAULT_BITS,
    settings: StatsSettings | PTQSettings | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
) -> NetworkStats:
    """Per-layer statistics of a model on calibration data, loaded from the cache when present.

    `settings` may be PTQSettings: the defaults are then used with its activation bits and
    weight symmetry, so the noise statistics match that PTQ configuration.

    Give a `Target` (its model, layer map and data are used; `layer_map`/`data` override
    them), or a model with its layer map and data (a DataSplits, drawn with the settings'
    calib_size/calib_seed, or an (images, labels) batch used as is).
    """
    s = StatsSettings.from_ptq(settings) if isinstance(settings, PTQSettings) else settings or StatsSettings()
    bits = _check_bits(bits)
    if isinstance(target_or_model, Target):
        model = target_or_model.model
        layer_map = layer_map or target_or_model.layer_map
        data = data if data is not None else target_or_model.require_data()
    else:
        model = target_or_model
    if layer_map is None or data is None:
        raise EmqError("compute_stats needs a layer map and calibration data (or a Target that has both)")
    x, y = _calibration(data, s)
    path = None
    if use_cache:
        key = cache_key(model, layer_map, x, y, bits, s)
        path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        path = path / f"{key}.pt"
        if path.exists():
            try:
                t0 = time.perf_counter()
                cached = load_stats(path)
                cached.meta["cache"] = {"key": key, "path": str(path), "hit": True, "load_seconds": time.perf_counter() - t0}
                log.info("statistics loaded from %s", path)
                return cached
            except EmqError as e:
                log.warning("ignoring the statistics cache entry: %s", e)
    result = _compute(model, layer_map, x, y, bits, s)
    if path is not None:
        save_stats(result, path)
        result.meta["cache"] = {"key": path.stem, "path": str(path), "hit": False}
    return result


def stats(
    model: str | nn.Module = "default",
    data: str | DataSplits | None = None,
    bits: Sequence[int] = DEFAULT_BITS,
    settings: StatsSettings | None = None,
    weights: Path | None = None,
    input_size: int | None = None,
    num_classes: int | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
) -> NetworkStats:
    """Per-layer statistics of a model by name (or nn.Module) and its data; `emq stats`."""
    target = resolve_target(model, data, weights=weights, num_classes=num_classes, input_size=input_size)
    return compute_stats(target, bits=bits, settings=settings, cache_dir=cache_dir, use_cache=use_cache)


def summarize(ns: NetworkStats) -> dict:
    """Plain-number summary per layer (norms, traces, noise per bit) plus timings: the CLI's JSON."""
    layers = []
    for layer, slot in zip(ns.layers, ns.layer_slot, strict=True):
        layers.append(
            {
                "name": layer.name,
                "slot": slot,
                "params": layer.params,
                "macs": layer.macs,
                "out_channels": layer.out_channels,
                "weight_norm": float(layer.W.norm()),
                "grad_norm": float(layer.G.norm()),
                "virtual_grad_norm": float(layer.VG.norm()),
                "hessian_trace": layer.trace,
                "hessian_trace_per_param": layer.trace / layer.params,
                "hessian_diag_sum": float(layer.H.sum()),
                "hessian_eig": layer.eig,
                "noise_norm": {str(b): float(layer.E[k].norm()) for k, b in enumerate(ns.bits)},
                "act_noise_norm": float(layer.AE.norm()),
            }
        )
    meta = ns.meta
    return {
        "model": meta.get("model"),
        "bits": list(ns.bits),
        "settings": meta.get("settings"),
        "calib_images": meta.get("calib_images"),
        "act_cap": meta.get("act_cap"),
        "hessian": {k: v for k, v in meta.get("hessian", {}).items() if k != "raw_trace"},
        "seconds": meta.get("seconds", {}),
        "cache": meta.get("cache"),
        "layers": layers,
    }


__all__ = ["StatsSettings", "compute_stats", "stats", "summarize", "cache_key", "default_cache_dir", "load_stats", "save_stats", "TENSOR_FIELDS"]
