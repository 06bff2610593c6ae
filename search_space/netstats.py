"""The container of per-layer network statistics: the inputs (terminals) of every proxy.

Layout (all tensors float32, CPU unless moved):

- weight-shaped, per layer: ``W`` (weights), ``G`` (task-loss gradient of the mean loss),
  ``VG`` (data-free virtual gradient with the signed weights), ``H`` (Hutchinson Hessian
  diagonal), ``SG`` (Synflow's gradient dR/d|W| of the network linearised with absolute
  parameters), ``FD`` (diagonal empirical Fisher E_x[g_x^2] of per-sample gradients);
- activation-shaped, per layer: ``A`` (layer input), ``Y`` (layer output), ``GY`` (gradient
  w.r.t. the output), ``AE`` (activation quantization noise Q(A)-A at the activation bits);
  the leading dimension is the (possibly capped) sample count;
- bit-dependent, per layer: ``Q`` and ``E`` of shape [B, *W.shape] holding Q_b(W) and
  Q_b(W)-W for every b in ``NetworkStats.bits`` (same quantizer as the PTQ engine);
- scalars, per layer: ``trace`` (Tr H), ``eig`` (top Hessian eigenvalue), ``params``,
  ``macs``, ``out_channels``.

Layers are in the layer map's forward order, each named by its module name; ``layer_slot``
maps every layer to its bit slot.

On disk (`save_stats` / `load_stats`) the statistics are one torch file of plain tensors,
lists, strings and numbers, loadable with ``torch.load(weights_only=True)`` (no pickle code
runs), plus a content digest over every tensor and field: a truncated or altered file is
rejected, never trusted. Caches store float32 (format 2). Shipped bundles store the compact
format 4 (``compact=True``): every tensor as float16 divided by its largest magnitude (one
float32 scale per tensor, so gradients and Fisher values far below float16's smallest normal
number keep their relative precision), and ``E`` left out because it is ``Q - W`` (``Q`` is
kept: the exact zeros of the quantization grid matter to proxies that take sqrt or log of
it); then each float16 tensor's bytes are LZMA-compressed (lossless; ``Q`` lies on a few grid
points and shrinks to a third). Loading restores float32. A bundle is about a third of the
float32 file; `benchmarks/stats_compaction.py` measures how far each proxy's correlation moves
(only the float16 step can move it).

A shipped bundle leaves out the fields the model alone determines (``MODEL_FIELDS``: ``W``, ``VG``,
``SG``, recomputed exactly from the shipped weights in a second, so a third of a bundle never needs
storing) and may leave out the activation-shaped fields too (they take a second to recompute from
data that ships). ``meta["omitted"]`` lists what is left out; ``E`` of such a file is left out with
``W``. A partial file is read only with ``load_stats(path, partial=True)`` and completed before use
(`emq.search_space.stats.complete_stats`, `emq.search_space.shipped`).
"""

from __future__ import annotations

import json
import lzma
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from emq.errors import EmqError
from emq.fileio import atomic_write
from emq.hashing import tensor_digest

TENSOR_FIELDS = ("W", "G", "VG", "H", "A", "Y", "GY", "AE", "Q", "E", "SG", "FD")
ACTIVATION_FIELDS = ("A", "Y", "GY", "AE")  # what a partial (shipped) file may leave out: from the data
MODEL_FIELDS = ("W", "VG", "SG")  # what a partial file may leave out: from the model alone (data-free)
SCALAR_FIELDS = ("trace", "eig", "params", "macs", "out_channels")
FORMAT = "emq-stats/2"
COMPACT_FORMAT = "emq-stats/4"
DERIVED = ("E",)  # left out of compact files: E = Q_b(W) - W (Q is kept: its exact zeros matter to sqrt, log)


