"""Measured per-layer sensitivity: each bit slot quantized alone, its effect at the network output.

For every (slot s, bit b), slot s's weights are rounded at b bits by the PTQ settings' weight
quantizer (through `PTQEngine`, so emq.rounding's cache: the very weights the engine deploys),
every other slot's weights at `rest_bits` (8, as issue 25 defines the measurement; None keeps
them at full precision), and activations and BatchNorm are handled as the PTQ settings say
(BatchNorm re-estimated and activation ranges calibrated on the PTQ calibration draw, exactly
as `PTQEngine.prepare` does). Then, on calibration images (never test images), against the
full-precision network:

- ``kl``: mean KL(FP || quantized) of the output distributions;
- ``loss``: mean cross-entropy change (quantized minus FP) on the images' labels;
- ``nsr``: the output noise-to-signal power ratio sum||z_q - z_fp||^2 / sum||z_fp||^2 of the
  logits, i.e. 10^(-SQNR/10) (noise powers of independent layers add, SQNR in dB do not);
  ``sqnr_db`` = -10 log10(nsr) is reported beside it.

Higher is worse for all three tables. What makes it cheap:

- *prefix reuse*: a module call that has *finished* before the slot's first layer starts
  cannot depend on the slot, whatever the graph (its inputs were computed before it ran); in a
  residual block the skip branch carries such a finished output, so this holds for residual
  graphs too. One recorded forward of the baseline configuration keeps the outputs of those
  calls; a single-slot run replaces each outermost finished call by a clone of its recorded
  output (clones, since parents may add to them in place, e.g. ``out += identity``; a call
  that returned its own input, an in-place module, writes the value into that input again) and
  skips its inside, so nothing in front of the slot is recomputed. Modules with parameters or
  buffers called more than once per forward (shared weights, a reused BatchNorm) would see only
  part of their calls: prefix reuse is then switched off and every run is the full network
  (recorded in meta). A replayed call must be the recorded module, else the forward has
  data-dependent control flow and the run stops with an error;
- *bits batched*: one recording serves every bit of every slot; BatchNorm and activation
  ranges of the calls in front of the slot are the baseline's and are never re-estimated;
- *images sized by reliability*: images are added in doubling chunks until the split-half
  reliability (Spearman-Brown corrected, halves by image source) of the KL table's ranking of
  random configurations reaches `target_reliability`, or the calibration pool is used up.

The result is cached on disk under `<cache root>/sensitivity` keyed by weights, data, bits, PTQ
and sensitivity settings (device excluded), written atomically with a content digest.
Its cost is reported in seconds and in PTQ-equivalent evaluations: seconds of one
`PTQEngine.evaluate` of the baseline configuration on the target's test split (rounded weights
already cached, full-precision reference already computed), measured in the same run; only
its time is used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import nn

from .datasplits import DataSplits, calibration_half_mask
from .errors import EmqError
from .fileio import atomic_write_text, cache_root
from .hashing import state_dict_digest, tensor_digest
from .quant import PTQEngine, PTQSettings
from .specs import DEFAULT_BITS, UNQUANTIZED_ACT_BITS, ParameterError, check_bit_set, check_weight_bits

if TYPE_CHECKING:
    from .target import Target  # for annotations only: emq.target would import torchvision with the models

log = logging.getLogger(__name__)

FORMAT = "emq-sensitivity/1"
METRICS = ("kl", "loss", "nsr")
RELIABILITY_CONFIGS = 1000  # random configurations whose ranking the split-half reliability measures


@dataclass(frozen=True)
class SensitivitySettings:
    """How the measurement is made; every field is part of the cache key."""

    rest_bits: int | None = 8  # weight bits of every other slot (issue 25: "every other slot at 8"); None = FP
    min_images: int = 64  # first chunk of calibration images
    max_images: int = 1024  # never more (the calibration pool may hold fewer)
    target_reliability: float = 0.99  # of the KL table's configuration ranking, split-half + Spearman-Brown
    seed: int = 0  # image order and the split of sources into halves
    prefix_reuse: bool = True  # False: every single-slot run is the whole network (the reference)

    def __post_init__(self) -> None:
        if self.rest_bits is not None:
            check_weight_bits(self.rest_bits, "rest_bits")
        if int(self.min_images) < 2:
            raise ParameterError("min_images", self.min_images, "use at least 2 (one image per half)")
        if self.max_images < self.min_images:
            raise ParameterError("max_images", self.max_images, f"use at least min_images ({self.min_images})")
        if not 0 < self.target_reliability <= 1:
            raise ParameterError("target_reliability", self.target_reliability, "use a number in (0, 1]")

    def key_json(self) -> dict:
        """The fields that change the numbers (prefix reuse does not: it is exact)."""
        return {k: v for k, v in asdict(self).items() if k != "prefix_reuse"}


@dataclass
class Sensitivity:
    """Per-(slot, bit) tables [S, B] of the three measures, and how they were measured."""

    bits: tuple[int, ...]
    tables: dict[str, np.ndarray]  # "kl", "loss", "nsr" -> [S, B], higher = worse
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def sqnr_db(self) -> np.ndarray:
        return -10.0 * np.log10(np.maximum(self.tables["nsr"], 1e-300))

    def table(self, metric: str) -> np.ndarray:
        if metric not in self.tables:
            raise EmqError(f"sensitivity metric {metric!r}: use one of {', '.join(METRICS)}")
        return self.tables[metric]

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "bits": list(self.bits),
            "tables": {k: v.tolist() for k, v in self.tables.items()},
            "meta": self.meta,
        }

    @classmethod
    def from_json(cls, blob: dict) -> Sensitivity:
        tables = {k: np.asarray(blob["tables"][k], dtype=np.float64) for k in METRICS}
        return cls(tuple(int(b) for b in blob["bits"]), tables, dict(blob["meta"]))

    def summary(self) -> dict:
        """What `emq stats` and `emq score` print: tables per slot, images, reliability, cost."""
        m = self.meta
        return {
            "bits": list(self.bits),
            "rest_bits": m["settings"]["rest_bits"],
            "images": m["images"],
            "reliability": m["reliability"],
            "single_slot_evaluations": m["single_slot_evaluations"],
            "prefix_reuse": m["prefix_reuse"],
            "seconds": m["seconds"],
            "rounding_seconds": m["rounding_seconds"],
            "ptq_evaluation_seconds": m["ptq_evaluation_seconds"],
            "ptq_equivalents": m["ptq_equivalents"],
            "cache": m.get("cache"),
            "slots": [
                {
                    "slot": s,
                    "kl": dict(zip(map(str, self.bits), self.tables["kl"][s].tolist(), strict=True)),
                    "loss": dict(zip(map(str, self.bits), self.tables["loss"][s].tolist(), strict=True)),
                    "sqnr_db": dict(zip(map(str, self.bits), self.sqnr_db[s].tolist(), strict=True)),
                }
                for s in range(self.tables["kl"].shape[0])
            ],
        }


# ----------------------------------------------------------------------------- prefix replay


class _Replay:
    """Records a forward's module calls once and replays the calls in front of a slot.

    Calls are numbered in pre-order per forward of the root; `end[i]` is the number of the
    first call after call i's subtree, so call i finished before call t started iff end[i] <= t.
    """

    def __init__(self, root: nn.Module) -> None:
        self.root = root
        self.modules = [m for _, m in root.named_modules() if m is not root]
        self.counter = 0
        self.batch = -1  # forwards of the root since the last `start`; calls are stored per (batch, call)
        self.mode = "off"  # "structure" | "record" | "replay" | "off"
        self.module_of: list[nn.Module] = []
        self.parent: list[int] = []
        self.end: list[int] = []
        self.tensor_out: list[bool] = []
        self.aliases_input: list[bool] = []
        self.keep: set[int] = set()
        self.stored: dict[tuple[int, int], torch.Tensor] = {}
        self.frontier: set[int] = set()
        self._stack: list[int] = []
        self._patched: list[nn.Module] = []

    def __enter__(self) -> _Replay:
        for m in self.modules:
            m.forward = self._wrap(m, m.forward)  # an instance attribute shadows the class's forward
            self._patched.append(m)
        self.root.forward = self._wrap_root(self.root.forward)
        self._patched.append(self.root)
        return self

    def __exit__(self, *exc: object) -> None:
        for m in self._patched:
            del m.forward
        self._patched.clear()

    def _wrap_root(self, forward):
        def run(*args, **kwargs):
            self.counter = 0
            self.batch += 1
            self._stack.clear()
            return forward(*args, **kwargs)

        return run

    def _wrap(self, module: nn.Module, forward):
        def run(*args, **kwargs):
            i = self.counter
            self.counter += 1
            if self.mode == "replay" and i in self.frontier:
                if self.module_of[i] is not module:
                    raise EmqError(
                        "sensitivity prefix reuse: the model's sequence of module calls changed between runs "
                        "(data-dependent control flow); measure with prefix_reuse=False"
                    )
                self.counter = self.end[i]
                value = self.stored[(self.batch, i)]
                if self.aliases_input[i] and args and isinstance(args[0], torch.Tensor):
                    return args[0].copy_(value)
                return value.clone()
            if self.mode == "structure":
                self.module_of.append(module)
                self.parent.append(self._stack[-1] if self._stack else -1)
                self.end.append(-1)
                self.tensor_out.append(False)
                self.aliases_input.append(False)
            self._stack.append(i)
            try:
                out = forward(*args, **kwargs)
            finally:
                self._stack.pop()
            if self.mode == "structure":
                self.end[i] = self.counter
                self.tensor_out[i] = isinstance(out, torch.Tensor)
                self.aliases_input[i] = bool(args) and out is args[0]
            elif self.mode == "record" and i in self.keep:
                self.stored[(self.batch, i)] = out.detach().clone()
            return out

        return run

    def learn(self, x: torch.Tensor) -> None:
        """One forward on `x` (a couple of images) to learn the call tree."""
        self.mode = "structure"
        try:
            with torch.no_grad():
                self.root(x)
        finally:
            self.mode = "off"

    def first_call(self, module: nn.Module) -> int | None:
        return next((i for i, m in enumerate(self.module_of) if m is module), None)

    def stateful_reused(self) -> list[int]:
        """Calls of modules with parameters or buffers that are called more than once."""
        count: dict[int, int] = {}
        for m in self.module_of:
            count[id(m)] = count.get(id(m), 0) + 1
        stateful = {
            id(m)
            for m in self.module_of
            if any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False))
        }
        return [i for i, m in enumerate(self.module_of) if count[id(m)] > 1 and id(m) in stateful]

    def frontier_before(self, start: int) -> set[int]:
        """The outermost calls that finished before call `start` began and returned a tensor."""
        out = set()
        for i in range(start):
            if self.end[i] > start or not self.tensor_out[i]:
                continue
            p = self.parent[i]
            if p >= 0 and self.end[p] <= start and self.tensor_out[p]:
                continue  # its parent is replayed whole
            out.add(i)
        return out


# ----------------------------------------------------------------------------- measurement


@dataclass
class _State:
    """BatchNorm buffers and activation ranges of the calls behind one slot, after calibration."""

    bn: dict[int, dict[str, torch.Tensor]]
    act: dict[int, tuple[torch.Tensor, torch.Tensor]]


class _Measurement:
    """Single-slot runs of one engine: calibration (pass 1) per (slot, bit), then image chunks (pass 2)."""

    def __init__(
        self, engine: PTQEngine, bits: tuple[int, ...], settings: SensitivitySettings, replay: _Replay
    ) -> None:
        self.engine, self.bits, self.s, self.replay = engine, bits, settings, replay
        lm = engine.layer_map
        self.slot_layers = [[i for i, s in enumerate(lm.layer_slot) if s == slot] for slot in range(lm.num_slots)]
        self.rest = [settings.rest_bits] * len(engine.layers)
        first = {id(m): replay.first_call(m) for m in [*engine.layers, *engine.bns]}
        self.reuse = settings.prefix_reuse and not replay.stateful_reused()
        self.start = []
        for layers in self.slot_layers:
            calls = [first[id(engine.layers[i])] for i in layers if first[id(engine.layers[i])] is not None]
            self.start.append(min(calls) if calls and self.reuse else 0)
        self.frontiers = [replay.frontier_before(t) for t in self.start]
        # layers and BatchNorms behind each slot (first called at or after its start) get their own state
        never = len(replay.module_of)
        self.act_behind = [
            [i for i, m in enumerate(engine.layers) if (first[id(m)] if first[id(m)] is not None else never) >= t]
            for t in self.start
        ]
        self.bn_behind = [
            [k for k, m in enumerate(engine.bns) if (first[id(m)] if first[id(m)] is not None else never) >= t]
            for t in self.start
        ]
        ptq = engine.settings
        self.quant_acts = ptq.act_bits < UNQUANTIZED_ACT_BITS
        self.reestimate = ptq.bn == "reestimate" and bool(engine.bns)
        self.base_bn: list[dict[str, torch.Tensor]] = []
        self.base_act: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.states: dict[tuple[int, int], _State] = {}

    # -- configuration state

    def _set_baseline(self) -> None:
        """Every layer at `rest_bits`, BatchNorm and activation ranges of the baseline calibration."""
        e = self.engine
        for i in range(len(e.layers)):
            e.set_layer(i, self.rest[i])
        for k in range(len(e.bns)):
            self._base_bn(k)
        for i in range(len(e.act)):
            self._base_act(i)

    def _base_bn(self, k: int) -> None:
        bn = self.engine.bns[k]
        bn.load_state_dict(self.base_bn[k])
        bn.eval()

    def _base_act(self, i: int) -> None:
        a = self.engine.act[i]
        a.lo, a.hi = self.base_act[i][0].clone(), self.base_act[i][1].clone()
        a.bits = self.engine.settings.act_bits
        a.mode = "quant" if self.quant_acts else "off"

    def _restore(self, slot: int) -> None:
        """Back to the baseline after a run of `slot` (only the slot and what lies behind it changed)."""
        for i in self.slot_layers[slot]:
            self.engine.set_layer(i, self.rest[i])
        for k in self.bn_behind[slot]:
            self._base_bn(k)
        for i in self.act_behind[slot]:
            self._base_act(i)

    def _forward(self, x: torch.Tensor, mode: str, slot: int | None = None) -> torch.Tensor:
        """The network on `x` in batches of the PTQ batch size. mode "record": keep the outputs the
        replays need; "replay": the calls in front of `slot` replayed; "off": plain."""
        e, r = self.engine, self.replay
        if mode == "record":
            r.keep = set().union(*self.frontiers) if self.reuse else set()
            r.stored = {}
        r.frontier = self.frontiers[slot] if slot is not None else set()
        r.mode, r.batch = mode, -1
        bs = e.settings.batch_size
        try:
            with torch.no_grad():
                return torch.cat([e.work(x[i : i + bs].to(e.device)) for i in range(0, x.shape[0], bs)])
        finally:
            r.mode = "off"

    # -- pass 1: BatchNorm re-estimation and activation ranges, per (slot, bit)

    def calibrate(self) -> None:
        """The baseline's calibration (as PTQEngine.prepare), then each (slot, bit)'s behind the slot."""
        e = self.engine
        e.prepare(None)
        for i in range(len(e.layers)):
            e.set_layer(i, self.rest[i])
        e._prepare_bn_and_acts(self.quant_acts)
        self.base_bn = [{k: v.clone() for k, v in bn.state_dict().items()} for bn in e.bns]
        self.base_act = [(a.lo.clone(), a.hi.clone()) for a in e.act]
        if not (self.reestimate or self.quant_acts):
            return
        calib = e.calib[0]
        self._set_baseline()
        for a in e.act:  # PTQEngine's calibration pass observes every layer input, quantizing none
            a.mode = "observe" if self.quant_acts else "off"
        if self.reestimate:
            for bn in e.bns:
                bn.train()
        self._forward(calib, "record")
        for bn in e.bns:
            bn.eval()
        for slot in range(len(self.slot_layers)):
            for b in self.bits:
                for i in self.slot_layers[slot]:
                    e.set_layer(i, b)
                for i in self.act_behind[slot]:
                    e.act[i].reset()
                    e.act[i].mode = "observe" if self.quant_acts else "off"
                if self.reestimate:
                    for k in self.bn_behind[slot]:
                        bn = e.bns[k]
                        bn.reset_running_stats()
                        bn.momentum = None  # cumulative average over calibration batches, as PTQEngine
                        bn.train()
                self._forward(calib, "replay", slot)
                for k in self.bn_behind[slot]:
                    e.bns[k].eval()
                self.states[(slot, b)] = _State(
                    {k: {n: v.clone() for n, v in e.bns[k].state_dict().items()} for k in self.bn_behind[slot]},
                    {i: (e.act[i].lo.clone(), e.act[i].hi.clone()) for i in self.act_behind[slot]},
                )
                self._restore(slot)
                for i in self.act_behind[slot]:
                    e.act[i].mode = "observe" if self.quant_acts else "off"
        self.replay.stored = {}
        self._set_baseline()

    def _load_state(self, slot: int, b: int) -> None:
        e, st = self.engine, self.states.get((slot, b))
        if st is None:
            return
        for k, sd in st.bn.items():
            e.bns[k].load_state_dict(sd)
        for i, (lo, hi) in st.act.items():
            e.act[i].lo, e.act[i].hi = lo, hi

    # -- pass 2: one chunk of evaluation images

    def evaluate_chunk(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, np.ndarray]:
        """Per image of the chunk: KL, CE change and noise power per (slot, bit); signal power."""
        e = self.engine
        e.prepare(None)
        fp = self._forward(x, "off").double()
        fp_logp = F.log_softmax(fp, dim=1)
        yd = y.to(e.device)
        fp_ce = F.nll_loss(fp_logp, yd, reduction="none")
        S, B, n = len(self.slot_layers), len(self.bits), x.shape[0]
        kl, dl, noise = (np.zeros((n, S, B)) for _ in range(3))
        self._set_baseline()
        self._forward(x, "record")
        for slot in range(S):
            for j, b in enumerate(self.bits):
                for i in self.slot_layers[slot]:
                    e.set_layer(i, b)
                self._load_state(slot, b)
                z = self._forward(x, "replay", slot).double()
                self._restore(slot)
                logp = F.log_softmax(z, dim=1)
                kl[:, slot, j] = F.kl_div(logp, fp_logp, log_target=True, reduction="none").sum(1).cpu().numpy()
                dl[:, slot, j] = (F.nll_loss(logp, yd, reduction="none") - fp_ce).cpu().numpy()
                noise[:, slot, j] = (z - fp).pow(2).sum(1).cpu().numpy()
        self.replay.stored = {}
        return {"kl": kl, "loss": dl, "noise": noise, "signal": fp.pow(2).sum(1).cpu().numpy()}


def _tables(per: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "kl": per["kl"][rows].mean(0),
        "loss": per["loss"][rows].mean(0),
        "nsr": per["noise"][rows].sum(0) / max(float(per["signal"][rows].sum()), 1e-300),
    }


def split_half(per: dict[str, np.ndarray], halves: np.ndarray, seed: int) -> dict[str, float | None]:
    """Spearman-Brown corrected split-half reliability of each table's ranking of random configurations."""
    a, b = np.flatnonzero(halves == 0), np.flatnonzero(halves == 1)
    if len(a) == 0 or len(b) == 0:
        return {k: None for k in METRICS}
    ta, tb = _tables(per, a), _tables(per, b)
    S, B = ta["kl"].shape
    idx = np.random.default_rng(seed).integers(0, B, size=(RELIABILITY_CONFIGS, S))
    rows = np.arange(S)[None, :]
    out: dict[str, float | None] = {}
    for k in METRICS:
        sa, sb = ta[k][rows, idx].sum(1), tb[k][rows, idx].sum(1)
        r = spearmanr(sa, sb).statistic if np.ptp(sa) > 0 and np.ptp(sb) > 0 else float("nan")
        # Spearman-Brown for a positive half correlation; a negative one (no reliability) is reported as it is
        out[k] = None if not math.isfinite(r) else float(2 * r / (1 + r)) if r > 0 else float(r)
    return out


