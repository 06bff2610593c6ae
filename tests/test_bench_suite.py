"""The bench suite: user modules with their own data, reconstruction rounding in a build,
MNIST-format data, and the shipped bundles."""

from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from emq.bench import Bench, bench_build, bench_list
from emq.bench.bundles import BUNDLES
from emq.cli.main import main
from emq.data import DataSplits, load_data
from emq.mnist_data import find, mnist_data, read_idx
from emq.quant import PTQSettings
from emq.search_space.netstats import load_stats
from emq.specs import ParameterError
from emq.target import ModelSpec

SMALL = PTQSettings(calib_size=32)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6 * 16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(torch.flatten(nn.functional.avg_pool2d(x, 2), 1))


def _tiny_splits(seed: int = 0) -> tuple[nn.Module, DataSplits]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(200, 1, 8, 8, generator=g)
    y = (x[:, 0, :4, :4].mean((1, 2)) > 0).long() + 2 * (x[:, 0, 4:, 4:].mean((1, 2)) > 0).long()
    torch.manual_seed(seed)
    net = Tiny()
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(60):
        loss = nn.functional.cross_entropy(net(x[:120]), y[:120])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval(), DataSplits(
        name="tiny",
        num_classes=4,
        in_channels=1,
        input_size=8,
        calib_pool=(x[120:160], y[120:160]),
        test=TensorDataset(x[160:], y[160:]),
        fingerprint="tiny0",
    )


def test_bench_of_a_user_module_with_its_data_and_reconstruction_rounding(tmp_path):
    net, data = _tiny_splits()
    out = tmp_path / "user.sqlite"
    recipe = {
        "configs": 6,
        "seed": 0,
        "data": data,
        "settings": PTQSettings(calib_size=32, weight_quantizer="gptq"),
        "noise_samples": 0,
        "progress": False,
        "name": "tiny-net",
    }
    info = bench_build(out, model=net, **recipe)
    b = Bench.open(out)
    assert (
        info["records"] == len(b) == 6
        and b.meta["model"] == "tiny-net"
        and b.meta["user_module"]
        and b.meta["data"] == "tiny"
    )
    rounding = b.meta["rounding"]["build"]
    assert rounding["method"] == "gptq" and rounding["options"] == {"damp": 0.01} and rounding["computed"] == 2 * 3
    assert b.meta["ptq_settings"]["weight_quantizer"] == "gptq"
    from emq.bench.evaluation import EvalSpec, engine_for
    from emq.quant import PTQEngine
    from emq.target import Target

    layer_map = engine_for(EvalSpec(model=net, data=data, settings=PTQSettings(**b.meta["ptq_settings"]))).layer_map
    fresh = PTQEngine(Target("tiny-net", net, layer_map, data), PTQSettings(**b.meta["ptq_settings"]))
    for i in range(len(b)):
        assert fresh.evaluate(b.configs[i]).kl == pytest.approx(b.metrics["kl"][i])
    assert fresh.rounding.misses == 0 and fresh.rounding.hits > 0  # the build's rounding is reused from the disk cache
    again = bench_build(out, model=net, resume=True, **recipe)
    assert again["records"] == 6
    other, _ = _tiny_splits(seed=1)
    with pytest.raises(Exception, match="different"):
        bench_build(out, model=other, resume=True, **recipe)


def test_a_user_module_needs_its_data(tmp_path):
    net, _ = _tiny_splits()
    with pytest.raises(ParameterError, match="needs its data"):
        bench_build(tmp_path / "x.sqlite", model=net, configs=6, progress=False)
    assert not (tmp_path / "x.sqlite").exists()


