"""Per-layer network statistics: the inputs (terminals) of every proxy, computed once and cached.

For a model, its layer map and a calibration batch, every quantizable layer gets (aligned by
module name, in forward order; layout in `netstats`): W, G, VG, H, SG, FD, A, Y, GY, AE,
Q_b(W), E_b = Q_b(W) - W, Tr(H), the top Hessian eigenvalue, params, MACs and output channels.

Choices that make the numbers trustworthy:

- everything runs on a private deep copy in eval mode (BatchNorm with running statistics);
  the caller's weights, .grad, train/eval mode, hooks and requires_grad flags are untouched,
  and the caller's own hooks are removed from the copy, so they never fire for our passes;
- gradients come from `torch.autograd.grad` (nothing accumulates in .grad) of the mean
  cross-entropy over the calibration images, accumulated over batches weighted by size;
  GY is the gradient of that same loss w.r.t. the layer output (so G = Σ GY ⊗ A);
- VG, the data-free "virtual" gradient: gradient of the summed outputs for one all-ones
  input, with the weights as they are (signed; not Synflow's statistic);
- SG, Synflow's statistic as published (Tanaka et al., NeurIPS 2020, and their code): on a
  copy in eval mode whose every floating parameter and buffer is replaced by its absolute
  value (the network linearised), the gradient dR/d|W| of R = sum of the output for one
  all-ones input of the data's shape; computed in float64 (no overflow in deep networks);
- FD, the diagonal empirical Fisher E_x[g_x ⊙ g_x] over all calibration images, g_x the
  gradient of image x's own cross-entropy (per-sample gradients by torch.func vmap(grad)
  over `functional_call`; plain per-sample grad when a model cannot be vmapped) — not the
  square of the batch-mean gradient G;
- Q_b(W) uses the weight quantizer named by `weight_quantizer` (emq.quantizers), the same
  registry and name the PTQ engine deploys (`StatsSettings.from_ptq` copies it); AE uses
  `emq.quantizers.fake_quant` with a per-tensor [min(x,0), max(x,0)] range over all calibration
  images at the activation bits, like the engine's activation quantizer (zero at 32 bits);
- A, Y, GY, AE keep only the first `act_cap` samples (memory), recorded in meta;
- Hessian statistics come from `hessian` on the first `hessian_images` calibration images:
  Hutchinson probes until the traces' relative change is below `hessian_tol` (at least
  `hessian_min_probes`, at most `hessian_max_probes`), power iteration per layer as in HAWQ's
  code (at most `eig_iters` = 100 iterations, relative tolerance `eig_tol` = 1e-3); how each
  converged is recorded per layer in meta["hessian"]["convergence"] (`NetworkStats.convergence`);
  negative traces follow `negative_trace`: "clamp" (to 0, the default: Tr H of a trained
  network is a curvature magnitude and a negative estimate is probe noise), "keep", "abs"
  or "error"; the raw estimates are kept in meta either way.

Statistics are computed on the device given (`device=`, emq.device; the probes and draws
come from CPU generators either way) and stored as CPU float32 tensors; the device is recorded
in meta["device"] but is not part of the cache key: a cached file serves every device.

Statistics are cached on disk keyed by (weights hash, data hash, settings, bits, layers), under
`<cache root>/stats`; the cache root is the `cache_dir` argument, else `$EMQ_CACHE_DIR`, else
~/.cache/emq (the argument and the variable name the same directory). Steps that take more
than a moment (per-sample gradients, Hessian probes and power iteration) show tqdm progress
bars on stderr unless `progress=False`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap
from tqdm import tqdm

from emq.data import DataSplits
from emq.device import resolve_device
from emq.errors import EmqError
from emq.fileio import cache_root
from emq.hashing import state_dict_digest, tensor_digest
from emq.layermap import QUANTIZABLE, LayerMap
from emq.quant import PTQSettings, QuantSpec
from emq.quantizers import fake_quant
from emq.rounding import RoundedWeights
from emq.specs import (
    DEFAULT_BITS,
    UNQUANTIZED_ACT_BITS,
    check_bit_set,
    check_weight_bits,
    setting,
)
from emq.target import ModelSpec, Target, as_model_spec
from emq.threads import check_threads, torch_threads

from .hessian import (
    HessianProblem,
    HutchinsonResult,
    PowerIterationResult,
    hutchinson,
    power_iteration,
    twice_differentiable,
)
from .netstats import (
    ACTIVATION_FIELDS,
    FORMAT,
    MODEL_FIELDS,
    TENSOR_FIELDS,
    LayerStats,
    NetworkStats,
    load_stats,
    save_stats,
)
from .shipped import find_shipped

log = logging.getLogger(__name__)

NEGATIVE_TRACE_POLICIES = ("clamp", "keep", "abs", "error")
_PER_SAMPLE_FLOATS = 1 << 24  # per-sample gradient values held at once (64 MB in float32)


@dataclass(frozen=True)
class StatsSettings(QuantSpec):
    """How statistics are computed; every field is part of the cache key. The quantization
    they model (`QuantSpec`: activation bits, weight rounding and its options, symmetry) is
    the PTQ engine's (see from_ptq): Q_b(W) is what it deploys. A field with help text is a
    flag of `emq stats`."""

    calib_size: int = setting(
        256, "calibration images (default {default})"
    )  # calibration images drawn from the data (ignored for a given batch)
    calib_seed: int = setting(0, "seed of the calibration draw (default {default})")
    batch_size: int = setting(
        256, "batch size of the gradient pass (default {default})"
    )  # forward/backward batch for A, Y, G, GY
    hessian_images: int = setting(
        64, "calibration images used for Hessian work (default {default})"
    )  # first images of the calibration batch used for Hessian work
    hessian_batch_size: int = setting(
        64, "Hessian batch size; smaller saves memory, costs time (default {default})"
    )  # smaller = less memory; >1 batch recomputes graphs per probe
    hessian_min_probes: int = setting(
        8,
        "minimum Hutchinson probes (default {default}, capped at --hessian-samples)",
        flag="--hessian-min-samples",
        flag_default=None,
    )
    hessian_max_probes: int = setting(
        128, "maximum Hutchinson probes (default {default})", flag="--hessian-samples"
    )  # the default model converges (hessian_tol) after 54 probes
    hessian_tol: float = setting(
        1e-2, "relative change of the per-layer traces that stops the probes (default {default})"
    )  # relative L1 change of the per-layer running-mean traces that stops the probes
    eig_iters: int = setting(
        100, "power-iteration steps for the top eigenvalue per layer (default {default}; 0 skips)"
    )  # power-iteration steps per layer, HAWQ's maximum (0: skip, eig = 0)
    eig_tol: float = setting(
        1e-3, "relative change of a layer's top eigenvalue that stops its power iteration (default {default})"
    )  # relative change of a layer's eigenvalue that stops it (HAWQ's)
    seed: int = setting(
        0, "seed of the Hessian probes (default {default})"
    )  # Hutchinson probes and power-iteration starts
    act_cap: int = setting(
        64, "samples of activations stored per layer (default {default})"
    )  # samples of A, Y, GY, AE stored per layer
    negative_trace: str = setting(
        "clamp", "what to do with negative trace estimates (default {default})", choices=NEGATIVE_TRACE_POLICIES
    )
    # reconstruction rounding (GPTQ, AdaRound) uses the PTQ engine's calibration draw, so the
    # statistics' Q_b(W) are the very weights the engine deploys (and share its rounding cache)
    rounding_calib_size: int = PTQSettings.calib_size
    rounding_calib_seed: int = PTQSettings.calib_seed
    rounding_calib_half: int | None = PTQSettings.calib_half

    def __post_init__(self) -> None:
        positive = (
            "calib_size",
            "batch_size",
            "hessian_images",
            "hessian_batch_size",
            "hessian_min_probes",
            "hessian_max_probes",
            "act_cap",
        )
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise EmqError(f"stats setting {name}={getattr(self, name)}: must be at least 1")
        if self.hessian_min_probes > self.hessian_max_probes:
            raise EmqError(
                f"stats setting hessian_min_probes={self.hessian_min_probes} exceeds "
                f"hessian_max_probes={self.hessian_max_probes}"
            )
        if not (self.eig_iters >= 0 and self.hessian_tol >= 0 and self.eig_tol >= 0):  # NaN fails too
            raise EmqError("stats settings eig_iters, hessian_tol and eig_tol must not be negative or NaN")
        if self.negative_trace not in NEGATIVE_TRACE_POLICIES:
            raise EmqError(
                f"stats setting negative_trace={self.negative_trace!r}: use one of {', '.join(NEGATIVE_TRACE_POLICIES)}"
            )
        super().__post_init__()

    @classmethod
    def from_ptq(cls, ptq: PTQSettings, **overrides) -> StatsSettings:
        """Settings whose quantization is the PTQ configuration's (its QuantSpec and the
        calibration draw its reconstruction rounding uses)."""
        matched = {
            **asdict(ptq.quant_spec()),
            "rounding_calib_size": ptq.calib_size,
            "rounding_calib_seed": ptq.calib_seed,
            "rounding_calib_half": ptq.calib_half,
        }
        return cls(**{**matched, **overrides})

    def to_json(self) -> dict:
        return {**asdict(self), "quantizer_options": dict(self.quantizer_options)}


def default_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """Where statistics are cached: `<root>/stats`, root = `cache_dir`, else $EMQ_CACHE_DIR, else ~/.cache/emq.

    The argument and the variable name the same level (the root of all emq caches), so
    `cache_dir=X` and `EMQ_CACHE_DIR=X` write to the same X/stats.
    """
    return cache_root(cache_dir) / "stats"


def _check_bits(bits: Sequence[int]) -> tuple[int, ...]:
    return check_bit_set({check_weight_bits(b, "bits") for b in bits}, "bits")


def _private_copy(
    model: nn.Module, layer_map: LayerMap, device: str | torch.device = "cpu"
) -> tuple[nn.Module, list[nn.Module]]:
    """Eval-mode copy on `device` without the caller's hooks and grads; only mapped weights require grad."""
    work = copy.deepcopy(model).eval().to(device)
    for m in work.modules():
        for hooks in (
            m._forward_hooks,
            m._forward_pre_hooks,
            m._backward_hooks,
            m._backward_pre_hooks,
            m._state_dict_hooks,
        ):
            hooks.clear()
    for p in work.parameters():
        p.grad = None
        p.requires_grad_(False)
    modules = dict(work.named_modules())
    layers = []
    for layer in layer_map.layers:
        m = modules.get(layer.name)
        if not isinstance(m, QUANTIZABLE) or m.weight.numel() != layer.params:
            raise EmqError(
                f"layer map ({layer_map.model}) does not match the model: module {layer.name!r} is missing or not "
                "the mapped Conv2d/Linear; rebuild the layer map from this model"
            )
        m.weight.requires_grad_(True)
        layers.append(m)
    return work, layers


