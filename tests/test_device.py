"""Device support (`--device`, `device=`): one resolver, the device threaded to every engine,
results that do not depend on it.

There is no GPU here, so the plumbing is checked three ways. On the `meta` device (shapes, no
data) an op that meets a tensor left on the CPU raises a device mismatch, so a run that gets as
far as its first read of a value back to the host has kept every tensor on the device. A
pretend CUDA (torch.cuda patched) whose engines record the device they were given and then run
on the CPU follows the device from each command to the engines. Builds with and without
`--device` are compared bit for bit.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import os
import sqlite3
import sys
import traceback
from collections import defaultdict
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from helpers import image_splits

import emq
from emq.baselines import get_proxy
from emq.bench import Bench
from emq.bench.builder import BUILD_KEYS
from emq.bench.bundles import BUNDLES
from emq.bench.evaluation import EvalSpec, engine_for
from emq.bench_setup import BenchSetup
from emq.cli.main import main
from emq.data import DataSplits
from emq.device import resolve_device
from emq.layermap import build_layer_map
from emq.models import CifarResNet
from emq.proxy import ProxyContext
from emq.quant import PTQEngine, PTQSettings
from emq.rounding import RoundedWeights
from emq.search_space import stats as stats_mod
from emq.search_space.evaluate import TableEvaluator
from emq.search_space.netstats import TENSOR_FIELDS, NetworkStats
from emq.search_space.stats import StatsSettings, compute_stats, shipped_stats
from emq.specs import ParameterError
from emq.target import Target

META = torch.device("meta")
# a meta tensor has no data: reading one back to the host raises one of these
# (a device mismatch says "not on the expected device")
HOST_READ = ("Cannot copy out of meta tensor", "cannot be called on meta tensors")
FAST_STATS = StatsSettings(
    batch_size=8, hessian_images=8, hessian_batch_size=8, hessian_min_probes=1, hessian_max_probes=2, eig_iters=1
)


def _cuda(monkeypatch, available: bool, count: int = 2) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count if available else 0)


# ------------------------------------------------------------------------------ resolver


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("cpu", "cpu"),
        (" CPU ", "cpu"),
        ("cpu:0", "cpu"),
        (None, "cpu"),
        (torch.device("cpu"), "cpu"),
        ("meta", "meta"),
        ("cuda", "cuda"),
        ("cuda:1", "cuda:1"),
        (torch.device("cuda", 0), "cuda:0"),
    ],
)
def test_resolve_device_accepts(given, expected, monkeypatch):
    _cuda(monkeypatch, True, 2)
    assert resolve_device(given) == torch.device(expected)


@pytest.mark.parametrize(
    ("given", "available", "problem"),
    [
        ("gpu", True, "not a device; use cpu, cuda or cuda:N"),
        ("cuda:x", True, "not a device; use cpu, cuda or cuda:N"),
        ("", True, "not a device"),
        ("mps", True, "not a device emq runs on; use cpu, cuda or cuda:N"),
        ("cpu:1", True, "not a device emq runs on"),
        ("cuda", False, "no CUDA device is visible here"),
        ("cuda:0", False, "no CUDA device is visible here"),
        ("cuda:2", True, "only 2 CUDA device(s) are visible here (cuda:0..cuda:1)"),
    ],
)
def test_resolve_device_refuses(given, available, problem, monkeypatch):
    _cuda(monkeypatch, available, 2)
    with pytest.raises(ParameterError) as e:
        resolve_device(given)
    assert e.value.param == "device" and problem in e.value.problem


def _run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse refuses a bad --device while parsing
            code = e.code
    return code, err.getvalue()


COMMANDS = [
    ["quantize", "--bits", ",".join(["4"] * 20)],
    ["bench", "build", "--out", "b.sqlite", "--configs", "8"],
    ["stats", "--out", "s.pt"],
    ["score", "--out", "scores"],
    ["allocate", "--proxy", "bitsum", "--budget-avg-bits", "3", "--evaluate", "--out", "alloc"],
    ["demo", "--out", "demo"],
    ["search", "--out", "search"],
]


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: " ".join(a[:2]))
@pytest.mark.parametrize(
    ("device", "problem"),
    [("gpu", "not a device; use cpu, cuda or cuda:N"), ("cuda", "no CUDA device is visible here")],
)
def test_cli_refuses_a_device_it_cannot_use(argv, device, problem, tmp_path, monkeypatch):
    _cuda(monkeypatch, False)
    monkeypatch.chdir(tmp_path)
    code, err = _run([*argv, "--device", device])
    assert code == 2, err
    assert f"argument --device: '{device}': {problem}" in err, err
    assert list(tmp_path.iterdir()) == [], "a refused --device left files behind"


# ------------------------------------------------------------------------------ meta device


def _tiny() -> tuple[torch.nn.Module, object, DataSplits]:
    torch.manual_seed(0)
    model = CifarResNet(width=4, in_channels=1, num_classes=4, blocks=1).eval()
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 4, (64,))
    return (
        model,
        build_layer_map(model, 8, "tiny", in_channels=1),
        image_splits("tiny", x, y, calib=32, num_classes=4),
    )


def _stops_at_host_read(run) -> str:
    """Run `run` on the meta device: it must stop at its first read of a value back to the host,
    not at a device mismatch; returns the emq function where it stopped."""
    with pytest.raises((RuntimeError, NotImplementedError)) as info:
        run()
    assert any(m in str(info.value) for m in HOST_READ), f"stopped by {info.value}"
    root = str(Path(emq.__file__).resolve().parents[1]) + os.sep  # not a sibling like ../emq-venv
    frames = [
        f.name for f in traceback.extract_tb(info.tb) if f.filename.startswith(root) and "/tests/" not in f.filename
    ]
    return frames[-1]


def _on(module: torch.nn.Module, device: torch.device) -> bool:
    return all(t.device == device for t in [*module.parameters(), *module.buffers()])


@pytest.mark.parametrize(
    "settings",
    [{"bn": "fold"}, {"bn": "none", "bias_correction": True}, {"bn": "none", "act_bits": 32}],
    ids=["fold", "bias-correction", "float-activations"],
)
def test_ptq_engine_keeps_every_tensor_on_its_device(settings):
    """Model copy, folding, rounded weights, bias correction, activation calibration, the
    full-precision reference and the test batches all run on the engine's device, up to the
    per-image outcomes that come back to the CPU. (BatchNorm re-estimation reads its batch
    count on the host, so on meta it stops earlier; it uses the same calibration batches.)"""
    model, lm, data = _tiny()
    engine = PTQEngine(
        Target("tiny", model, lm, data), PTQSettings(calib_size=32, batch_size=16, **settings), device="meta"
    )
    assert _stops_at_host_read(lambda: engine.evaluate([2] * lm.num_slots)) == "_score"
    assert engine.device == META and _on(engine.work, META) and all(a.lo.device == META for a in engine.act)
    assert _on(model, torch.device("cpu")), "the caller's model moved"


def test_statistics_run_on_their_device():
    """Gradients and activations, the virtual and Synflow gradients and the per-sample Fisher
    (vmap) all run on the device; the first host read is the Hutchinson loop's."""
    model, lm, data = _tiny()
    x, y = data.calib_pool
    assert (
        _stops_at_host_read(
            lambda: compute_stats(
                model, lm, (x[:16], y[:16]), settings=FAST_STATS, use_cache=False, progress=False, device="meta"
            )
        )
        == "hutchinson"
    )


