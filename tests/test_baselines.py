"""Every hand-made proxy against a direct hand computation of its formula on a tiny model."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import nn
from torch.utils.data import TensorDataset

from emq.baselines import PROXIES, get_proxy, parse_proxy_names
from emq.data import DataSplits
from emq.errors import EmqError
from emq.hashing import state_dict_digest
from emq.layermap import build_layer_map
from emq.proxy import ProxyContext, linear_cost
from emq.quant import PTQEngine, PTQSettings, quantize_weight
from emq.search_space.netstats import LayerStats, NetworkStats
from emq.target import Target

BITS = (2, 3, 4)


class Tiny(nn.Module):
    """conv -> bn -> relu -> conv -> relu -> pool -> fc, small enough to check by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False)
        self.relu2 = nn.ReLU()  # a module, so the last stage's output is visible to hooks
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))


def tiny_target() -> Target:
    torch.manual_seed(0)
    model = Tiny().eval()
    with torch.no_grad():
        model.bn1.running_mean.uniform_(-0.2, 0.2)
        model.bn1.running_var.uniform_(0.5, 1.5)
        model.fc.weight.mul_(8.0)  # confident outputs, so the KL is far above float32 rounding
    g = torch.Generator().manual_seed(1)
    calib = (torch.randn(160, 1, 8, 8, generator=g), torch.randint(0, 3, (160,), generator=g))
    test = TensorDataset(torch.randn(40, 1, 8, 8, generator=g), torch.randint(0, 3, (40,), generator=g))
    data = DataSplits(
        name="tiny", num_classes=3, in_channels=1, input_size=8, calib_pool=calib, test=test, fingerprint="tiny"
    )
    return Target("tiny", model, build_layer_map(model, 8, "tiny", in_channels=1), data)


def fake_stats(target: Target, layer_slot: list[int] | None = None) -> NetworkStats:
    """Statistics with the documented layout, filled with seeded random values."""
    g = torch.Generator().manual_seed(7)
    layers = []
    for i, layer in enumerate(target.layer_map.layers):
        w = dict(target.model.named_modules())[layer.name].weight.detach().clone()
        q = torch.stack([quantize_weight(w, b) for b in BITS])
        n = 6
        a = torch.randn(n, 5, generator=g) * (i + 1)
        y = torch.randn(n, 7, generator=g) + (torch.arange(n).float()[:, None] if i else 0)
        layers.append(
            LayerStats(
                name=layer.name,
                W=w,
                G=torch.randn(w.shape, generator=g),
                VG=torch.randn(w.shape, generator=g),
                H=torch.rand(w.shape, generator=g),
                A=a,
                Y=y,
                GY=torch.randn(y.shape, generator=g),
                AE=torch.randn(a.shape, generator=g) * 0.01,
                Q=q,
                E=q - w[None],
                trace=float(i + 2.5),
                eig=float(3 - i) * 0.7,
                params=layer.params,
                macs=layer.macs,
                out_channels=layer.out_channels,
                SG=torch.randn(w.shape, generator=g),
                FD=torch.rand(w.shape, generator=g),
            )
        )
    return NetworkStats(BITS, layers, layer_slot or list(target.layer_map.layer_slot), meta={})


@pytest.fixture(scope="module")
def target() -> Target:
    return tiny_target()


@pytest.fixture()
def ctx(target: Target) -> ProxyContext:
    return ProxyContext(target, BITS, PTQSettings(act_bits=6), fake_stats(target))


def hand_table(stats: NetworkStats, row) -> np.ndarray:
    """Per layer, per bit, with plain Python loops; then summed into slots."""
    out = np.zeros((stats.num_slots, len(stats.bits)))
    for li, layer in enumerate(stats.layers):
        for bi, b in enumerate(stats.bits):
            out[stats.layer_slot[li], bi] += row(layer, bi, b)
    return out


def sq(t: torch.Tensor) -> float:
    return float(sum(v * v for v in t.double().reshape(-1).tolist()))


HAND = {
    "hawq-v1": lambda L, bi, b: L.eig * sq(L.Q[bi] - L.W),
    "hawq-v2": lambda L, bi, b: L.trace / L.W.numel() * sq(L.Q[bi] - L.W),
    "fisher": lambda L, bi, b: float(
        sum(f * e * e for f, e in zip(L.FD.reshape(-1).tolist(), L.E[bi].reshape(-1).tolist(), strict=True))
    ),
    "fisher-batch": lambda L, bi, b: float(
        sum(g * g * e * e for g, e in zip(L.G.reshape(-1).tolist(), L.E[bi].reshape(-1).tolist(), strict=True))
    ),
    "snip": lambda L, bi, b: (
        b * float(sum(abs(g * w) for g, w in zip(L.G.reshape(-1).tolist(), L.W.reshape(-1).tolist(), strict=True)))
    ),
    "synflow": lambda L, bi, b: (
        b
        * float(sum(abs(w) * abs(g) for g, w in zip(L.SG.reshape(-1).tolist(), L.W.reshape(-1).tolist(), strict=True)))
    ),
    "synflow-signed": lambda L, bi, b: (
        b * float(sum(abs(g * w) for g, w in zip(L.VG.reshape(-1).tolist(), L.W.reshape(-1).tolist(), strict=True)))
    ),
    "qe": lambda L, bi, b: b * 0.5 * math.log(2 * math.pi * math.e * float(np.var(L.A.double().numpy(), ddof=1))),
    "size": lambda L, bi, b: L.params * b / 8,
    "bitops": lambda L, bi, b: L.macs * b * 6,
}


