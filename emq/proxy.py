"""One interface for every proxy, evolved or hand-made.

A proxy scores bit configurations. Two kinds:

- *separable*: a per-slot, per-bit table P[S, B] with score(config) = sum_s P[s, config_s].
  Ranking all bench configurations is one gather-sum, and the table is exactly the cost
  matrix of the allocation ILP.
- *whole-configuration*: looks at the quantized network, so it scores configurations one by
  one; usable for ranking and for search-based allocation.

`orientation` is +1 when a higher score predicts higher accuracy, -1 when it predicts lower.
`oriented_scores` always returns "higher = better" so fitness and allocation never need to
care.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import EmqError


@dataclass
class ProxyContext:
    """What proxies may look at: the target, the allowed bits and lazily computed statistics.

    `stats` is filled by whoever builds the context (see emq.search_space.stats); whole-
    configuration proxies use `target` and `settings` to quantize for real, on `device`.
    """

    target: Any  # emq.target.Target
    bits: tuple[int, ...]
    settings: Any = None  # emq.quant.PTQSettings
    stats: Any = None  # emq.search_space.stats.NetworkStats
    cache: dict = field(default_factory=dict)
    device: Any = "cpu"  # str or torch.device (emq.device): where whole-configuration proxies run the network

    def bit_index(self, configs: np.ndarray) -> np.ndarray:
        """Map bit values [N, S] to column indices into a table [S, B]."""
        lut = np.full(max(max(self.bits), int(np.max(configs))) + 1, -1, dtype=np.int64)
        lut[list(self.bits)] = np.arange(len(self.bits))
        idx = lut[configs]
        if (idx < 0).any():
            bad = int(configs[idx < 0][0])
            raise EmqError(f"bit-width {bad} is not among the allowed bits {list(self.bits)}")
        return idx


class Proxy(ABC):
    name: str = ""
    description: str = ""
    orientation: int = 1
    cost: str = ""  # e.g. "statistics only", "one PTQ forward per configuration"
    separable: bool = True
    faithful: bool = (
        True  # False for a variant of a published method (kept under its own name, never "the best hand-made")
    )
    formula: str = ""  # the proxy's form inside the search space: a key of emq.search_space.pset.HANDMADE
    needs_data: bool = False  # it quantizes the model on the target's data (no statistics can stand in)

    @property
    def statistics_only(self) -> bool:
        """Scored from network statistics alone (no PTQ run on data): what a user without a bench
        or data budget can use, so the only kind that can be "the best hand-made proxy"."""
        return self.separable and not self.needs_data

    def needs_data_for(self, ctx: ProxyContext) -> bool:
        """Whether scoring on this context runs the model on the target's data (a measured proxy
        does not when the context's statistics carry its measurement)."""
        return self.needs_data

    def setup_cost(self, ctx: ProxyContext) -> dict[str, Any] | None:
        """What the proxy spent once on this context before scoring (seconds, PTQ-equivalent
        evaluations), when it measures that itself; None: nothing of its own (statistics are shared)."""
        return None

    @abstractmethod
    def score_configs(self, ctx: ProxyContext, configs: np.ndarray) -> np.ndarray:
        """Raw scores of configurations [N, S] -> [N] (orientation not applied)."""

    def oriented_scores(self, ctx: ProxyContext, configs: np.ndarray) -> np.ndarray:
        return self.orientation * self.score_configs(ctx, np.asarray(configs))


class SeparableProxy(Proxy):
    separable = True

    @abstractmethod
    def table(self, ctx: ProxyContext) -> np.ndarray:
        """P[S, B]: the contribution of slot s at bit ctx.bits[b]."""

    def score_configs(self, ctx: ProxyContext, configs: np.ndarray) -> np.ndarray:
        return table_scores(self.table(ctx), ctx.bit_index(np.asarray(configs)))


class WholeConfigProxy(Proxy):
    separable = False
    needs_data = True

    @abstractmethod
    def score_one(self, ctx: ProxyContext, bits: Sequence[int]) -> float:
        """Score a single configuration by looking at the quantized network."""

    def reference(self, ctx: ProxyContext) -> None:
        """Compute and cache what every configuration is compared with (e.g. the full-precision
        output), so that proxies scoring one configuration in turn share its PTQ pass."""
        return None

    def score_configs(self, ctx: ProxyContext, configs: np.ndarray) -> np.ndarray:
        return np.array([self.score_one(ctx, tuple(int(b) for b in c)) for c in np.asarray(configs)], dtype=np.float64)


def table_scores(table: np.ndarray, bit_idx: np.ndarray) -> np.ndarray:
    """score[n] = sum_s table[s, bit_idx[n, s]] for all configurations at once."""
    s = np.arange(table.shape[0])
    return table[s[None, :], bit_idx].sum(axis=1)


def linear_cost(configs: np.ndarray, slot_weights: np.ndarray) -> np.ndarray:
    """sum_s w_s * b_s for configurations [N, S] -> [N]: a configuration's cost.

    Some hand-made proxies *are* such costs, and rank configurations exactly as the cost
    does: bitsum (w = 1), size (w = weight params / 8, i.e. LayerMap.size_bytes without its
    constant biases), bitops (w = MACs x activation bits). Their tables come from
    `linear_cost_table`, and the bench's trivial baselines (emq.bench.query) from this.
    """
    return np.asarray(configs, dtype=np.float64) @ np.asarray(slot_weights, dtype=np.float64)


def linear_cost_table(slot_weights: np.ndarray, bits: Sequence[int]) -> np.ndarray:
    """P[s, b] = w_s * bits[b]: the separable table whose score is `linear_cost`."""
    return np.asarray(slot_weights, dtype=np.float64)[:, None] * np.asarray(bits, dtype=np.float64)[None, :]
