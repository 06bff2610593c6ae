"""Configuration spaces: which bit-widths each slot may take, and the canonical config text.

A configuration is one weight bit-width per slot of a layer map. Its canonical text
("4,3,2,...") is the key in bench files and the input of the search / held-out split hash,
so the split of a configuration never changes when records are added.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from emq.errors import EmqError
from emq.layermap import LayerMap

DEFAULT_BITS = (2, 3, 4)
HELDOUT_MODULUS = 5  # one configuration in five (by hash) is held out


def config_text(bits: Iterable[int]) -> str:
    """Canonical text of a configuration: comma-separated integers, no spaces."""
    return ",".join(str(int(b)) for b in bits)


def parse_config(value: str | Sequence[int], what: str = "configuration") -> tuple[int, ...]:
    """Accept a tuple, list, array or text like "[4, 3, 2]" / "4,3,2" (EMQAPI inputs)."""
    if isinstance(value, str):
        parts = [p for p in value.replace(" ", "").strip("[]()").split(",") if p != ""]
        try:
            return tuple(int(p) for p in parts)
        except ValueError as e:
            raise EmqError(f"{what} {value!r}: give comma-separated integers, e.g. 4,3,2") from e
    out = []
    for b in value:
        try:
            f = float(b)
        except (TypeError, ValueError) as e:
            raise EmqError(f"{what} {value!r}: bit-width {b!r} is not a number") from e
        if not f.is_integer():
            raise EmqError(f"{what} {value!r}: bit-width {b!r} is not an integer")
        out.append(int(f))
    return tuple(out)


def is_heldout(text: str) -> bool:
    """Held-out membership by a hash of the canonical config text (stable as the bench grows)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") % HELDOUT_MODULUS == 0


@dataclass(frozen=True)
class ConfigSpace:
    """Allowed bits per slot, pinned slots and activation bits for one layer map."""

    slot_names: tuple[str, ...]
    bits: tuple[int, ...] = DEFAULT_BITS
    pinned: Mapping[int, int] = field(default_factory=dict)
    act_bits: int = 8

    def __post_init__(self) -> None:
        if not self.bits:
            raise EmqError("allowed bits: give at least one bit-width, e.g. 2,3,4")
        bad = [b for b in self.bits if not 1 <= int(b) <= 8]
        if bad:
            raise EmqError(f"allowed bits: {bad[0]} is outside 1..8")
        if len(set(self.bits)) != len(self.bits):
            raise EmqError(f"allowed bits {list(self.bits)}: contains duplicates")
        object.__setattr__(self, "bits", tuple(sorted(int(b) for b in self.bits)))
        if not 1 <= self.act_bits <= 32:
            raise EmqError(f"activation bits {self.act_bits}: use 1..8 (or 32 for unquantized activations)")
        n = len(self.slot_names)
        for slot, b in self.pinned.items():
            if not 0 <= slot < n:
                raise EmqError(f"pinned slot {slot}: the model has slots 0..{n - 1}")
            if not 1 <= b <= 8:
                raise EmqError(f"pinned slot {slot}: bit-width {b} is outside 1..8")
        object.__setattr__(self, "pinned", dict(sorted((int(k), int(v)) for k, v in self.pinned.items())))

    @classmethod
    def for_layer_map(
        cls, layer_map: LayerMap, bits: Sequence[int] = DEFAULT_BITS, pinned: Mapping[int | str, int] | None = None, act_bits: int = 8
    ) -> ConfigSpace:
        """Pinned slots may be given by index or by slot name."""
        names = layer_map.slot_names
        resolved: dict[int, int] = {}
        for key, b in (pinned or {}).items():
            if isinstance(key, str) and not key.isdigit():
                if key not in names:
                    raise EmqError(f"pinned slot {key!r}: no such slot (see `emq layers`)")
                resolved[names.index(key)] = int(b)
            else:
                resolved[int(key)] = int(b)
        return cls(tuple(names), tuple(bits), resolved, act_bits)

    @property
    def num_slots(self) -> int:
        return len(self.slot_names)

    @property
    def free_slots(self) -> list[int]:
        return [i for i in range(self.num_slots) if i not in self.pinned]

    def slot_choices(self, slot: int) -> tuple[int, ...]:
        return (self.pinned[slot],) if slot in self.pinned else self.bits

    def validate(self, config: str | Sequence[int], what: str = "configuration") -> tuple[int, ...]:
        """Parse and check one configuration against this space."""
        bits = parse_config(config, what)
        if len(bits) != self.num_slots:
            raise EmqError(f"{what} {config_text(bits)}: {len(bits)} bit-widths, but the model has {self.num_slots} slots")
        for i, b in enumerate(bits):
            allowed = self.slot_choices(i)
            if b not in allowed:
                raise EmqError(f"{what} {config_text(bits)}: slot {i} ({self.slot_names[i]}) has {b} bits; allowed: {', '.join(map(str, allowed))}")
        return bits

    def uniform_configs(self) -> list[tuple[int, ...]]:
        """One configuration per allowed bit-width, with every free slot at that width."""
        return [tuple(self.pinned.get(i, b) for i in range(self.num_slots)) for b in self.bits]

    def to_json(self) -> dict:
        return {"slot_names": list(self.slot_names), "bits": list(self.bits), "pinned": {str(k): v for k, v in self.pinned.items()}, "act_bits": self.act_bits}

    @classmethod
    def from_json(cls, obj: dict) -> ConfigSpace:
        return cls(tuple(obj["slot_names"]), tuple(obj["bits"]), {int(k): int(v) for k, v in obj.get("pinned", {}).items()}, int(obj.get("act_bits", 8)))
