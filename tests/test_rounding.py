"""Reconstruction rounding (GPTQ, AdaRound) and the on-disk cache of rounded weights."""

from __future__ import annotations

import logging

import pytest
import torch
from helpers import image_splits
from torch import nn

from emq.quant import PTQEngine, PTQSettings
from emq.quantizers import get_weight_quantizer
from emq.quantizers.adaround import adaround
from emq.quantizers.base import LayerInputs
from emq.rounding import RoundedWeights, rounding_cache_dir
from emq.specs import ParameterError
from emq.target import Target

FAST_ADAROUND = {"iters": 800, "batch": 16}


def _layers():
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(4, 8, 3, 1, 1, bias=False)
    dw = nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False)
    fc = nn.Linear(32, 6)
    for m in (conv, dw, fc):
        m.weight.data = torch.randn(m.weight.shape, generator=g) * 0.2
    return [
        ("conv", LayerInputs(conv, torch.relu(torch.randn(48, 4, 6, 6, generator=g)))),
        ("depthwise", LayerInputs(dw, torch.relu(torch.randn(48, 8, 6, 6, generator=g)))),
        ("linear", LayerInputs(fc, torch.relu(torch.randn(96, 32, generator=g)))),
    ]


@pytest.mark.parametrize("method", ["gptq", "adaround"])
@pytest.mark.parametrize("bits", [2, 3])
def test_reconstruction_error_is_below_plain_rounding(method, bits):
    q = get_weight_quantizer(method, FAST_ADAROUND if method == "adaround" else None)
    plain = get_weight_quantizer("mse")
    for name, layer in _layers():
        w = layer.module.weight.detach()
        mine = q.quantize(w, bits, False, layer)
        assert mine.shape == w.shape and not torch.equal(mine, w)
        assert layer.error(mine, w) < layer.error(plain.quantize(w, bits), w), f"{method} {name} {bits}-bit"


@pytest.mark.parametrize("method", ["gptq", "adaround"])
def test_rounded_weights_lie_on_the_mse_grid(method):
    from emq.quantizers.mse import mse_grid

    q = get_weight_quantizer(method, FAST_ADAROUND if method == "adaround" else None)
    _, layer = _layers()[0]
    w = layer.module.weight.detach()
    out = q.quantize(w, 2, False, layer).reshape(w.shape[0], -1)
    grid = mse_grid(w, 2)
    k = out / grid.scale + grid.zero
    assert torch.allclose(k, k.round(), atol=1e-4) and k.round().min() >= 0 and k.round().max() <= 3


def test_adaround_rounding_variables_converge_to_zero_or_one():
    _, layer = _layers()[0]
    w = layer.module.weight.detach()
    params = get_weight_quantizer("adaround").params  # the default schedule (2,000 iterations)
    _, h = adaround(w, layer, 2, symmetric=False, p=params)
    assert ((h < 0.01) | (h > 0.99)).float().mean() > 0.9  # without the annealed regulariser about 60 %
    _, h_soft = adaround(w, layer, 2, symmetric=False, p={**params, "iters": 50})  # still in the warm-up: soft
    assert ((h_soft > 0) & (h_soft < 1)).float().mean() > 0.5


def test_options_are_validated_normalized_and_recorded():
    s = PTQSettings(weight_quantizer="adaround", quantizer_options={"iters": "300"})
    assert s.quantizer_options == (("iters", 300),)
    assert PTQSettings(**s.to_json()) == s and s.to_json()["quantizer_options"] == {"iters": 300}
    assert (
        PTQSettings(weight_quantizer="adaround", quantizer_options={"iters": 2000}).quantizer_options == ()
    )  # the default
    with pytest.raises(ParameterError, match="has no option 'itres'"):
        PTQSettings(weight_quantizer="adaround", quantizer_options={"itres": 3})
    with pytest.raises(ParameterError, match="must be a float"):
        PTQSettings(weight_quantizer="gptq", quantizer_options={"damp": "lots"})


def _rounded(tmp_path, method="gptq"):
    name, layer = _layers()[0]
    model = nn.Sequential(layer.module)
    return RoundedWeights(
        model,
        [layer.module],
        ["0"],
        method,
        options=FAST_ADAROUND if method == "adaround" else None,
        calib=layer.inputs,
        cache_dir=tmp_path,
    )


