import copy

import pytest
import torch
from helpers import image_splits
from torch import nn

from emq.errors import EmqError
from emq.layermap import build_layer_map
from emq.quant import PTQEngine, PTQSettings, fold_batchnorm, quantize_weight
from emq.target import Target


@pytest.mark.parametrize("symmetric", [False, True])
def test_weight_error_monotone_in_bits_and_tiny_at_8(symmetric):
    w = torch.randn(16, 8, 3, 3)
    errs = [float((quantize_weight(w, b, symmetric) - w).pow(2).mean()) for b in range(1, 9)]
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < 1e-4 * float(w.pow(2).mean())


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_levels_per_channel(bits):
    w = torch.randn(6, 50)
    q = quantize_weight(w, bits)
    for row in q:
        assert len(torch.unique(row)) <= 2**bits
    assert quantize_weight(w, bits).shape == w.shape


def test_mse_clipping_beats_minmax():
    w = torch.randn(4, 1000)
    w[:, 0] = 12.0  # outliers: min/max scaling would waste levels
    q = quantize_weight(w, 3)
    lo, hi = w.min(1, keepdim=True).values, w.max(1, keepdim=True).values
    s = (hi - lo) / 7
    mm = torch.clamp(torch.round((w - lo) / s), 0, 7) * s + lo
    assert (q - w).pow(2).sum() < (mm - w).pow(2).sum()


def test_bad_bits():
    with pytest.raises(EmqError):
        quantize_weight(torch.randn(2, 2), 9)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def _data(n=96):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 1, 6, 6, generator=g)
    y = (x.mean((1, 2, 3)) > 0).long() + (x[:, 0, 0, 0] > 1).long()
    return image_splits("toy", x, y, calib=48, num_classes=3)


def _trained_net():
    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():  # non-trivial affine BN parameters, statistics of the data
        for bn in (net.bn1, net.bn2):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
            bn.momentum = None
        net.train()
        net(_data().calib_pool[0])
    for bn in (net.bn1, net.bn2):
        bn.momentum = 0.1
    return net.eval()


def test_fold_batchnorm_is_exact():
    net = _trained_net()
    x = torch.randn(5, 1, 6, 6)
    folded = fold_batchnorm(net, x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        assert torch.allclose(folded(x), net(x), atol=1e-5)
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())


def test_engine_leaves_model_untouched_and_8bit_is_close():
    net = _trained_net()
    before = copy.deepcopy(net.state_dict())
    net.train()
    data = _data()
    lm = build_layer_map(net, 6, "net", in_channels=1)
    engine = PTQEngine(Target("net", net, lm, data), PTQSettings(calib_size=48))
    fp = engine.evaluate_fp()
    r8 = engine.evaluate([8, 8, 8])
    r2 = engine.evaluate([2, 2, 2])
    again = engine.evaluate_fp()
    assert (again.top1, again.loss) == (fp.top1, fp.loss)  # not the last configuration's
    assert r8.kl < r2.kl
    assert r8.kl < 0.01
    assert abs(r8.top1 - fp.top1) <= 5
    assert net.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not net._forward_pre_hooks and not net.conv1._forward_pre_hooks


@pytest.mark.parametrize("bn", ["reestimate", "fold", "none"])
def test_bn_modes_run_and_are_repeatable(bn):
    net = _trained_net()
    data = _data()
    lm = build_layer_map(net, 6, "net", in_channels=1)
    engine = PTQEngine(Target("net", net, lm, data), PTQSettings(bn=bn, calib_size=48))
    a = engine.evaluate([3, 4, 2])
    b = engine.evaluate([3, 4, 2])
    assert (a.top1, a.loss, a.kl) == (b.top1, b.loss, b.kl)


def test_reestimation_changes_bn_statistics_only_in_the_copy():
    net = _trained_net()
    data = _data()
    lm = build_layer_map(net, 6, "net", in_channels=1)
    engine = PTQEngine(Target("net", net, lm, data), PTQSettings(bn="reestimate", calib_size=48))
    engine.evaluate([2, 2, 2])
    work_bn = dict(engine.work.named_modules())["bn1"]
    assert not torch.allclose(work_bn.running_mean, net.bn1.running_mean)
    x = data.calib_pool[0]
    # re-estimated statistics are those of the calibration data through the quantized conv
    for a in engine.act:
        a.mode = "off"  # statistics are gathered on unquantized activations
    with torch.no_grad():
        qpre = engine.layers[0](x)
    assert torch.allclose(work_bn.running_mean, qpre.mean((0, 2, 3)), atol=1e-4)


