"""What a bench fixes for every command that uses it: the model (checked by weights hash and
slot count), its data, the PTQ settings and the statistics settings.

Search, score and allocate all come through `BenchSetup.of`, so a bench built with, say,
4-bit activations is searched, scored and allocated on 4-bit statistics; before, each
command chose its own settings and they disagreed.
"""

from __future__ import annotations

import logging
from dataclasses import KW_ONLY, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .bench.bundles import bundle_of
from .bench.evaluation import limit_test
from .datasplits import base_fingerprint
from .errors import EmqError
from .hashing import state_dict_digest
from .quant import PTQSettings
from .search_space.netstats import NetworkStats
from .search_space.stats import StatsSettings
from .specs import ParameterError
from .target import ModelSpec, Target

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchSetup:
    target: Target
    ptq: PTQSettings
    stats: StatsSettings
    bits: tuple[int, ...]
    _: KW_ONLY
    stats_file: Path | None = None  # a shipped bundle's statistics (all that serves when its data is not installed)

    def network_stats(self, progress: bool = True, device: str | torch.device = "cpu") -> NetworkStats:
        """The bench model's statistics: a shipped bundle's when they match (emq.search_space.shipped),
        else computed (and cached) from the data on `device`."""
        from .search_space.stats import compute_stats, shipped_stats

        if self.target.data is not None:
            return compute_stats(self.target, bits=self.bits, settings=self.stats, progress=progress, device=device)
        if self.stats_file is None:
            raise EmqError(f"model {self.target.name} has no data to compute its statistics on: pass --data")
        t = self.target
        ns = shipped_stats(t, bits=self.bits, settings=self.stats, device=device, files=[self.stats_file])
        if ns is None:
            raise EmqError(
                f"{self.stats_file}: the bundled statistics were computed with other settings, bits or weights "
                "than the bench asks for; pass --data to compute them"
            )
        log.info("statistics of %s from the bundle (%s): its data is not installed", t.name, self.stats_file)
        return ns

    @classmethod
    def of(
        cls, bench: Any, model: ModelSpec | Target | str | nn.Module | None = None, *, need_data: bool = True
    ) -> BenchSetup:
        """The setup of an opened `emq.bench.Bench`; the model and data (a ModelSpec, or a model
        alone) default to the bench's own."""
        meta = bench.meta
        spec = model if isinstance(model, (ModelSpec, Target)) else ModelSpec(model)
        own = isinstance(spec, ModelSpec) and spec.model is None and spec.data is None
        bundle = bundle_of(bench.path) if own else None
        stats_file = (
            bundle.stats_path
            if bundle is not None and bundle.stats_path is not None and bundle.stats_path.is_file()
            else None
        )
        built_for = meta.get("model")
        given = spec.model if isinstance(spec, ModelSpec) else None
        if isinstance(given, str) and isinstance(built_for, str) and given != built_for and not meta.get("user_module"):
            raise EmqError(
                f"--model {given}: this bench is {built_for} (bench {bench.path}); drop --model to use the bench's "
                "own model"
            )
        if isinstance(spec, Target):
            target = spec
        else:
            name = meta.get("model", "default")
            try:
                target = spec.resolve(need_data, default_model=name, default_data=meta.get("data"))
            except ParameterError as e:
                if given is None and e.param == "model":  # the bench's own model, not a flag the user gave
                    raise EmqError(
                        f"bench {bench.path}: was built for model {name!r}, which this emq does not know "
                        f"({e.problem}); use an emq that has that model, or a bench of a known one"
                    ) from e
                if stats_file is None or e.param != "data":
                    raise
                log.info(
                    "%s; using the bundle's statistics (whole-configuration proxies, allocation and verification "
                    "need the data)",
                    e,
                )
                target = spec.resolve(need_data=False, default_model=name)
        check_target(bench, target)
        limit = bench.meta.get("test_limit")
        if limit is not None and target.data is not None:  # evaluate on the test images the bench's records used
            target = replace(target, data=limit_test(target.data, int(limit)))
        ptq = ptq_settings(bench)
        return cls(target, ptq, stats_settings(bench, ptq), tuple(int(b) for b in bench.bits), stats_file=stats_file)


def check_target(bench: Any, target: Target) -> None:
    """Refuse a model whose weights or slot count differ from the bench's, and data other
    than the bench's (by fingerprint; a bench built on the first N test images still matches)."""
    stored = base_fingerprint(str(bench.meta.get("data_fingerprint") or ""))
    if stored and target.data is not None and base_fingerprint(target.data.fingerprint) != stored:
        raise EmqError(
            f"bench {bench.path}: was built on other data than {target.data.name} (data fingerprint differs); pass "
            "the bench's data with --data"
        )
    want = bench.meta.get("weights_hash")
    if want and state_dict_digest(target.model) != want:
        raise EmqError(
            f"bench {bench.path}: was built with other weights of {target.name} (weights hash {want}); pass the "
            "same model weights"
        )
    slots = bench.configs.shape[1]
    if target.layer_map.num_slots != slots:
        raise EmqError(
            f"bench {bench.path}: configurations have {slots} slots but {target.name} "
            f"has {target.layer_map.num_slots}; use the bench's model"
        )


def ptq_settings(bench: Any) -> PTQSettings:
    """The PTQ settings the bench was built with (so proxies quantize the same way)."""
    stored = bench.meta.get("ptq_settings") or {"act_bits": int(bench.meta.get("act_bits", PTQSettings().act_bits))}
    try:
        return PTQSettings(**stored)
    except TypeError as e:
        raise EmqError(f"bench {bench.path}: unreadable ptq_settings {stored} ({e})") from e


def stats_settings(bench: Any, ptq: PTQSettings) -> StatsSettings:
    """The statistics settings recorded in the bench, else the defaults matched to its PTQ."""
    stored = bench.meta.get("stats_settings")
    if not stored:
        return StatsSettings.from_ptq(ptq)
    try:
        settings = StatsSettings(**stored)
    except TypeError as e:
        raise EmqError(f"bench {bench.path}: unreadable stats_settings {stored} ({e})") from e
    if settings.quant_spec() != ptq.quant_spec():
        raise EmqError(
            f"bench {bench.path}: its stats_settings ({settings.quant_spec()}) disagree with its ptq_settings "
            f"({ptq.quant_spec()}); the statistics must describe the deployed quantization"
        )
    return settings