def _image_pool(data: DataSplits, ptq: PTQSettings, seed: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """The calibration images the PTQ settings draw from (their half of the sources), in a seeded
    order, with each image's split half (by source: renders of one source share a half)."""
    x, y = data.calib_pool
    sources = data.calib_sources if data.calib_sources is not None else torch.arange(x.shape[0])
    if ptq.calib_half is not None:
        keep = calibration_half_mask(data.calib_sources, x.shape[0], ptq.calib_half)
        x, y, sources = x[keep], y[keep], sources[keep]
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(x.shape[0], generator=g)
    uniq = torch.unique(sources)
    half_of = dict(zip(uniq[torch.randperm(len(uniq), generator=g)].tolist(), [0, 1] * len(uniq), strict=False))
    halves = np.array([half_of[int(s)] for s in sources[order]], dtype=np.int64)
    return x[order], y[order], halves


def _chunks(n: int, first: int) -> list[tuple[int, int]]:
    """Doubling chunks [0, first), [first, 2 first), [2 first, 4 first), ... up to n."""
    out, lo, hi = [], 0, min(first, n)
    while lo < n:
        out.append((lo, hi))
        lo, hi = hi, min(n, 2 * hi)
    return out


def cache_key(target: Target, *, bits: tuple[int, ...], ptq: PTQSettings, s: SensitivitySettings) -> str:
    """The cache entry's name: what the tables depend on (weights, calibration pool, bits, settings,
    layers), not the target's name nor the device, so a renamed or moved model hits the same entry."""
    data, layer_map = target.require_data(), target.layer_map
    x, y = data.calib_pool
    parts = {
        "format": FORMAT,
        "weights": state_dict_digest(target.model),
        "data": tensor_digest([x, y] + ([data.calib_sources] if data.calib_sources is not None else [])),
        "bits": list(bits),
        "ptq": ptq.to_json(),
        "settings": s.key_json(),
        "layers": [layer.name for layer in layer_map.layers],
        "layer_slot": list(layer_map.layer_slot),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def _blob_digest(blob: dict) -> str:
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def _load(path: Path, key: str) -> Sensitivity | None:
    try:
        blob = json.loads(path.read_text(encoding="utf-8"))
        digest = blob.pop("digest")
        if blob.get("format") != FORMAT or blob.get("key") != key or _blob_digest(blob) != digest:
            raise ValueError("does not verify")
        return Sensitivity.from_json(blob)
    except FileNotFoundError:
        return None
    except Exception as e:  # json, key and shape errors of a damaged file
        log.warning("sensitivity cache entry %s is unreadable (%s); recomputing it", path, e)
        return None


def _save(path: Path, key: str, result: Sensitivity) -> None:
    blob = {**result.to_json(), "key": key}
    blob["meta"] = {k: v for k, v in blob["meta"].items() if k != "cache"}
    blob["digest"] = _blob_digest(blob)
    try:
        atomic_write_text(path, json.dumps(blob) + "\n")
    except EmqError as e:
        log.warning("could not write the sensitivity cache (%s); continuing without it", e)


def measure_sensitivity(
    target: Target,
    *,
    bits: Sequence[int] = DEFAULT_BITS,
    ptq: PTQSettings | None = None,
    settings: SensitivitySettings | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    device: str | torch.device = "cpu",
) -> Sensitivity:
    """The per-(slot, bit) sensitivity tables of a model, from the cache when present (see module docstring)."""
    bits = check_bit_set(bits, "bits")
    ptq = ptq or PTQSettings()
    s = settings or SensitivitySettings()
    path = None
    key = cache_key(target, bits=bits, ptq=ptq, s=s)
    if use_cache:
        path = cache_root(cache_dir) / "sensitivity" / f"{key}.json"
        t0 = time.perf_counter()
        hit = _load(path, key)
        if hit is not None:
            hit.meta["cache"] = {"key": key, "path": str(path), "hit": True, "load_seconds": time.perf_counter() - t0}
            return hit
    result = _compute(target, bits=bits, ptq=ptq, s=s, cache_dir=cache_dir, device=device)
    if path is not None:
        _save(path, key, result)
        result.meta["cache"] = {"key": key, "path": str(path), "hit": False}
    return result


def _compute(
    target: Target,
    *,
    bits: tuple[int, ...],
    ptq: PTQSettings,
    s: SensitivitySettings,
    cache_dir: str | Path | None,
    device: str | torch.device,
) -> Sensitivity:
    t_start = time.perf_counter()
    engine = PTQEngine(target, ptq, cache_dir=cache_dir, device=device)
    data = engine.data
    t0 = time.perf_counter()
    for b in sorted({*bits, *([s.rest_bits] if s.rest_bits is not None else [])}):
        for i in range(len(engine.layers)):
            engine.quantized_weight(i, b)
    rounding_seconds = time.perf_counter() - t0
    x, y, halves = _image_pool(data, ptq, s.seed)
    n_max = min(s.max_images, x.shape[0])
    if n_max < 2:
        raise EmqError(
            f"data {data.name}: the calibration pool holds {x.shape[0]} images; sensitivity needs at least 2"
        )
    with _Replay(engine.work) as replay:
        replay.learn(x[:2].to(engine.device))
        m = _Measurement(engine, bits, s, replay)
        m.calibrate()
        parts: list[dict[str, np.ndarray]] = []
        trajectory = []
        for lo, hi in _chunks(n_max, min(s.min_images, n_max)):
            parts.append(m.evaluate_chunk(x[lo:hi], y[lo:hi]))
            per = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            rel = split_half(per, halves[:hi], s.seed)
            trajectory.append({"images": hi, **rel})
            log.info("sensitivity on %d images: split-half reliability %s", hi, rel)
            if rel["kl"] is not None and rel["kl"] >= s.target_reliability:
                break
    n = trajectory[-1]["images"]
    tables = _tables(per, np.arange(n))
    seconds = time.perf_counter() - t_start
    # the cost unit: one PTQ evaluation of a configuration on the test split, measured now
    engine._fp_reference()
    t0 = time.perf_counter()
    engine.evaluate([s.rest_bits if s.rest_bits is not None else max(bits)] * target.layer_map.num_slots)
    eval_seconds = time.perf_counter() - t0
    for k, t in tables.items():
        if not np.isfinite(t).all():
            raise EmqError(f"sensitivity table {k} holds NaN or infinite values: check the model and calibration data")
    meta = {
        "settings": asdict(s),
        "ptq": ptq.to_json(),
        "images": n,
        "pool_images": int(x.shape[0]),
        "reliability": trajectory[-1] | {"target": s.target_reliability, "metric": "kl"},
        "trajectory": trajectory,
        "single_slot_evaluations": len(m.slot_layers) * len(bits),
        "prefix_reuse": m.reuse,
        "seconds": seconds,
        "rounding_seconds": rounding_seconds,
        "ptq_evaluation_seconds": eval_seconds,
        "ptq_evaluation_test_images": len(data.test),  # type: ignore[arg-type]
        "ptq_equivalents": (seconds - rounding_seconds) / eval_seconds if eval_seconds > 0 else None,
        "device": str(engine.device),
    }
    return Sensitivity(bits, tables, meta)


def middle_bit(bits: Sequence[int]) -> int:
    """The middle bit-width of a bit set (the upper middle of an even one): 3 of {2, 3, 4}."""
    return sorted(bits)[len(bits) // 2]


def in_context(bits: Sequence[int]) -> SensitivitySettings:
    """The measurement in context: every other slot at the middle bit-width of `bits` instead of 8, so a
    slot's table is its effect inside a typical mixed configuration (`layer-kl-mid`, terminal MKLM)."""
    return SensitivitySettings(rest_bits=middle_bit(bits))


def _stats_keys(bits: Sequence[int]) -> dict[str, SensitivitySettings]:
    """Where statistics keep each measurement they can carry (NetworkStats.meta), with its default settings."""
    from .search_space.primitives import MEASURED_KEY, MEASURED_MID_KEY

    return {MEASURED_KEY: SensitivitySettings(), MEASURED_MID_KEY: in_context(bits)}


def stats_key(settings: SensitivitySettings | None, bits: Sequence[int]) -> str | None:
    """The statistics' meta entry for a measurement with `settings` (default: the default ones) at `bits`,
    by the bits of the other slots (8, or the middle bit-width); None for one statistics do not carry."""
    rest = (settings or SensitivitySettings()).rest_bits
    return next((k for k, v in _stats_keys(bits).items() if v.rest_bits == rest), None)


def context_key(settings: SensitivitySettings | None = None) -> Any:
    """Where a proxy context keeps the sensitivity measured with `settings` (default: the default ones)."""
    return "sensitivity" if settings is None or settings == SensitivitySettings() else ("sensitivity", settings)


def context_sensitivity(ctx: Any, settings: SensitivitySettings | None = None) -> Sensitivity:
    """The sensitivity of a proxy context's target at its bits and PTQ settings, measured with `settings`
    (default: the default ones), once per context: the one its statistics carry (a shipped bundle's) when
    it matches, else measured (cached)."""
    key = context_key(settings)
    hit = ctx.cache.get(key)
    if hit is None:
        ptq = ctx.settings or PTQSettings()
        hit = stored_sensitivity(ctx.stats, ctx.bits, ptq, settings)
        if hit is None:
            hit = measure_sensitivity(ctx.target, bits=ctx.bits, ptq=ptq, settings=settings, device=ctx.device)
        ctx.cache[key] = hit
    if tuple(hit.bits) != tuple(ctx.bits):
        raise EmqError(f"the sensitivity was measured for bits {list(hit.bits)}, not {list(ctx.bits)}")
    return hit


_ADDITIVE_COST_KEYS = ("seconds", "rounding_seconds", "ptq_equivalents", "single_slot_evaluations")
_COST_KEYS = (*_ADDITIVE_COST_KEYS, "ptq_evaluation_seconds", "ptq_evaluation_test_images")  # the last two: the unit


def measurement_cost(ctx: Any, settings: SensitivitySettings | None = None) -> dict[str, Any]:
    """What measuring a proxy context's tables with `settings` (default: the default ones) cost."""
    m = context_sensitivity(ctx, settings).meta
    return {k: m.get(k) for k in _COST_KEYS} | {
        "images": m.get("images"),
        "cache_hit": bool((m.get("cache") or {}).get("hit")),
    }


def measurements_cost(ctx: Any, terminals: Sequence[str]) -> dict[str, Any] | None:
    """What every measurement a set of terminals reads cost, summed (a formula over MKL and MKLM pays for
    both tables); None when they read none."""
    costs = [measurement_cost(ctx, s) for s in measurements(terminals, ctx.bits)]
    if not costs:
        return None
    summed = {k: None if any(c[k] is None for c in costs) else sum(c[k] for c in costs) for k in _ADDITIVE_COST_KEYS}
    # the unit (one PTQ evaluation's seconds and test images) is the first measurement's
    every = {"cache_hit": all(c["cache_hit"] for c in costs), "measurements": len(costs)}
    return costs[0] | summed | every


def stored_sensitivity(
    stats: Any, bits: Sequence[int], ptq: PTQSettings, settings: SensitivitySettings | None = None
) -> Sensitivity | None:
    """The sensitivity that statistics carry (`attach_sensitivity`; shipped bundles do), if it was
    measured at these bits, these PTQ settings and these measurement settings (default: the default
    ones); else None.
    The statistics themselves were matched to the model and data before (emq.search_space.shipped)."""
    key = stats_key(settings, bits)
    stored = stats.meta.get(key) if stats is not None and key is not None else None
    if not stored or [int(b) for b in stored["bits"]] != [int(b) for b in bits] or stored.get("ptq") != ptq.to_json():
        return None
    recorded = {k: v for k, v in (stored.get("settings") or {}).items() if k != "prefix_reuse"}
    if recorded != (settings or SensitivitySettings()).key_json():
        return None
    meta = {k: v for k, v in stored.items() if k not in ("bits", "tables")}
    return Sensitivity(
        tuple(int(b) for b in bits),
        {k: np.asarray(stored["tables"][k], dtype=np.float64) for k in METRICS},
        meta | {"cache": {"hit": True, "source": "the statistics"}},
    )


def attach_sensitivity(stats: Any, sens: Sensitivity) -> Any:
    """Put the measured tables into `stats` (NetworkStats), under the entry of their measurement
    (`stats_key`), for the terminals that read them (MKL, MDL, MNSR; MKLM in context) and for the
    measured proxies (`stored_sensitivity`); saved with the statistics (`save_stats`) like every
    other statistic, so a bundle scores `layer-kl` without its data."""
    if tuple(sens.bits) != tuple(stats.bits):
        raise EmqError(
            f"the sensitivity was measured for bits {list(sens.bits)}, the statistics hold {list(stats.bits)}"
        )
    recorded = sens.meta.get("settings") or {}
    settings = SensitivitySettings(**{k: v for k, v in recorded.items() if k in SensitivitySettings().key_json()})
    key = stats_key(settings, sens.bits)
    if key is None:
        raise EmqError(
            f"statistics carry the measurement with the other slots at 8 bits or at the middle bit-width "
            f"({middle_bit(sens.bits)}), not at {settings.rest_bits}: keep this one beside them"
        )
    keep = ("settings", "ptq", "images", "reliability", "single_slot_evaluations", "seconds", "rounding_seconds")
    stats.meta[key] = {
        "bits": list(sens.bits),
        "tables": {k: v.tolist() for k, v in sens.tables.items()},
        **{k: sens.meta.get(k) for k in (*keep, "ptq_evaluation_seconds", "ptq_equivalents")},
    }
    return stats


def measured_keys(terminals: Sequence[str]) -> set[str]:
    """The statistics' meta keys of the measurements a set of terminals reads (none for statistics-only ones)."""
    from .search_space.primitives import MEASURED_TERMINALS, raw_sources

    return {MEASURED_TERMINALS[r] for t in terminals for r in raw_sources(t) if r in MEASURED_TERMINALS}


def measurements(terminals: Sequence[str], bits: Sequence[int]) -> list[SensitivitySettings]:
    """The measurements a set of terminals reads, as settings (default first; none for statistics-only ones)."""
    read = measured_keys(terminals)
    return [v for k, v in _stats_keys(bits).items() if k in read]


def measured_terminals(terminals: Sequence[str]) -> tuple[str, ...]:
    """The terminals of a set that read a measured sensitivity."""
    from .search_space.primitives import MEASURED_TERMINALS, raw_sources

    return tuple(t for t in terminals if raw_sources(t) & set(MEASURED_TERMINALS))


def uses_measured(terminals: Sequence[str]) -> bool:
    """Whether a set of terminals reads a measured sensitivity."""
    return bool(measured_terminals(terminals))


def missing_measurements(stats: Any, ptq: PTQSettings | None, terminals: Sequence[str]) -> list[SensitivitySettings]:
    """The measurements `terminals` read that `stats` do not carry at their bits under `ptq`."""
    ptq = ptq or PTQSettings()
    wanted = measurements(terminals, stats.bits)
    return [s for s in wanted if stored_sensitivity(stats, stats.bits, ptq, s) is None]


def ensure_measured(
    stats: Any,
    target: Any,
    ptq: PTQSettings | None,
    device: str | torch.device = "cpu",
    *,
    terminals: Sequence[str],
) -> Any:
    """`stats` with every measurement `terminals` read attached (measured at the statistics' bits under
    `ptq`, cached): what they carry already when it matches, else measured and attached in its place (a
    sensitivity of other PTQ settings is not this one)."""
    for settings in missing_measurements(stats, ptq, terminals):
        attach_sensitivity(
            stats, measure_sensitivity(target, bits=stats.bits, ptq=ptq, settings=settings, device=device)
        )
    return stats


__all__ = [
    "METRICS",
    "Sensitivity",
    "SensitivitySettings",
    "attach_sensitivity",
    "context_sensitivity",
    "ensure_measured",
    "in_context",
    "measure_sensitivity",
    "measured_keys",
    "measured_terminals",
    "measurement_cost",
    "measurements",
    "measurements_cost",
    "middle_bit",
    "missing_measurements",
    "split_half",
    "stats_key",
    "stored_sensitivity",
    "uses_measured",
]
