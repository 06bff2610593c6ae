"""Measured per-layer sensitivity (emq.sensitivity) and its proxies and terminals."""

from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import nn
from torch.utils.data import TensorDataset

from emq.baselines import get_proxy
from emq.data import DataSplits
from emq.errors import EmqError
from emq.layermap import build_layer_map
from emq.proxy import ProxyContext
from emq.quant import PTQEngine, PTQSettings
from emq.search_space.evaluate import TableEvaluator
from emq.search_space.primitives import MEASURED_KEY
from emq.sensitivity import (
    SensitivitySettings,
    _image_pool,
    attach_sensitivity,
    ensure_measured,
    measure_sensitivity,
    missing_measurements,
    split_half,
    stored_sensitivity,
)
from emq.target import Target

BITS = (2, 3)


class Block(nn.Module):
    """torchvision's basic block: in-place ReLU, `out += identity`, a downsample tied to conv2's slot."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(Block(4, 4, 1))
        self.layer2 = nn.Sequential(Block(4, 8, 2))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _task(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes: a bright blob in the left, middle or right third of a noisy 8x8 image."""
    y = torch.randint(0, 3, (n,), generator=gen)
    x = 0.7 * torch.randn(n, 1, 8, 8, generator=gen)
    for k in range(3):
        x[y == k, :, 2:6, 3 * k : 3 * k + 2] += 1.5
    return x, y


