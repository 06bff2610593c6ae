"""A quantization target: a model, its layer map and (optionally) its data, resolved once."""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from pathlib import Path

from torch import nn

from .data import DataSplits, load_data
from .errors import EmqError
from .layermap import LayerMap, build_layer_map
from .models import EMBEDDED_MODELS, build_model, check_channels
from .specs import ParameterError, check_positive_int


@dataclass
class Target:
    name: str
    model: nn.Module
    layer_map: LayerMap
    data: DataSplits | None

    def require_data(self) -> DataSplits:
        if self.data is None:
            raise EmqError(
                f"model {self.name} has no data: pass --data (an ImageFolder or CIFAR-10 directory); nothing is "
                "downloaded"
            )
        return self.data


@dataclass(frozen=True)
class ModelSpec:
    """The model and its data as a caller names them, before anything is built: the one value
    an entry point passes down instead of five loose parameters (`resolve` builds the Target).
    Where the network runs (`device`) is not part of it: the same model runs anywhere."""

    model: str | nn.Module | None = None  # None: 'default', or a bench's own model
    _: KW_ONLY  # the rest by name
    data: str | DataSplits | None = None  # None: the model's own data (or a bench's)
    weights: Path | None = None
    num_classes: int | None = None
    input_size: int | None = None

    def resolve(self, need_data: bool = True, default_model: str = "default", default_data: object = None) -> Target:
        """The Target; `default_model` / `default_data` stand in for a model or data not given."""
        return resolve_target(
            self.model if self.model is not None else default_model,
            data=self.data if self.data is not None else default_data,
            weights=self.weights,
            num_classes=self.num_classes,
            input_size=self.input_size,
            need_data=need_data,
        )


def as_model_spec(
    model: ModelSpec | str | nn.Module | None = None,
    *,
    data: str | DataSplits | None = None,
    weights: Path | None = None,
    num_classes: int | None = None,
    input_size: int | None = None,
) -> ModelSpec:
    """A public function's model arguments as one ModelSpec; a ModelSpec given as `model` is
    taken as it is (its parts are not given twice)."""
    if not isinstance(model, ModelSpec):
        return ModelSpec(model, data=data, weights=weights, num_classes=num_classes, input_size=input_size)
    beside = {"data": data, "weights": weights, "num_classes": num_classes, "input_size": input_size}
    for name, value in beside.items():
        if value is not None:
            raise ParameterError(name, value, "give it inside the ModelSpec passed as model, not beside it")
    return model


def resolve_target(
    model: str | nn.Module = "default",
    *,
    data: str | DataSplits | None = None,
    weights: Path | None = None,
    num_classes: int | None = None,
    input_size: int | None = None,
    need_data: bool = True,
    name: str | None = None,
) -> Target:
    """Build or adopt the model, load its data, and trace its layer map.

    `model` is a name (`default` or a torchvision classifier) or a user nn.Module; `data`
    is `default`, a directory, a DataSplits, or None for the model's own (the default model
    has the embedded data; torchvision models have none).
    """
    if input_size is not None:
        check_positive_int(input_size, "input_size")
    embedded = EMBEDDED_MODELS.get(model) if isinstance(model, str) else None
    if data is None and embedded is not None:
        data = embedded.data
    splits: DataSplits | None = None
    if isinstance(data, DataSplits):
        splits = data
    elif data is not None and need_data:
        splits = load_data(data, input_size=input_size or 224)
    if isinstance(model, nn.Module):
        net, label = model, name or type(model).__name__  # the caller's module, mode untouched: engines work on copies
    else:
        classes = (
            num_classes
            if num_classes is not None
            else (splits.num_classes if splits is not None and embedded is None else None)
        )
        net, label = build_model(model, num_classes=classes, weights=weights), model
    size = input_size or (
        splits.input_size if splits is not None else (embedded.input_size if embedded is not None else 224)
    )
    in_ch = splits.in_channels if splits is not None else None
    if splits is not None:
        check_channels(net, label, splits.in_channels, splits.name)  # before tracing, which would fail on the shapes
    if need_data and splits is None:
        raise EmqError(
            f"model {label} has no data: pass --data (an ImageFolder or CIFAR-10 directory); nothing is downloaded"
        )
    return Target(label, net, build_layer_map(net, size, label, in_channels=in_ch), splits)
