"""Session setup and the fixtures shared by several test modules.

`tiny_setting` is a tiny real setting for the search tests: statistics and a PTQ bench of a
small ResNet. The statistics are computed for real (weights, task gradients, Hutchinson
Hessian diagonal by double backward, activations, quantization noise from emq.quant), and the
bench records are real PTQ evaluations with emq.quant.PTQEngine, so the engine is tested on the
same kind of data it meets in production, only smaller.
"""

from __future__ import annotations

import copy
import os
import random
import tempfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import image_splits

from emq.fitness import FitnessData
from emq.layermap import LayerMap, build_layer_map
from emq.models import CifarResNet
from emq.quant import PTQEngine, PTQSettings, fake_quant, quantize_weight
from emq.search_space.netstats import LayerStats, NetworkStats
from emq.target import Target

# statistics caches of the test session live in a fresh folder, not the user's ~/.cache
os.environ["EMQ_CACHE_DIR"] = tempfile.mkdtemp(prefix="emq-test-cache-")

BITS = (2, 3, 4)


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from the same RNG state, so the suite is deterministic."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


def real_stats(
    model: torch.nn.Module, layer_map: LayerMap, x: torch.Tensor, y: torch.Tensor, bits=BITS, probes: int = 2
) -> NetworkStats:
    model = copy.deepcopy(model).eval()
    mods = dict(model.named_modules())
    layers = [mods[layer.name] for layer in layer_map.layers]
    acts: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = [
        m.register_forward_hook(lambda m, i, o, k=k: acts.__setitem__(k, (i[0].detach(), o)))
        for k, m in enumerate(layers)
    ]
    loss = F.cross_entropy(model(x), y)
    for h in hooks:
        h.remove()
    params = [m.weight for m in layers]
    outs = [acts[k][1] for k in range(len(layers))]
    grads = torch.autograd.grad(loss, params + outs, create_graph=True)
    G, GY = grads[: len(layers)], grads[len(layers) :]
    gen = torch.Generator().manual_seed(0)
    H = [torch.zeros_like(p) for p in params]
    for _ in range(probes):
        v = [torch.randint(0, 2, p.shape, generator=gen).float() * 2 - 1 for p in params]
        hv = torch.autograd.grad(G, params, v, retain_graph=True)
        H = [h + vi * hvi / probes for h, vi, hvi in zip(H, v, hv, strict=True)]
    per_sample = [
        torch.autograd.grad(F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), params) for i in range(x.shape[0])
    ]
    FD = [torch.stack([g[k] for g in per_sample]).pow(2).mean(0) for k in range(len(layers))]
    syn = copy.deepcopy(model)
    for p in syn.parameters():
        p.data.abs_()
    syn_layers = [dict(syn.named_modules())[layer.name] for layer in layer_map.layers]
    syn(torch.ones(1, *x.shape[1:])).sum().backward()
    out = []
    for k, (m, info) in enumerate(zip(layers, layer_map.layers, strict=True)):
        w = m.weight.detach()
        q = torch.stack([quantize_weight(w, b) for b in bits])
        a = acts[k][0]
        out.append(
            LayerStats(
                name=info.name,
                W=w,
                G=G[k].detach(),
                VG=syn_layers[k].weight.grad.detach(),
                H=H[k].detach(),
                A=a,
                Y=outs[k].detach(),
                GY=GY[k].detach(),
                AE=fake_quant(a, a.min(), a.max(), 8) - a,
                Q=q,
                E=q - w,
                trace=float(H[k].sum()),
                eig=float(H[k].abs().max()),
                params=info.params,
                macs=info.macs,
                out_channels=info.out_channels,
                SG=syn_layers[k].weight.grad.detach(),
                FD=FD[k],
            )
        )
    return NetworkStats(tuple(bits), out, list(layer_map.layer_slot), {"source": "tests"})


@pytest.fixture()
def noise_proxy():
    """The cheap real test proxy `test-noise` (helpers.NoiseProxy), registered by name while a test runs."""
    from helpers import NoiseProxy

    from emq.baselines.registry import PROXIES

    with PROXIES.temporarily("test-noise", NoiseProxy):
        yield NoiseProxy


@pytest.fixture(scope="session")
def tiny_setting() -> tuple[NetworkStats, FitnessData, LayerMap]:
    """(stats, FitnessData, layer_map) of the search tests: a width-4 one-block ResNet on 8 px
    inputs, with real statistics and 60 real PTQ records (30 search, 30 held-out).

    Built with one torch thread: on a shared 2-core machine, multi-threaded double backward
    of such tiny tensors is ~100x slower from oversubscription.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _build(n_configs=60, seed=0)
    finally:
        torch.set_num_threads(threads)


def _build(n_configs: int, seed: int) -> tuple[NetworkStats, FitnessData, LayerMap]:
    torch.manual_seed(seed)
    model = CifarResNet(width=4, in_channels=1, num_classes=4, blocks=1).eval()
    x = torch.randn(128, 1, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)  # labels the FP model gets right: quantization lowers accuracy
    data = image_splits("tiny", x, y, calib=32, num_classes=4)
    lm = build_layer_map(model, 8, "tiny", in_channels=1)
    stats = real_stats(model, lm, x[:16], y[:16])
    engine = PTQEngine(Target("tiny", model, lm, data), PTQSettings(calib_size=32))
    rng = np.random.default_rng(seed)
    configs = rng.choice(np.array(BITS), size=(n_configs, lm.num_slots))
    kl = np.array([engine.evaluate([int(b) for b in c]).kl for c in configs])
    half = n_configs // 2
    fd = FitnessData.from_arrays(BITS, (configs[:half], kl[:half]), (configs[half:], kl[half:]), metric="kl")
    return stats, fd, lm