@pytest.fixture(scope="module")
def setup() -> tuple[Net, object, DataSplits]:
    """A briefly trained residual net (so quantizing a slot changes its outputs), its layer map and data
    whose calibration images come in pairs of one source."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = Net()
    xt, yt = _task(512, gen)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net.train()
    for step in range(60):
        i = (step * 64) % 512
        opt.zero_grad()
        F.cross_entropy(net(xt[i : i + 64]), yt[i : i + 64]).backward()
        opt.step()
    net.eval()
    xc, yc = _task(96, gen)
    xs, ys = _task(64, gen)
    data = DataSplits(
        name="toy",
        num_classes=3,
        in_channels=1,
        input_size=8,
        calib_pool=(xc, yc),
        test=TensorDataset(xs, ys),
        fingerprint="toy",
        calib_sources=torch.arange(48).repeat_interleave(2),
    )
    return net, build_layer_map(net, 8, "toy", in_channels=1), data


def _measure(setup, tmp_path, ptq: PTQSettings, **kw):
    s = SensitivitySettings(min_images=16, max_images=48, target_reliability=1.0, **kw)
    return measure_sensitivity(Target("toy", *setup), bits=BITS, ptq=ptq, settings=s, cache_dir=tmp_path)


def _brute_force(target: Target, tmp_path, ptq: PTQSettings, rest: int | None, n: int) -> dict[str, np.ndarray]:
    """Each (slot, bit) through the normal PTQ engine (PTQEngine.prepare with every other slot at
    `rest`; None: their layers set back to full precision before the engine's calibration)."""
    lm, data = target.layer_map, target.data
    engine = PTQEngine(target, ptq, cache_dir=tmp_path)
    x, y, _ = _image_pool(data, ptq, 0)
    x, y = x[:n], y[:n]
    with torch.no_grad():
        fp = engine.prepare(None)(x).double()
    fp_logp = F.log_softmax(fp, 1)
    out = {k: np.zeros((lm.num_slots, len(BITS))) for k in ("kl", "loss", "nsr")}
    for slot in range(lm.num_slots):
        for j, b in enumerate(BITS):
            cfg = [8] * lm.num_slots
            cfg[slot] = b
            net_q = engine.prepare(cfg)
            if rest is None:
                for i, s in enumerate(lm.layer_slot):
                    engine.set_layer(i, b if s == slot else None)
                engine._prepare_bn_and_acts(ptq.act_bits < 32)
            with torch.no_grad():
                z = net_q(x).double()
            logp = F.log_softmax(z, 1)
            out["kl"][slot, j] = F.kl_div(logp, fp_logp, log_target=True, reduction="none").sum(1).mean()
            out["loss"][slot, j] = (
                F.nll_loss(logp, y, reduction="none") - F.nll_loss(fp_logp, y, reduction="none")
            ).mean()
            out["nsr"][slot, j] = (z - fp).pow(2).sum() / fp.pow(2).sum()
    return out


@pytest.mark.parametrize(
    "quantizer,bn,act_bits,rest",
    [
        ("mse", "reestimate", 8, 8),
        ("gptq", "reestimate", 8, 8),
        ("mse", "fold", 8, 8),
        ("mse", "none", 32, 8),
        ("mse", "reestimate", 8, None),
    ],
)
def test_tables_equal_a_brute_force_run_of_the_ptq_engine(setup, tmp_path, quantizer, bn, act_bits, rest):
    ptq = PTQSettings(calib_size=40, batch_size=32, weight_quantizer=quantizer, bn=bn, act_bits=act_bits)
    sens = _measure(setup, tmp_path, ptq, rest_bits=rest)
    assert sens.meta["prefix_reuse"] and sens.meta["images"] == 48  # the target 1.0 uses every image allowed
    ref = _brute_force(Target("toy", *setup), tmp_path, ptq, rest, sens.meta["images"])
    for k in ("kl", "loss", "nsr"):
        np.testing.assert_allclose(sens.tables[k], ref[k], rtol=1e-9, atol=1e-12, err_msg=k)
    assert (sens.tables["kl"][:, 0] > sens.tables["kl"][:, 1]).mean() >= 0.5  # 2 bits hurt more than 3, mostly


def _with_and_without_prefix_reuse(target: Target, ptq: PTQSettings, settings: dict, tmp_path):
    """The sensitivity measured twice, reusing the full-precision prefix and recomputing it."""
    return tuple(
        measure_sensitivity(
            target,
            bits=BITS,
            ptq=ptq,
            settings=SensitivitySettings(**settings, prefix_reuse=reuse),
            cache_dir=tmp_path / str(reuse),
        )
        for reuse in (True, False)
    )


@pytest.mark.parametrize("policy", ["auto", "per-layer"])
def test_prefix_reuse_gives_the_numbers_of_full_recomputation(setup, tmp_path, policy):
    """Per layer, the downsample conv is a slot of its own that starts after bn2: bn2's replayed
    output then meets `out += identity`, which must not reach the recording."""
    net, _, data = setup
    lm = build_layer_map(net, 8, "toy", in_channels=1, policy=policy)
    ptq = PTQSettings(calib_size=40, batch_size=32)
    s = {"min_images": 16, "max_images": 48, "target_reliability": 1.0}
    reused, full = _with_and_without_prefix_reuse(Target("toy", net, lm, data), ptq, s, tmp_path)
    assert reused.meta["prefix_reuse"] and not full.meta["prefix_reuse"]
    for k in ("kl", "loss", "nsr"):
        np.testing.assert_allclose(reused.tables[k], full.tables[k], rtol=1e-12, atol=0)


def test_an_in_place_module_is_replayed_into_its_input(setup, tmp_path):
    """`y = bn(x); z = relu_(y); conv(z) + y`: y is z after the in-place ReLU, in a replay too."""
    _, _, data = setup

    class Aliased(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv0 = nn.Conv2d(1, 2, 3, padding=1)
            self.bn = nn.BatchNorm2d(2)
            self.relu = nn.ReLU(inplace=True)
            self.conv1 = nn.Conv2d(2, 2, 3, padding=1)
            self.fc = nn.Linear(128, 3)

        def forward(self, x):
            y = self.bn(self.conv0(x))
            z = self.relu(y)
            return self.fc(torch.flatten(self.conv1(z) + y, 1))

    torch.manual_seed(0)
    model = Aliased().eval()
    model.bn.running_mean.fill_(0.3)  # so that the ReLU changes y
    lm = build_layer_map(model, 8, "aliased", in_channels=1)
    ptq = PTQSettings(calib_size=40, batch_size=32, bn="none")
    s = {"min_images": 16, "max_images": 16}
    reused, full = _with_and_without_prefix_reuse(Target("aliased", model, lm, data), ptq, s, tmp_path)
    assert reused.meta["prefix_reuse"]
    np.testing.assert_allclose(reused.tables["kl"], full.tables["kl"], rtol=1e-12, atol=0)


def test_a_stateful_module_called_twice_switches_prefix_reuse_off(setup, tmp_path):
    _, _, data = setup

    class Twice(nn.Module):  # one BatchNorm before and after the first conv's slot: reuse would miss a call
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 1, 3, padding=1)
            self.bn = nn.BatchNorm2d(1)
            self.fc = nn.Linear(64, 3)

        def forward(self, x):
            return self.fc(torch.flatten(self.bn(self.conv1(self.bn(x))), 1))

    torch.manual_seed(0)
    model = Twice().eval()
    target = Target("twice", model, build_layer_map(model, 8, "twice", in_channels=1), data)
    ptq = PTQSettings(calib_size=40, batch_size=32)
    sens = measure_sensitivity(
        target, bits=BITS, ptq=ptq, settings=SensitivitySettings(min_images=16, max_images=16), cache_dir=tmp_path
    )
    assert not sens.meta["prefix_reuse"]
    ref = _brute_force(target, tmp_path, ptq, 8, 16)
    np.testing.assert_allclose(sens.tables["kl"], ref["kl"], rtol=1e-9, atol=1e-12)


def test_cache_hit_returns_identical_numbers_and_a_damaged_entry_is_recomputed(setup, tmp_path, caplog):
    ptq = PTQSettings(calib_size=40, batch_size=32)
    first = _measure(setup, tmp_path, ptq)
    assert first.meta["cache"]["hit"] is False
    again = _measure(setup, tmp_path, ptq)
    assert again.meta["cache"]["hit"] is True
    for k in ("kl", "loss", "nsr"):
        assert np.array_equal(first.tables[k], again.tables[k])
    assert again.meta["seconds"] == first.meta["seconds"]  # the cost of the computation, not of the load
    other = measure_sensitivity(
        Target("toy", *setup),
        bits=BITS,
        ptq=PTQSettings(calib_size=40, batch_size=32, act_bits=6),
        settings=SensitivitySettings(min_images=16, max_images=48, target_reliability=1.0),
        cache_dir=tmp_path,
    )
    assert other.meta["cache"]["hit"] is False and not np.array_equal(other.tables["kl"], first.tables["kl"])
    path = tmp_path / "sensitivity" / f"{first.meta['cache']['key']}.json"
    blob = json.loads(path.read_text())
    blob["tables"]["kl"][0][0] *= 2
    path.write_text(json.dumps(blob))
    redone = _measure(setup, tmp_path, ptq)
    assert redone.meta["cache"]["hit"] is False and "unreadable" in caplog.text
    assert np.array_equal(redone.tables["kl"], first.tables["kl"])


def test_split_half_reliability_sizes_the_draw_and_keeps_sources_together(setup, tmp_path):
    target = Target("toy", *setup)
    data = target.data
    ptq = PTQSettings(calib_size=40, batch_size=32)
    _, _, halves = _image_pool(data, ptq, 0)
    x, _, _ = _image_pool(data, ptq, 0)
    pos = {tuple(img.flatten()[:4].tolist()): h for img, h in zip(x, halves, strict=True)}
    src_half = {}
    for img, src in zip(data.calib_pool[0], data.calib_sources.tolist(), strict=True):
        src_half.setdefault(src, set()).add(pos[tuple(img.flatten()[:4].tolist())])
    assert all(len(h) == 1 for h in src_half.values()) and set(halves.tolist()) == {0, 1}
    early = measure_sensitivity(
        target,
        bits=BITS,
        ptq=ptq,
        settings=SensitivitySettings(min_images=16, target_reliability=0.01),
        cache_dir=tmp_path,
    )
    assert early.meta["images"] == 16 and early.meta["reliability"]["kl"] >= 0.01
    full = measure_sensitivity(
        target,
        bits=BITS,
        ptq=ptq,
        settings=SensitivitySettings(min_images=16, target_reliability=1.0),
        cache_dir=tmp_path,
    )
    assert full.meta["images"] == 96 and [t["images"] for t in full.meta["trajectory"]] == [16, 32, 64, 96]
    # one table from identical halves is perfectly reliable; from independent noise, not
    rng = np.random.default_rng(0)
    same = {k: np.repeat(rng.random((1, 5, 2)), 10, axis=0) for k in ("kl", "loss", "noise")} | {"signal": np.ones(10)}
    assert split_half(same, np.arange(10) % 2, 0)["kl"] == pytest.approx(1.0)
    noise = {k: rng.random((200, 5, 2)) for k in ("kl", "loss", "noise")} | {"signal": np.ones(200)}
    assert abs(split_half(noise, np.arange(200) % 2, 0)["kl"]) < 0.5


def _context(setup, ptq: PTQSettings, tmp_path, monkeypatch) -> ProxyContext:
    monkeypatch.setenv("EMQ_CACHE_DIR", str(tmp_path))
    return ProxyContext(Target("toy", *setup), BITS, ptq)


def test_measured_proxies_rank_configurations(setup, tmp_path, monkeypatch):
    """layer-kl's sum over slots ranks random configurations like their real KL on the test images."""
    ptq = PTQSettings(calib_size=40, batch_size=32)
    ctx = _context(setup, ptq, tmp_path, monkeypatch)
    lm = ctx.target.layer_map
    configs = np.random.default_rng(1).choice(BITS, size=(24, lm.num_slots))
    engine = PTQEngine(ctx.target, ptq, cache_dir=tmp_path)
    real_kl = np.array([engine.evaluate(list(c)).kl for c in configs])
    tables = {}
    for name in ("layer-kl", "layer-loss", "layer-sqnr"):
        proxy = get_proxy(name)
        table = proxy.table(ctx)
        tables[name] = table
        assert table.shape == (lm.num_slots, len(BITS)) and proxy.orientation == -1
        idx = ctx.bit_index(configs)
        np.testing.assert_allclose(proxy.score_configs(ctx, configs), table[np.arange(lm.num_slots), idx].sum(1))
        assert proxy.setup_cost(ctx)["single_slot_evaluations"] == lm.num_slots * len(BITS)
    rho = spearmanr(get_proxy("layer-kl").oriented_scores(ctx, configs), -real_kl).statistic
    assert rho > 0.6
    assert len(ctx.cache) == 1  # the three proxies share one measurement


def test_layer_kl_mid_is_the_measurement_with_every_other_slot_at_the_middle_bit(setup, tmp_path, monkeypatch):
    from emq.sensitivity import middle_bit

    ptq = PTQSettings(calib_size=40, batch_size=32)
    ctx = _context(setup, ptq, tmp_path, monkeypatch)
    mid = get_proxy("layer-kl-mid")
    want = measure_sensitivity(ctx.target, bits=BITS, ptq=ptq, settings=SensitivitySettings(rest_bits=3))
    np.testing.assert_array_equal(mid.table(ctx), want.tables["kl"])
    assert not np.allclose(mid.table(ctx), get_proxy("layer-kl").table(ctx))  # the context changes the table
    assert mid.orientation == -1 and not mid.faithful
    assert mid.setup_cost(ctx)["single_slot_evaluations"] == ctx.target.layer_map.num_slots * len(BITS)
    assert middle_bit((2, 3, 4)) == 3 and middle_bit((2, 4)) == 4 and middle_bit((8,)) == 8


def test_terminals_sum_into_the_measured_table(setup, tmp_path):
    from conftest import real_stats

    net, lm, data = setup
    ptq = PTQSettings(calib_size=40, batch_size=32)
    sens = _measure(setup, tmp_path, ptq)
    x, y = data.calib_pool
    stats = real_stats(net, lm, x[:8], y[:8], bits=BITS)
    with pytest.raises(EmqError, match="no measured sensitivity"):
        TableEvaluator(stats, ("MKL",))
    attach_sensitivity(stats, sens)
    for term, metric in (("MKL", "kl"), ("MDL", "loss"), ("MNSR", "nsr")):
        ev = TableEvaluator(stats, (term,))
        np.testing.assert_allclose(ev.table([("t", term)]).numpy(), sens.tables[metric], rtol=1e-12)
    assert lm.num_slots < len(lm.layers)  # a tied slot: its layers' shares add up to the slot's value


def test_the_in_context_terminal_reads_its_own_measurement_and_only_what_a_space_reads_is_measured(
    setup, tmp_path, monkeypatch
):
    """MKLM is layer-kl-mid's table (the other slots at the middle bit), kept beside the 8-bit one; a space
    reading only MKL gets only that measurement, one reading MKLM only the in-context one."""
    from conftest import real_stats

    from emq.search_space.primitives import MEASURED_MID_KEY
    from emq.search_space.terminals import available_terminals

    net, lm, data = setup
    monkeypatch.setenv("EMQ_CACHE_DIR", str(tmp_path))
    ptq = PTQSettings(calib_size=40, batch_size=32)
    target = Target("toy", net, lm, data)
    x, y = data.calib_pool
    bare = real_stats(net, lm, x[:8], y[:8], bits=BITS)
    assert not {"MKL", "MKLM"} & set(available_terminals(bare))
    only8 = ensure_measured(dataclasses.replace(bare, meta=dict(bare.meta)), target, ptq, terminals=("MKL", "W"))
    assert MEASURED_KEY in only8.meta and MEASURED_MID_KEY not in only8.meta
    assert "MKL" in available_terminals(only8) and "MKLM" not in available_terminals(only8)
    with pytest.raises(EmqError, match="MKLM.*--sensitivity-in-context"):
        TableEvaluator(only8, ("MKLM",))
    mid = ensure_measured(dataclasses.replace(bare, meta=dict(bare.meta)), target, ptq, terminals=("MKLM",))
    assert MEASURED_MID_KEY in mid.meta and MEASURED_KEY not in mid.meta
    assert missing_measurements(mid, ptq, ("MKLM",)) == [] and len(missing_measurements(mid, ptq, ("MKL",))) == 1
    ctx = ProxyContext(target, BITS, ptq)
    np.testing.assert_allclose(
        TableEvaluator(mid, ("MKLM",)).table([("t", "MKLM")]).numpy(), get_proxy("layer-kl-mid").table(ctx), rtol=1e-12
    )
    # carried, it needs no data
    no_data = ProxyContext(Target("toy", net, lm, None), BITS, ptq, mid)
    assert not get_proxy("layer-kl-mid").needs_data_for(no_data) and get_proxy("layer-kl").needs_data_for(no_data)
    # statistics keep the 8-bit and the middle-bit measurements only
    odd = measure_sensitivity(target, bits=BITS, ptq=ptq, settings=SensitivitySettings(rest_bits=6), cache_dir=tmp_path)
    with pytest.raises(EmqError, match="not at 6"):
        attach_sensitivity(dataclasses.replace(bare, meta=dict(bare.meta)), odd)


def test_allocate_with_layer_kl_on_a_model_with_data(setup, tmp_path, monkeypatch):
    from emq.allocation.allocator import Allocator

    ptq = PTQSettings(calib_size=40, batch_size=32)
    ctx = _context(setup, ptq, tmp_path, monkeypatch)
    alloc = Allocator(ctx.target, ptq)
    problem = alloc.problem({"avg-bits": 2.5}, bits_allowed=BITS)
    result = alloc.allocate("layer-kl", problem, evaluate=True)
    assert result.kl is not None and result.avg_bits <= 2.5 + 1e-9
    table = get_proxy("layer-kl").table(ctx)
    # the ILP's choice is the cheapest feasible configuration under the table (lower = better)
    configs = np.array(list(itertools.product(range(len(BITS)), repeat=problem.num_slots)))
    configs = configs[problem.feasible(configs)]
    best = configs[np.argmin(table[np.arange(problem.num_slots), configs].sum(1))]
    assert list(result.bits) == [BITS[j] for j in best]


def test_score_table_shows_each_proxys_one_off_cost():
    from emq.ranking import ProxyScore, ScoreReport, table_rows

    def row(name, setup):
        return ProxyScore(
            name=name,
            description="",
            kind="separable",
            orientation=-1,
            cost="",
            n={},
            correlations={"spearman_heldout_report": 0.9},
            seconds_per_config=0.0,
            setup=setup,
        )

    report = ScoreReport(
        bench="b",
        model="m",
        metric="kl",
        ceiling=None,
        reliability=None,
        pools=None,
        best_handmade=None,
        resamples=10,
        stats_seconds=0.0,
        proxies=[
            row("layer-kl", {"seconds": 312.4, "ptq_equivalents": 24.06}),
            row("fisher", {"seconds": 40.0, "shared": "statistics", "ptq_equivalents": None}),
            row("size", None),
        ],
    )
    headers, rows = table_rows(report)
    cost = [r[headers.index("one-off cost")] for r in rows]
    assert cost == ["312 s = 24.1 PTQ evals", "40 s (shared statistics)", "-"]
    assert "PTQ-equivalent evaluations" in report.to_markdown()


def test_statistics_carrying_the_measurement_score_layer_kl_without_data(setup, tmp_path, monkeypatch):
    """A bundle's statistics carry the tables (attach_sensitivity): layer-kl then needs no data and
    gives the measured table; other PTQ settings or measurement settings are not taken from them."""
    from conftest import real_stats

    net, lm, data = setup
    ptq = PTQSettings(calib_size=40, batch_size=32)
    sens = measure_sensitivity(Target("toy", net, lm, data), bits=BITS, ptq=ptq, cache_dir=tmp_path)
    x, y = data.calib_pool
    stats = attach_sensitivity(real_stats(net, lm, x[:8], y[:8], bits=BITS), sens)
    assert stored_sensitivity(stats, BITS, PTQSettings(calib_size=48, batch_size=32)) is None  # other PTQ
    assert stored_sensitivity(stats, BITS[:1], ptq) is None
    stats.meta[MEASURED_KEY]["settings"] = {**stats.meta[MEASURED_KEY]["settings"], "max_images": 8}
    assert stored_sensitivity(stats, BITS, ptq) is None  # measured with other settings
    attach_sensitivity(stats, sens)
    no_data = ProxyContext(Target("toy", net, lm, None), BITS, ptq, stats)
    proxy = get_proxy("layer-kl")
    assert proxy.needs_data and not proxy.needs_data_for(no_data) and not proxy.statistics_only
    np.testing.assert_array_equal(proxy.table(no_data), sens.tables["kl"])
    assert proxy.setup_cost(no_data)["single_slot_evaluations"] == lm.num_slots * len(BITS)
    bare = ProxyContext(Target("toy", net, lm, None), BITS, ptq, real_stats(net, lm, x[:8], y[:8], bits=BITS))
    assert proxy.needs_data_for(bare)
