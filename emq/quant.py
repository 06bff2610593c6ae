"""Post-training quantization: fake-quantized weights and activations, evaluated for real.

Weights are rounded by the method named in `PTQSettings.weight_quantizer` (emq.quantizers;
default "mse": per output channel with an MSE-optimal clipping range); activations
(the input of every quantizable layer) per tensor with a range calibrated on calibration
data. BatchNorm is handled by one of three documented modes (`PTQSettings.bn`):

- ``reestimate`` (default): after the weights are quantized, BatchNorm statistics are
  re-estimated on the calibration images. Low-bit weights shift every channel's mean and
  variance; without this a few 2-bit layers collapse the network.
- ``fold``: BatchNorm is folded into the preceding conv before quantization (what an
  integer deployment runs); statistics are not re-estimated.
- ``none``: weights are quantized, BatchNorm is left as trained.

The engine never touches the caller's model: it works on its own copy, on the engine's
device (`device=`, emq.device); data stays on the CPU and is moved there batch by batch,
and per-image outcomes come back as CPU arrays.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .data import DEFAULT_CALIB_SIZE
from .device import resolve_device
from .errors import EmqError
from .layermap import QUANTIZABLE, LayerMap
from .quantizers import CLIP_GRID as CLIP_GRID  # re-exported, as quantize_weight
from .quantizers import QUANTIZERS, check_quantizer_name, fake_quant
from .quantizers import quantize_weight as quantize_weight
from .rounding import RoundedWeights
from .specs import (
    DEFAULT_ACT_BITS,
    UNQUANTIZED_ACT_BITS,
    ParameterError,
    check_act_bits,
    check_positive_int,
    setting,
)

if TYPE_CHECKING:
    from .target import Target  # for annotations only: emq.target would import torchvision with the models

BN_MODES = ("reestimate", "fold", "none")


@dataclass(frozen=True)
class QuantSpec:
    """How weights and activations are quantized, declared once: the PTQ engine deploys it
    (`PTQSettings`) and the statistics model it (`StatsSettings`), so the two cannot drift."""

    act_bits: int = setting(DEFAULT_ACT_BITS, "activation bits (default {default}; 32 = none)")
    weight_symmetric: bool = setting(
        False, "symmetric weight quantization (default: asymmetric, as in PTQ)", flag="--symmetric"
    )
    weight_quantizer: str = "mse"  # a name of emq.quantizers.QUANTIZERS (benches built before it existed: "mse")
    quantizer_options: tuple[tuple[str, Any], ...] = ()  # the weight quantizer's options that differ from its defaults

    def __post_init__(self) -> None:
        check_act_bits(self.act_bits)
        check_quantizer_name(self.weight_quantizer)
        object.__setattr__(self, "quantizer_options", normalize_options(self.weight_quantizer, self.quantizer_options))

    def quant_spec(self) -> QuantSpec:
        """The quantization part alone (of PTQ or statistics settings), for comparing the two."""
        return QuantSpec(**{f.name: getattr(self, f.name) for f in fields(QuantSpec)})


@dataclass(frozen=True)
class PTQSettings(QuantSpec):
    """The PTQ engine's settings: the quantization spec, its calibration draw, BatchNorm handling."""

    bn: str = "reestimate"
    calib_size: int = DEFAULT_CALIB_SIZE
    calib_seed: int = 0
    batch_size: int = 1024
    calib_half: int | None = None  # draw calibration images from one half of the sources (benches: 0; their retest: 1)
    bias_correction: bool = (
        False  # subtract each layer's mean output shift E[(Q_b(W) - W) x] on calibration data from its bias
    )

    def __post_init__(self) -> None:
        if self.bn not in BN_MODES:
            raise ParameterError("bn", self.bn, f"use one of {', '.join(BN_MODES)}")
        super().__post_init__()
        check_positive_int(self.calib_size, "calib_size")
        check_positive_int(self.batch_size, "batch_size")
        if self.calib_half not in (None, 0, 1):
            raise ParameterError(
                "calib_half", self.calib_half, "use 0 or 1 (one half of the calibration sources) or None (all of them)"
            )

    def to_json(self) -> dict:
        return {**asdict(self), "quantizer_options": dict(self.quantizer_options)}


