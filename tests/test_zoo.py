"""The bench zoo's networks and its third task: real torchvision building blocks, MQ-Bench-101's
ResNet-18 layout, small-input forward passes, the procedural RGB shapes task, and the size cap."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.efficientnet import MBConv
from torchvision.models.mobilenetv3 import InvertedResidual as MobileNetV3Block
from torchvision.models.regnet import ResBottleneckBlock
from torchvision.models.resnet import BasicBlock
from torchvision.models.shufflenetv2 import InvertedResidual as ShuffleBlock
from torchvision.models.squeezenet import Fire
from torchvision.ops import SqueezeExcitation

from emq.layermap import build_layer_map
from emq.models import EMBEDDED_MODELS
from emq.zoo_models import ZOO_BUILDERS

ZOO = {name: spec for name, spec in EMBEDDED_MODELS.items() if spec.train_steps is not None}

# the building block each family must be made of (torchvision's own class)
BLOCKS = {
    "resnet18": BasicBlock,
    "mobilenet_v3_small": MobileNetV3Block,
    "shufflenet_v2_x0_5": ShuffleBlock,
    "squeezenet1_1": Fire,
    "efficientnet_b0": MBConv,
    "regnet_x_400mf": ResBottleneckBlock,
}


def test_the_zoo_has_twelve_networks_on_three_tasks_with_four_each():
    tasks: dict[str, set[str]] = {}
    for name, spec in EMBEDDED_MODELS.items():
        tasks.setdefault(spec.data, set()).add(name)
    assert len(EMBEDDED_MODELS) >= 12 and len(tasks) >= 3
    assert all(len(names) >= 4 for names in tasks.values()), tasks
    families = {spec.family for spec in ZOO.values()}
    assert {
        "ResNet",
        "MobileNetV3",
        "ShuffleNetV2",
        "SqueezeNet",
        "EfficientNet",
        "RegNet",
        "DenseNet",
        "VGG",
    } <= families


@pytest.mark.parametrize("arch", sorted(BLOCKS))
def test_zoo_networks_are_built_from_torchvisions_blocks(arch):
    model = ZOO_BUILDERS[arch](1, 10)
    assert any(isinstance(m, BLOCKS[arch]) for m in model.modules())


def test_squeeze_excitation_hard_swish_grouped_and_dense_parts_are_there():
    mbv3 = ZOO_BUILDERS["mobilenet_v3_small"](1, 10)
    assert any(isinstance(m, SqueezeExcitation) for m in mbv3.modules())
    assert any(isinstance(m, nn.Hardswish) for m in mbv3.modules())
    eff = ZOO_BUILDERS["efficientnet_b0"](1, 10)
    assert any(isinstance(m, SqueezeExcitation) for m in eff.modules())
    regnet = ZOO_BUILDERS["regnet_x_400mf"](1, 10)
    assert any(isinstance(m, nn.Conv2d) and 1 < m.groups < m.in_channels for m in regnet.modules())
    dense = ZOO_BUILDERS["densenet"](1, 10)
    assert type(dense).__module__ == "torchvision.models.densenet"


def test_resnet18_has_mq_bench_101s_eighteen_slots():
    lm = build_layer_map(ZOO_BUILDERS["resnet18"](1, 10).eval(), 28, "resnet18", in_channels=1)
    assert lm.num_slots == 18
    names = lm.slot_names
    assert names[0] == "conv1" and names[-1] == "fc"
    tied = [s for s in lm.slots if len(s.modules) == 2]
    assert len(tied) == 3 and all(any(m.endswith("downsample.0") for m in s.modules) for s in tied)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_zoo_network_runs_at_its_tasks_input_size(name):
    spec = ZOO[name]
    torch.manual_seed(0)
    model = spec.build().eval()
    channels = 3 if spec.data == "shapes-rgb" else 1
    assert next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels == channels
    with torch.no_grad():
        out = model(torch.randn(2, channels, spec.input_size, spec.input_size))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert spec.weights.endswith(".pt") and spec.train_steps > 0


def test_shapes_task_is_seeded_balanced_rgb_and_its_splits_disjoint():
    from emq.data import load_data
    from emq.shapes_data import SPLIT_IMAGES, shapes_data

    data = shapes_data(with_train=True)
    xs = {"train": data.train.tensors, "calib": data.calib_pool, "test": data.test.tensors}
    for split, (x, y) in xs.items():
        assert x.shape == (SPLIT_IMAGES[split], 3, 32, 32) and torch.isfinite(x).all()
        counts = torch.bincount(y, minlength=10)
        assert counts.sum() == SPLIT_IMAGES[split] and counts.max() - counts.min() <= 1
    assert len(set(data.test.tensors[1][:50].tolist())) == 10  # --test-limit's first images cover every class
    # colour matters: the three channels differ, and a warm and a cool class of one shape differ in hue
    x, y = data.test.tensors
    assert (x[:, 0] - x[:, 2]).abs().mean() > 0.1
    rows = {split: {tuple(r[0, 0, :8].tolist()) for r in x} for split, (x, _) in xs.items()}
    assert not rows["train"] & rows["test"] and not rows["calib"] & rows["test"] and not rows["train"] & rows["calib"]
    again = load_data("shapes-rgb")
    assert again.fingerprint == data.fingerprint and torch.equal(again.test.tensors[0], x)
    assert data.fingerprint != load_data("default").fingerprint


def test_all_shipped_bench_data_stays_under_150_mb():
    """Issue 21's cap on what the zoo adds to the package: benches and bundled statistics together."""
    from emq.bench.bundles import BUNDLES

    files = {b.path for b in BUNDLES.values()} | {b.stats_path for b in BUNDLES.values() if b.stats_path}
    total = sum(f.stat().st_size for f in files if f.is_file())
    assert total <= 150e6, f"shipped bench data {total / 1e6:.1f} MB > 150 MB"


def test_emq_zoo_is_the_shipped_formula_computed_by_hand():
    """`emq-zoo` scores with emq/assets/emq-zoo.json's tree, its provenance names the 14 zoo benches, and on
    vgg-digits its table is the measured single-slot KL with 8-bit neighbours plus the same with the other slots
    at the middle bit-width, read here from the bundled statistics without the search space's evaluator."""
    import json

    import numpy as np

    from emq.baselines import get_proxy
    from emq.bench import Bench
    from emq.bench.bundles import BUNDLES
    from emq.bench_setup import BenchSetup
    from emq.proxy import ProxyContext
    from emq.resources import asset_path
    from emq.sensitivity import in_context, stored_sensitivity

    doc = json.loads(asset_path("emq-zoo.json").read_text())
    assert doc["name"] == "emq-zoo" and sorted(doc["provenance"]["benches"]) == sorted(BUNDLES)
    proxy = get_proxy("emq-zoo")
    assert proxy.expression == doc["expression"] == "add_s(MKLM, MKL)" and proxy.orientation == -1
    bench = Bench.open("vgg-digits")
    setup = BenchSetup.of(bench)
    stats = setup.network_stats(progress=False)
    ctx = ProxyContext(None, tuple(bench.bits), setup.ptq, stats)
    kl = stored_sensitivity(stats, ctx.bits, setup.ptq).table("kl")
    mid = stored_sensitivity(stats, ctx.bits, setup.ptq, in_context(ctx.bits)).table("kl")
    assert not np.allclose(kl, mid)  # two measurements, not one read twice
    np.testing.assert_allclose(proxy.table(ctx), mid + kl, rtol=1e-9)