@dataclass(kw_only=True)
class LayerStats:
    name: str
    W: torch.Tensor
    G: torch.Tensor
    VG: torch.Tensor
    H: torch.Tensor
    A: torch.Tensor
    Y: torch.Tensor
    GY: torch.Tensor
    AE: torch.Tensor
    Q: torch.Tensor
    E: torch.Tensor
    trace: float
    eig: float
    params: int
    macs: int
    out_channels: int
    SG: torch.Tensor  # after the scalars, so positional constructions of format 1 fail loudly
    FD: torch.Tensor


@dataclass
class NetworkStats:
    bits: tuple[int, ...]
    layers: list[LayerStats]
    layer_slot: list[int]
    meta: dict = field(default_factory=dict)  # settings, hashes, seconds per statistic

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    @property
    def num_slots(self) -> int:
        return max(self.layer_slot) + 1 if self.layer_slot else 0

    @property
    def convergence(self) -> dict:
        """How the Hessian estimates converged (settings, probes, per-layer iterations and changes);
        {} if not recorded."""
        return dict(self.meta.get("hessian", {}).get("convergence", {}))

    @property
    def omitted(self) -> tuple[str, ...]:
        """Fields a partial file left out (empty tensors here); () for complete statistics."""
        return tuple(self.meta.get("omitted", ()))

    @property
    def omitted_from_data(self) -> tuple[str, ...]:
        """The left-out fields only calibration data can restore (activation fields)."""
        return tuple(f for f in self.omitted if f in ACTIVATION_FIELDS)

    @property
    def needs_data(self) -> bool:
        """Completing this partial file needs calibration data (it left out activation fields)."""
        return bool(self.omitted_from_data)


def select_bits(ns: NetworkStats, bits: tuple[int, ...]) -> NetworkStats:
    """The same statistics for a subset of their bit-widths (Q_b and E_b are per bit, independent)."""
    if tuple(bits) == tuple(ns.bits):
        return ns
    missing = sorted(set(bits) - set(ns.bits))
    if missing:
        raise EmqError(f"statistics hold bits {list(ns.bits)}, not {missing}")
    idx = [ns.bits.index(b) for b in bits]
    layers = [replace(layer, Q=layer.Q[idx], E=layer.E[idx] if layer.E.numel() else layer.E) for layer in ns.layers]
    return NetworkStats(tuple(bits), layers, list(ns.layer_slot), dict(ns.meta))


def omit_fields(ns: NetworkStats, fields: tuple[str, ...] = ACTIVATION_FIELDS) -> NetworkStats:
    """A partial copy without `fields` (stored empty) besides those already left out: activation
    fields for a bundle whose data ships, model fields for every bundle (E goes with W)."""
    unknown = set(fields) - set(ACTIVATION_FIELDS) - set(MODEL_FIELDS)
    if unknown:
        raise EmqError(f"only activation-shaped and model-determined fields may be left out, not {sorted(unknown)}")
    omitted = [f for f in TENSOR_FIELDS if f in set(fields) | set(ns.omitted) and f not in DERIVED]
    empty = {f: torch.empty(0) for f in omitted + (["E"] if "W" in omitted else [])}
    layers = [replace(layer, **empty) for layer in ns.layers]
    return NetworkStats(ns.bits, layers, list(ns.layer_slot), {**ns.meta, "omitted": omitted})


def _digest(tensors: dict[str, torch.Tensor], header: dict) -> str:
    keys = sorted(tensors)
    return tensor_digest((tensors[k] for k in keys), extra=json.dumps(header, sort_keys=True) + "|".join(keys))


