"""Per-layer statistics: alignment, correctness against autograd, no side effects, caching, CLI."""

import json
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from emq.cli.main import main
from emq.errors import EmqError
from emq.layermap import build_layer_map
from emq.quant import PTQSettings, fake_quant, quantize_weight
from emq.search_space.netstats import TENSOR_FIELDS, load_stats, save_stats
from emq.search_space.stats import StatsSettings, _apply_trace_policy, compute_stats

FAST = StatsSettings(
    batch_size=5,
    hessian_images=12,
    hessian_batch_size=12,
    hessian_min_probes=4,
    hessian_max_probes=8,
    eig_iters=3,
    act_cap=64,
    act_bits=4,
    negative_trace="keep",
)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 3, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(3)
        self.body = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.head = nn.Linear(64, 5)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        return self.head(torch.tanh(self.body(x)).flatten(1))


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    model = Tiny().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.3, 0.3)
        model.bn.running_var.uniform_(0.5, 1.5)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(12, 1, 8, 8, generator=g)
    y = torch.randint(0, 5, (12,), generator=g)
    return model, build_layer_map(model, 8, "tiny"), x, y


def reference_pass(model, names, x, y):
    """Independent autograd: weight grads of the mean loss, layer inputs/outputs and output grads."""
    mods = dict(model.named_modules())
    ins, outs = {}, {}

    def record(name):
        def hook(mod, inp, out):
            ins[name], outs[name] = inp[0], out

        return hook

    hooks = [mods[n].register_forward_hook(record(n)) for n in names]
    try:
        loss = F.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, [mods[n].weight for n in names] + [outs[n] for n in names])
    finally:
        for h in hooks:
            h.remove()
    k = len(names)
    return {n: (grads[i], ins[n].detach(), outs[n].detach(), grads[k + i]) for i, n in enumerate(names)}


def test_layers_aligned_and_gradients_match_autograd(tiny):
    model, lm, x, y = tiny
    ns = compute_stats(model, lm, (x, y), bits=(4, 2), settings=FAST, use_cache=False)
    names = ["stem", "body", "head"]
    assert ns.names == [layer.name for layer in lm.layers] == names
    assert ns.bits == (2, 4) and ns.layer_slot == lm.layer_slot
    ref = reference_pass(model, names, x, y)
    mods = dict(model.named_modules())
    for layer in ns.layers:
        g, a, out, gy = ref[layer.name]
        w = mods[layer.name].weight
        torch.testing.assert_close(layer.W, w.detach())
        torch.testing.assert_close(layer.G, g, rtol=1e-4, atol=1e-6)  # accumulated over batches of 5, 5, 2
        torch.testing.assert_close(layer.A, a)
        torch.testing.assert_close(layer.Y, out)
        torch.testing.assert_close(layer.GY, gy, rtol=1e-4, atol=1e-7)
        assert layer.H.shape == layer.VG.shape == w.shape
        assert layer.Q.shape == layer.E.shape == (2, *w.shape)
        assert (layer.params, layer.out_channels) == (w.numel(), w.shape[0])
        for t in (getattr(layer, f) for f in TENSOR_FIELDS):
            assert t.dtype == torch.float32 and t.device.type == "cpu"
    # G is the outer product of the stored output gradients and inputs (same layer, same samples)
    head = ns.layers[2]
    torch.testing.assert_close(head.GY.T @ head.A, head.G, rtol=1e-4, atol=1e-6)
    body = ns.layers[1]
    conv_g = torch.nn.grad.conv2d_weight(body.A, body.W.shape, body.GY, stride=2, padding=1)
    torch.testing.assert_close(conv_g, body.G, rtol=1e-4, atol=1e-6)


def test_virtual_grad_noise_and_trace(tiny):
    model, lm, x, y = tiny
    ns = compute_stats(model, lm, (x, y), bits=(2, 3, 4), settings=FAST, use_cache=False)
    mods = dict(model.named_modules())
    weights = [mods[layer.name].weight for layer in ns.layers]
    vg = torch.autograd.grad(model(torch.ones(1, 1, 8, 8)).sum(), weights)
    for layer, v in zip(ns.layers, vg, strict=True):
        torch.testing.assert_close(layer.VG, v)
        for k, b in enumerate(ns.bits):
            torch.testing.assert_close(layer.Q[k], quantize_weight(layer.W, b, False))
            torch.testing.assert_close(layer.E[k], layer.Q[k] - layer.W)
        assert layer.trace == pytest.approx(float(layer.H.sum()), rel=1e-4, abs=1e-6)
    # activation noise: per-tensor range over all calibration images, at act_bits
    ref = reference_pass(model, ns.names, x, y)
    for layer in ns.layers:
        a = ref[layer.name][1]
        lo, hi = a.min().clamp(max=0), a.max().clamp(min=0)
        torch.testing.assert_close(layer.AE, fake_quant(a, lo, hi, 4) - a)
        assert float(layer.AE.abs().max()) > 0
    e = [float(layer.E[0].norm()) for layer in ns.layers], [float(layer.E[2].norm()) for layer in ns.layers]
    assert all(lo_bits > hi_bits for lo_bits, hi_bits in zip(*e, strict=True))  # 2-bit noise exceeds 4-bit noise


