"""Q_b(W) of every (layer, bits) of one model, computed once: the PTQ engine and the
statistics both take rounded weights from here, so a proxy sees what the engine deploys.

Data-free methods (the default "mse") are cheap and kept in memory. Reconstruction methods
(GPTQ, AdaRound) reconstruct each layer against its *full-precision* calibration inputs, so
their result depends only on (model, calibration images, method, options, layer, bits): it
is cached on disk under `<cache root>/rounding/<key>.pt` (cache root as for the
statistics: $EMQ_CACHE_DIR, else ~/.cache/emq) and reused by every configuration, every
worker and every later run. A cache file carries the digest of its tensor; a file that
does not verify is reported and recomputed. Rounding runs on the device of the layers; the
cache holds CPU tensors under a key without the device, and a loaded entry is moved to the
layer's device.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from .errors import EmqError
from .fileio import atomic_write, cache_root
from .hashing import state_dict_digest, tensor_digest
from .quantizers import get_weight_quantizer
from .quantizers.base import LayerInputs

log = logging.getLogger(__name__)
FORMAT = 2  # 2: files carry emq.hashing.tensor_digest of their tensor


def rounding_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """`<cache root>/rounding` (emq.fileio.cache_root)."""
    return cache_root(cache_dir) / "rounding"


def collect_inputs(
    model: nn.Module, layers: Sequence[nn.Module], x: torch.Tensor, batch_size: int
) -> list[torch.Tensor]:
    """Each layer's full-precision inputs on `x`, in one pass of the model as it is (on the
    layers' device, where `x` is moved batch by batch)."""
    device = layers[0].weight.device if layers else x.device
    store: list[list[torch.Tensor]] = [[] for _ in layers]
    hooks = [
        m.register_forward_pre_hook(lambda mod, inp, i=i: store[i].append(inp[0].detach().clone()))
        for i, m in enumerate(layers)
    ]
    try:
        with torch.no_grad():
            for i in range(0, x.shape[0], batch_size):
                model(x[i : i + batch_size].to(device))
    finally:
        for h in hooks:
            h.remove()
    return [torch.cat(parts) for parts in store]