def test_weight_cache_reused():
    net = _trained_net()
    lm = build_layer_map(net, 6, "net", in_channels=1)
    engine = PTQEngine(Target("net", net, lm, _data()), PTQSettings(calib_size=48))
    engine.evaluate([2, 3, 4])
    first = engine.quantized_weight(0, 2)
    engine.evaluate([2, 4, 4])
    assert engine.quantized_weight(0, 2) is first
    assert len(engine.rounding._mem) == 4


def test_default_model_uniform_bits_ordered():
    from emq.target import resolve_target

    t = resolve_target("default")
    before = copy.deepcopy(t.model.state_dict())
    engine = PTQEngine(t)
    s = t.layer_map.num_slots
    r = {b: engine.evaluate([b] * s) for b in (2, 3, 4)}
    assert r[2].top1 < r[3].top1 < r[4].top1
    assert r[2].kl > r[3].kl > r[4].kl
    for k, v in t.model.state_dict().items():
        assert torch.equal(v, before[k])


# ---------------------------------------------------------------- weight-quantizer registry


@pytest.fixture()
def toy_quantizer():
    """A rounding method registered by this test only: unclipped per-tensor min/max rounding."""
    from emq.quantizers import QUANTIZERS, WeightQuantizer, fake_quant

    class MinMax(WeightQuantizer):
        name = "toy-minmax"
        description = "per-tensor min/max grid (a test method)"
        calls = 0

        def quantize(self, weight, bits, symmetric=False):
            MinMax.calls += 1
            return fake_quant(weight.detach().clone(), weight.min().clamp(max=0), weight.max().clamp(min=0), bits)

    yield MinMax
    QUANTIZERS.remove("toy-minmax")


def test_registered_quantizer_is_what_the_engine_deploys(toy_quantizer):
    net = _trained_net()
    lm = build_layer_map(net, 6, "net", in_channels=1)
    toy = PTQEngine(Target("net", net, lm, _data()), PTQSettings(calib_size=48, weight_quantizer="toy-minmax"))
    mse = PTQEngine(Target("net", net, lm, _data()), PTQSettings(calib_size=48))
    r_toy, r_mse = toy.evaluate([2, 2, 2]), mse.evaluate([2, 2, 2])
    assert toy_quantizer.calls == 3
    w = net.conv2.weight.detach()
    expect = toy_quantizer().quantize(w, 2)
    assert torch.equal(toy.quantized_weight(1, 2), expect)
    assert torch.equal(dict(toy.work.named_modules())["conv2"].weight, expect)  # deployed, not only computed
    assert torch.equal(mse.quantized_weight(1, 2), quantize_weight(w, 2))
    assert (r_toy.top1, r_toy.loss) != (r_mse.top1, r_mse.loss)


def test_weight_quantizer_setting_is_validated_and_old_settings_load():
    from emq.specs import ParameterError

    with pytest.raises(ParameterError, match=r"weight_quantizer='nonesuch'.*use one of"):
        PTQSettings(weight_quantizer="nonesuch")
    stored = {
        "act_bits": 8,
        "weight_symmetric": False,
        "bn": "reestimate",
        "calib_size": 512,
        "calib_seed": 0,
        "batch_size": 1024,
    }
    assert PTQSettings(**stored).weight_quantizer == "mse"  # a bench built before the field existed


def test_quantize_shows_progress_on_stderr_only_when_asked(capsys):
    import emq

    quiet = emq.quantize("default", bits=[4] * 20)
    assert capsys.readouterr().err == ""
    loud = emq.quantize("default", bits=[4] * 20, progress=True)
    err = capsys.readouterr().err
    assert "PTQ calibration" in err and "PTQ test set" in err
    assert loud.top1 == quiet.top1 and loud.kl == quiet.kl  # the bars change nothing else
