"""The Python API of allocation and quantization, called as a user would: emq.allocate,
emq.sweep, emq.quantize (bits and bit map), result objects, and bench-driven settings."""

import csv
import json

import numpy as np
import pytest
import torch
from helpers import NoiseProxy, Target

import emq
from emq.allocation import Allocator, allocator_for, needs_data
from emq.bench import Bench
from emq.bench_setup import BenchSetup
from emq.cli.main import main
from emq.errors import EmqError
from emq.proxy import ProxyContext, SeparableProxy
from emq.quant import PTQSettings
from emq.search_space.stats import StatsSettings
from emq.specs import ParameterError

FAST = PTQSettings(calib_size=64)
TINY_STATS = {
    "calib_size": 16,
    "batch_size": 16,
    "hessian_images": 4,
    "hessian_batch_size": 4,
    "hessian_min_probes": 1,
    "hessian_max_probes": 1,
    "eig_iters": 0,
    "act_cap": 4,
}


class WrongShapeProxy(SeparableProxy):
    """A proxy with a real bug: its table has one column too many."""

    name = "test-wrong-shape"

    def table(self, ctx: ProxyContext) -> np.ndarray:
        return np.zeros((ctx.target.layer_map.num_slots, len(ctx.bits) + 1))


def _top1_by_hand(bits, settings: PTQSettings) -> float:
    """Top-1 (%) of the PTQ network of `bits`, counted here over the test images (not by the engine's scoring)."""
    from emq.quant import PTQEngine

    target = emq.resolve_target("default")
    net = PTQEngine(target, settings).prepare(bits)
    right = total = 0
    with torch.no_grad():
        for x, y in target.data.test_batches(256):
            right += int((net(x).argmax(1) == y).sum())
            total += len(y)
    return 100.0 * right / total


@pytest.mark.slow
def test_allocate_evaluate_save_then_quantize_bits_and_bitmap(tmp_path):
    a = emq.allocate("default", NoiseProxy(), {"avg-bits": 3.0}, pins={"fc": 8}, evaluate=True, settings=FAST)
    assert a.method == "ilp" and a.bits[-1] == 8 and a.avg_bits <= 3.0
    assert a.top1 == pytest.approx(_top1_by_hand(a.bits, FAST))
    bitmap, allocation = a.save(tmp_path / "out")
    assert (bitmap.name, allocation.name) == ("bitmap.json", "allocation.json")
    assert json.loads(allocation.read_text()) == a.to_json()
    prov = json.loads(bitmap.read_text())["provenance"]
    assert prov["proxy"] == "test-noise" and prov["ptq"] == FAST.to_json() and prov["budgets"] == a.budgets
    text = a.to_markdown()
    assert (
        text.splitlines()[0].startswith("| slot | name")
        and "| 19   | fc" in text
        and f"PTQ top-1 {a.top1:.2f} %" in text.splitlines()[-1]
    )
    by_map = emq.quantize("default", bitmap=bitmap, settings=FAST)
    by_bits = emq.quantize("default", a.bits, settings=FAST)
    assert by_map.top1 == by_bits.top1 == pytest.approx(a.top1)
    assert by_map.size_bytes == a.size_bytes


def test_quantize_needs_exactly_one_configuration(tmp_path):
    with pytest.raises(ParameterError, match="not both"):
        emq.quantize("default")
    with pytest.raises(ParameterError, match="not both"):
        emq.quantize("default", [4] * 20, bitmap=tmp_path / "b.json")
    with pytest.raises(EmqError, match="no such file"):
        emq.quantize("default", bitmap=tmp_path / "missing.json")