def _activation_pass(
    work: nn.Module, layers: list[nn.Module], x: torch.Tensor, y: torch.Tensor, *, batch_size: int, cap: int
) -> dict:
    """One pass over the calibration images: G (batch-weighted), capped A/Y/GY, activation ranges."""
    n = x.shape[0]
    weights = [m.weight for m in layers]
    ins: dict[int, torch.Tensor] = {}
    outs: dict[int, torch.Tensor] = {}
    device = weights[0].device
    lo = [torch.tensor(float("inf"), device=device)] * len(layers)
    hi = [torch.tensor(float("-inf"), device=device)] * len(layers)

    def make_hook(i: int):
        def hook(mod: nn.Module, inp: tuple, out: torch.Tensor) -> None:
            a = inp[0].detach()
            lo[i] = torch.minimum(lo[i], a.min().clamp(max=0))
            hi[i] = torch.maximum(hi[i], a.max().clamp(min=0))
            ins[i], outs[i] = inp[0], out

        return hook

    grads = [torch.zeros_like(w) for w in weights]
    kept: dict[str, list[list[torch.Tensor]]] = {
        "A": [[] for _ in layers],
        "Y": [[] for _ in layers],
        "GY": [[] for _ in layers],
    }
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
                    kept["GY"][i].append(
                        torch.zeros_like(kept["Y"][i][-1]) if gy is None else gy[:keep].detach().clone()
                    )
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
    """Gradient of sum(outputs) for one all-ones input, signed weights: a data-free probe of signal flow."""
    w = layers[0].weight
    ones = torch.ones((1, *sample_shape), dtype=w.dtype, device=w.device)
    return list(torch.autograd.grad(work(ones).sum(), [m.weight for m in layers], allow_unused=False))