def normalize_options(method: str, options: Any) -> tuple[tuple[str, Any], ...]:
    """Options as a sorted tuple of (name, value) that differ from the method's defaults (a dict,
    pairs or a tuple are accepted), validated against the method: hashable, and equal settings
    compare equal however they were written."""
    from .quantizers import QUANTIZERS
    from .quantizers.base import resolve_options

    given = dict(options.items() if isinstance(options, Mapping) else (tuple(p) for p in options or ()))
    defaults = QUANTIZERS[method].defaults()
    full = resolve_options(method, QUANTIZERS[method].options, given)
    return tuple(sorted((k, v) for k, v in full.items() if v != defaults[k]))


def _bn_pairs(model: nn.Module, example: torch.Tensor) -> dict[str, str]:
    """Map conv name -> BatchNorm name for every BN that directly consumes a conv's output."""
    names = {m: n for n, m in model.named_modules()}
    produced: dict[int, str] = {}
    pairs: dict[str, str] = {}
    hooks = []

    def conv_hook(mod, inp, out):
        produced[id(out)] = names[mod]

    def bn_hook(mod, inp):
        src = produced.get(id(inp[0]))
        if src is not None:
            pairs[src] = names[mod]

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.BatchNorm2d):
            hooks.append(m.register_forward_pre_hook(bn_hook))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    return pairs


def fold_batchnorm(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """Return a copy with every conv->BN pair folded into the conv (BN replaced by Identity)."""
    model = copy.deepcopy(model).eval()
    pairs = _bn_pairs(model, example)
    modules = dict(model.named_modules())
    for conv_name, bn_name in pairs.items():
        conv, bn = modules[conv_name], modules[bn_name]
        std = torch.sqrt(bn.running_var + bn.eps)
        gamma = bn.weight if bn.weight is not None else torch.ones_like(std)
        beta = bn.bias if bn.bias is not None else torch.zeros_like(std)
        factor = (gamma / std).detach()
        conv.weight.data.mul_(factor.reshape(-1, 1, 1, 1))
        bias = conv.bias.data if conv.bias is not None else torch.zeros_like(std)
        new_bias = (bias - bn.running_mean) * factor + beta.detach()
        conv.bias = nn.Parameter(new_bias)
        parent_name, _, attr = bn_name.rpartition(".")
        parent = modules[parent_name] if parent_name else model
        setattr(parent, attr, nn.Identity())
    return model


@dataclass(kw_only=True)
class QuantResult:
    top1: float
    loss: float
    kl: float
    size_bytes: float
    bitops: float
    seconds: float
    # per test image, in test order: correct (bool), CE loss, KL to full precision
    per_image: dict[str, np.ndarray] | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "per_image"}


class _ActQuant:
    """Forward pre-hook that observes or fake-quantizes a layer's input, per tensor."""

    def __init__(self, device: torch.device) -> None:
        self.mode = "off"
        self.bits = DEFAULT_ACT_BITS
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.lo = torch.tensor(float("inf"), device=self.device)
        self.hi = torch.tensor(float("-inf"), device=self.device)

    def __call__(self, mod: nn.Module, inp: tuple) -> tuple | None:
        x = inp[0]
        if self.mode == "observe":
            self.lo = torch.minimum(self.lo, x.detach().min().clamp(max=0))
            self.hi = torch.maximum(self.hi, x.detach().max().clamp(min=0))
            return None
        if self.mode == "quant" and self.bits < 32:
            return (fake_quant(x, self.lo, self.hi, self.bits),) + tuple(inp[1:])
        return None


