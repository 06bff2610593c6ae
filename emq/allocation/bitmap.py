"""Bit maps: per-module weight bit-widths as JSON, the form deployment tools expect.

The file is keyed by module name and also carries the slot vector, size, BitOps and the
proxy's provenance. Loading checks it against a layer map and refuses, with the file and
field named, a map made for another model, unknown or missing modules, and tied modules
given different bits.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import EmqError
from ..fileio import atomic_write_text
from ..layermap import LayerMap
from ..specs import DEFAULT_ACT_BITS, WEIGHT_BITS_MAX, WEIGHT_BITS_MIN

FORMAT = "emq-bitmap/1"


def bitmap_json(
    layer_map: LayerMap,
    bits: Sequence[int],
    act_bits: int = DEFAULT_ACT_BITS,
    provenance: Mapping[str, Any] | None = None,
) -> dict:
    """The bit map document of a per-slot configuration."""
    bits = layer_map.validate(bits)
    return {
        "format": FORMAT,
        "model": layer_map.model,
        "input_size": layer_map.input_size,
        "modules": {layer.name: bits[s] for layer, s in zip(layer_map.layers, layer_map.layer_slot)},
        "slots": list(bits),
        "slot_names": layer_map.slot_names,
        "size_bytes": float(layer_map.size_bytes(bits)),
        "bitops": float(layer_map.bitops(bits, act_bits)),
        "act_bits": act_bits,
        "provenance": dict(provenance or {}),
    }


def save_bitmap(
    path: str | Path,
    layer_map: LayerMap,
    bits: Sequence[int],
    *,
    act_bits: int = DEFAULT_ACT_BITS,
    provenance: Mapping[str, Any] | None = None,
) -> dict:
    """Write the bit map of `bits` atomically; returns the document written."""
    doc = bitmap_json(layer_map, bits, act_bits, provenance)
    atomic_write_text(path, json.dumps(doc, indent=2) + "\n")
    return doc


def load_bitmap(path: str | Path, layer_map: LayerMap) -> tuple[int, ...]:
    """Read a bit map and return the per-slot configuration it means for `layer_map`."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise EmqError(f"bit map {path}: no such file") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EmqError(f"bit map {path}: not a readable JSON file ({e})") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise EmqError(f"bit map {path}: field 'format' must be {FORMAT!r}; write bit maps with `emq allocate`")
    if doc.get("model") != layer_map.model:
        raise EmqError(
            f"bit map {path}: made for model {doc.get('model')!r}, not {layer_map.model!r}; allocate again for "
            "this model"
        )
    modules = doc.get("modules")
    if not isinstance(modules, dict) or not modules:
        raise EmqError(f"bit map {path}: field 'modules' must map module names to bit-widths")
    names = [layer.name for layer in layer_map.layers]
    unknown = sorted(set(modules) - set(names))
    if unknown:
        raise EmqError(
            f"bit map {path}: modules {', '.join(unknown[:5])} are not quantizable layers of {layer_map.model} "
            f"(see `emq layers --model {layer_map.model}`)"
        )
    missing = [n for n in names if n not in modules]
    if missing:
        raise EmqError(f"bit map {path}: no bit-width for modules {', '.join(missing[:5])}")
    bits: list[int | None] = [None] * layer_map.num_slots
    for name, s in zip(names, layer_map.layer_slot):
        b = modules[name]
        if not isinstance(b, int) or isinstance(b, bool) or not WEIGHT_BITS_MIN <= b <= WEIGHT_BITS_MAX:
            raise EmqError(
                f"bit map {path}: modules.{name} = {b!r}; use an integer bit-width "
                f"in {WEIGHT_BITS_MIN}..{WEIGHT_BITS_MAX}"
            )
        if bits[s] is not None and bits[s] != b:
            raise EmqError(
                f"bit map {path}: modules {', '.join(layer_map.slots[s].modules)} share one bit slot but have "
                f"bits {bits[s]} and {b}"
            )
        bits[s] = b
    result = tuple(int(b) for b in bits)  # type: ignore[arg-type]
    if "slots" in doc and doc["slots"] != list(result):
        raise EmqError(
            f"bit map {path}: field 'slots' {doc['slots']!r:.200} disagrees with 'modules' {list(result)}; fix or "
            "drop 'slots'"
        )
    if "slot_names" in doc and doc["slot_names"] != list(layer_map.slot_names):
        raise EmqError(
            f"bit map {path}: field 'slot_names' {doc['slot_names']!r:.200} are not the slots of {layer_map.model} "
            f"({', '.join(layer_map.slot_names[:3])}, ...); fix or drop 'slot_names'"
        )
    return result