def _synflow_grad(work: nn.Module, names: list[str], sample_shape: torch.Size) -> list[torch.Tensor]:
    """Synflow's dR/d|W|: every parameter and buffer made absolute (eval mode), R = sum(f(1)), in float64."""
    lin = copy.deepcopy(work).double()
    with torch.no_grad():
        for t in lin.state_dict().values():  # the state dict shares storage with parameters and buffers
            if t.is_floating_point():
                t.abs_()
    modules = dict(lin.named_modules())
    weights = [modules[n].weight for n in names]
    ones = torch.ones((1, *sample_shape), dtype=torch.float64, device=weights[0].device)
    return list(torch.autograd.grad(lin(ones).sum(), weights, allow_unused=False))


def _per_sample_fisher(
    work: nn.Module, names: list[str], x: torch.Tensor, y: torch.Tensor, *, batch_size: int, progress: bool
) -> list[torch.Tensor]:
    """Diagonal empirical Fisher E_x[g_x ⊙ g_x] of the mapped weights, g_x = grad of image x's own cross-entropy."""
    modules = dict(work.named_modules())
    params = {f"{n}.weight": modules[n].weight.detach() for n in names}

    def loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(work, p, (xi.unsqueeze(0),)), yi.unsqueeze(0))

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))
    single = grad(loss)

    def one_by_one(xb: torch.Tensor, yb: torch.Tensor) -> dict[str, torch.Tensor]:
        gs = [single(params, xi, yi) for xi, yi in zip(xb, yb, strict=True)]
        return {k: torch.stack([g[k] for g in gs]) for k in params}

    n = x.shape[0]
    chunk = max(1, min(batch_size, _PER_SAMPLE_FLOATS // sum(p.numel() for p in params.values())))
    acc = {k: torch.zeros_like(p) for k, p in params.items()}
    vectorised = True
    for start in tqdm(range(0, n, chunk), desc="per-sample gradients", unit="batch", leave=False, disable=not progress):
        xb, yb = x[start : start + chunk], y[start : start + chunk]
        if vectorised:
            try:
                g = per_sample(params, xb, yb)
            except RuntimeError as e:  # an operation vmap cannot batch: same gradients, one image at a time
                log.info("per-sample gradients without vmap (%s)", e)
                vectorised = False
        if not vectorised:
            g = one_by_one(xb, yb)
        for k, gk in g.items():
            acc[k].add_(gk.pow(2).sum(dim=0))
    return [acc[k] / n for k in params]


def _apply_trace_policy(raw: np.ndarray, names: list[str], policy: str) -> np.ndarray:
    negative = raw < 0
    if negative.any() and policy == "error":
        bad = [names[i] for i in np.flatnonzero(negative)]
        raise EmqError(
            f"negative Hessian trace estimates for {', '.join(bad)}; raise hessian probes or choose negative_trace "
            "clamp/keep/abs"
        )
    if policy == "clamp":
        return np.maximum(raw, 0.0)
    if policy == "abs":
        return np.abs(raw)
    return raw.copy()


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(device="cpu", dtype=torch.float32).contiguous()


def _finite(values: np.ndarray) -> list[float | None]:
    """Plain floats for JSON, None where a value is undefined (a change after a single step)."""
    return [float(v) if np.isfinite(v) else None for v in np.asarray(values, dtype=np.float64)]


def _convergence(hutch: HutchinsonResult, eig: PowerIterationResult | None, s: StatsSettings) -> dict:
    """Per-layer evidence that the Hessian estimates converged (JSON-ready)."""
    trace = {
        "tol": s.hessian_tol,
        "min_probes": s.hessian_min_probes,
        "max_probes": s.hessian_max_probes,
        "probes": hutch.probes,
        "converged": hutch.converged,
        "change": _finite([hutch.change])[0],
        "layer_change": _finite(hutch.layer_change),
        "layer_rel_stderr": _finite(hutch.layer_rel_stderr),
    }
    if eig is None:
        return {"trace": trace, "eig": {"tol": s.eig_tol, "max_iters": 0, "skipped": True}}
    eigs = {
        "tol": s.eig_tol,
        "max_iters": s.eig_iters,
        "skipped": False,
        "iterations": [int(k) for k in eig.iterations],
        "change": _finite(eig.change),
        "converged": [bool(c) for c in eig.converged],
    }
    return {"trace": trace, "eig": eigs}


def _compute(
    model: nn.Module,
    layer_map: LayerMap,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    bits: tuple[int, ...],
    s: StatsSettings,
    progress: bool = True,
    rounding_x: torch.Tensor | None = None,
    cache_dir: str | Path | None = None,
    device: torch.device | None = None,
) -> NetworkStats:
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = seconds.get(name, 0.0) + now - clock
        clock = now

    device = resolve_device(device)
    work, layers = _private_copy(model, layer_map, device)
    x, y = x.to(device), y.to(device)
    names = [layer.name for layer in layer_map.layers]
    lap("setup")

    act = _activation_pass(work, layers, x, y, batch_size=s.batch_size, cap=s.act_cap)
    lap("gradients_activations")
    vg = _virtual_grad(work, layers, x.shape[1:])
    lap("virtual_grad")
    sg = _synflow_grad(work, names, x.shape[1:])
    lap("synflow_grad")
    fd = _per_sample_fisher(work, names, x, y, batch_size=s.batch_size, progress=progress)
    lap("per_sample_fisher")

    xh, yh = x[: s.hessian_images], y[: s.hessian_images]
    hb = s.hessian_batch_size
    with twice_differentiable(work):
        problem = HessianProblem(
            work, [m.weight for m in layers], [(xh[i : i + hb], yh[i : i + hb]) for i in range(0, xh.shape[0], hb)]
        )
        hutch = hutchinson(
            problem,
            min_probes=s.hessian_min_probes,
            max_probes=s.hessian_max_probes,
            tol=s.hessian_tol,
            seed=s.seed,
            progress=progress,
        )
        lap("hessian_trace_diag")
        power = (
            power_iteration(problem, iters=s.eig_iters, tol=s.eig_tol, seed=s.seed, progress=progress)
            if s.eig_iters > 0
            else None
        )
        eig = power.eig if power is not None else np.zeros(len(layers))
        del problem
        lap("hessian_eig")
    convergence = _convergence(hutch, power, s)
    _warn_unconverged(convergence, names)
    trace = _apply_trace_policy(hutch.trace, names, s.negative_trace)

    weights = [_f32(m.weight) for m in layers]
    rounding = RoundedWeights(
        work,
        layers,
        names,
        s.weight_quantizer,
        options=dict(s.quantizer_options),
        symmetric=s.weight_symmetric,
        calib=rounding_x if rounding_x is not None else x,
        batch_size=s.batch_size,
        cache_dir=cache_dir,
    )
    quant = [torch.stack([_f32(rounding.get(i, b)) for b in bits]) for i in range(len(layers))]
    lap("weight_noise")
    act_noise = activation_noise(act, s)
    lo, hi = [t.cpu() for t in act["lo"]], [t.cpu() for t in act["hi"]]
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
            "SG": _f32(sg[i]),
            "FD": _f32(fd[i]),
        }
        for f, t in fields.items():
            if not torch.isfinite(t).all():
                raise EmqError(
                    f"statistic {f} of layer {layer.name} is not finite (NaN/inf): check the model's weights and "
                    "the calibration data"
                )
        out.append(
            LayerStats(
                name=layer.name,
                **fields,
                trace=float(trace[i]),
                eig=float(eig[i]),
                params=layer.params,
                macs=layer.macs,
                out_channels=layer.out_channels,
            )
        )
    meta = {
        "format": FORMAT,
        "model": layer_map.model,
        "settings": s.to_json(),
        "calib_images": int(x.shape[0]),
        "act_cap": int(min(s.act_cap, x.shape[0])),
        "act_ranges": [[float(a), float(b)] for a, b in zip(lo, hi, strict=True)],
        "hessian": {
            "images": int(xh.shape[0]),
            "probes": hutch.probes,
            "converged": hutch.converged,
            "raw_trace": [float(t) for t in hutch.trace],
            "negative_layers": [names[i] for i in np.flatnonzero(hutch.trace < 0)],
            "negative_policy": s.negative_trace,
            "convergence": convergence,
        },
        "seconds": seconds,
        "device": str(device),
    }
    return NetworkStats(bits, out, list(layer_map.layer_slot), meta)


def activation_noise(act: dict, s: StatsSettings) -> list[torch.Tensor]:
    """AE per layer: Q(A) - A of the stored (CPU) activations at the settings' activation bits."""
    lo, hi = [t.cpu() for t in act["lo"]], [t.cpu() for t in act["hi"]]
    out = []
    for i, a in enumerate(act["A"]):
        a = _f32(a)
        out.append(
            torch.zeros_like(a) if s.act_bits >= UNQUANTIZED_ACT_BITS else fake_quant(a, lo[i], hi[i], s.act_bits) - a
        )
    return out


def activation_fields(
    model: nn.Module, layer_map: LayerMap, x: torch.Tensor, y: torch.Tensor, *, s: StatsSettings, device: torch.device
) -> tuple[list[dict[str, torch.Tensor]], list[list[float]]]:
    """A, Y, GY and AE per layer and the activation ranges: one pass over the calibration
    images, the very numbers `_compute` stores (it runs the same pass first on the same copy)."""
    work, layers = _private_copy(model, layer_map, device)
    act = _activation_pass(work, layers, x.to(device), y.to(device), batch_size=s.batch_size, cap=s.act_cap)
    noise = activation_noise(act, s)
    fields = [
        {"A": _f32(act["A"][i]), "Y": _f32(act["Y"][i]), "GY": _f32(act["GY"][i]), "AE": noise[i]}
        for i in range(len(layers))
    ]
    ranges = [[float(a), float(b)] for a, b in zip(act["lo"], act["hi"], strict=True)]
    return fields, ranges


def _warn_unconverged(convergence: dict, names: list[str]) -> None:
    trace, eig = convergence["trace"], convergence["eig"]
    if not trace["converged"]:
        log.warning(
            "Hessian trace: not converged after %d probes (relative change %s, tolerance %g); raise hessian_max_probes",
            trace["probes"],
            trace["change"],
            trace["tol"],
        )
    if not eig["skipped"] and not all(eig["converged"]):
        moving = [n for n, c in zip(names, eig["converged"], strict=True) if not c]
        log.warning(
            "Hessian eigenvalue: %d layers not converged within %d iterations (%s); raise eig_iters",
            len(moving),
            eig["max_iters"],
            ", ".join(moving),
        )


def convergence_summary(ns: NetworkStats) -> str:
    """One line on how the Hessian estimates converged (the CLI prints it; per-layer numbers are in `summarize`)."""
    conv = ns.convergence
    if not conv:
        return "Hessian convergence: not recorded"
    trace, eig = conv["trace"], conv["eig"]
    changes = [(c, n) for c, n in zip(trace["layer_change"], ns.names, strict=True) if c is not None]
    errors = [(c, n) for c, n in zip(trace.get("layer_rel_stderr", []), ns.names, strict=False) if c is not None]
    worst = f"; largest layer change {max(changes)[0]:.2g} ({max(changes)[1]})" if changes else ""
    worst += f", largest relative standard error {max(errors)[0]:.2g} ({max(errors)[1]})" if errors else ""
    change = "n/a" if trace["change"] is None else f"{trace['change']:.2g}"
    text = (
        f"Hessian trace {'converged' if trace['converged'] else 'NOT converged'}: {trace['probes']} probes "
        f"(max {trace['max_probes']}), relative change {change} (tol {trace['tol']:g}){worst}"
    )
    if eig["skipped"]:
        return text + "; top eigenvalue skipped"
    done = sum(eig["converged"])
    iters = eig["iterations"]
    ec = [(c, n) for c, n in zip(eig["change"], ns.names, strict=True) if c is not None]
    eworst = f", largest final change {max(ec)[0]:.2g} ({max(ec)[1]})" if ec else ""
    return (
        text + f"; top eigenvalue converged in {done}/{len(iters)} layers: {min(iters)}-{max(iters)} iterations "
        f"(max {eig['max_iters']}, tol {eig['tol']:g}){eworst}"
    )


def _calibration(
    data: DataSplits | tuple[torch.Tensor, torch.Tensor], s: StatsSettings
) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(data, DataSplits):
        return data.calibration(s.calib_size, s.calib_seed)
    try:
        x, y = data
    except (TypeError, ValueError) as e:
        raise EmqError("calibration data: give a DataSplits or an (images, labels) pair of tensors") from e
    if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)) or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise EmqError(
            "calibration data: images and labels must be non-empty tensors of equal length "
            f"(got {getattr(x, 'shape', None)} and {getattr(y, 'shape', None)})"
        )
    if y.dtype != torch.long or y.dim() != 1:
        raise EmqError("calibration data: labels must be a 1-D tensor of class indices (torch.long)")
    return x, y