@pytest.mark.parametrize(("proxy", "where"), [("kl", "score_one"), ("gmpq", "rank_consistency")])
def test_whole_configuration_proxies_run_on_the_context_device(proxy, where):
    model, lm, data = _tiny()
    ctx = ProxyContext(Target("tiny", model, lm, data), (2, 4), PTQSettings(calib_size=32, bn="fold"), device="meta")
    assert _stops_at_host_read(lambda: get_proxy(proxy).score_one(ctx, (2,) * lm.num_slots)) == where
    assert ctx.cache["ptq-engine"].device == META and all(t.device == META for t in ctx.cache["proxy-images"])


def test_statistics_cache_is_shared_by_every_device(tmp_path):
    """The cache key has no device: statistics computed on the CPU are served to a meta run,
    which could not compute them."""
    model, lm, data = _tiny()
    x, y = data.calib_pool
    ns = compute_stats(model, lm, (x[:16], y[:16]), settings=FAST_STATS, cache_dir=tmp_path, progress=False)
    assert ns.meta["device"] == "cpu" and ns.meta["cache"]["hit"] is False
    again = compute_stats(
        model, lm, (x[:16], y[:16]), settings=FAST_STATS, cache_dir=tmp_path, progress=False, device="meta"
    )
    assert again.meta["cache"]["hit"] is True
    for a, b in zip(ns.layers, again.layers, strict=True):
        assert all(
            torch.equal(getattr(a, f), getattr(b, f)) and getattr(b, f).device.type == "cpu" for f in TENSOR_FIELDS
        )