@pytest.mark.parametrize("name", sorted(HAND))
def test_separable_formula_matches_hand_computation(name, ctx):
    np.testing.assert_allclose(get_proxy(name).table(ctx), hand_table(ctx.stats, HAND[name]), rtol=1e-6)


def test_tied_layers_add_up_in_their_slot(target):
    stats = fake_stats(target, layer_slot=[0, 0, 1])
    ctx = ProxyContext(target, BITS, None, stats)
    table = get_proxy("hawq-v2").table(ctx)
    assert table.shape == (2, 3)
    np.testing.assert_allclose(table, hand_table(stats, HAND["hawq-v2"]), rtol=1e-6)
    configs = np.array([[2, 4], [4, 3]])
    expect = [table[0, 0] + table[1, 2], table[0, 2] + table[1, 1]]
    np.testing.assert_allclose(get_proxy("hawq-v2").score_configs(ctx, configs), expect)


def test_bitsum_and_size_score_configs(ctx, target):
    configs = np.array([[2, 3, 4], [4, 4, 4]])
    np.testing.assert_allclose(get_proxy("bitsum").score_configs(ctx, configs), [9, 12])
    np.testing.assert_allclose(
        get_proxy("size").score_configs(ctx, configs),
        target.layer_map.size_bytes(configs) - target.layer_map.bias_bytes,
    )
    # the cost definition the bench's trivial baselines use is the same sum
    np.testing.assert_array_equal(linear_cost(configs, np.ones(3)), get_proxy("bitsum").score_configs(ctx, configs))
    np.testing.assert_array_equal(
        linear_cost(configs, target.layer_map.params / 8), get_proxy("size").score_configs(ctx, configs)
    )


def test_emq_published_decoding(ctx):
    def row(L, bi, b):
        # softmax over dim 0 of log|VG|: for each column, |v| / sum of the column's |v|
        cols = L.VG.double().reshape(L.VG.shape[0], -1).T.tolist()
        soft = [abs(v) / sum(abs(u) for u in col) for col in cols for v in col]
        grad_half = float(np.mean(soft))
        q = L.Q[bi].double().reshape(-1).tolist()
        return grad_half * float(np.mean([math.sqrt(max(v, 0.0)) for v in q])) / 3

    table = get_proxy("emq-published").table(ctx)
    np.testing.assert_allclose(table, hand_table(ctx.stats, row), rtol=1e-6)
    # the decoded gradient half is exactly 1 / C_out: emq's table does not move when the
    # virtual gradients are replaced by unrelated values
    from dataclasses import replace

    g = torch.Generator().manual_seed(3)
    other = replace(
        ctx.stats,
        layers=[
            replace(L, VG=torch.rand(L.VG.shape, generator=g) * 10 ** (i + 1)) for i, L in enumerate(ctx.stats.layers)
        ],
    )
    moved = get_proxy("emq-published").table(ProxyContext(ctx.target, BITS, ctx.settings, other))
    np.testing.assert_allclose(moved, table, rtol=1e-9)


def test_ompq_matches_cka_formula(ctx):
    feats = [L.Y.double().numpy().reshape(L.Y.shape[0], -1) for L in ctx.stats.layers]
    n = feats[0].shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    grams = [h @ f @ f.T @ h for f in feats]
    cka = np.array([[np.sum(a * b) / np.linalg.norm(a) / np.linalg.norm(b) for b in grams] for a in grams])
    beta = 0.7
    theta = [math.exp(-beta * (sum(cka[i]) - cka[i, i])) for i in range(3)]
    imp = [np.mean(theta[i:]) for i in range(3)]
    expect = hand_table(ctx.stats, lambda L, bi, b: b / 8 * imp[[x.name for x in ctx.stats.layers].index(L.name)])
    table = get_proxy("ompq", beta=beta).table(ctx)
    np.testing.assert_allclose(table, expect, rtol=1e-6)
    # linear CKA is invariant to an isotropic scale of one layer's features, so emq's table is too
    from dataclasses import replace

    layers = list(ctx.stats.layers)
    layers[1] = replace(layers[1], Y=layers[1].Y * 1024)
    scaled = replace(ctx.stats, layers=layers)
    np.testing.assert_allclose(
        get_proxy("ompq", beta=beta).table(ProxyContext(ctx.target, BITS, ctx.settings, scaled)), table, rtol=1e-9
    )