class RoundedWeights:
    """Rounded weights of `layers` (modules of `model`, named `names`) by one method.

    `model` must stay full precision: reconstruction inputs are taken from it on first need.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[nn.Module],
        names: Sequence[str],
        method: str,
        *,
        options: Mapping[str, Any] | None = None,
        symmetric: bool = False,
        calib: torch.Tensor | None = None,
        batch_size: int = 256,
        cache_dir: str | Path | None = None,
        use_cache: bool = True,
    ) -> None:
        self.quantizer = get_weight_quantizer(method, options)
        self.method = method
        self.model, self.layers, self.names = model, list(layers), list(names)
        self.fp = [m.weight.detach().clone() for m in self.layers]
        self.symmetric = symmetric
        self.calib = calib
        self.batch_size = batch_size
        self.dir = rounding_cache_dir(cache_dir)
        self.use_cache = use_cache and self.quantizer.needs_inputs
        self._mem: dict[tuple[int, int], torch.Tensor] = {}
        self._inputs: list[torch.Tensor] | None = None
        self._means: list[torch.Tensor] | None = None
        self._shifts: dict[tuple[int, int], torch.Tensor] = {}
        self._base_key: str | None = None
        self.seconds = 0.0  # spent computing (not loading) rounded weights
        self.hits = self.misses = 0
        if self.quantizer.needs_inputs and calib is None:
            raise ValueError(f"weight quantizer {method!r} reconstructs layer outputs: give calibration images")
        if self.use_cache:
            self._key(0, 0)  # fixes the key on the model as given (full precision), before anyone changes it

    def describe(self) -> dict[str, Any]:
        """The method, its full options and description: what a bench records."""
        return {
            "method": self.method,
            "options": dict(self.quantizer.params),
            "description": self.quantizer.description,
            "reconstruction": self.quantizer.needs_inputs,
            "calib_images": None if self.calib is None else int(self.calib.shape[0]),
        }

    def _key(self, layer: int, bits: int) -> str:
        if self._base_key is None:
            self._base_key = json.dumps(
                {
                    "format": FORMAT,
                    "method": self.method,
                    "options": self.quantizer.params,
                    "symmetric": self.symmetric,
                    "model": state_dict_digest(self.model),
                    "calib": tensor_digest([self.calib]),
                },
                sort_keys=True,
            )
        part = f"{self._base_key}|{self.names[layer]}|{bits}"
        return hashlib.sha256(part.encode()).hexdigest()[:32]

    def _path(self, layer: int, bits: int) -> Path:
        return self.dir / f"{self._key(layer, bits)}.pt"

    def _load(self, layer: int, bits: int) -> torch.Tensor | None:
        path = self._path(layer, bits)
        if not path.exists():
            return None
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            q = blob["weight"]
            ok = (
                blob.get("key") == path.stem
                and isinstance(q, torch.Tensor)
                and q.shape == self.fp[layer].shape
                and q.dtype == self.fp[layer].dtype
                and blob.get("digest") == tensor_digest([q])
            )
        except Exception as e:  # torch raises several types for damaged files
            ok, q = False, None
            log.debug("rounding cache %s unreadable: %s", path, e)
        if not ok:
            log.warning("rounding cache entry %s is corrupt (does not verify); recomputing it", path)
            return None
        return q.to(self.fp[layer].device)

    def _save(self, layer: int, bits: int, q: torch.Tensor) -> None:
        path = self._path(layer, bits)
        blob = {
            "weight": q.detach().cpu(),
            "digest": tensor_digest([q]),
            "key": path.stem,
            "layer": self.names[layer],
            "bits": bits,
            "method": self.method,
        }
        try:
            atomic_write(path, lambda tmp: torch.save(blob, tmp))
        except EmqError as e:
            log.warning("could not write the rounding cache (%s); continuing without it", e)

    def output_shift(self, layer: int, bits: int, rounded: torch.Tensor) -> torch.Tensor:
        """E[(Q_b(W) - W) x] per output channel over the full-precision calibration inputs:
        what bias correction subtracts (Nagel et al., 2019, empirical form)."""
        key = (layer, bits)
        shift = self._shifts.get(key)
        if shift is None:
            if self._means is None:
                inputs = (
                    self._inputs
                    if self._inputs is not None
                    else collect_inputs(self.model, self.layers, self.calib, self.batch_size)
                )
                self._means = [x.mean(0, keepdim=True) for x in inputs]
            out = LayerInputs(self.layers[layer], self._means[layer]).output(
                rounded - self.fp[layer]
            )  # linear: the mean input's output
            shift = out.mean(dim=tuple(d for d in range(out.dim()) if d != 1))
            self._shifts[key] = shift
        return shift

    def _layer_inputs(self, layer: int) -> LayerInputs:
        if self._inputs is None:
            self._inputs = collect_inputs(self.model, self.layers, self.calib, self.batch_size)
        return LayerInputs(self.layers[layer], self._inputs[layer])

    def compute(self, layer: int, bits: int) -> torch.Tensor:
        """Q_b(W) of one layer computed afresh (no cache read or write)."""
        t0 = time.perf_counter()
        if self.quantizer.needs_inputs:
            q = self.quantizer.quantize(self.fp[layer], bits, self.symmetric, self._layer_inputs(layer))
        else:
            q = self.quantizer.quantize(self.fp[layer], bits, self.symmetric)
        self.seconds += time.perf_counter() - t0
        return q

    def get(self, layer: int, bits: int) -> torch.Tensor:
        """Q_b(W) of one layer: memory, else the disk cache, else computed (and cached)."""
        key = (layer, bits)
        q = self._mem.get(key)
        if q is not None:
            return q
        q = self._load(layer, bits) if self.use_cache else None
        if q is None:
            self.misses += 1
            q = self.compute(layer, bits)
            if self.use_cache:
                self._save(layer, bits, q)
        else:
            self.hits += 1
        self._mem[key] = q
        return q

    def prepare(self, bits: Iterable[int], progress: bool = False) -> float:
        """Compute every layer at every bit-width now (a bench's one-off preparation); seconds spent."""
        t0 = time.perf_counter()
        todo = [(i, b) for b in bits for i in range(len(self.layers))]
        for i, b in tqdm(
            todo,
            desc=f"{self.method} rounding",
            unit="layer",
            disable=not progress or not self.quantizer.needs_inputs,
            leave=False,
        ):
            self.get(i, b)
        self._inputs = None  # the calibration activations are no longer needed
        return time.perf_counter() - t0
