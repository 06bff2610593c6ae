"""Statistics that ship with the bench bundles, used in place of computing them.

A bundle's statistics are the numbers `compute_stats` would produce for its model (the Hessian
and per-sample Fisher work takes tens of seconds; loading takes a fraction of one). They are
used whenever they match a request: the same weights (digest), the same data (fingerprint;
unchecked when no data is installed), the same layers, the same statistics settings, and bits
that include the requested ones (cut to those). Every bundle leaves out the fields the model
alone determines (W, VG, SG; recomputed from the weights, no data needed), and a bundle whose
data ships with emq also the activation-shaped fields (recomputed in one pass over the
calibration images); `emq.search_space.stats.shipped_stats` completes them, the only work a
request needs beyond the file. This module only finds the matching file, so it needs nothing of
`stats` at run time.

Every shipped file records what it was computed from in ``meta["source"]``
(`source_of`, written by scripts/bundle_stats.py).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from emq.datasplits import base_fingerprint
from emq.errors import EmqError
from emq.hashing import state_dict_digest
from emq.layermap import LayerMap

from .netstats import NetworkStats, load_stats, select_bits

if TYPE_CHECKING:
    from emq.target import Target

    from .stats import StatsSettings

log = logging.getLogger(__name__)


def source_of(weights: str, data: str, layer_map: LayerMap) -> dict:
    """What a statistics file was computed from: weights digest, data fingerprint, layers."""
    return {
        "weights": weights,
        "data": data,
        "layers": [layer.name for layer in layer_map.layers],
        "layer_slot": list(layer_map.layer_slot),
    }


def _mismatch(ns: NetworkStats, want: dict, bits: tuple[int, ...], settings: dict) -> str | None:
    """Why these statistics do not serve the request, or None when they do."""
    source = ns.meta.get("source") or {}
    if ns.meta.get("settings") != settings:
        return "other statistics settings"
    if not set(bits) <= set(ns.bits):
        return f"bits {list(ns.bits)} lack {sorted(set(bits) - set(ns.bits))}"
    for key, value in want.items():
        if value is not None and source.get(key) != value:
            return f"other {key}"
    return None


def find_shipped(
    target: Target, *, bits: tuple[int, ...], settings: StatsSettings, files: list[Path] | None = None
) -> tuple[NetworkStats, Path] | None:
    """A shipped bundle's statistics of the target's model for this request (cut to `bits`, maybe partial:
    `ns.omitted`) and their file, or None when none matches. A target without data (not installed): the
    data is not checked, and a partial file is an EmqError naming --data. `files` defaults to the bundles'."""
    from emq.bench.bundles import stats_files

    layer_map, data = target.layer_map, target.data
    # a bundle records its data without a test-image limit: statistics never see the test images
    fingerprint = base_fingerprint(data.fingerprint) if data is not None else None
    want = source_of(state_dict_digest(target.model), fingerprint, layer_map)
    wanted_settings = settings.to_json()
    for path in stats_files(layer_map.model) if files is None else files:
        try:
            ns = load_stats(path, partial=True)
        except EmqError as e:
            log.warning("ignoring shipped statistics: %s", e)
            continue
        why = _mismatch(ns, want, tuple(bits), wanted_settings)
        if why is not None:
            log.info("shipped statistics %s not used: %s", path, why)
            continue
        ns = select_bits(ns, tuple(bits))
        if ns.needs_data and data is None:
            raise EmqError(
                f"{path}: the shipped statistics leave out {', '.join(ns.omitted_from_data)}, computed from the data: "
                "pass --data"
            )
        return ns, path
    return None