def cache_key(
    model: nn.Module, layer_map: LayerMap, x: torch.Tensor, y: torch.Tensor, *, bits: tuple[int, ...], s: StatsSettings
) -> str:
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


def model_fields(model: nn.Module, layer_map: LayerMap, device: torch.device) -> list[dict[str, torch.Tensor]]:
    """W, VG and SG per layer from the model alone (no data): the very numbers `_compute` stores
    (same private copy, same probes). The input shape is the first mapped convolution's channels
    at the layer map's input size, as for every shipped network."""
    work, layers = _private_copy(model, layer_map, device)
    if not isinstance(layers[0], nn.Conv2d):
        raise EmqError(
            f"model {layer_map.model}: its first mapped layer is not a convolution, so the input shape of the "
            "data-free statistics is unknown; compute the statistics from data (emq stats)"
        )
    shape = torch.Size((layers[0].in_channels, layer_map.input_size, layer_map.input_size))
    vg = _virtual_grad(work, layers, shape)
    sg = _synflow_grad(work, [layer.name for layer in layer_map.layers], shape)
    return [{"W": _f32(m.weight), "VG": _f32(vg[i]), "SG": _f32(sg[i])} for i, m in enumerate(layers)]


def complete_stats(
    ns: NetworkStats,
    model: nn.Module,
    layer_map: LayerMap,
    *,
    x: torch.Tensor | None,
    y: torch.Tensor | None,
    settings: StatsSettings,
    device: torch.device,
) -> NetworkStats:
    """Fill a partial file's left-out fields: the model's own (W, VG, SG, and E = Q - W) from the model,
    the activation fields from the calibration batch (x, y), which only they need."""
    if not ns.omitted:
        return ns
    layers, meta = list(ns.layers), {k: v for k, v in ns.meta.items() if k != "omitted"}
    if ns.needs_data:
        if x is None or y is None:
            raise EmqError(
                f"statistics without {', '.join(ns.omitted_from_data)}: completing them needs calibration data"
            )
        fields, meta["act_ranges"] = activation_fields(model, layer_map, x, y, s=settings, device=device)
        layers = [
            replace(layer, **{f: per[f] for f in ACTIVATION_FIELDS}) for layer, per in zip(layers, fields, strict=True)
        ]
    if set(ns.omitted) & set(MODEL_FIELDS):
        fields = model_fields(model, layer_map, device)
        layers = [
            replace(layer, **per, E=layer.Q - per["W"].unsqueeze(0)) for layer, per in zip(layers, fields, strict=True)
        ]
    return NetworkStats(ns.bits, layers, list(ns.layer_slot), meta)


