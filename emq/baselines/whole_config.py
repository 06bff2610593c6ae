"""Whole-configuration proxies: they quantize the network for each configuration and look.

All three run the target through one shared `PTQEngine` on the context's device (its own
copy of the model; the caller's model is never touched): `engine.prepare(bits)` sets
quantized weights, BatchNorm re-estimation and calibrated activation quantizers exactly as
the bench's PTQ does, then the proxy runs a small seeded batch of calibration images
(`PROXY_IMAGES`, drawn with `PROXY_SEED` on the CPU) through it. The full-precision reference
of each proxy is computed once per context and cached. `prepared` keeps the engine in the state
of the last configuration, so proxies that score one configuration in turn share its PTQ pass
(the most costly part).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata
from torch import nn

from ..errors import EmqError
from ..proxy import ProxyContext, WholeConfigProxy
from ..quant import PTQEngine, PTQSettings
from .registry import register_proxy

PROXY_IMAGES = 128
PROXY_SEED = 1


def shared_engine(ctx: ProxyContext) -> PTQEngine:
    """One PTQ engine per context, shared by every whole-configuration proxy."""
    engine = ctx.cache.get("ptq-engine")
    if engine is None:
        settings = ctx.settings or PTQSettings()
        engine = ctx.cache["ptq-engine"] = PTQEngine(ctx.target, settings, device=ctx.device)
    return engine


def proxy_images(ctx: ProxyContext) -> tuple[torch.Tensor, torch.Tensor]:
    """The seeded labelled calibration batch every whole-configuration proxy looks at, on the engine's device."""
    batch = ctx.cache.get("proxy-images")
    if batch is None:
        device = shared_engine(ctx).device
        x, y = ctx.target.require_data().calibration(PROXY_IMAGES, PROXY_SEED)
        batch = ctx.cache["proxy-images"] = (x.to(device), y.to(device))
    return batch


def prepared(ctx: ProxyContext, bits: Sequence[int] | None) -> nn.Module:
    """The shared engine's network in the PTQ state of `bits` (None: full precision), prepared
    only when the last call asked for another state. Proxies run the network in eval mode under
    no_grad or removable hooks, which leave that state as `PTQEngine.prepare` set it."""
    engine = shared_engine(ctx)
    key = None if bits is None else tuple(int(b) for b in bits)
    if "prepared" not in ctx.cache or ctx.cache["prepared"] != key:
        ctx.cache.pop("prepared", None)  # a failed preparation leaves no state to trust
        engine.prepare(bits)
        ctx.cache["prepared"] = key
    return engine.work


def _fp_cached(ctx: ProxyContext, key: str, compute) -> object:
    if key not in ctx.cache:
        ctx.cache[key] = compute(prepared(ctx, None))
    return ctx.cache[key]


