"""Import the original MQ-Bench-101 data into a bench file.

Two source formats: the pickled dict {index: {'bit_cfg': "[4, 3, ...]", 'acc': float}}
and its text source of `bit_cfg:acc` lines. The pickle is read by an unpickler that
resolves no globals at all, so only plain dicts, lists, tuples, strings and numbers can
come out of it: a pickle that names any class or function is refused unexecuted.
"""

from __future__ import annotations

import io
import logging
import math
import pickle
import time
from collections.abc import Mapping
from contextlib import closing
from pathlib import Path
from typing import Any

import torch

from emq._version import __version__ as emq_version
from emq.errors import EmqError
from emq.fileio import atomic_write
from emq.specs import DEFAULT_ACT_BITS, DEFAULT_BITS, METRIC_ORIENTATION, ParameterError, config_text
from emq.target import resolve_target

from . import store
from .space import ConfigSpace

log = logging.getLogger(__name__)
FORMATS = ("mqbench101-pickle", "mqbench101-text")
MQBENCH101_CONFIGS = 425
# how MQ-Bench-101 was measured (EMQ, Dong et al., ICCV 2023, and its released data)
MQBENCH101_PROVENANCE = {
    "bench": "MQ-Bench-101",
    "network": "ResNet-18 (torchvision layout, 18 bit slots: each downsample conv tied to the block conv before it)",
    "data": "ImageNet (ILSVRC-2012): calibration from the training set, top-1 on the 50,000 validation images",
    "ptq": {
        "method": "AdaRound (layer-wise reconstruction)",
        "iterations": 20000,
        "temperature": "20 -> 2",
        "weights": "asymmetric, MSE-searched scale",
        "calibration_images": 1024,
        "weight_bits": [2, 3, 4],
        "act_bits": 8,
        "hardware": "one GPU per configuration",
    },
    "configurations": MQBENCH101_CONFIGS,
    "per_image_outcomes": False,
}
_PLAIN = (dict, list, tuple, str, int, float)


class _PlainUnpickler(pickle.Unpickler):
    """Refuses every global lookup: no class, function or module can be loaded."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(
            f"refused to load {module}.{name}: only plain dicts, lists, tuples, strings and numbers are allowed"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refused a persistent reference: only plain data is allowed")


def _check_plain(obj: Any, depth: int = 0) -> None:
    if depth > 8 or not isinstance(obj, _PLAIN) or isinstance(obj, bool):
        raise EmqError(f"unexpected value of type {type(obj).__name__} in the data")
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_plain(k, depth + 1)
            _check_plain(v, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _check_plain(v, depth + 1)


def load_pickle(path: Path) -> list[tuple[str, Any, Any]]:
    """(where, bit_cfg, acc) entries of an MQ-Bench-101 pickle, loaded without executing code."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise EmqError(f"{path}: cannot read ({e.strerror})") from e
    try:
        obj = _PlainUnpickler(io.BytesIO(raw)).load()
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        IndexError,
        KeyError,
        AttributeError,
        MemoryError,
    ) as e:
        raise EmqError(f"{path}: not a readable MQ-Bench-101 pickle ({type(e).__name__}: {e or 'truncated'})") from e
    try:
        _check_plain(obj)
    except EmqError as e:
        raise EmqError(f"{path}: {e}") from e
    if not isinstance(obj, dict) or not obj:
        raise EmqError(
            f"{path}: expected a non-empty dict {{index: {{'bit_cfg': ..., 'acc': ...}}}}, got {type(obj).__name__}"
        )
    out = []
    for key, entry in obj.items():
        if not isinstance(entry, dict) or "bit_cfg" not in entry or "acc" not in entry:
            raise EmqError(f"{path}: entry {key!r} must be a dict with 'bit_cfg' and 'acc'")
        out.append((f"entry {key!r}", entry["bit_cfg"], entry["acc"]))
    return out