def _write_idx(path, arr: np.ndarray, gz: bool) -> None:
    codes = {np.dtype(np.uint8): 0x08}
    raw = bytes([0, 0, codes[arr.dtype], arr.ndim]) + struct.pack(f">{arr.ndim}i", *arr.shape) + arr.tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def _fake_mnist(root, gz: bool, n_train: int = 40, n_test: int = 20, size: int = 6) -> None:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    sfx = ".gz" if gz else ""
    _write_idx(root / f"train-images-idx3-ubyte{sfx}", rng.integers(0, 256, (n_train, size, size), dtype=np.uint8), gz)
    _write_idx(root / f"train-labels-idx1-ubyte{sfx}", rng.integers(0, 10, n_train, dtype=np.uint8), gz)
    _write_idx(root / f"t10k-images-idx3-ubyte{sfx}", rng.integers(0, 256, (n_test, size, size), dtype=np.uint8), gz)
    _write_idx(root / f"t10k-labels-idx1-ubyte{sfx}", rng.integers(0, 10, n_test, dtype=np.uint8), gz)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_are_read_in_debian_and_torchvision_layouts(tmp_path, gz, monkeypatch):
    debian = tmp_path / "debian"
    _fake_mnist(debian, gz)
    arr = read_idx(debian / f"train-images-idx3-ubyte{'.gz' if gz else ''}")
    assert arr.shape == (40, 6, 6) and arr.dtype == np.uint8
    d = load_data(f"fashion-mnist:{debian}")
    assert (d.num_classes, d.in_channels, d.input_size, len(d.test)) == (10, 1, 6, 20)
    assert d.calib_pool[0].shape[0] == 20  # the training images not trained on (half of a tiny file)
    tv = tmp_path / "torchvision"
    _fake_mnist(tv / "FashionMNIST" / "raw", gz)
    assert torch.equal(load_data(str(tv / "FashionMNIST" / "raw")).test.tensors[0], d.test.tensors[0])
    assert torch.equal(load_data(f"fashion-mnist:{tv}").test.tensors[0], d.test.tensors[0])
    monkeypatch.setenv("EMQ_DATA_DIR", str(tv))
    assert find("fashion-mnist")["test_images"].parent == tv / "FashionMNIST" / "raw"


def test_bad_idx_files_and_missing_data_say_what_to_do(tmp_path, monkeypatch):
    root = tmp_path / "d"
    _fake_mnist(root, gz=False)
    bad = root / "t10k-images-idx3-ubyte"
    bad.write_bytes(bad.read_bytes()[:-5])
    with pytest.raises(ParameterError, match="truncated or corrupt"):
        load_data(f"fashion-mnist:{root}")
    bad.write_bytes(b"\x12\x34\x08\x03")
    with pytest.raises(ParameterError, match="bad magic"):
        read_idx(bad)
    import emq.mnist_data as md

    monkeypatch.delenv("EMQ_DATA_DIR", raising=False)
    monkeypatch.setattr(md, "search_dirs", lambda fmt: [tmp_path / "nowhere"])
    with pytest.raises(ParameterError, match=r"apt-get install dataset-fashion-mnist.*nothing is downloaded"):
        load_data("fashion-mnist")
    code = main(
        ["bench", "build", "--model", "resnet20-fashion", "--out", str(tmp_path / "f.sqlite"), "--configs", "6"]
    )
    assert code == 2 and not (tmp_path / "f.sqlite").exists()


def test_mnist_splits_hold_out_calibration_from_training(tmp_path):
    root = tmp_path / "m"
    _fake_mnist(root, gz=True, n_train=60)
    from emq.mnist_data import idx_files

    d = mnist_data(idx_files(root), "fashion-mnist", with_train=True)
    train = {tuple(r.flatten().tolist()) for r in d.train.tensors[0]}
    assert not any(tuple(r.flatten().tolist()) in train for r in d.calib_pool[0])