def _compact(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float16 of t / max|t| and the float32 scale (1 for an all-zero tensor)."""
    scale = t.abs().max().to(torch.float32) if t.numel() else torch.tensor(1.0)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (t / scale).to(torch.float16), scale


def _pack(t: torch.Tensor) -> torch.Tensor:
    """A float16 tensor's bytes, LZMA-compressed, as a uint8 tensor (its shape goes in the header)."""
    return torch.frombuffer(bytearray(lzma.compress(t.numpy().tobytes())), dtype=torch.uint8)


def _unpack(packed: torch.Tensor, shape: list[int]) -> torch.Tensor:
    raw = np.frombuffer(lzma.decompress(packed.numpy().tobytes()), dtype=np.float16)
    return torch.from_numpy(raw.copy()).reshape(shape)


def save_stats(stats: NetworkStats, path: str | Path, compact: bool = False) -> Path:
    """Write statistics atomically (temp file + rename): a reader sees the old file or the new one.
    `compact` writes the bundle format (see the module docstring)."""
    path = Path(path)
    tensors = {
        f"{i}/{f}": getattr(layer, f).detach().cpu().contiguous()
        for i, layer in enumerate(stats.layers)
        for f in TENSOR_FIELDS
        if not (compact and f in DERIVED)
    }
    shapes = {}
    if compact:
        for key in list(tensors):
            half, tensors[f"{key}/scale"] = _compact(tensors[key])
            shapes[key] = list(half.shape)
            tensors[key] = _pack(half)
    header = {
        "format": COMPACT_FORMAT if compact else FORMAT,
        "bits": list(stats.bits),
        "layer_slot": list(stats.layer_slot),
        "names": stats.names,
        "scalars": [[float(getattr(layer, f)) for f in SCALAR_FIELDS] for layer in stats.layers],
        "meta": stats.meta,
        **({"shapes": shapes} if compact else {}),
    }
    payload = {"header": json.dumps(header), "tensors": tensors, "digest": _digest(tensors, header)}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))
    return path


def _expand(tensors: dict[str, torch.Tensor], shapes: dict[str, list[int]], i: int) -> dict[str, torch.Tensor]:
    """Layer i's float32 tensors of a compact file, derived fields restored."""
    out = {}
    for f in TENSOR_FIELDS:
        if f not in DERIVED:
            key = f"{i}/{f}"
            out[f] = _unpack(tensors[key], shapes[key]).to(torch.float32) * tensors[f"{key}/scale"]
    out["E"] = out["Q"] - out["W"].unsqueeze(0) if out["W"].numel() else torch.empty(0)  # W left out: E with it
    return out


def load_stats(path: str | Path, partial: bool = False) -> NetworkStats:
    """Read a statistics file written by `save_stats`; EmqError if it is missing, corrupt or foreign,
    or partial (fields left out) unless `partial`."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        header = json.loads(payload["header"])
        tensors = payload["tensors"]
        digest = payload["digest"]
    except FileNotFoundError as e:
        raise EmqError(f"{path}: no such statistics file") from e
    except Exception as e:  # torch/zip/json raise many types on damaged files
        raise EmqError(
            f"{path}: not a readable statistics file ({type(e).__name__}: {e}); delete it and recompute"
        ) from e
    if not isinstance(header, dict) or header.get("format") not in (FORMAT, COMPACT_FORMAT):
        raise EmqError(
            f"{path}: format {header.get('format') if isinstance(header, dict) else None!r} is not {FORMAT}; "
            "recompute the statistics"
        )
    if _digest(tensors, header) != digest:
        raise EmqError(f"{path}: content digest mismatch (the file is damaged); delete it and recompute")
    compact = header["format"] == COMPACT_FORMAT
    omitted = header["meta"].get("omitted") if isinstance(header.get("meta"), dict) else None
    if omitted and not partial:
        raise EmqError(
            f"{path}: partial statistics (without {', '.join(omitted)}); complete them with "
            "emq.search_space.stats.complete_stats"
        )
    layers = []
    for i, name in enumerate(header["names"]):
        scalars = dict(zip(SCALAR_FIELDS, header["scalars"][i], strict=True))
        fields = _expand(tensors, header["shapes"], i) if compact else {f: tensors[f"{i}/{f}"] for f in TENSOR_FIELDS}
        layers.append(
            LayerStats(
                name=name,
                **fields,
                trace=float(scalars["trace"]),
                eig=float(scalars["eig"]),
                params=int(scalars["params"]),
                macs=int(scalars["macs"]),
                out_channels=int(scalars["out_channels"]),
            )
        )
    return NetworkStats(tuple(header["bits"]), layers, list(header["layer_slot"]), header["meta"])
