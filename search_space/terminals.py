"""Turn NetworkStats into terminal values, per layer or packed over all layers at once.

Per-layer values follow the semantics of primitives.py: tensors [Bk, *shape], scalars [Bk]
with Bk = B for bit-dependent terminals and 1 otherwise.

The *packed* layout is what makes evaluation fast: each tensor terminal's layers are
flattened and concatenated into one [Bk, N] tensor with a segment id per element, and
scalars are [Bk, L]. One pass of a formula over the packed tensors computes every layer at
once (reductions become segment reductions), so a candidate costs one tree walk, not L.
Activation-shaped terminals keep only the first `act_samples` samples (recorded with the
proxy, so a loaded proxy sees exactly the same inputs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from emq.errors import EmqError

from .netstats import NetworkStats
from .primitives import MEASURED_TERMINALS, TERMINALS, InputT, OutputT, Scalar, WeightT, raw_sources

DEFAULT_ACT_SAMPLES = 4  # enough to characterise activations; cost grows linearly with it


def _check_stats(stats: NetworkStats, names: Sequence[str]) -> None:
    if not stats.layers:
        raise EmqError("statistics hold no layers: recompute them for a model with quantizable layers")
    if len(stats.layer_slot) != len(stats.layers):
        raise EmqError(f"statistics: {len(stats.layers)} layers but {len(stats.layer_slot)} layer_slot entries")
    raw = [r for r in TERMINALS if any(r in raw_sources(n) for n in names)]
    for layer in stats.layers:
        for n in raw:
            spec = TERMINALS[n]
            if spec.type is Scalar:
                continue
            t = getattr(layer, n)
            if spec.bit_dependent and t.shape[0] != len(stats.bits):
                raise EmqError(
                    f"statistics of layer {layer.name}: {n} has {t.shape[0]} bit rows, expected {len(stats.bits)} "
                    f"(bits {list(stats.bits)})"
                )


def available_terminals(stats: NetworkStats) -> tuple[str, ...]:
    """Every terminal these statistics can give: a measured-sensitivity one only when its measurement is attached."""
    carried = {r for r, key in MEASURED_TERMINALS.items() if stats.meta.get(key)}
    return tuple(n for n in TERMINALS if raw_sources(n) & set(MEASURED_TERMINALS) <= carried)


def layer_terminal(
    stats: NetworkStats,
    layer: int,
    name: str,
    *,
    act_samples: int = DEFAULT_ACT_SAMPLES,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """The value of terminal `name` for one layer, in the per-layer semantics."""
    spec = TERMINALS[name]
    if spec.derive is not None:
        return spec.derive(
            {n: layer_terminal(stats, layer, n, act_samples=act_samples, dtype=dtype) for n in spec.needs}
        )
    v = spec.raw(stats, layer) if spec.raw is not None else getattr(stats.layers[layer], name)
    if spec.type is Scalar:
        return torch.tensor(v, dtype=dtype) if spec.bit_dependent else torch.tensor([float(v)], dtype=dtype)
    t = v.to(dtype)
    if spec.type is WeightT:
        return t if spec.bit_dependent else t.unsqueeze(0)
    return t[:act_samples].unsqueeze(0)


@dataclass(frozen=True)
class Segments:
    """The layer of every packed element of one tensor type: contiguous runs, in layer order."""

    seg: torch.Tensor  # segment (layer) id per element [N]
    cnt: torch.Tensor  # elements per layer [L], in the packing dtype
    lengths: np.ndarray | None  # elements of each layer, for numpy's reduceat and repeat (None off the CPU)
    starts: np.ndarray | None  # first element of each layer

    @property
    def n(self) -> int:
        return int(self.cnt.shape[0])


@dataclass(kw_only=True)
class Packed:
    """Terminal values of a set of layers, packed (see module docstring)."""

    values: dict[str, torch.Tensor]  # terminal -> [Bk, N_type] or [Bk, L]
    seg: dict[type, torch.Tensor]  # tensor type -> segment (layer) id per element
    count: dict[type, torch.Tensor]  # tensor type -> elements per layer [L]
    layers: list[int]  # which stats layers, in order
    num_bits: int
    _segments: dict[type, Segments] | None = field(default=None, repr=False)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def segments(self) -> dict[type, Segments]:
        """Per tensor type, its segments with what reducing over them needs (built once)."""
        if self._segments is None:
            self._segments = {}
            for T in self.seg:
                lengths = self.count[T].numpy().astype(np.int64) if self.seg[T].device.type == "cpu" else None
                starts = None if lengths is None else np.concatenate([[0], np.cumsum(lengths)[:-1]])
                self._segments[T] = Segments(self.seg[T], self.count[T], lengths, starts)
        return self._segments


def pack(
    stats: NetworkStats,
    names: Sequence[str],
    layers: Sequence[int] | None = None,
    *,
    act_samples: int = DEFAULT_ACT_SAMPLES,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float64,
) -> Packed:
    """Pack the terminals `names` of `layers` (default: all) for one-pass evaluation."""
    _check_stats(stats, names)
    layers = list(range(len(stats.layers)) if layers is None else layers)
    B, L = len(stats.bits), len(layers)
    values: dict[str, torch.Tensor] = {}
    seg: dict[type, torch.Tensor] = {}
    count: dict[type, torch.Tensor] = {}
    for name in names:
        spec = TERMINALS[name]
        per = [layer_terminal(stats, i, name, act_samples=act_samples, dtype=dtype) for i in layers]
        if spec.type is Scalar:
            v = torch.stack(per, dim=1)  # [Bk, L]
        else:
            flat = [p.reshape(p.shape[0], -1) for p in per]
            v = torch.cat(flat, dim=1)
            if spec.type not in seg:
                sizes = torch.tensor([f.shape[1] for f in flat])
                seg[spec.type] = torch.repeat_interleave(torch.arange(L), sizes).to(device)
                count[spec.type] = sizes.to(device=device, dtype=dtype)
        if not bool(torch.isfinite(v).all()):
            bad = next(
                stats.layers[i].name for i, p in zip(layers, per, strict=True) if not bool(torch.isfinite(p).all())
            )
            raise EmqError(f"statistics of layer {bad}: {name} holds NaN or inf; recompute the statistics")
        values[name] = v.to(device).contiguous()
    for T in (WeightT, InputT, OutputT):
        if T in seg and seg[T].numel() == 0:
            raise EmqError(f"statistics hold empty {T.__name__} tensors")
    return Packed(values=values, seg=seg, count=count, layers=layers, num_bits=B)