class PTQEngine:
    """Evaluates bit configurations of one model on one data set, reusing all it can."""

    def __init__(
        self,
        target: Target,
        settings: PTQSettings | None = None,
        *,
        progress: bool = False,
        cache_dir: str | Path | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        """`target` is the model, its layer map and its data (an EmqError if it has no data:
        calibration and evaluation need it). `progress` shows tqdm bars (stderr) over
        calibration and test batches: one evaluation of a large model on a large test set
        takes minutes. `cache_dir` is the cache root of reconstruction-rounded weights
        (emq.rounding). `device` is where the engine's copy of the model runs (emq.device);
        it changes no setting and no draw."""
        self.settings = settings or PTQSettings()
        self.device = resolve_device(device)
        self.progress = progress
        self.layer_map = target.layer_map
        self.data = target.require_data()
        example = self.data.calibration(2, 0)[0].to(self.device)
        base = copy.deepcopy(target.model).eval().to(self.device)
        self.work = fold_batchnorm(base, example) if self.settings.bn == "fold" else base
        for p in self.work.parameters():
            p.requires_grad_(False)
        modules = dict(self.work.named_modules())
        self.layers = [modules[layer.name] for layer in self.layer_map.layers]
        if not all(isinstance(m, QUANTIZABLE) for m in self.layers):
            raise EmqError("the layer map does not match the model (a mapped module is not Conv2d/Linear)")
        self.fp_weights = [m.weight.detach().clone() for m in self.layers]
        self.calib = self.data.calibration(self.settings.calib_size, self.settings.calib_seed, self.settings.calib_half)
        self.rounding = self._rounding(self.layer_map, cache_dir)
        self.fp_biases = self._bias_setup()
        self.bns = [m for m in self.work.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.bn_state = [copy.deepcopy(bn.state_dict()) for bn in self.bns]
        self.act = [_ActQuant(self.device) for _ in self.layers]
        for m, a in zip(self.layers, self.act):
            m.register_forward_pre_hook(a)
        self._fp_logits: list[torch.Tensor] | None = None
        self.cache_enabled = True

    def _rounding(self, layer_map: LayerMap, cache_dir: str | Path | None) -> RoundedWeights:
        """The rounded-weight source; reconstruction methods get a private full-precision copy
        (this engine's layers change weights and quantize their inputs)."""
        s = self.settings
        names = [layer.name for layer in layer_map.layers]
        options = dict(s.quantizer_options)
        model, layers = self.work, self.layers
        if QUANTIZERS[s.weight_quantizer].needs_inputs or s.bias_correction:
            model = copy.deepcopy(self.work)
            mods = dict(model.named_modules())
            layers = [mods[n] for n in names]
        return RoundedWeights(
            model,
            layers,
            names,
            s.weight_quantizer,
            options=options,
            symmetric=s.weight_symmetric,
            calib=self.calib[0],
            batch_size=s.batch_size,
            cache_dir=cache_dir,
        )

    def prepare_rounding(self, bits: Sequence[int], progress: bool = False) -> float:
        """Round every layer at every bit-width in `bits` now (reconstruction methods: the
        bench's one-off preparation, written to the disk cache); seconds spent."""
        return self.rounding.prepare(bits, progress)

    def layer_bits(self, bits: Sequence[int]) -> list[int]:
        """Expand a per-slot configuration to per-layer bit-widths."""
        return [bits[s] for s in self.layer_map.layer_slot]

    def quantized_weight(self, layer: int, bits: int) -> torch.Tensor:
        """Q_b(W) of one layer; computed once per (layer, bits) and reused."""
        if not self.cache_enabled:
            return self.rounding.compute(layer, bits)
        return self.rounding.get(layer, bits)

    def _forward_batches(self, x: torch.Tensor) -> torch.Tensor:
        bs = self.settings.batch_size
        starts = tqdm(
            range(0, x.shape[0], bs), desc="PTQ calibration", unit="batch", disable=not self.progress, leave=False
        )
        return torch.cat([self.work(x[i : i + bs].to(self.device)) for i in starts])

    def _set_weights(self, layer_bits: Sequence[int] | None) -> None:
        for i in range(len(self.layers)):
            self.set_layer(i, None if layer_bits is None else layer_bits[i])

    def set_layer(self, layer: int, bits: int | None) -> None:
        """Give one layer its rounded weights at `bits` (None: full precision), with its bias
        correction when configured; BatchNorm and activation ranges are left as they are."""
        m = self.layers[layer]
        w = self.fp_weights[layer] if bits is None else self.quantized_weight(layer, bits)
        m.weight.data.copy_(w)
        if self.fp_biases is not None:
            shift = 0.0 if bits is None else self.rounding.output_shift(layer, bits, w)
            m.bias.data.copy_(self.fp_biases[layer] - shift)

    def _bias_setup(self) -> list[torch.Tensor] | None:
        """Full-precision biases for bias correction (zero biases added where a layer has none;
        before BatchNorm re-estimation they cancel, so correction matters for the other layers)."""
        if not self.settings.bias_correction:
            return None
        out = []
        for m in self.layers:
            if m.bias is None:
                m.bias = nn.Parameter(
                    torch.zeros(m.weight.shape[0], dtype=m.weight.dtype, device=m.weight.device), requires_grad=False
                )
            out.append(m.bias.detach().clone())
        return out

    def _prepare_bn_and_acts(self, quant_acts: bool) -> None:
        """Re-estimate BatchNorm (if configured) and calibrate activation ranges in one pass."""
        for bn, state in zip(self.bns, self.bn_state):
            bn.load_state_dict(state)
        reestimate = self.settings.bn == "reestimate" and self.bns
        for a in self.act:
            a.reset()
            a.bits = self.settings.act_bits
            a.mode = "observe" if quant_acts else "off"
        if not (reestimate or quant_acts):
            return
        if reestimate:
            for bn in self.bns:
                bn.reset_running_stats()
                bn.momentum = None  # cumulative average over calibration batches
                bn.train()
        with torch.no_grad():
            self._forward_batches(self.calib[0])
        for bn in self.bns:
            bn.eval()
        for a in self.act:
            a.mode = "quant" if quant_acts else "off"

    def prepare(self, bits: Sequence[int] | None) -> nn.Module:
        """Put the working copy into the PTQ state of a per-slot configuration and return it.

        Quantized weights, BatchNorm handling and calibrated activation quantizers are set
        exactly as `evaluate` uses them; `None` restores the full-precision network. Proxies
        that inspect the quantized network (attributions, features) use this; the returned
        module is the engine's own copy, never the caller's model.
        """
        if bits is None:
            self._set_weights(None)
            for bn, state in zip(self.bns, self.bn_state):
                bn.load_state_dict(state)
            for a in self.act:
                a.mode = "off"
            return self.work
        bits = self.layer_map.validate(bits)
        self._set_weights(self.layer_bits(bits))
        self._prepare_bn_and_acts(quant_acts=self.settings.act_bits < UNQUANTIZED_ACT_BITS)
        return self.work

    def _fp_reference(self) -> list[torch.Tensor]:
        if self._fp_logits is None:
            self.prepare(None)
            with torch.no_grad():
                self._fp_logits = [
                    self.work(x.to(self.device)) for x, _ in self.data.test_batches(self.settings.batch_size)
                ]
        return self._fp_logits

    def _score(self, ref: list[torch.Tensor] | None) -> dict[str, np.ndarray]:
        """Per test image: correct, CE loss and KL(FP || quantized) (KL 0 without a reference)."""
        correct, loss, kl = [], [], []
        batches = tqdm(
            self.data.test_batches(self.settings.batch_size),
            desc="PTQ test set",
            unit="batch",
            disable=not self.progress,
            leave=False,
        )
        with torch.no_grad():
            for i, (x, y) in enumerate(batches):
                x, y = x.to(self.device), y.to(self.device)
                logits = self.work(x)
                logp = F.log_softmax(logits, dim=1)
                correct.append((logits.argmax(1) == y).cpu().numpy())
                loss.append(F.nll_loss(logp, y, reduction="none").double().cpu().numpy())
                if ref is not None:
                    ref_logp = F.log_softmax(ref[i], dim=1)
                    kl.append(F.kl_div(logp, ref_logp, log_target=True, reduction="none").sum(1).double().cpu().numpy())
                else:
                    kl.append(np.zeros(y.numel()))
        if not correct or sum(len(c) for c in correct) == 0:
            raise EmqError("the test split is empty")
        return {"correct": np.concatenate(correct), "loss": np.concatenate(loss), "kl": np.concatenate(kl)}

    @staticmethod
    def _means(per: dict[str, np.ndarray]) -> tuple[float, float, float]:
        return 100.0 * float(per["correct"].mean()), float(per["loss"].mean()), float(per["kl"].mean())

    def evaluate_fp(self) -> QuantResult:
        """The full-precision reference on the same test data."""
        t0 = time.perf_counter()
        self._fp_reference()
        self.prepare(None)
        top1, loss, _ = self._means(self._score(None))
        return QuantResult(
            top1=top1,
            loss=loss,
            kl=0.0,
            size_bytes=self.layer_map.fp_size_bytes,
            bitops=self.layer_map.bitops([32] * self.layer_map.num_slots, 32),
            seconds=time.perf_counter() - t0,
        )

    def evaluate(self, bits: Sequence[int]) -> QuantResult:
        """PTQ-evaluate one per-slot configuration: top-1 (%), CE loss, KL to full precision."""
        bits = self.layer_map.validate(bits)
        t0 = time.perf_counter()
        ref = self._fp_reference()
        self.prepare(bits)
        per = self._score(ref)
        top1, loss, kl = self._means(per)
        return QuantResult(
            top1=top1,
            loss=loss,
            kl=kl,
            size_bytes=float(self.layer_map.size_bytes(bits)),
            bitops=float(self.layer_map.bitops(bits, self.settings.act_bits)),
            seconds=time.perf_counter() - t0,
            per_image=per,
        )
