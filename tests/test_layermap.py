import pytest
import torch
from torch import nn

from emq.errors import EmqError
from emq.layermap import build_layer_map


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def test_tiny_costs_by_hand():
    lm = build_layer_map(Tiny(), 6, "tiny")
    assert [s.name for s in lm.slots] == ["conv", "fc"]
    conv, fc = lm.slots
    assert conv.params == 4 * 3 * 3 * 3 and conv.bias == 0
    assert conv.macs == 4 * 6 * 6 * (3 * 3 * 3)
    assert fc.params == 144 * 5 and fc.bias == 5 and fc.macs == 144 * 5
    bits = [4, 2]
    assert lm.size_bytes(bits) == pytest.approx((108 * 4 + 720 * 2) / 8 + 5 * 4)
    assert lm.bitops(bits, act_bits=8) == pytest.approx((3888 * 4 + 720 * 2) * 8)
    assert lm.bitops(bits, act_bits=4) == pytest.approx((3888 * 4 + 720 * 2) * 4)
    assert lm.fp_size_bytes == pytest.approx((108 + 720) * 4 + 20)
    batch = lm.size_bytes([[4, 2], [8, 8]])
    assert batch.shape == (2,) and batch[1] == pytest.approx(828 + 20)


def test_forward_order_not_definition_order():
    class Reversed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.late = nn.Linear(8, 2)
            self.early = nn.Linear(4, 8)

        def forward(self, x):
            return self.late(self.early(x.flatten(1)[:, :4]))

    lm = build_layer_map(Reversed(), 2, "rev", in_channels=1)
    assert [layer.name for layer in lm.layers] == ["early", "late"]


def test_resnet18_matches_mqbench101():
    import torchvision

    lm = build_layer_map(torchvision.models.resnet18(num_classes=1000), 224, "resnet18")
    assert lm.num_slots == 18 and len(lm.layers) == 21
    assert lm.slots[0].name == "conv1" and lm.slots[0].params == 9408
    assert lm.slots[-1].name == "fc" and lm.slots[-1].params == 512000 and lm.slots[-1].bias == 1000
    tied = [s for s in lm.slots if len(s.modules) == 2]
    assert [s.modules for s in tied] == [
        ("layer2.0.conv2", "layer2.0.downsample.0"),
        ("layer3.0.conv2", "layer3.0.downsample.0"),
        ("layer4.0.conv2", "layer4.0.downsample.0"),
    ]
    assert lm.slots[0].macs == 112 * 112 * 64 * 147


def test_default_model_slots():
    from emq.models import build_model

    lm = build_layer_map(build_model("default"), 24, "default")
    assert lm.num_slots == 20 and len(lm.layers) == 22
    assert lm.layer_slot[:3] == [0, 1, 2]


def test_validate_errors():
    lm = build_layer_map(Tiny(), 6, "tiny")
    with pytest.raises(EmqError, match="2 slots"):
        lm.validate([4, 4, 4])
    with pytest.raises(EmqError, match="outside 1..8"):
        lm.validate([4, 9])
    assert lm.validate(["4", 2]) == (4, 2)


def test_model_without_quantizable_layers():
    with pytest.raises(EmqError, match="no Conv2d or Linear"):
        build_layer_map(nn.Sequential(nn.ReLU()), 4, "empty", in_channels=1)


def test_the_api_leaves_a_users_model_as_it_was():
    import emq

    model = Tiny().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    emq.layers(model, input_size=6)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