def shipped_stats(
    target: Target,
    *,
    bits: tuple[int, ...],
    settings: StatsSettings,
    device: torch.device | str = "cpu",
    files: list[Path] | None = None,
) -> NetworkStats | None:
    """A shipped bundle's statistics of the target's model for this request (completed, cut to `bits`),
    or None when none matches (emq.search_space.shipped). A target without data (not installed): the
    data is not checked, and a partial file cannot be completed (EmqError naming --data). `files`
    defaults to the bundles'."""
    found = find_shipped(target, bits=bits, settings=settings, files=files)
    if found is None:
        return None
    ns, path = found
    model, layer_map, data = target.model, target.layer_map, target.data
    if ns.omitted:
        x, y = data.calibration(settings.calib_size, settings.calib_seed) if data is not None else (None, None)
        ns = complete_stats(ns, model, layer_map, x=x, y=y, settings=settings, device=torch.device(device))
    ns.meta["shipped"] = str(path)
    log.info("statistics of %s from the shipped bundle %s", layer_map.model, path)
    return ns


def compute_stats(
    target_or_model: Target | nn.Module,
    layer_map: LayerMap | None = None,
    data: DataSplits | tuple[torch.Tensor, torch.Tensor] | None = None,
    *,
    bits: Sequence[int] = DEFAULT_BITS,
    settings: StatsSettings | PTQSettings | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> NetworkStats:
    """Per-layer statistics of a model on calibration data, loaded from the cache when present.

    The cache lives in `<cache_dir>/stats`, `cache_dir` being the root of emq's caches (the
    same level as $EMQ_CACHE_DIR, which is used when `cache_dir` is None); `progress` shows
    tqdm bars on stderr for the long steps.

    `settings` may be PTQSettings: the defaults are then used with its activation bits and
    weight symmetry, so the noise statistics match that PTQ configuration.

    Give a `Target` (its model, layer map and data are used; `layer_map`/`data` override
    them), or a model with its layer map and data (a DataSplits, drawn with the settings'
    calib_size/calib_seed, or an (images, labels) batch used as is).

    `device` is where the network runs (emq.device); it is not part of the cache key, so a
    cached result is returned whatever the device.
    """
    device = resolve_device(device)
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
        key = cache_key(model, layer_map, x, y, bits=bits, s=s)
        path = default_cache_dir(cache_dir) / f"{key}.pt"
        if path.exists():
            try:
                t0 = time.perf_counter()
                cached = load_stats(path)
                cached.meta["cache"] = {
                    "key": key,
                    "path": str(path),
                    "hit": True,
                    "load_seconds": time.perf_counter() - t0,
                }
                log.info("statistics loaded from %s", path)
                return cached
            except EmqError as e:
                log.warning("ignoring the statistics cache entry: %s", e)
        if isinstance(data, DataSplits):
            target = Target(layer_map.model, model, layer_map, data)  # with the layer map and data used here
            found = shipped_stats(target, bits=bits, settings=s, device=device)
            if found is not None:
                return found
    rounding_x = (
        data.calibration(s.rounding_calib_size, s.rounding_calib_seed, s.rounding_calib_half)[0]
        if isinstance(data, DataSplits)
        else x
    )
    result = _compute(
        model,
        layer_map,
        x,
        y,
        bits=bits,
        s=s,
        progress=progress,
        rounding_x=rounding_x,
        cache_dir=cache_dir,
        device=device,
    )
    if path is not None:
        try:
            save_stats(result, path)
        except EmqError as e:  # the statistics are computed: return them, say that the next run recomputes them
            log.warning("statistics computed but not cached (%s); set a writable EMQ_CACHE_DIR to keep them", e)
        else:
            result.meta["cache"] = {"key": path.stem, "path": str(path), "hit": False}
    return result


def stats(
    model: ModelSpec | str | nn.Module = "default",
    data: str | DataSplits | None = None,
    *,
    bits: Sequence[int] = DEFAULT_BITS,
    settings: StatsSettings | None = None,
    weights: Path | None = None,
    input_size: int | None = None,
    num_classes: int | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    progress: bool = True,
    device: str | torch.device = "cpu",
    threads: int | None = None,
) -> NetworkStats:
    """Per-layer statistics of a model by name (or nn.Module, or a ModelSpec holding its data,
    weights, ... too) and its data; `emq stats`.

    `cache_dir` is the cache root (statistics go to `<cache_dir>/stats`, as with $EMQ_CACHE_DIR);
    `device` is where the network runs (cpu, cuda or cuda:N), checked before any model work;
    `threads` is torch's intra-op thread count (None: emq.threads chooses; the caller's is restored).
    """
    device = resolve_device(device)
    check_threads(threads)
    target = as_model_spec(model, data=data, weights=weights, num_classes=num_classes, input_size=input_size).resolve()
    with torch_threads(threads):
        return compute_stats(
            target,
            bits=bits,
            settings=settings,
            cache_dir=cache_dir,
            use_cache=use_cache,
            progress=progress,
            device=device,
        )


def summarize(ns: NetworkStats) -> dict:
    """Plain-number summary per layer (norms, traces, noise per bit) plus timings: the CLI's JSON."""
    layers = []
    conv = ns.convergence
    trace_conv, eig_conv = conv.get("trace", {}), conv.get("eig", {})
    for i, (layer, slot) in enumerate(zip(ns.layers, ns.layer_slot, strict=True)):
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
                "synflow": float((layer.W.double().abs() * layer.SG.double()).abs().sum()),
                "fisher_trace": float(layer.FD.double().sum()),
                "hessian_trace": layer.trace,
                "hessian_trace_per_param": layer.trace / layer.params,
                "hessian_diag_sum": float(layer.H.sum()),
                "hessian_eig": layer.eig,
                "hessian_trace_probes": trace_conv.get("probes"),
                "hessian_trace_change": trace_conv["layer_change"][i] if "layer_change" in trace_conv else None,
                "hessian_trace_rel_stderr": trace_conv["layer_rel_stderr"][i]
                if "layer_rel_stderr" in trace_conv
                else None,
                "hessian_eig_iterations": eig_conv["iterations"][i] if "iterations" in eig_conv else None,
                "hessian_eig_change": eig_conv["change"][i] if "change" in eig_conv else None,
                "hessian_eig_converged": eig_conv["converged"][i] if "converged" in eig_conv else None,
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
        "device": meta.get("device"),
        "cache": meta.get("cache"),
        "layers": layers,
    }


__all__ = [
    "StatsSettings",
    "compute_stats",
    "stats",
    "summarize",
    "convergence_summary",
    "cache_key",
    "default_cache_dir",
    "load_stats",
    "save_stats",
    "TENSOR_FIELDS",
]
