"""One home for the facts every layer agrees on: bit ranges, default bits, target metrics and
their orientation, configuration text, slot names.

Before this module each of these lived in several places that had drifted apart (activation
bits were 1..32 in PTQ but 1..8 in the statistics, so a bench built with 16-bit activations
could not be scored). Every check raises `ParameterError`, which names the *parameter* (the
Python keyword); the CLI turns that name into its flag.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import field
from typing import Any

import numpy as np

from .errors import EmqError

WEIGHT_BITS_MIN, WEIGHT_BITS_MAX = 1, 8
ACT_BITS_MIN, ACT_BITS_MAX = 1, 32  # 32 = unquantized activations
UNQUANTIZED_ACT_BITS = 32
DEFAULT_BITS: tuple[int, ...] = (2, 3, 4)
DEFAULT_ACT_BITS = 8
DEFAULT_BITS_TEXT = ",".join(map(str, DEFAULT_BITS))

# +1: higher is better (accuracy); -1: lower is better. The order is the storage order.
METRIC_ORIENTATION: dict[str, int] = {"top1": 1, "loss": -1, "kl": -1}
METRICS: tuple[str, ...] = tuple(METRIC_ORIENTATION)


def setting(default: Any, help: str | None = None, **cli: Any) -> Any:
    """A dataclass field declared with its command-line help, so name, default and help live
    in one place: a field with `help` becomes a flag (emq.cli.fieldargs), `{default}` in the
    help is the default shown; `cli` may name the `flag`, its `choices` or its `flag_default`."""
    return field(default=default, metadata={"help": help, **cli} if help else {})


class ParameterError(EmqError, ValueError):
    """A bad value of one named parameter; `param` is its Python name (the CLI maps it to a flag)."""

    def __init__(self, param: str, value: Any, problem: str) -> None:
        self.param, self.value, self.problem = param, value, problem
        shown = str(value) if isinstance(value, os.PathLike) else repr(value)
        super().__init__(f"{param}={shown}: {problem}")

    def with_flag(self, flag: str) -> str:
        """The same message in the CLI's words: `--act-bits 40: ...`."""
        return f"{flag} {self.value}: {self.problem}"


def _as_int(value: Any, param: str) -> int:
    if isinstance(value, bool):
        raise ParameterError(param, value, "give an integer bit-width")
    try:
        f = float(value)
    except (TypeError, ValueError) as e:
        raise ParameterError(param, value, "give an integer bit-width") from e
    if not f.is_integer():
        raise ParameterError(param, value, "give an integer bit-width")
    return int(f)


def check_positive_int(value: Any, param: str) -> int:
    """A count that must be at least 1 (images, batch size, pixels)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ParameterError(param, value, "must be an integer >= 1")
    return int(value)


def check_weight_bits(value: Any, param: str = "bits") -> int:
    """One weight bit-width, as an int in WEIGHT_BITS_MIN..WEIGHT_BITS_MAX."""
    b = _as_int(value, param)
    if not WEIGHT_BITS_MIN <= b <= WEIGHT_BITS_MAX:
        raise ParameterError(param, value, f"bit-width {b} is outside {WEIGHT_BITS_MIN}..{WEIGHT_BITS_MAX}")
    return b


def check_act_bits(value: Any, param: str = "act_bits") -> int:
    """Activation bits: ACT_BITS_MIN..ACT_BITS_MAX, where 32 leaves activations unquantized."""
    b = _as_int(value, param)
    if not ACT_BITS_MIN <= b <= ACT_BITS_MAX:
        raise ParameterError(
            param, value, f"use {ACT_BITS_MIN}..{ACT_BITS_MAX} ({UNQUANTIZED_ACT_BITS} = unquantized activations)"
        )
    return b


def check_bit_set(values: Iterable[Any], param: str = "bits_allowed") -> tuple[int, ...]:
    """A set of allowed weight bit-widths: non-empty, no repeats, returned sorted."""
    items = list(values)
    if not items:
        raise ParameterError(param, items, f"give at least one bit-width, e.g. {DEFAULT_BITS_TEXT}")
    out = [check_weight_bits(b, param) for b in items]
    if len(set(out)) != len(out):
        raise ParameterError(param, items, "contains duplicates")
    return tuple(sorted(out))


def check_metric(metric: Any, param: str = "metric") -> str:
    if metric not in METRIC_ORIENTATION:
        raise ParameterError(param, metric, f"use one of {', '.join(METRICS)}")
    return str(metric)


def oriented(metric: str, values: np.ndarray | Sequence[float]) -> np.ndarray:
    """Metric values turned "higher = better" (loss and KL negated)."""
    return METRIC_ORIENTATION[check_metric(metric)] * np.asarray(values, dtype=np.float64)


def config_text(bits: Iterable[int]) -> str:
    """Canonical text of a configuration: comma-separated integers, no spaces."""
    return ",".join(str(int(b)) for b in bits)


def parse_config(value: str | Sequence[Any], param: str = "config") -> tuple[int, ...]:
    """A configuration from a tuple, list, array or text like "[4, 3, 2]" / "4,3,2"."""
    if isinstance(value, str):
        parts = [p for p in value.replace(" ", "").strip("[]()").split(",") if p != ""]
        try:
            return tuple(int(p) for p in parts)
        except ValueError as e:
            raise ParameterError(param, value, "give comma-separated integers, e.g. 4,3,2") from e
    out = []
    for b in value:
        try:
            f = float(b)
        except (TypeError, ValueError) as e:
            raise ParameterError(param, value, f"bit-width {b!r} is not a number") from e
        if not f.is_integer():
            raise ParameterError(param, value, f"bit-width {b!r} is not an integer")
        out.append(int(f))
    return tuple(out)


def resolve_slot(slots: Sequence[Any], key: str | int, param: str, model: str = "the model") -> int:
    """A slot index from a slot name, one of its modules' names, or an index.

    `slots` are objects with `name` and `modules` (emq.layermap.Slot). Names win over
    indices because nn.Sequential modules are called '0', '1', ...
    """
    if isinstance(key, str):
        for i, s in enumerate(slots):
            if key == s.name or key in s.modules:
                return i
    if isinstance(key, (int, np.integer)) or (isinstance(key, str) and key.lstrip("-").isdigit()):
        i = int(key)
        if not 0 <= i < len(slots):
            raise ParameterError(
                param, key, f"slot {i} is out of range 0..{len(slots) - 1} (see `emq layers --model {model}`)"
            )
        return i
    raise ParameterError(
        param, key, f"neither a slot index nor a module of {model}; slots are {', '.join(s.name for s in slots)}"
    )