def load_text(path: Path) -> list[tuple[str, Any, Any]]:
    """(where, bit_cfg, acc) entries of `bit_cfg:acc` lines; blank lines and # comments skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise EmqError(f"{path}: cannot read as UTF-8 text ({e})") from e
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        cfg, sep, acc = line.rpartition(":")
        if not sep or not cfg.strip():
            raise EmqError(f"{path}, line {n}: expected 'bit_cfg:acc', got {line[:60]!r}")
        out.append((f"line {n}", cfg.strip(), acc.strip()))
    if not out:
        raise EmqError(f"{path}: no 'bit_cfg:acc' lines found")
    return out


def _parse_entry(where: str, cfg: Any, acc: Any, *, space: ConfigSpace, path: Path) -> tuple[tuple[int, ...], float]:
    if isinstance(cfg, str) and (
        cfg.count("[") != cfg.count("]") or cfg.strip().startswith("[") != cfg.strip().endswith("]")
    ):
        raise EmqError(f"{path}, {where}: bit_cfg {cfg!r} is malformed (truncated?)")
    try:
        bits = space.validate(cfg, "bit_cfg")
    except EmqError as e:
        raise EmqError(f"{path}, {where}: {e}") from e
    try:
        value = float(acc)
    except (TypeError, ValueError) as e:
        raise EmqError(f"{path}, {where}: accuracy {acc!r} is not a number") from e
    if not math.isfinite(value) or not 0.0 <= value <= 100.0:
        raise EmqError(f"{path}, {where}: accuracy {acc!r} is not a percentage in 0..100")
    return bits, value


def bench_import(
    source: Path | str,
    fmt: str,
    out: Path | str,
    *,
    model: str = "resnet18",
    bits: tuple[int, ...] = DEFAULT_BITS,
    act_bits: int = DEFAULT_ACT_BITS,
    input_size: int | None = None,
    num_classes: int | None = None,
) -> dict[str, Any]:
    """Validate every entry, then write the bench file atomically; returns its `bench_info`."""
    from .query import bench_info

    source, out = Path(source), Path(out)
    if fmt not in FORMATS:
        raise ParameterError("fmt", fmt, f"use one of {', '.join(FORMATS)}")
    if out.exists():
        raise ParameterError("out", out, "the file exists; choose another file or delete it first")
    if not source.is_file():
        raise EmqError(f"{source}: no such file")
    entries = load_pickle(source) if fmt == "mqbench101-pickle" else load_text(source)
    if len(entries) != MQBENCH101_CONFIGS:
        log.warning(
            "%s: %d configurations; the full MQ-Bench-101 has %d (recorded as incomplete)",
            source,
            len(entries),
            MQBENCH101_CONFIGS,
        )
    lm = resolve_target(model, need_data=False, input_size=input_size, num_classes=num_classes).layer_map
    space = ConfigSpace.for_layer_map(lm, bits, None, act_bits)
    rows, seen = [], {}
    for where, cfg, acc in entries:
        b, value = _parse_entry(where, cfg, acc, space=space, path=source)
        text = config_text(b)
        if text in seen:
            raise EmqError(f"{source}, {where}: configuration {text} repeats {seen[text]}; remove the duplicate")
        seen[text] = where
        rows.append(
            {
                "idx": len(rows),
                "config": text,
                "top1": value,
                "size_bytes": float(lm.size_bytes(b)),
                "bitops": float(lm.bitops(b, act_bits)),
                "source": "mqbench101",
            }
        )
    meta: Mapping[str, Any] = {
        "schema_version": store.SCHEMA_VERSION,
        "kind": "import",
        "model": model,
        "imported_from": {"path": str(source), "format": fmt, "entries": len(rows)},
        "provenance": {
            **MQBENCH101_PROVENANCE,
            "complete": len(rows) == MQBENCH101_CONFIGS,
            "note": "statistics for proxies are computed with emq's own PTQ settings (MSE-clipped rounding of Q_b(W)); "
            "the bench's accuracies came from AdaRound as above",
        },
        "space": space.to_json(),
        "slots": [{"name": s.name, "modules": list(s.modules), "params": s.params, "macs": s.macs} for s in lm.slots],
        "allowed_bits": list(space.bits),
        "act_bits": act_bits,
        "fp_size_bytes": lm.fp_size_bytes,
        "metric_orientation": METRIC_ORIENTATION,
        "reliability": None,  # no per-image outcomes or repeats: not measurable
        "default_metric": "top1",
        "versions": {"emq": emq_version, "torch": torch.__version__},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }

    def write(tmp: str) -> None:
        with closing(store.connect(tmp)) as con:
            store.init_bench(con, meta, [])
            store.insert_records(con, rows)

    atomic_write(out, write)
    return bench_info(out)