def test_shipped_bundles_are_listed_with_their_figures(capsys):
    rows = {r["name"]: r for r in bench_list()}
    assert set(rows) == set(BUNDLES) and len(rows) >= 5
    for name, r in rows.items():
        if not r["installed"]:  # a zoo bench not built yet says how to build it
            assert BUNDLES[name].build, f"shipped bench {name} is missing"
            assert f"scripts/build_zoo.py {name}" in r["note"] and "--test-limit" in r["note"]
            continue
        assert r["family"] and r["task"] == r["data"] and r["slots"] >= 8 and 50 < r["fp_top1"] <= 100
        assert r["records"] >= (400 if BUNDLES[name].build else 500)  # the zoo's recipe: 400 configurations
        assert r["ptq_method"] in ("mse", "gptq", "adaround") and r["megabytes"] > 0
        if BUNDLES[name].stats:
            assert r["bundled_stats"], f"{name}: its statistics file is missing"
    assert main(["bench", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in BUNDLES)
    assert main(["bench", "list", "--json"]) == 0
    assert {r["name"] for r in json.loads(capsys.readouterr().out)} == set(BUNDLES)


@pytest.mark.parametrize("name", [n for n, b in BUNDLES.items() if b.stats and b.path.is_file()])
def test_bundled_benches_score_without_their_data(name, monkeypatch, capsys):
    """`emq score --bench NAME` runs from the bundle alone (statistics and measured sensitivity):
    data loading is made to fail."""
    import emq.data

    def no_data(spec, input_size=224):
        raise ParameterError("data", spec, "not installed (test)")

    monkeypatch.setattr(emq.data, "load_data", no_data)
    monkeypatch.setattr("emq.target.load_data", no_data)
    code = main(["score", "--bench", name, "--proxies", "hawq-v2,layer-kl,gmpq", "--resamples", "50", "--json"])
    if load_stats(BUNDLES[name].stats_path, partial=True).needs_data:  # its data ships: only the costly part does
        assert code == 2 and "pass --data" in capsys.readouterr().err
        return
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    # the bundle carries the measured sensitivity: layer-kl scores too; the whole-configuration proxy cannot
    assert [p["name"] for p in report["proxies"]][:2] == ["hawq-v2", "layer-kl"] and list(report["skipped"]) == ["gmpq"]
    b = Bench.open(name)
    assert report["metric"] == b.default_metric


def test_a_bench_records_its_embedded_models_own_data_and_refuses_other_data():
    from emq.bench.evaluation import EvalSpec
    from emq.bench_setup import BenchSetup
    from emq.errors import EmqError

    assert EvalSpec(model="resnet20-fashion", settings=SMALL).data_name == "fashion-mnist"
    assert EvalSpec(model="vgg-digits", settings=SMALL).data_name == "default"
    assert Bench.open("resnet20-fashion").meta["data"] == "fashion-mnist"
    with pytest.raises(EmqError, match="other data"):  # same channels, so only the fingerprint tells them apart
        BenchSetup.of(Bench.open("resnet20-fashion"), ModelSpec(data="default"))


@pytest.mark.parametrize("name", [n for n, b in BUNDLES.items() if b.stats and b.stats_path.is_file()])
def test_every_shipped_bench_is_scored_and_searched_from_its_bundle(name, monkeypatch, tmp_path, capsys):
    """Every shipped bench (the zoo's included) is scored and searched from its bundle: without its data
    set where the bundle's statistics are complete, and with only the data emq generates itself where the
    bundle leaves the activation fields to it."""
    import emq.data

    if not load_stats(BUNDLES[name].stats_path, partial=True).needs_data:

        def no_data(spec, input_size=224):
            raise ParameterError("data", spec, "not installed (test)")

        monkeypatch.setattr(emq.data, "load_data", no_data)
        monkeypatch.setattr("emq.target.load_data", no_data)
    else:
        assert Bench.open(name).meta["data"] in emq.data.SHIPPED_DATA
    code = main(["score", "--bench", name, "--proxies", "emq-zoo,layer-kl,fisher", "--no-reference", "--json"])
    assert code == 0, capsys.readouterr().err
    scores = {p["name"]: p for p in json.loads(capsys.readouterr().out)["proxies"]}
    assert set(scores) == {"emq-zoo", "layer-kl", "fisher"}
    code = main(
        [
            "search",
            "--bench",
            name,
            "--generations",
            "1",
            "--population",
            "12",
            "--out",
            str(tmp_path / "s"),
            "--json",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["best_expression"]
