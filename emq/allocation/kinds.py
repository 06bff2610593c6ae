"""Budget kinds: one registered class per kind holds everything that kind means.

A kind parses the text a user typed (its units), prices one weight bit of every slot in
integer cost units, converts a limit into those units and back, and formats the smallest
feasible value. Everything else (problem building, the ILP, the search, the CLI's
`--budget-<name>` flags and `--sweep-kind` choices) reads the registry, so a new kind is
one class here (or in user code) decorated with `register_kind`.

Every kind must be linear in the per-slot bit-widths and increasing in each of them
(cost = sum_s per_bit[s] * bits[s]); the feasibility argument in `budgets` relies on it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import ClassVar, TypeVar

import numpy as np

from ..layermap import LayerMap
from ..registry import Registry
from ..specs import ParameterError

SIZE_UNITS: dict[str, float] = {
    "": 1,
    "b": 1,
    "kb": 1e3,
    "mb": 1e6,
    "gb": 1e9,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
}
COUNT_UNITS: dict[str, float] = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
PLAIN_UNITS: dict[str, float] = {"": 1}


def budget_param(kind: str) -> str:
    """How messages name one budget: the key of the `budgets` mapping it came from."""
    return f"budgets[{kind!r}]"


def parse_number(text: str | float, units: Mapping[str, float], param: str, example: str) -> float:
    """A positive number with an optional unit suffix (case-insensitive)."""
    m = re.fullmatch(r"\s*([+-]?[0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*", str(text).lower())
    if not m or m.group(2) not in units:
        named = ", ".join(u for u in units if u)
        raise ParameterError(
            param,
            str(text),
            "give a number" + (f" with an optional unit ({named})" if named else "") + f", e.g. {example}",
        )
    value = float(m.group(1)) * units[m.group(2)]
    if not value > 0:
        raise ParameterError(param, str(text), f"must be positive, e.g. {example}")
    return value


class BudgetKind:
    """One budget kind. Subclasses set the class attributes and `per_bit`; unit conversion
    defaults to 'the value is the cost' (as for BitOps)."""

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""  # what the limit means, for --help texts
    units: ClassVar[Mapping[str, float]] = PLAIN_UNITS
    example: ClassVar[str] = "3.0"
    suffix: ClassVar[str] = ""  # appended to a formatted value, e.g. " BitOps"

    def parse(self, text: str | float) -> float:
        """The limit in this kind's unit from the text a user typed."""
        return parse_number(text, self.units, budget_param(self.name), self.example)

    def per_bit(self, lm: LayerMap, act_bits: int) -> np.ndarray:
        """Integer cost units [S] that one more weight bit of each slot adds."""
        raise NotImplementedError

    def to_units(self, value: float, lm: LayerMap, act_bits: int) -> float:
        """A limit in this kind's unit as (real-valued) cost units."""
        return value

    def from_units(self, units: float, lm: LayerMap, act_bits: int) -> float:
        """Cost units back in this kind's unit (for messages and reports)."""
        return units

    def limit(self, value: float, lm: LayerMap, act_bits: int) -> float:
        """The limit as an integer number of cost units (floor: never round a limit up)."""
        units = self.to_units(value, lm, act_bits)
        return float(math.floor(units + 1e-9 * max(1.0, abs(units))))

    def value_of(self, lm: LayerMap, bits: Sequence[int], act_bits: int) -> float:
        """This kind's value of a per-slot configuration."""
        return self.from_units(
            float(np.dot(self.per_bit(lm, act_bits), np.asarray(bits, dtype=np.float64))), lm, act_bits
        )

    def format(self, value: float) -> str:
        """A smallest feasible value, rounded *up* so that the number shown is itself feasible."""
        digits = 6 - math.ceil(math.log10(value))
        up = math.ceil(value * 10**digits) / 10**digits
        return f"{up:.{max(digits, 0)}f}" + self.suffix


KINDS: Registry[BudgetKind] = Registry("budget kind", "budgets")
K = TypeVar("K", bound=type[BudgetKind])


def register_kind(cls: K) -> K:
    """Class decorator: make a budget kind available everywhere by its `name` (a taken name is refused)."""
    KINDS.add(cls.name, cls())
    return cls


def unregister_kind(name: str) -> None:
    """Remove a kind (tests and plugins that register temporary kinds)."""
    KINDS.remove(name)


def budget_kinds() -> tuple[str, ...]:
    """Names of all registered kinds, in registration order (argparse choices, flags)."""
    return KINDS.names()


def get_kind(name: str) -> BudgetKind:
    return KINDS.get_entry(name)


@register_kind
class SizeKind(BudgetKind):
    """Model size in bytes: weights at their bits plus 32-bit biases; costs in weight bits."""

    name = "size"
    help = "model size limit: bytes, or with a unit: 200KB, 1.5MiB (weights at their bits + 32-bit biases)"
    units = SIZE_UNITS
    example = "1.5MiB, 200KB or 123456 (bytes)"

    def per_bit(self, lm: LayerMap, act_bits: int) -> np.ndarray:
        return lm.params

    def to_units(self, value: float, lm: LayerMap, act_bits: int) -> float:
        return (value - lm.bias_bytes) * 8.0

    def from_units(self, units: float, lm: LayerMap, act_bits: int) -> float:
        return units / 8.0 + lm.bias_bytes

    def format(self, value: float) -> str:
        v = math.ceil(value)
        return f"{v} bytes ({v / 2**20:.6f} MiB)"


@register_kind
class BitOpsKind(BudgetKind):
    """BitOps = MACs x weight bits x activation bits."""

    name = "bitops"
    help = "BitOps limit, e.g. 1.2G (MACs x weight bits x activation bits)"
    units = COUNT_UNITS
    example = "1.2G or 350M"
    suffix = " BitOps"

    def per_bit(self, lm: LayerMap, act_bits: int) -> np.ndarray:
        return lm.macs * float(act_bits)


@register_kind
class AvgBitsKind(BudgetKind):
    """Parameter-weighted average weight bits; costs in weight bits."""

    name = "avg-bits"
    help = "parameter-weighted average weight bits, e.g. 3.0 (= weight size in bits / weight count)"

    def per_bit(self, lm: LayerMap, act_bits: int) -> np.ndarray:
        return lm.params

    def to_units(self, value: float, lm: LayerMap, act_bits: int) -> float:
        return value * float(lm.params.sum())

    def from_units(self, units: float, lm: LayerMap, act_bits: int) -> float:
        return units / float(lm.params.sum())


@register_kind
class Frac8Kind(BudgetKind):
    """Fraction of the all-8-bit model size (biases included on both sides)."""

    name = "frac8"
    help = "fraction of the all-8-bit model size, e.g. 0.4"
    example = "0.4"

    def per_bit(self, lm: LayerMap, act_bits: int) -> np.ndarray:
        return lm.params

    def to_units(self, value: float, lm: LayerMap, act_bits: int) -> float:
        return (value * float(lm.size_bytes([8] * lm.num_slots)) - lm.bias_bytes) * 8.0

    def from_units(self, units: float, lm: LayerMap, act_bits: int) -> float:
        return (units / 8.0 + lm.bias_bytes) / float(lm.size_bytes([8] * lm.num_slots))