def test_rounding_cache_is_stored_on_cpu_and_deployed_on_the_layers_device(tmp_path):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 8, 3, bias=False)
    model, calib = torch.nn.Sequential(conv), torch.randn(24, 4, 6, 6)
    first = RoundedWeights(model, [conv], ["0"], "gptq", calib=calib, cache_dir=tmp_path)
    q = first.get(0, 2)
    blob = torch.load(next((tmp_path / "rounding").glob("*.pt")), weights_only=True)
    assert blob["weight"].device.type == "cpu" and torch.equal(blob["weight"], q)
    second = RoundedWeights(model, [conv], ["0"], "gptq", calib=calib, cache_dir=tmp_path)
    second.fp = [w.to(META) for w in second.fp]  # the layer as a meta engine holds it
    loaded = second.get(0, 2)
    assert second.hits == 1 and second.misses == 0 and loaded.device == META


def test_device_is_part_of_the_engine_identity_only():
    spec = EvalSpec(model="default", settings=PTQSettings(calib_size=64), test_limit=100)
    meta = EvalSpec(model="default", settings=PTQSettings(calib_size=64), test_limit=100, device="meta")
    assert spec.device == "cpu" and spec.target_key == meta.target_key
    assert spec != meta and hash(spec) != hash(meta)
    assert engine_for(meta).device == META and engine_for(spec).device == torch.device("cpu")


# ------------------------------------------------------------------------- pretend CUDA: the commands thread the device


class _Reached(Exception):
    """Raised by the statistics spy where computing them for real would take minutes."""


@dataclass
class Seen:
    """The devices PTQ engines, statistics and fitness tables were given, by kind."""

    devices: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    stats: NetworkStats | None = None  # what the statistics spy returns (None: it raises _Reached)


def _device_arg(fn, args: tuple, kwargs: dict) -> inspect.BoundArguments:
    bound = inspect.signature(fn).bind(*args, **kwargs)
    bound.apply_defaults()
    return bound


@pytest.fixture
def fake_cuda(monkeypatch) -> Seen:
    """Two 'visible' CUDA devices. PTQ engines and fitness tables record the device they are
    given and then run on the CPU; statistics record theirs and are not computed."""
    _cuda(monkeypatch, True, 2)
    seen = Seen()

    def record(kind: str, owner: object) -> None:
        original = owner.__init__

        def spy(*args, **kwargs):
            bound = _device_arg(original, args, kwargs)
            seen.devices[kind].append(str(resolve_device(bound.arguments["device"])))
            bound.arguments["device"] = "cpu"
            original(*bound.args, **bound.kwargs)

        monkeypatch.setattr(owner, "__init__", spy)

    record("engine", PTQEngine)
    record("tables", TableEvaluator)
    original_stats = stats_mod.compute_stats

    def stats_spy(*args, **kwargs):
        seen.devices["stats"].append(str(resolve_device(_device_arg(original_stats, args, kwargs).arguments["device"])))
        if seen.stats is None:
            raise _Reached
        return seen.stats

    for module in list(sys.modules.values()):  # every module that imported it by name
        if getattr(module, "compute_stats", None) is original_stats:
            monkeypatch.setattr(module, "compute_stats", stats_spy)
    return seen


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["quantize", "--bits", ",".join(["3"] * 20), "--calib-size", "64", "--device", "cuda:1"],
            {"engine": ["cuda:1"]},
        ),
        (
            ["score", "--proxies", "kl", "--limit", "3", "--resamples", "20", "--no-reference", "--device", "cuda"],
            {"engine": ["cuda"]},
        ),
        (
            [
                "allocate",
                "--proxy",
                "kl",
                "--budget-avg-bits",
                "3",
                "--search-evals",
                "2",
                "--evaluate",
                "--calib-size",
                "64",
                "--device",
                "cuda",
            ],
            {"engine": ["cuda", "cuda"]},
        ),  # the proxy's engine and the verifying one
    ],
    ids=["quantize", "score", "allocate"],
)
def test_commands_run_their_engines_on_the_device(argv, expected, fake_cuda):
    code, err = _run(argv)
    assert code == 0, err
    assert fake_cuda.devices == expected