def test_orientations_and_descriptions():
    for name, factory in PROXIES.items():
        p = factory()
        assert p.name == name and p.orientation in (1, -1) and p.description and p.cost
    assert [n for n, f in PROXIES.items() if not f().separable] == ["gmpq", "seam", "kl"]
    # the unfaithful variants live only under their own names, and say so
    assert (
        "not the published Synflow" in PROXIES["synflow-signed"].description
        and "signed" in PROXIES["synflow-signed"].description
    )
    assert "not the per-sample empirical Fisher" in PROXIES["fisher-batch"].description
    assert "|W|" in PROXIES["synflow"].description and "per-sample" in PROXIES["fisher"].description


def test_synflow_and_fisher_on_real_statistics(target):
    """End to end on the tiny model: Synflow from an independent |state|-linearised copy, Fisher from a
    per-image loop."""
    from emq.search_space.stats import StatsSettings, compute_stats

    settings = StatsSettings(
        calib_size=24,
        batch_size=8,
        hessian_images=4,
        hessian_batch_size=4,
        hessian_min_probes=1,
        hessian_max_probes=1,
        eig_iters=0,
        act_cap=4,
    )
    stats = compute_stats(target, bits=BITS, settings=settings, use_cache=False, progress=False)
    x, y = target.data.calibration(24, 0)
    model = target.model
    mods = dict(model.named_modules())
    weights = [mods[layer.name].weight for layer in stats.layers]
    lin = copy.deepcopy(model).double()
    with torch.no_grad():
        for t in [*lin.parameters(), *lin.buffers()]:
            if t.is_floating_point():
                t.abs_()
    lmods = dict(lin.named_modules())
    lw = [lmods[layer.name].weight for layer in stats.layers]
    dr = torch.autograd.grad(lin(torch.ones(1, 1, 8, 8, dtype=torch.float64)).sum(), lw)
    syn = [float((w * d).detach().sum()) for w, d in zip(lw, dr, strict=True)]
    per = [torch.autograd.grad(F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), weights) for i in range(24)]
    fd = [torch.stack([g[k] for g in per]).pow(2).mean(0).double() for k in range(len(weights))]
    fisher = [
        [float((f * L.E[bi].double().pow(2)).sum()) for bi in range(len(BITS))]
        for f, L in zip(fd, stats.layers, strict=True)
    ]
    assert stats.layer_slot == [0, 1, 2]
    ctx = ProxyContext(target, BITS, None, stats)
    np.testing.assert_allclose(get_proxy("synflow").table(ctx), np.outer(syn, BITS), rtol=1e-5)
    np.testing.assert_allclose(get_proxy("fisher").table(ctx), np.array(fisher), rtol=1e-4)


def test_bad_inputs_raise_emq_error(ctx, target):
    with pytest.raises(EmqError, match="unknown proxy"):
        get_proxy("hawq-v9")
    with pytest.raises(EmqError, match="unknown proxy"):
        parse_proxy_names("snip,nope")
    assert parse_proxy_names("kl, snip,kl") == ["kl", "snip"]
    with pytest.raises(EmqError, match="statistics"):
        get_proxy("fisher").table(ProxyContext(target, BITS, None, None))
    with pytest.raises(EmqError, match="bits"):
        get_proxy("fisher").table(ProxyContext(target, (2, 4), None, ctx.stats))
    with pytest.raises(EmqError, match="beta"):
        get_proxy("ompq", beta=float("nan"))
    stats = fake_stats(target)
    stats.layers[1].A = torch.ones_like(stats.layers[1].A)
    with pytest.raises(EmqError, match="constant"):
        get_proxy("qe").table(ProxyContext(target, BITS, None, stats))


# ---------------------------------------------------------------- whole-configuration


def manual_quantized(model: Tiny, bits: list[int]) -> Tiny:
    """The PTQ network by hand for act_bits=32, bn='none': only the weights change."""
    q = copy.deepcopy(model)
    for m, b in zip((q.conv1, q.conv2, q.fc), bits, strict=True):
        m.weight.data = quantize_weight(m.weight.data, b)
    return q


@pytest.fixture()
def wctx(target) -> ProxyContext:
    return ProxyContext(target, BITS, PTQSettings(act_bits=32, bn="none"), None)