def test_sweep_result_json_markdown_and_files(tmp_path):
    res = emq.sweep("default", NoiseProxy(), "avg-bits", [1.5, 3.0])
    assert [(s, v) for s, v, _ in res.skipped] == [("test-noise", 1.5)]
    assert res.allocated and {a.proxy for a in res.points} == {"test-noise", "uniform-2", "uniform-3", "uniform-4"}
    doc = res.to_json()
    assert doc["kind"] == "avg-bits" and len(doc["points"]) == 4 and doc["skipped"][0]["budget"] == 1.5
    assert "smallest feasible value" in doc["skipped"][0]["reason"]
    text = res.to_markdown()
    assert "| series" in text and "1 infeasible budget value(s) skipped" in text
    written = res.save(tmp_path)
    assert written == [tmp_path / "sweep.csv", tmp_path / "sweep.png"]
    rows = list(csv.DictReader(open(written[0])))
    assert [r["series"] for r in rows] == [a.proxy for a in res.points]
    assert written[1].stat().st_size > 10_000
    assert res.title() == "default: test-noise over avg-bits"


def test_sweep_skips_only_infeasible_budgets():
    allocator = Allocator(Target())
    ok = emq.sweep(allocator, NoiseProxy(), "avg-bits", [0.5, 3.0], uniform=False)
    assert len(ok.skipped) == 1 and len(ok.points) == 1
    with pytest.raises(EmqError, match="table has shape"):  # a real failure is not a 'skipped budget'
        emq.sweep(allocator, WrongShapeProxy(), "avg-bits", [0.5, 3.0], uniform=False)


def test_one_needs_data_rule():
    assert needs_data("default", None, False)
    assert not needs_data("resnet18", None, False)
    assert needs_data("resnet18", None, True) and needs_data("resnet18", "some/dir", False)
    assert not needs_data(Target().model, None, False)


@pytest.mark.slow
def test_statistics_use_the_allocators_stats_settings():
    stats = StatsSettings(**TINY_STATS)
    allocator = Allocator(emq.resolve_target("default"), PTQSettings(), stats_settings=stats)
    assert allocator.context((2, 3, 4)).stats.meta["settings"] == stats.to_json()


@pytest.mark.slow
def test_bench_fixes_model_ptq_and_statistics_settings():
    bench = Bench.open("default")
    bench.meta["stats_settings"] = dict(TINY_STATS)
    setup = BenchSetup.of(bench)
    allocator = allocator_for(bench=bench)
    assert allocator.settings == setup.ptq and allocator.stats_settings == setup.stats
    assert allocator.context((2, 3, 4)).stats.meta["settings"] == setup.stats.to_json()
    a = emq.allocate(
        proxy=NoiseProxy(), budgets={"avg-bits": 3.0}, bench=bench, settings={"act_bits": setup.ptq.act_bits}
    )
    assert a.model == "default" and a.ptq == setup.ptq


@pytest.mark.parametrize(
    "settings, param",
    [
        (PTQSettings(act_bits=4), "act_bits"),
        ({"calib_size": 64}, "calib_size"),
        ({"weight_symmetric": True}, "weight_symmetric"),
    ],
)
def test_bench_refuses_contradicting_ptq_settings(settings, param):
    with pytest.raises(ParameterError, match="was built with") as e:
        emq.allocate(proxy=NoiseProxy(), budgets={"avg-bits": 3.0}, bench="default", settings=settings)
    assert e.value.param == param


@pytest.mark.slow
def test_cli_bench_flag(tmp_path, capsys, noise_proxy):
    assert (
        main(
            [
                "allocate",
                "--bench",
                "default",
                "--proxy",
                "test-noise",
                "--budget-avg-bits",
                "3",
                "--act-bits",
                "4",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "--act-bits 4: bench" in err and "was built with 8" in err and not (tmp_path / "o").exists()
    assert (
        main(["allocate", "--bench", "default", "--proxy", "test-noise", "--budget-avg-bits", "3", "--symmetric"]) == 2
    )
    assert "--symmetric True: bench" in capsys.readouterr().err
    assert (
        main(
            [
                "allocate",
                "--bench",
                "default",
                "--proxy",
                "test-noise",
                "--budget-avg-bits",
                "3",
                "--act-bits",
                "8",
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["avg_bits"] <= 3.0