def test_cache_hit_on_a_second_call_and_a_corrupt_entry_is_recomputed(tmp_path, caplog):
    first = _rounded(tmp_path)
    q = first.get(0, 2)
    assert (first.misses, first.hits) == (1, 0)
    files = list(rounding_cache_dir(tmp_path).glob("*.pt"))
    assert len(files) == 1
    second = _rounded(tmp_path)
    assert torch.equal(second.get(0, 2), q) and (second.misses, second.hits) == (0, 1)

    blob = torch.load(files[0], weights_only=True)  # a readable file whose tensor was altered
    blob["weight"] = blob["weight"] + 1.0
    torch.save(blob, files[0])
    third = _rounded(tmp_path)
    with caplog.at_level(logging.WARNING, logger="emq.rounding"):
        assert torch.equal(third.get(0, 2), q)
    assert third.misses == 1 and "corrupt" in caplog.text
    files[0].write_bytes(b"garbage")  # an unreadable file
    fourth = _rounded(tmp_path)
    assert torch.equal(fourth.get(0, 2), q) and fourth.misses == 1
    assert (
        torch.equal(_rounded(tmp_path).get(0, 2), q) and len(list(rounding_cache_dir(tmp_path).glob("*"))) == 1
    )  # rewritten, no temp left


def test_cache_key_depends_on_calibration_and_options(tmp_path):
    a = _rounded(tmp_path)
    a.get(0, 2)
    name, layer = _layers()[0]
    other = RoundedWeights(
        nn.Sequential(layer.module),
        [layer.module],
        ["0"],
        "gptq",
        options={"damp": 0.1},
        calib=layer.inputs,
        cache_dir=tmp_path,
    )
    other.get(0, 2)
    fewer = RoundedWeights(
        nn.Sequential(layer.module), [layer.module], ["0"], "gptq", calib=layer.inputs[:10], cache_dir=tmp_path
    )
    fewer.get(0, 2)
    assert other.misses == 1 and fewer.misses == 1 and len(list(rounding_cache_dir(tmp_path).glob("*.pt"))) == 3


def _target() -> Target:
    from emq.layermap import build_layer_map

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()
    x = torch.randn(120, 1, 6, 6)
    y = torch.randint(0, 3, (120,))
    data = image_splits("toy", x, y, calib=60, num_classes=3)
    return Target("toy", net, build_layer_map(net, 6, "toy", in_channels=1), data)


def test_engine_deploys_cached_reconstruction_rounding_and_stats_see_the_same(tmp_path):
    from emq.search_space.stats import compute_stats

    target = _target()
    settings = PTQSettings(calib_size=40, weight_quantizer="gptq")
    engine = PTQEngine(target, settings, cache_dir=tmp_path)
    engine.prepare_rounding([2, 3])
    assert engine.rounding.misses == 6 and len(list(rounding_cache_dir(tmp_path).glob("*.pt"))) == 6
    res = engine.evaluate([2, 3, 2])
    deployed = dict(engine.work.named_modules())["3"].weight
    assert torch.equal(deployed, engine.quantized_weight(1, 3))
    again = PTQEngine(target, settings, cache_dir=tmp_path)
    assert again.evaluate([2, 3, 2]).top1 == res.top1 and again.rounding.misses == 0 and again.rounding.hits == 3
    plain = PTQEngine(target, PTQSettings(calib_size=40)).quantized_weight(1, 3)
    assert not torch.equal(plain, deployed)

    ns = compute_stats(target, bits=[2, 3], settings=settings, cache_dir=tmp_path)
    assert torch.allclose(ns.layers[1].Q[1], deployed)  # the statistics' Q_b(W) is the engine's


def test_bias_correction_removes_the_mean_output_shift_of_rounding():
    target = _target()
    net = target.model
    plain = PTQEngine(target, PTQSettings(calib_size=40, act_bits=32))
    fixed = PTQEngine(target, PTQSettings(calib_size=40, act_bits=32, bias_correction=True))
    x = fixed.calib[0]
    feats = nn.Sequential(*list(net.children())[:-1])  # the classifier's full-precision inputs
    with torch.no_grad():
        inputs = feats(x)
        fp_out = net[-1](inputs)
        config = [2, 2, 2]

        def shift(engine):
            engine.prepare(config)
            return (dict(engine.work.named_modules())["7"](inputs) - fp_out).mean(0).abs().max().item()

        before, after = shift(plain), shift(fixed)
    assert after < 1e-5 < before
    assert fixed.evaluate(config).kl != plain.evaluate(config).kl
    fixed.prepare(None)
    assert torch.equal(dict(fixed.work.named_modules())["7"].bias, net[-1].bias)  # full precision restores the bias