@pytest.mark.parametrize(
    "argv",
    [
        ["stats", "--device", "cuda:1"],
        ["demo", "--out", "{tmp}/d", "--device", "cuda:1"],
        ["score", "--proxies", "fisher", "--device", "cuda:1"],
        ["allocate", "--proxy", "hawq-v2", "--budget-avg-bits", "3", "--device", "cuda:1"],
    ],
    ids=lambda a: a[0],
)
def test_commands_compute_statistics_on_the_device(argv, fake_cuda, tmp_path):
    with pytest.raises(_Reached):
        main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert fake_cuda.devices == {"stats": ["cuda:1"]}


def test_search_computes_statistics_and_tables_on_the_device(fake_cuda, tmp_path):
    setup = BenchSetup.of(Bench.open("vgg-digits"))  # the bundle, completed as emq reads it
    t, path = setup.target, BUNDLES["vgg-digits"].stats_path
    fake_cuda.stats = shipped_stats(t, bits=setup.bits, settings=setup.stats, files=[path])
    code, err = _run(
        [
            "search",
            "--bench",
            "vgg-digits",
            "--generations",
            "1",
            "--population",
            "8",
            "--out",
            str(tmp_path / "s"),
            "--json",
            "--device",
            "cuda",
        ]
    )
    assert code == 0, err
    assert fake_cuda.devices["stats"] == ["cuda"] and "cuda" in fake_cuda.devices["tables"]


# -------------------------------------------------------------------------- bench builds: the same bits on every device

BUILD = [
    "bench",
    "build",
    "--configs",
    "6",
    "--seed",
    "3",
    "--noise-samples",
    "4",
    "--calib-size",
    "64",
    "--test-limit",
    "150",
]


CONTENT = {
    "plan": "idx, config, source",
    "records": "idx, config, top1, loss, kl, size_bytes, bitops, seed, source, outcomes",
    "repeats": "config, top1, loss, kl, calib_seed, outcomes",
}  # everything but timings


def _content(path: Path) -> dict[str, object]:
    with closing(sqlite3.connect(path)) as con:
        rows = {t: con.execute(f"SELECT {cols} FROM {t} ORDER BY 1").fetchall() for t, cols in CONTENT.items()}
    meta = Bench.open(path).meta
    return {**rows, **{k: meta[k] for k in (*BUILD_KEYS, "reliability", "fp_reference", "split_hashes", "test_pools")}}


def test_bench_build_gives_the_same_bits_with_any_device_flag(tmp_path, monkeypatch):
    """No flag, --device cpu and (pretend) --device cuda build identical records, outcomes and
    retests; the device is in the build log only, so a build is resumed on another device."""
    paths = {name: tmp_path / f"{name}.sqlite" for name in ("none", "cpu", "cuda")}
    assert main([*BUILD, "--out", str(paths["none"]), "--json"]) == 0
    assert main([*BUILD, "--out", str(paths["cpu"]), "--device", "cpu", "--json"]) == 0
    _cuda(monkeypatch, True, 1)
    init = PTQEngine.__init__
    monkeypatch.setattr(PTQEngine, "__init__", lambda self, *a, device="cpu", **k: init(self, *a, device="cpu", **k))
    assert main([*BUILD, "--out", str(paths["cuda"]), "--device", "cuda", "--json"]) == 0
    reference = _content(paths["none"])
    assert reference["records"] and reference["repeats"]
    assert _content(paths["cpu"]) == reference and _content(paths["cuda"]) == reference
    logs = {name: Bench.open(p).meta["build_log"] for name, p in paths.items()}
    assert [log[-1]["device"] for log in logs.values()] == ["cpu", "cpu", "cuda"]
    assert main([*BUILD, "--out", str(paths["cuda"]), "--device", "cpu", "--resume", "--json"]) == 0