def test_activation_cap_and_repeatability(tiny):
    model, lm, x, y = tiny
    capped = StatsSettings(**{**FAST.to_json(), "act_cap": 3})
    a = compute_stats(model, lm, (x, y), settings=capped, use_cache=False)
    b = compute_stats(model, lm, (x, y), settings=capped, use_cache=False)
    assert a.meta["act_cap"] == 3
    for la, lb in zip(a.layers, b.layers, strict=True):
        assert la.A.shape[0] == la.Y.shape[0] == la.GY.shape[0] == la.AE.shape[0] == 3
        for f in TENSOR_FIELDS:
            assert torch.equal(getattr(la, f), getattr(lb, f)), f
        assert (la.trace, la.eig) == (lb.trace, lb.eig)
    other_seed = compute_stats(
        model, lm, (x, y), settings=StatsSettings(**{**capped.to_json(), "seed": 1}), use_cache=False
    )
    assert [layer.trace for layer in other_seed.layers] != [layer.trace for layer in a.layers]


def test_caller_model_untouched(tiny):
    model, lm, x, y = tiny
    model.train()
    model.body.eval()
    model.head.weight.grad = torch.full_like(model.head.weight, 7.0)
    model.stem.weight.requires_grad_(False)
    calls = []
    model.head.register_forward_hook(lambda m, i, o: calls.append(1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = {n: m.training for n, m in model.named_modules()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    hook_keys = {
        n: (list(m._forward_hooks), list(m._forward_pre_hooks), list(m._backward_hooks))
        for n, m in model.named_modules()
    }

    compute_stats(model, lm, (x, y), settings=FAST, use_cache=False)

    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN running stats
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert torch.equal(model.head.weight.grad, torch.full_like(model.head.weight, 7.0))
    assert model.stem.weight.grad is None and model.body.weight.grad is None
    assert {
        n: (list(m._forward_hooks), list(m._forward_pre_hooks), list(m._backward_hooks))
        for n, m in model.named_modules()
    } == hook_keys
    assert calls == []  # the caller's hooks never fire for our passes


def test_cache_hit_and_corruption(tiny, tmp_path, caplog):
    model, lm, x, y = tiny
    first = compute_stats(model, lm, (x, y), settings=FAST, cache_dir=tmp_path)
    files = list((tmp_path / "stats").glob("*.pt"))
    assert len(files) == 1 and first.meta["cache"]["hit"] is False
    second = compute_stats(model, lm, (x, y), settings=FAST, cache_dir=tmp_path)
    assert second.meta["cache"]["hit"] is True
    for la, lb in zip(first.layers, second.layers, strict=True):
        assert all(torch.equal(getattr(la, f), getattr(lb, f)) for f in TENSOR_FIELDS)
        assert (la.trace, la.eig, la.params, la.macs) == (lb.trace, lb.eig, lb.params, lb.macs)
    # different weights -> a different key, not a stale hit
    changed = Tiny().eval()
    assert compute_stats(changed, lm, (x, y), settings=FAST, cache_dir=tmp_path).meta["cache"]["hit"] is False

    raw = bytearray(files[0].read_bytes())
    for damage in (raw[: len(raw) // 2], raw[:100] + bytes(b ^ 0xFF for b in raw[100:400]) + raw[400:]):
        files[0].write_bytes(bytes(damage))
        with pytest.raises(EmqError):
            load_stats(files[0])
        with caplog.at_level(logging.WARNING):
            again = compute_stats(model, lm, (x, y), settings=FAST, cache_dir=tmp_path)
        assert again.meta["cache"]["hit"] is False and "ignoring the statistics cache entry" in caplog.text
        assert all(torch.equal(la.G, lb.G) for la, lb in zip(first.layers, again.layers, strict=True))
        assert load_stats(files[0]).names == first.names  # rewritten, valid again


def test_digest_catches_altered_tensor(tiny, tmp_path):
    model, lm, x, y = tiny
    ns = compute_stats(model, lm, (x, y), settings=FAST, use_cache=False)
    path = save_stats(ns, tmp_path / "s.pt")
    payload = torch.load(path, weights_only=True)
    payload["tensors"]["0/W"][0, 0, 0, 0] += 1.0  # well-formed file, wrong content
    torch.save(payload, path)
    with pytest.raises(EmqError, match="digest"):
        load_stats(path)


def test_bad_input(tiny):
    model, lm, x, y = tiny
    from_ptq = compute_stats(
        model, lm, (x, y), settings=PTQSettings(act_bits=4, weight_symmetric=True), use_cache=False
    )
    assert from_ptq.meta["settings"]["act_bits"] == 4 and from_ptq.meta["settings"]["weight_symmetric"] is True
    with pytest.raises(EmqError, match="bits"):
        compute_stats(model, lm, (x, y), bits=(2, 9), settings=FAST, use_cache=False)
    other = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Flatten(), nn.Linear(108, 5))
    with pytest.raises(EmqError, match="layer map"):
        compute_stats(other, lm, (x, y), settings=FAST, use_cache=False)
    with pytest.raises(EmqError, match="labels"):
        compute_stats(model, lm, (x, y.float()), settings=FAST, use_cache=False)
    with pytest.raises(EmqError, match="hessian_min_probes"):
        StatsSettings(hessian_min_probes=9, hessian_max_probes=8)
    with pytest.raises(EmqError, match="negative_trace"):
        StatsSettings(negative_trace="ignore")


def test_negative_trace_policies():
    raw = np.array([2.0, -0.5])
    np.testing.assert_array_equal(_apply_trace_policy(raw, ["a", "b"], "clamp"), [2.0, 0.0])
    np.testing.assert_array_equal(_apply_trace_policy(raw, ["a", "b"], "abs"), [2.0, 0.5])
    np.testing.assert_array_equal(_apply_trace_policy(raw, ["a", "b"], "keep"), raw)
    with pytest.raises(EmqError, match="b"):
        _apply_trace_policy(raw, ["a", "b"], "error")


def test_cli_default_model(tmp_path, capsys):
    """Real default model through the CLI: layer order, JSON fields, --out file, cache."""
    args = [
        "stats",
        "--calib-size",
        "32",
        "--hessian-images",
        "16",
        "--hessian-batch-size",
        "16",
        "--hessian-samples",
        "2",
        "--eig-iters",
        "1",
        "--cache-dir",
        str(tmp_path / "c"),
    ]
    out = tmp_path / "stats.pt"
    assert main(args + ["--json", "--out", str(out)]) == 0
    doc = json.loads(capsys.readouterr().out)
    from emq.target import resolve_target

    lm = resolve_target("default").layer_map
    assert [layer["name"] for layer in doc["layers"]] == [layer.name for layer in lm.layers]
    assert len(doc["layers"]) == 22 and doc["bits"] == [2, 3, 4]
    first = doc["layers"][0]
    assert set(first["noise_norm"]) == {"2", "3", "4"} and first["hessian_trace"] >= 0
    assert first["noise_norm"]["2"] > first["noise_norm"]["4"] > 0
    assert set(doc["seconds"]) >= {"gradients_activations", "hessian_trace_diag", "hessian_eig", "weight_noise"}
    saved = load_stats(out)
    assert saved.names == [layer.name for layer in lm.layers] and saved.layer_slot == lm.layer_slot
    assert main([*args, "--sensitivity-in-context"]) == 0  # the statistics from the cache, then the measurement
    text = capsys.readouterr().out
    assert "layer3.0.downsample.0" in text and "loaded from cache" in text
    assert "one slot at b bits, the others at 3;" in text and "single-slot evaluations" in text
    assert main(["stats", "--bits-allowed", "2,12", "--no-cache"]) == 2


def test_statistics_use_the_ptq_weight_quantizer(tiny):
    """Q_b(W) and E_b come from the registry under the PTQ settings' name (a toy method here)."""
    from emq.quantizers import QUANTIZERS, WeightQuantizer

    class Halves(WeightQuantizer):
        name = "toy-halves"

        def quantize(self, weight, bits, symmetric=False):
            return torch.round(weight * 2**bits) / 2**bits

    try:
        model, lm, x, y = tiny
        s = StatsSettings.from_ptq(
            PTQSettings(act_bits=4, weight_quantizer="toy-halves"),
            **{
                k: v for k, v in FAST.to_json().items() if k not in ("act_bits", "weight_symmetric", "weight_quantizer")
            },
        )
        assert s.weight_quantizer == "toy-halves"
        stats = compute_stats(model, lm, (x, y), bits=(2, 3), settings=s, use_cache=False)
        for layer in stats.layers:
            for k, b in enumerate((2, 3)):
                torch.testing.assert_close(layer.Q[k], torch.round(layer.W * 2**b) / 2**b)
                torch.testing.assert_close(layer.E[k], layer.Q[k] - layer.W)
        with pytest.raises(EmqError, match="weight_quantizer"):
            StatsSettings(weight_quantizer="nope")
    finally:
        QUANTIZERS.remove("toy-halves")


def test_compact_bundle_format_keeps_every_field_to_float16_precision(tiny, tmp_path):
    """Bundles store float16 scaled per tensor, LZMA-packed, and derive E = Q - W: every field comes
    back float32 within 1e-3 of its largest magnitude, E exactly Q - W, the grid's zeros of Q still
    exactly zero, tiny Fisher values not flushed to zero; Q, on a few grid points, packs to under
    half its float16 bytes."""
    model, lm, x, y = tiny
    ns = compute_stats(model, lm, (x, y), settings=FAST, use_cache=False)
    for layer in ns.layers:
        layer.FD = layer.FD * 1e-9  # far below float16's smallest normal number (6e-5)
    full = save_stats(ns, tmp_path / "full.pt")
    small = save_stats(ns, tmp_path / "small.pt", compact=True)
    back = load_stats(small)
    assert small.stat().st_size < 0.75 * full.stat().st_size
    stored = torch.load(small, weights_only=True)["tensors"]
    assert "0/E" not in stored
    big = max(range(len(ns.layers)), key=lambda i: ns.layers[i].Q.numel())
    assert stored[f"{big}/Q"].dtype == torch.uint8
    assert stored[f"{big}/Q"].numel() < 0.5 * 2 * ns.layers[big].Q.numel()
    for a, b in zip(ns.layers, back.layers, strict=True):
        for f in TENSOR_FIELDS:
            x0, x1 = getattr(a, f), getattr(b, f)
            assert x1.dtype == torch.float32 and x1.shape == x0.shape, f
            # E = Q - W is derived, so its error is float16's on the scale of W and Q, not of E
            scale = float(a.Q.abs().max() + a.W.abs().max()) if f == "E" else float(x0.abs().max())
            assert float((x0 - x1).abs().max()) <= 1e-3 * scale + 1e-12, f
        assert torch.equal(b.E, b.Q - b.W.unsqueeze(0))
        assert torch.equal(b.Q == 0, a.Q == 0)
        assert bool((b.FD[a.FD != 0] != 0).all())
    assert (back.bits, back.layer_slot, back.names) == (ns.bits, ns.layer_slot, ns.names)
    payload = torch.load(small, weights_only=True)
    payload["tensors"]["0/W/scale"] *= 2  # a scale altered: caught like any tensor
    torch.save(payload, small)
    with pytest.raises(EmqError, match="digest"):
        load_stats(small)


class _HardNet(nn.Module):
    """Squeeze-excitation with hard-sigmoid and a hard-swish stem, as in MobileNetV3; `clamp`
    writes the same two functions with torch.clamp (what the Hessian pass swaps in)."""

    def __init__(self, clamp: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.act = nn.Hardswish()
        self.se_fc = nn.Conv2d(4, 4, 1)
        self.gate = nn.Hardsigmoid()
        self.fc = nn.Linear(4, 5)
        self.clamp = clamp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.conv(x)
        z = z * torch.clamp(z + 3, 0, 6) / 6 if self.clamp else self.act(z)
        s = self.se_fc(z.mean((2, 3), keepdim=True))
        z = z * (torch.clamp(s + 3, 0, 6) / 6 if self.clamp else self.gate(s))
        return self.fc(z.mean((2, 3)))


def test_hessian_through_hard_sigmoid_and_hard_swish():
    """PyTorch cannot differentiate hardsigmoid's backward: the Hessian pass swaps in clamp twins,
    which give the Hessian of the same function, and puts the modules back."""
    torch.manual_seed(0)
    net = _HardNet().eval()
    twin = _HardNet(clamp=True).eval()
    twin.load_state_dict(net.state_dict())
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 1, 6, 6, generator=g), torch.randint(0, 5, (8,), generator=g)
    ns = compute_stats(net, build_layer_map(net, 6, "hard"), (x, y), settings=FAST, use_cache=False)
    ref = compute_stats(twin, build_layer_map(twin, 6, "hard"), (x, y), settings=FAST, use_cache=False)
    for a, b in zip(ns.layers, ref.layers, strict=True):
        assert a.trace == pytest.approx(b.trace, rel=1e-5, abs=1e-9) and a.eig == pytest.approx(b.eig, rel=1e-4)
        torch.testing.assert_close(a.H, b.H, rtol=1e-4, atol=1e-9)
    assert isinstance(net.gate, nn.Hardsigmoid) and isinstance(net.act, nn.Hardswish)
