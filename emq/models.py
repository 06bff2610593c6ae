"""Models by name: the embedded default, any torchvision classifier, or a user nn.Module.

Nothing is downloaded: torchvision models are built with random weights unless a local
weights file is given, which is loaded with `weights_only=True`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import EmqError
from .resources import asset_path
from .specs import ParameterError
from .zoo_models import ZOO_BUILDERS

DEFAULT_WIDTH = 8
DEFAULT_WEIGHTS = "default_model.pt"


class BasicBlock(nn.Module):
    """torchvision-style basic block (same module names, so the ResNet slot policy applies)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class CifarResNet(nn.Module):
    """ResNet-20 layout for small images (3 stages x 3 blocks), configurable width."""

    def __init__(
        self, width: int = DEFAULT_WIDTH, in_channels: int = 1, num_classes: int = 10, blocks: int = 3
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=False)
        stages = []
        cin = width
        for i, mult in enumerate((1, 2, 4)):
            cout = width * mult
            layer = []
            for j in range(blocks):
                layer.append(BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1))
                cin = cout
            stages.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expansion, 3x3 depthwise, 1x1 linear projection (torchvision's names)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_res else out


class TinyMobileNetV2(nn.Module):
    """A MobileNetV2-style network for small images: inverted residuals and depthwise convolutions.

    (expansion, channels, blocks, stride) per stage, as in the MobileNetV2 paper's table,
    scaled to 24 px digits.
    """

    STAGES = ((1, 8, 1, 1), (4, 12, 2, 2), (4, 16, 2, 2), (4, 24, 1, 1))

    def __init__(self, in_channels: int = 1, num_classes: int = 10, stem: int = 8, last: int = 64) -> None:
        super().__init__()
        feats: list[nn.Module] = [
            nn.Sequential(nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU6())
        ]
        cin = stem
        for expand, cout, blocks, stride in self.STAGES:
            for j in range(blocks):
                feats.append(InvertedResidual(cin, cout, stride if j == 0 else 1, expand))
                cin = cout
        feats.append(nn.Sequential(nn.Conv2d(cin, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6()))
        self.features = nn.Sequential(*feats)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class TinyVGG(nn.Module):
    """A plain VGG-style CNN: stacks of 3x3 conv + BN + ReLU with max pooling, two FC layers."""

    CHANNELS = ((16, 16), (32, 32), (64, 64))

    def __init__(self, in_channels: int = 1, num_classes: int = 10, hidden: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for stage in self.CHANNELS:
            for cout in stage:
                layers += [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
                cin = cout
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(cin, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@dataclass(frozen=True)
class EmbeddedModel:
    """A small trained network shipped with emq: its architecture, weights file and data."""

    build: Callable[[], nn.Module]
    _: KW_ONLY
    weights: str  # file in emq/assets
    data: str  # the --data it was trained for
    input_size: int
    description: str
    family: str  # the architecture family (the zoo's networks are torchvision's, see emq.zoo_models)
    train_steps: int | None = None  # SGD steps of batch 128 in scripts/train_model.py (None: --epochs)
    train_lr: float = 0.2  # the one-cycle schedule's peak learning rate in scripts/train_model.py


def _zoo(
    arch: str, data: str, *, input_size: int, family: str, steps: int, description: str, lr: float = 0.2
) -> EmbeddedModel:
    """A zoo network: torchvision's `arch` as adapted in emq.zoo_models, 10 classes, an RGB stem
    on the shapes task and a 1-channel one on the others."""
    weights = f"{arch}_{data.replace('-', '_')}.pt"
    channels = 3 if data == "shapes-rgb" else 1
    return EmbeddedModel(
        lambda: ZOO_BUILDERS[arch](channels, 10),
        weights=weights,
        data=data,
        input_size=input_size,
        description=description,
        family=family,
        train_steps=steps,
        train_lr=lr,
    )


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "default": EmbeddedModel(
        lambda: CifarResNet(),
        weights=DEFAULT_WEIGHTS,
        data="default",
        input_size=24,
        description="ResNet-20, width 8, on the default digits task",
        family="ResNet",
    ),
    "mobilenetv2-digits": EmbeddedModel(
        lambda: TinyMobileNetV2(),
        weights="mobilenetv2_digits.pt",
        data="default",
        input_size=24,
        description="MobileNetV2-style (inverted residuals, depthwise convs) on the default digits task",
        family="MobileNetV2",
    ),
    "vgg-digits": EmbeddedModel(
        lambda: TinyVGG(),
        weights="vgg_digits.pt",
        data="default",
        input_size=24,
        description="plain VGG-style CNN (6 conv + 2 FC) on the default digits task",
        family="VGG",
    ),
    "resnet20-fashion": EmbeddedModel(
        lambda: CifarResNet(),
        weights="resnet20_fashion.pt",
        data="fashion-mnist",
        input_size=28,
        description="ResNet-20, width 8, on Fashion-MNIST",
        family="ResNet",
    ),
    # the bench zoo (issue 21): torchvision families, see emq.zoo_models for what each adapts
    "resnet18-fashion": _zoo(
        "resnet18",
        "fashion-mnist",
        input_size=28,
        family="ResNet",
        steps=1500,
        description="torchvision ResNet-18 (MQ-Bench-101's 18 slots) at 1/4 width on Fashion-MNIST",
    ),
    "mobilenetv3-fashion": _zoo(
        "mobilenet_v3_small",
        "fashion-mnist",
        input_size=28,
        family="MobileNetV3",
        steps=1500,
        description="torchvision MobileNetV3-Small (hard-swish, SE) at width 0.5 on Fashion-MNIST",
    ),
    "shufflenetv2-fashion": _zoo(
        "shufflenet_v2_x0_5",
        "fashion-mnist",
        input_size=28,
        family="ShuffleNetV2",
        steps=1500,
        description="torchvision ShuffleNetV2 x0.5 (channel shuffle, branches) on Fashion-MNIST",
    ),
    "regnet-digits": _zoo(
        "regnet_x_400mf",
        "default",
        input_size=24,
        family="RegNet",
        steps=1500,
        description="torchvision RegNetX-400MF's design (grouped convs), 8 blocks, on the default digits task",
    ),
    "squeezenet-shapes": _zoo(
        "squeezenet1_1",
        "shapes-rgb",
        input_size=32,
        family="SqueezeNet",
        steps=4000,
        description="torchvision SqueezeNet 1.1 (fire modules) on the RGB shapes task",
        lr=0.02,
    ),
    "efficientnet-shapes": _zoo(
        "efficientnet_b0",
        "shapes-rgb",
        input_size=32,
        family="EfficientNet",
        steps=1500,
        description="torchvision EfficientNet-B0 (MBConv with SE) at width 0.25, depth 0.5 on the RGB shapes task",
    ),
    "regnet-shapes": _zoo(
        "regnet_x_400mf",
        "shapes-rgb",
        input_size=32,
        family="RegNet",
        steps=1500,
        description="torchvision RegNetX-400MF's design (grouped convs), 8 blocks, on the RGB shapes task",
    ),
    "densenet-shapes": _zoo(
        "densenet",
        "shapes-rgb",
        input_size=32,
        family="DenseNet",
        steps=1500,
        description="torchvision DenseNet (concatenation), growth 12, blocks 2-4-6-4, on the RGB shapes task",
    ),
    "vgg11bn-shapes": _zoo(
        "vgg11_bn",
        "shapes-rgb",
        input_size=32,
        family="VGG",
        steps=1500,
        description="torchvision VGG-11-BN at 1/4 width with a small classifier on the RGB shapes task",
    ),
}


def embedded_model(name: str = "default", pretrained: bool = True) -> nn.Module:
    """An embedded network by name (EMBEDDED_MODELS), with its shipped weights."""
    spec = EMBEDDED_MODELS[name]
    model = spec.build()
    if pretrained:
        path = asset_path(spec.weights)
        if not path.is_file():
            raise EmqError(
                f"the weights of embedded model {name!r} are missing; "
                f"regenerate them with `python scripts/train_model.py --model {name}`"
            )
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def default_model(pretrained: bool = True) -> nn.Module:
    """The embedded default: a width-8 ResNet-20 trained on the default digits task."""
    return embedded_model("default", pretrained)


def torchvision_names() -> list[str]:
    """Classification model names torchvision can build."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def input_channels(model: nn.Module) -> int | None:
    """Image channels the model takes: its first convolution's (None if it has none)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels)
    return None


def check_channels(model: nn.Module, label: str, data_channels: int, data_name: str) -> None:
    """Refuse data whose images have another number of channels than the model takes
    (the default model reads 1-channel digits; torchvision models read RGB)."""
    want = input_channels(model)
    if want is not None and want != data_channels:
        raise ParameterError(
            "data",
            data_name,
            f"holds {data_channels}-channel images, but model {label} takes {want}-channel input; "
            "use data the model was made for",
        )


def _classifier_mismatch(model: nn.Module, state: dict) -> tuple[str, int, int] | None:
    """(key, classes in the file, classes of the model) when only the last layer's output
    size differs: the weights were trained for another number of classes."""
    own = model.state_dict()
    keys = [k for k, v in own.items() if k.endswith("weight") and v.dim() == 2]
    if not keys:
        return None
    key = keys[-1]
    theirs = state.get(key)
    if (
        isinstance(theirs, torch.Tensor)
        and theirs.dim() == 2
        and theirs.shape[1] == own[key].shape[1]
        and theirs.shape[0] != own[key].shape[0]
    ):
        return key, int(theirs.shape[0]), int(own[key].shape[0])
    return None


def _key_mismatch(own: dict, state: dict) -> str:
    """A short account of missing, unexpected and reshaped keys ('' when they all match);
    torch's own message lists every key, hundreds for a large model."""

    def some(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")

    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [k for k in own if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != own[k].shape]
    parts = [
        f"{len(ks)} {what} ({some(ks)})"
        for ks, what in (
            (missing, "keys missing"),
            (unexpected, "unexpected keys"),
            (reshaped, "keys of another shape"),
        )
        if ks
    ]
    return "; ".join(parts) + (f" of the model's {len(own)}" if parts else "")


def load_weights(model: nn.Module, path: Path) -> None:
    """Load a local state dict (plain or under 'state_dict' / 'model'), without pickle code execution."""
    howto = "give a state dict saved with torch.save(model.state_dict(), PATH)"
    try:
        with open(path, "rb") as f:
            head = f.read(4)
        if head[:2] != b"PK" and head[:1] != b"\x80":  # torch.save writes a zip archive (old versions: a pickle)
            what = (
                "is empty"
                if not head
                else "holds text"
                if all(32 <= c < 127 or c in b"\t\r\n" for c in head)
                else "holds other data"
            )
            raise ParameterError("weights", path, f"not a readable torch checkpoint: the file {what}; {howto}")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise ParameterError("weights", path, "no such file") from e
    except ParameterError:
        raise
    except Exception as e:  # torch raises several types for non-checkpoint files
        reason = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}" if str(e) else type(e).__name__
        raise ParameterError("weights", path, f"not a readable torch checkpoint ({reason}); {howto}") from e
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
    if not isinstance(state, dict):
        raise ParameterError("weights", path, f"holds a {type(state).__name__}, not a state dict")
    mismatch = _classifier_mismatch(model, state)
    if mismatch is not None:
        key, theirs, ours = mismatch
        raise ParameterError(
            "num_classes",
            ours,
            f"weights file {path} was trained for {theirs} classes ({key} has {theirs} rows); "
            f"build the model with {theirs} classes to load it",
        )
    misfit = _key_mismatch(model.state_dict(), state)
    if misfit:
        raise ParameterError("weights", path, f"does not fit the model: {misfit}")
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as e:
        raise ParameterError("weights", path, f"does not fit the model ({str(e).splitlines()[0][:200]})") from e


def build_model(name: str, num_classes: int | None = None, weights: Path | None = None) -> nn.Module:
    """Build a model by name in eval mode: an embedded model (EMBEDDED_MODELS) or any torchvision classifier."""
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2
    ):
        raise ParameterError("num_classes", num_classes, "a classifier needs an integer of at least 2 classes")
    if name in EMBEDDED_MODELS:
        if num_classes not in (None, 10):
            raise EmqError(f"the embedded model {name} has 10 classes; --num-classes does not apply to it")
        model = embedded_model(name, pretrained=weights is None)
    else:
        import torchvision

        names = torchvision_names()
        if name not in names:
            close = [n for n in names if name.lower()[:4] in n][:8]
            hint = f" (did you mean: {', '.join(close)}?)" if close else ""
            raise ParameterError(
                "model",
                name,
                f"unknown model{hint}; use an embedded model ({', '.join(EMBEDDED_MODELS)}) or a torchvision "
                "classifier name",
            )
        kwargs = {"num_classes": num_classes} if num_classes else {}
        if name.startswith("inception") or name.startswith("googlenet"):
            kwargs["aux_logits"] = False
            kwargs["init_weights"] = True
        model = torchvision.models.get_model(name, weights=None, **kwargs)
    if weights is not None:
        load_weights(model, weights)
    return model.eval()