@contextmanager
def straight_through(layers: Sequence[nn.Module]) -> Iterator[None]:
    """Let gradients pass the activation quantizers unchanged (straight-through estimator).

    The engine's quantizer rounds, whose gradient is zero; a pre-hook placed before it
    remembers the float input and one placed after it returns x + (Q(x) - x).detach().
    """
    handles = []
    for m in layers:
        stash: dict[str, torch.Tensor] = {}

        def remember(mod, inp, stash=stash):
            stash["x"] = inp[0]

        def pass_through(mod, inp, stash=stash):
            x = stash.pop("x")
            return (x + (inp[0] - x).detach(),) + tuple(inp[1:])

        handles.append(m.register_forward_pre_hook(remember, prepend=True))
        handles.append(m.register_forward_pre_hook(pass_through))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def gradcam_maps(net: nn.Module, layers: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Grad-CAM maps [N, H*W] of class y at the last spatial feature map (the last stage).

    The last stage is the last module output, in execution order, that is 4-D with more
    than one spatial position (for ResNets: the final stage, the input of global pooling).
    """
    found: list[torch.Tensor] = []

    def hook(mod, inp, out):
        if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[2] * out.shape[3] > 1:
            found.append(out)

    handles = [m.register_forward_hook(hook) for m in net.modules() if m is not net]
    try:
        with straight_through(layers), torch.enable_grad():
            logits = net(x.clone().requires_grad_(True))
            if not found:
                raise EmqError("GMPQ needs a convolutional model: no spatial feature map was found")
            feat = found[-1]
            target = logits.gather(1, y.view(-1, 1)).sum()
            (grad,) = torch.autograd.grad(target, feat)
    finally:
        for h in handles:
            h.remove()
    alpha = grad.mean(dim=(2, 3), keepdim=True)
    return torch.relu((alpha * feat).sum(dim=1)).detach().reshape(x.shape[0], -1)


def rank_consistency(ref: torch.Tensor, maps: torch.Tensor) -> float:
    """Mean per-image Spearman between two sets of maps [N, P]; an image with a constant map counts 0."""
    r1 = rankdata(ref.double().cpu().numpy(), axis=1)
    r2 = rankdata(maps.double().cpu().numpy(), axis=1)
    r1 -= r1.mean(axis=1, keepdims=True)
    r2 -= r2.mean(axis=1, keepdims=True)
    denom = np.sqrt((r1**2).sum(axis=1) * (r2**2).sum(axis=1))
    rho = np.divide((r1 * r2).sum(axis=1), denom, out=np.zeros(len(denom)), where=denom > 0)
    return float(rho.mean())


@register_proxy
class GMPQ(WholeConfigProxy):
    """GMPQ's attribution-rank consistency as a training-free proxy.

    GMPQ sharpens the teacher map (elementwise power 3) and row-normalises both maps; both
    are monotone on non-negative maps, so they leave the ranks, and thus Spearman, unchanged
    and are not applied.
    """

    name = "gmpq"
    description = (
        "GMPQ attribution-rank consistency: Spearman of FP vs quantized Grad-CAM maps at the last stage (Wang et "
        "al., ICCV 2021)"
    )
    orientation = 1
    cost = f"one PTQ preparation + forward and backward of {PROXY_IMAGES} calibration images per configuration"

    def reference(self, ctx: ProxyContext) -> torch.Tensor:
        layers, (x, y) = shared_engine(ctx).layers, proxy_images(ctx)
        return _fp_cached(ctx, "gmpq-fp", lambda net: gradcam_maps(net, layers, x, y))

    def score_one(self, ctx: ProxyContext, bits: Sequence[int]) -> float:
        ref = self.reference(ctx)
        x, y = proxy_images(ctx)
        return rank_consistency(ref, gradcam_maps(prepared(ctx, bits), shared_engine(ctx).layers, x, y))


def penultimate_features(net: nn.Module, classifier: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input the final classifier layer consumes (after its activation quantizer)."""
    captured: list[torch.Tensor] = []
    handle = classifier.register_forward_hook(lambda mod, inp, out: captured.append(inp[0].detach()))
    try:
        with torch.no_grad():
            net(x)
    finally:
        handle.remove()
    return captured[0].reshape(x.shape[0], -1)


def discriminability(features: torch.Tensor, labels: torch.Tensor) -> float:
    """Inter-class separation over intra-class compactness: sum_c n_c|mu_c-mu|^2 / sum_i |f_i-mu_{y_i}|^2."""
    f = features.double()
    classes = torch.unique(labels)
    if classes.numel() < 2:
        raise EmqError("SEAM needs labelled calibration images of at least two classes")
    mu = f.mean(dim=0)
    between = within = 0.0
    for c in classes:
        fc = f[labels == c]
        mc = fc.mean(dim=0)
        between += fc.shape[0] * float((mc - mu).pow(2).sum())
        within += float((fc - mc).pow(2).sum())
    if within <= 0:
        raise EmqError("SEAM: the penultimate features are constant within every class; the margin is undefined")
    return between / within


@register_proxy
class SEAM(WholeConfigProxy):
    name = "seam"
    description = (
        "SEAM discriminability: inter-class separation / intra-class compactness of quantized penultimate features "
        "(Tang et al., ACM MM 2023)"
    )
    orientation = 1
    cost = f"one PTQ preparation + forward of {PROXY_IMAGES} labelled calibration images per configuration"

    def score_one(self, ctx: ProxyContext, bits: Sequence[int]) -> float:
        engine = shared_engine(ctx)
        x, y = proxy_images(ctx)
        net = prepared(ctx, bits)
        return discriminability(penultimate_features(net, engine.layers[-1], x), y)


@register_proxy
class OutputKL(WholeConfigProxy):
    name = "kl"
    description = (
        "KL(FP || quantized) of the output distributions on calibration images (data-driven reference, e.g. Cai et "
        "al., ZeroQ, CVPR 2020)"
    )
    orientation = -1
    cost = f"one PTQ preparation + forward of {PROXY_IMAGES} calibration images per configuration"

    @staticmethod
    def _logits(ctx: ProxyContext, net: nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return F.log_softmax(net(proxy_images(ctx)[0]), dim=1)

    def reference(self, ctx: ProxyContext) -> torch.Tensor:
        return _fp_cached(ctx, "kl-fp", lambda net: self._logits(ctx, net))

    def score_one(self, ctx: ProxyContext, bits: Sequence[int]) -> float:
        ref = self.reference(ctx)
        q = self._logits(ctx, prepared(ctx, bits))
        return float(F.kl_div(q, ref, log_target=True, reduction="batchmean"))
