"""Configuration spaces: which bit-widths each slot may take, and the canonical config text.

A configuration is one weight bit-width per slot of a layer map. Its canonical text
("4,3,2,...") is the key in bench files and the input of the search / held-out split hash,
so the split of a configuration never changes when records are added.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from emq.errors import EmqError
from emq.layermap import LayerMap
from emq.specs import (
    DEFAULT_ACT_BITS,
    DEFAULT_BITS,
    check_act_bits,
    check_bit_set,
    check_weight_bits,
    config_text,
    parse_config,
    resolve_slot,
)

__all__ = ["DEFAULT_BITS", "ConfigSpace", "config_text", "is_heldout", "parse_config"]

HELDOUT_MODULUS = 5  # one configuration in five (by hash) is held out


def is_heldout(text: str) -> bool:
    """Held-out membership by a hash of the canonical config text (stable as the bench grows)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") % HELDOUT_MODULUS == 0


@dataclass(frozen=True)
class ConfigSpace:
    """Allowed bits per slot, pinned slots and activation bits for one layer map."""

    slot_names: tuple[str, ...]
    bits: tuple[int, ...] = DEFAULT_BITS
    pinned: Mapping[int, int] = field(default_factory=dict)
    act_bits: int = DEFAULT_ACT_BITS

    def __post_init__(self) -> None:
        object.__setattr__(self, "bits", check_bit_set(self.bits, "bits_allowed"))
        check_act_bits(self.act_bits)
        n = len(self.slot_names)
        for slot, b in self.pinned.items():
            if not 0 <= slot < n:
                raise EmqError(f"pinned slot {slot}: the model has slots 0..{n - 1}")
            check_weight_bits(b, "pins")
        object.__setattr__(self, "pinned", dict(sorted((int(k), int(v)) for k, v in self.pinned.items())))

    @classmethod
    def for_layer_map(
        cls,
        layer_map: LayerMap,
        bits: Sequence[int] = DEFAULT_BITS,
        pinned: Mapping[int | str, int] | None = None,
        act_bits: int = DEFAULT_ACT_BITS,
    ) -> ConfigSpace:
        """Pinned slots may be given by index or by slot name."""
        resolved = {
            resolve_slot(layer_map.slots, k, "pins", layer_map.model): int(b) for k, b in (pinned or {}).items()
        }
        return cls(tuple(layer_map.slot_names), tuple(bits), resolved, act_bits)

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
            raise EmqError(
                f"{what} {config_text(bits)}: {len(bits)} bit-widths, but the model has {self.num_slots} slots"
            )
        for i, b in enumerate(bits):
            allowed = self.slot_choices(i)
            if b not in allowed:
                raise EmqError(
                    f"{what} {config_text(bits)}: slot {i} ({self.slot_names[i]}) has {b} bits; "
                    f"allowed: {', '.join(map(str, allowed))}"
                )
        return bits

    def uniform_configs(self) -> list[tuple[int, ...]]:
        """One configuration per allowed bit-width, with every free slot at that width."""
        return [tuple(self.pinned.get(i, b) for i in range(self.num_slots)) for b in self.bits]

    def to_json(self) -> dict:
        return {
            "slot_names": list(self.slot_names),
            "bits": list(self.bits),
            "pinned": {str(k): v for k, v in self.pinned.items()},
            "act_bits": self.act_bits,
        }

    @classmethod
    def from_json(cls, obj: dict) -> ConfigSpace:
        return cls(
            tuple(obj["slot_names"]),
            tuple(obj["bits"]),
            {int(k): int(v) for k, v in obj.get("pinned", {}).items()},
            int(obj.get("act_bits", DEFAULT_ACT_BITS)),
        )