def test_kl_matches_hand_computation(wctx, target):
    from emq.baselines.whole_config import proxy_images

    x, _ = proxy_images(wctx)
    bits = [2, 3, 2]
    with torch.no_grad():
        p = F.softmax(target.model(x), 1).double()
        q = F.softmax(manual_quantized(target.model, bits)(x), 1).double()
    expect = float((p * (p.log() - q.log())).sum(1).mean())
    assert get_proxy("kl").score_one(wctx, bits) == pytest.approx(expect, rel=1e-4)
    assert get_proxy("kl").score_one(wctx, [4, 4, 4]) < get_proxy("kl").score_one(wctx, [2, 2, 2])


def test_seam_matches_hand_computation(wctx, target):
    from emq.baselines.whole_config import proxy_images

    x, y = proxy_images(wctx)
    bits = [3, 2, 4]
    with torch.no_grad():
        f = manual_quantized(target.model, bits).features(x).mean(dim=(2, 3)).double().numpy()
    y = y.numpy()
    mu = f.mean(0)
    between = sum((y == c).sum() * np.sum((f[y == c].mean(0) - mu) ** 2) for c in np.unique(y))
    within = sum(np.sum((f[i] - f[y == y[i]].mean(0)) ** 2) for i in range(len(y)))
    assert get_proxy("seam").score_one(wctx, bits) == pytest.approx(between / within, rel=1e-5)


def test_gmpq_matches_hand_computation(wctx, target):
    from emq.baselines.whole_config import proxy_images

    x, y = proxy_images(wctx)
    bits = [2, 2, 3]

    def cam(net: Tiny) -> np.ndarray:
        # GAP + linear head: d logit_y / d A_c = W_fc[y, c] / (H*W) at every position
        with torch.no_grad():
            a = net.features(x)
        alpha = net.fc.weight.detach()[y] / (a.shape[2] * a.shape[3])
        return torch.relu((alpha[:, :, None, None] * a).sum(1)).reshape(len(x), -1).numpy()

    ref, qm = cam(target.model), cam(manual_quantized(target.model, bits))
    rhos = []
    for r, m in zip(ref, qm, strict=True):
        rho = spearmanr(r, m).statistic if r.std() > 0 and m.std() > 0 else 0.0
        rhos.append(rho)
    assert get_proxy("gmpq").score_one(wctx, bits) == pytest.approx(float(np.mean(rhos)), abs=1e-6)


def test_whole_config_leaves_model_untouched_and_uses_act_quant(target):
    before = state_dict_digest(target.model)
    ctx = ProxyContext(target, BITS, PTQSettings(act_bits=4, calib_size=64), None)
    configs = np.array([[2, 2, 2], [4, 4, 4]])
    scores = {n: get_proxy(n).score_configs(ctx, configs) for n in ("gmpq", "seam", "kl")}
    assert state_dict_digest(target.model) == before
    assert all(np.isfinite(s).all() for s in scores.values())
    # with activation quantization on, gradients still reach the last stage (straight-through)
    assert scores["gmpq"].max() > 0.3
    assert scores["kl"][1] < scores["kl"][0]


def test_prepare_matches_evaluate(target):
    engine = PTQEngine(target, PTQSettings(act_bits=6, calib_size=64))
    res = engine.evaluate([3, 2, 4])
    net = engine.prepare([3, 2, 4])
    x, y = next(target.data.test_batches(1024))
    with torch.no_grad():
        top1 = 100.0 * float((net(x).argmax(1) == y).float().mean())
    assert top1 == pytest.approx(res.top1)
    with pytest.raises(EmqError):
        engine.prepare([3, 2])


def test_proxies_of_one_configuration_share_its_ptq_pass_and_score_as_alone(target, monkeypatch):
    from emq.baselines.whole_config import shared_engine
    from emq.ranking import _whole_config_scores

    names = ("gmpq", "seam", "kl")
    settings = PTQSettings(act_bits=4, calib_size=64)
    configs = np.array([[2, 3, 4], [4, 2, 2], [3, 3, 3], [2, 3, 4]])
    alone = {n: get_proxy(n).oriented_scores(ProxyContext(target, BITS, settings, None), configs) for n in names}
    ctx = ProxyContext(target, BITS, settings, None)
    engine = shared_engine(ctx)
    calls = []
    original = engine.prepare

    def counted(bits):
        calls.append(None if bits is None else tuple(int(b) for b in bits))
        return original(bits)

    monkeypatch.setattr(engine, "prepare", counted)
    table, seconds = _whole_config_scores([get_proxy(n) for n in names], ctx, configs, progress=False, executor=None)
    for j, n in enumerate(names):
        np.testing.assert_array_equal(table[:, j], alone[n])
    quantized = [c for c in calls if c is not None]
    assert quantized == [tuple(c) for c in configs]  # one PTQ pass per configuration, shared by the three
    assert len(seconds) == 3 and all(s > 0 for s in seconds)
