"""`emq-zoo`: the proxy evolved on the whole bench zoo, usable wherever a proxy name is.

Its formula is the best proxy of one campaign over every shipped bench (14 benches of 13 networks on
three tasks), in the measured space (statistics and the measured per-layer sensitivity) with the
transfer study's campaign settings; emq/assets/emq-zoo.json holds the tree and its provenance (the
benches, the command, the in-sample fitness). Its numbers on those benches are in-sample: how well
this procedure ranks a network it never saw is what the leave-one-network-out study over the same
zoo measures (docs/figures.md). It reads the measured sensitivity, so on a new network it costs the
single-slot PTQ runs of every table it reads (`layer-kl`'s and, in context, `layer-kl-mid`'s), bundled for the
shipped benches.
"""

from __future__ import annotations

from ..resources import asset_path
from ..search_space.proxyfile import EvolvedProxy, load_proxy
from .measured import COST
from .registry import register_proxy

_SHIPPED = load_proxy(asset_path("emq-zoo.json"))
_MEASURED = _SHIPPED.needs_data


@register_proxy
class EmqZoo(EvolvedProxy):
    name = "emq-zoo"
    orientation = _SHIPPED.orientation
    description = (
        f"evolved on the 14 zoo benches (13 networks, 3 tasks; emq/assets/emq-zoo.json): {_SHIPPED.expression}"
    )
    cost = f"{_SHIPPED.cost}, each table it reads: {COST}" if _MEASURED else _SHIPPED.cost
    needs_data = _MEASURED

    def __init__(self) -> None:
        super().__init__(
            _SHIPPED.tokens,
            _SHIPPED.orientation,
            name=self.name,
            act_samples=_SHIPPED.act_samples,
            meta=_SHIPPED.meta,
        )
        self.description, self.cost = type(self).description, type(self).cost
