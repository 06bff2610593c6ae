"""The bench zoo's networks: torchvision's own architectures, adapted only where small inputs need it.

Each builder takes torchvision's definition (its classes and building blocks: BasicBlock,
InvertedResidual with squeeze-excitation and hard-swish, channel shuffle, fire modules, MBConv,
grouped-convolution RegNet blocks, dense blocks, VGG's `make_layers`) and changes only:

- the first convolution, to the task's input channels; where the ImageNet stem is a 7x7 stride-2
  conv followed by max-pooling (ResNet, ShuffleNet, DenseNet), a 3x3 stride-2 conv without the
  pooling ("small stem"), so a 24-28 px image is not shrunk to nothing;
- the classifier, to the task's classes (and, for VGG, a small one instead of 25,088 x 4,096);
- the width (and for a few families the depth), so that training fits in 15 minutes on two CPU
  cores and a bench's statistics stay a few megabytes. `ZOO_CHANGES` says what each one changes.

Nothing here is trained or loaded: `scripts/train_model.py` trains, `emq.models` ships the weights.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torchvision.models import DenseNet, ShuffleNetV2, SqueezeNet
from torchvision.models.efficientnet import EfficientNet, _efficientnet_conf
from torchvision.models.mobilenetv3 import MobileNetV3, _mobilenet_v3_conf
from torchvision.models.regnet import BlockParams, RegNet
from torchvision.models.resnet import BasicBlock, ResNet
from torchvision.models.vgg import VGG, make_layers


def _small_stem(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """The stem convolution as 3x3 at stride 2, reading `in_channels` channels (a 28 px image -> 14 px)."""
    return nn.Conv2d(in_channels, conv.out_channels, 3, 2, 1, bias=conv.bias is not None)


def _init(model: nn.Module) -> nn.Module:
    """torchvision's initialisation for the layers replaced here (Kaiming fan-out convs, unit BN)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


class ZooResNet18(ResNet):
    """torchvision's ResNet-18 (BasicBlock, [2, 2, 2, 2]: MQ-Bench-101's 18 slots) at 1/4 width, small stem."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16) -> None:
        super().__init__(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
        self.inplanes = width
        self.conv1 = nn.Conv2d(in_channels, width, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.Identity()
        self.layer1 = self._make_layer(BasicBlock, width, 2)
        self.layer2 = self._make_layer(BasicBlock, 2 * width, 2, stride=2)
        self.layer3 = self._make_layer(BasicBlock, 4 * width, 2, stride=2)
        self.layer4 = self._make_layer(BasicBlock, 8 * width, 2, stride=2)
        self.fc = nn.Linear(8 * width, num_classes)
        _init(self)


def mobilenet_v3_small(in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    """torchvision's MobileNetV3-Small (hard-swish, squeeze-excitation) at width 0.5, last channel 256 (was 1024)."""
    setting, last = _mobilenet_v3_conf("mobilenet_v3_small", width_mult=0.5)
    model = MobileNetV3(setting, last_channel=256, num_classes=num_classes)
    model.features[0][0] = _small_stem(model.features[0][0], in_channels)  # was 3x3 stride 2 already
    return _init(model)


def shufflenet_v2_x0_5(in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    """torchvision's ShuffleNetV2 x0.5 (channel split and shuffle), without the stem max-pool."""
    model = ShuffleNetV2([4, 8, 4], [24, 48, 96, 192, 512], num_classes=num_classes)
    model.conv1[0] = _small_stem(model.conv1[0], in_channels)
    model.maxpool = nn.Identity()
    return _init(model)


def squeezenet1_1(in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    """torchvision's SqueezeNet 1.1 (fire modules) unchanged but for the input channels and classes."""
    model = SqueezeNet("1_1", num_classes=num_classes)
    first = model.features[0]
    model.features[0] = nn.Conv2d(in_channels, first.out_channels, 3, 2)
    nn.init.kaiming_uniform_(model.features[0].weight)
    nn.init.zeros_(model.features[0].bias)
    return model


def efficientnet_b0(in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    """torchvision's EfficientNet-B0 (MBConv with squeeze-excitation, SiLU) at width 0.25 and depth 0.5."""
    setting, last = _efficientnet_conf("efficientnet_b0", width_mult=0.25, depth_mult=0.5)
    model = EfficientNet(setting, dropout=0.2, num_classes=num_classes, last_channel=last)
    model.features[0][0] = _small_stem(model.features[0][0], in_channels)
    return _init(model)


def regnet_x_400mf(in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    """torchvision's RegNetX (grouped-convolution bottlenecks) with 400MF's slope and multiplier,
    but 8 blocks instead of 22, initial width 16 instead of 24 and group width 8 instead of 16."""
    params = BlockParams.from_init_params(depth=8, w_0=16, w_a=24.48, w_m=2.54, group_width=8)
    model = RegNet(params, num_classes=num_classes, stem_width=16)
    model.stem[0] = _small_stem(model.stem[0], in_channels)
    return _init(model)


def densenet(in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    """torchvision's DenseNet (dense blocks: concatenation, bottleneck, transitions) with growth 12
    and blocks (2, 4, 6, 4) instead of DenseNet-121's 32 and (6, 12, 24, 16); small stem, no stem pool."""
    model = DenseNet(growth_rate=12, block_config=(2, 4, 6, 4), num_init_features=24, num_classes=num_classes)
    model.features.conv0 = _small_stem(model.features.conv0, in_channels)
    model.features.pool0 = nn.Identity()
    return _init(model)


class ZooVGG11(VGG):
    """torchvision's VGG-11 with batch norm (`make_layers` of configuration A) at 1/4 width, without
    the fifth max-pool (a 24 px image would shrink to zero) and with a 128-wide classifier."""

    CFG: list[int | str] = [16, "M", 32, "M", 64, 64, "M", 128, 128, "M", 128, 128]

    def __init__(self, in_channels: int = 1, num_classes: int = 10, hidden: int = 128) -> None:
        features = make_layers(self.CFG, batch_norm=True)
        features[0] = nn.Conv2d(in_channels, self.CFG[0], 3, padding=1)
        super().__init__(features, num_classes=num_classes)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(128, hidden), nn.ReLU(True), nn.Dropout(0.3), nn.Linear(hidden, num_classes)
        )
        _init(self)


ZOO_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": ZooResNet18,
    "mobilenet_v3_small": mobilenet_v3_small,
    "shufflenet_v2_x0_5": shufflenet_v2_x0_5,
    "squeezenet1_1": squeezenet1_1,
    "efficientnet_b0": efficientnet_b0,
    "regnet_x_400mf": regnet_x_400mf,
    "densenet": densenet,
    "vgg11_bn": ZooVGG11,
}
