"""Evaluating bench configurations: the picklable spec a worker needs and the task function.

Any `emq.executors` executor runs `evaluate_config(spec, config)`; each worker process
builds its PTQ engine once per spec (`engine_for`) and reuses it, with its per-(layer, bits)
cache of quantized weights, for every task it receives.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Subset, TensorDataset

from emq.data import DataSplits
from emq.datasplits import TEST_LIMIT_MARK, base_fingerprint
from emq.device import resolve_device
from emq.hashing import state_dict_digest
from emq.quant import PTQEngine, PTQSettings
from emq.specs import ParameterError
from emq.target import Target, resolve_target

from .outcomes import encode


@dataclass(frozen=True, eq=False, kw_only=True)
class EvalSpec:
    """Everything a worker needs to rebuild the same engine (picklable, hashable).

    Built by keyword (nine fields: a positional call would be unreadable). `model` is a name or
    a user nn.Module and `data` a `--data` string or a DataSplits (None: the model's own data): a
    process executor pickles them into each worker once. Specs compare by content (a module
    by its class and weights digest, data by its fingerprint), so equal specs share engines.
    `device` (emq.device) is where the engine runs: part of the engine's identity here, never
    of the bench's (a build's records do not depend on it, only their floating-point noise).
    """

    model: str | nn.Module
    settings: PTQSettings
    data: str | DataSplits | None = None
    weights: str | None = None
    input_size: int | None = None
    num_classes: int | None = None
    test_limit: int | None = None  # evaluate on the first N test images only (quick benches)
    name: str | None = None  # label of a user module (default: its class name)
    device: str = "cpu"

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", str(resolve_device(self.device)))
        model = (
            self.model
            if isinstance(self.model, str)
            else f"module:{type(self.model).__qualname__}:{state_dict_digest(self.model)}"
        )
        data = (
            self.data
            if not isinstance(self.data, DataSplits)
            else f"splits:{self.data.name}:{self.data.fingerprint}:{len(self.data.test)}"
        )
        object.__setattr__(
            self, "target_key", (model, data, self.weights, self.input_size, self.num_classes, self.test_limit)
        )

    @property
    def model_name(self) -> str:
        return self.model if isinstance(self.model, str) else self.name or type(self.model).__name__

    @property
    def data_name(self) -> str:
        """What `--data` resolves to: given, else an embedded model's own data (a torchvision model has none)."""
        from emq.models import EMBEDDED_MODELS

        if isinstance(self.data, DataSplits):
            return self.data.name
        if self.data is not None:
            return self.data
        embedded = EMBEDDED_MODELS.get(self.model) if isinstance(self.model, str) else None
        return embedded.data if embedded is not None else "default"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EvalSpec) and (self.target_key, self.settings, self.device) == (
            other.target_key,
            other.settings,
            other.device,
        )

    def __hash__(self) -> int:
        return hash((self.target_key, self.settings, self.device))

    def with_calib_seed(self, seed: int) -> EvalSpec:
        return replace(self, settings=replace(self.settings, calib_seed=seed))


_ENGINES: dict[EvalSpec, PTQEngine] = {}
_TARGETS: dict[tuple, Target] = {}


def limit_test(data: DataSplits, n: int) -> DataSplits:
    """The same data with only the first n test images (its fingerprint says so)."""
    if n < 1:
        raise ParameterError("test_limit", n, "must be >= 1")
    tensors = getattr(data.test, "tensors", None)
    test = (
        TensorDataset(*(t[:n] for t in tensors))
        if tensors is not None
        else Subset(data.test, range(min(n, len(data.test))))
    )
    sources = data.test_sources[:n] if data.test_sources is not None else None
    fingerprint = f"{base_fingerprint(data.fingerprint)}{TEST_LIMIT_MARK}{n}]"
    return replace(data, test=test, test_sources=sources, fingerprint=fingerprint)


def target_for(spec: EvalSpec) -> Target:
    """This process's model, layer map and data for `spec` (shared by all its settings)."""
    key = spec.target_key
    target = _TARGETS.get(key)
    if target is None:
        target = resolve_target(
            spec.model,
            data=spec.data,
            weights=Path(spec.weights) if spec.weights else None,
            num_classes=spec.num_classes,
            input_size=spec.input_size,
            name=spec.model_name,
        )
        if spec.test_limit is not None:
            target = replace(target, data=limit_test(target.require_data(), spec.test_limit))
        _TARGETS[key] = target
    return target


def engine_for(spec: EvalSpec) -> PTQEngine:
    """This process's engine for `spec`, built on first use."""
    engine = _ENGINES.get(spec)
    if engine is None:
        engine = PTQEngine(target_for(spec), spec.settings, device=spec.device)
        _ENGINES[spec] = engine
    return engine


def evaluate_config(spec: EvalSpec, config: str) -> dict[str, Any]:
    """PTQ-evaluate one configuration (canonical text); returns its metrics. An executor task:
    the spec is the shared context, so each worker builds its engine once."""
    res = engine_for(spec).evaluate([int(b) for b in config.split(",")])
    return {"config": config, **res.to_json(), "outcomes": encode(res.per_image)}
