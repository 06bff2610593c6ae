"""Budgets, pins and allowed bits, turned into one integer-cost allocation problem.

Every budget is linear in the per-slot bit-widths and increasing in each of them, so the
configuration that puts every free slot at its smallest allowed bit minimises every
budget at once. That makes feasibility exact and cheap: a set of budgets is feasible if
and only if that configuration satisfies all of them, and the smallest feasible value of
each budget is its cost there. Costs are kept as integers (weight bits, BitOps) so a
solution either fits a budget or it does not, with no floating-point tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from ..errors import EmqError
from ..layermap import LayerMap
from ..specs import (
    DEFAULT_ACT_BITS,
    DEFAULT_BITS,
    ParameterError,
    check_act_bits,
    check_bit_set,
    check_weight_bits,
    resolve_slot,
)
from .kinds import BudgetKind, budget_param, get_kind


class InfeasibleBudget(EmqError):
    """The budgets cannot be met even with every free slot at its lowest allowed bit.

    A sweep skips exactly these budget values; every other error is a real failure."""


@dataclass(frozen=True)
class Budget:
    """One upper limit: a registered kind (emq.allocation.kinds) and a value in its unit."""

    kind: str
    value: float

    def __post_init__(self) -> None:
        get_kind(self.kind)
        if not (math.isfinite(self.value) and self.value > 0):
            raise ParameterError(budget_param(self.kind), self.value, "must be a positive number")

    @property
    def spec(self) -> BudgetKind:
        return get_kind(self.kind)

    @staticmethod
    def parse(kind: str, text: str | float) -> Budget:
        """A budget from the text a user typed, in the unit the kind uses."""
        return Budget(kind, get_kind(kind).parse(text))

    def label(self) -> str:
        return f"{self.kind}<={self.value:.6g}"


@dataclass(frozen=True)
class Constraint:
    """sum_s cost[s, b_s] <= limit, costs in integer units (weight bits or BitOps)."""

    budget: Budget
    cost: np.ndarray  # [S, B] float64 holding integers
    limit: float  # integer-valued

    def value_of(self, units: float, layer_map: LayerMap, act_bits: int) -> float:
        """Convert an integer cost back into the budget's unit (for messages and reports)."""
        return self.budget.spec.from_units(units, layer_map, act_bits)


@dataclass(kw_only=True)
class Problem:
    """Everything an allocator needs: allowed bits per slot, tie groups and integer constraints.

    `bits` are the table columns (ctx.bits of the proxy): the union of the allowed bits and
    the pinned bits. `allowed[s, j]` says whether slot s may take bits[j]. `groups` lists
    slots that must share one bit-width (each slot in exactly one group).
    """

    layer_map: LayerMap
    bits: tuple[int, ...]
    allowed: np.ndarray  # [S, B] bool
    groups: list[list[int]]
    constraints: list[Constraint]
    act_bits: int = DEFAULT_ACT_BITS
    pins: dict[int, int] = field(default_factory=dict)

    @property
    def num_slots(self) -> int:
        return self.layer_map.num_slots

    def min_config(self) -> np.ndarray:
        """Column index per slot of the cheapest allowed configuration (respecting ties)."""
        idx = np.zeros(self.num_slots, dtype=np.int64)
        for g in self.groups:
            ok = np.flatnonzero(self.allowed[g].all(axis=0))
            idx[g] = ok[0]
        return idx

    def group_choices(self) -> list[np.ndarray]:
        """Allowed column indices of every group."""
        return [np.flatnonzero(self.allowed[g].all(axis=0)) for g in self.groups]

    def costs(self, idx: np.ndarray) -> np.ndarray:
        """Integer costs [K] (or [N, K]) of configurations given as column indices [S] or [N, S]."""
        idx = np.atleast_2d(idx)
        s = np.arange(self.num_slots)
        out = (
            np.stack([c.cost[s[None, :], idx].sum(axis=1) for c in self.constraints], axis=1)
            if self.constraints
            else np.zeros((idx.shape[0], 0))
        )
        return out

    def feasible(self, idx: np.ndarray) -> np.ndarray:
        """Whether configurations (column indices) respect pins, allowed bits, ties and budgets."""
        idx = np.atleast_2d(idx)
        s = np.arange(self.num_slots)
        ok = self.allowed[s[None, :], idx].all(axis=1)
        for g in self.groups:
            ok &= (idx[:, g] == idx[:, g[:1]]).all(axis=1)
        if self.constraints:
            ok &= (self.costs(idx) <= np.array([c.limit for c in self.constraints])[None, :]).all(axis=1)
        return ok

    def to_bits(self, idx: np.ndarray) -> tuple[int, ...]:
        return tuple(int(self.bits[j]) for j in idx)

    def to_index(self, bits: Sequence[int]) -> np.ndarray:
        lut = {b: j for j, b in enumerate(self.bits)}
        return np.array([lut[int(b)] for b in bits], dtype=np.int64)

    def check_feasible(self) -> None:
        """Refuse an infeasible request before solving, naming the smallest feasible values."""
        low = self.costs(self.min_config())[0]
        bad = [(c, u) for c, u in zip(self.constraints, low) if u > c.limit]
        if not bad:
            return
        pins = (
            f" with pins {', '.join(f'{self.layer_map.slots[s].name}={b}' for s, b in sorted(self.pins.items()))}"
            if self.pins
            else ""
        )
        parts = []
        for c, u in bad:
            kind = c.budget.spec
            need = kind.from_units(u, self.layer_map, self.act_bits)
            parts.append(
                f"the {kind.name} budget {c.budget.value:.6g} is below the smallest feasible value {kind.format(need)}"
            )
        raise InfeasibleBudget(
            "infeasible budget: "
            + "; ".join(parts)
            + f" (every free slot at its lowest allowed bit of {list(self.bits)}{pins}); "
            "raise the budget, allow lower bits in bits_allowed or remove pins"
        )


def build_problem(
    layer_map: LayerMap,
    budgets: Sequence[Budget] = (),
    bits_allowed: Sequence[int] = DEFAULT_BITS,
    *,
    pins: Mapping[str | int, int] | None = None,
    slot_bits: Mapping[str | int, Sequence[int]] | None = None,
    ties: Sequence[Sequence[str | int]] = (),
    act_bits: int = DEFAULT_ACT_BITS,
) -> Problem:
    """Turn user-level budgets, pins (slot -> bits), per-slot allowed bits and extra tie groups
    into a Problem. Slots are the layer map's tie groups already (e.g. a ResNet downsample
    conv shares its block's slot); `ties` adds further groups of slots forced equal."""
    allowed_bits = list(check_bit_set({check_weight_bits(b, "bits_allowed") for b in bits_allowed}, "bits_allowed"))
    check_act_bits(act_bits)
    pin_idx = {_slot(layer_map, k, "pins"): check_weight_bits(v, "pins") for k, v in (pins or {}).items()}
    per_slot = {
        _slot(layer_map, k, "slot_bits"): sorted({check_weight_bits(b, "slot_bits") for b in v})
        for k, v in (slot_bits or {}).items()
    }
    extra = sorted({b for v in per_slot.values() for b in v} - set(allowed_bits))
    if extra:
        raise ParameterError("slot_bits", slot_bits, f"bit-widths {extra} are not among bits_allowed {allowed_bits}")
    cols = tuple(sorted(set(allowed_bits) | set(pin_idx.values())))
    S, B = layer_map.num_slots, len(cols)
    allowed = np.zeros((S, B), dtype=bool)
    for s in range(S):
        ok = [pin_idx[s]] if s in pin_idx else per_slot.get(s, allowed_bits)
        allowed[s, [cols.index(b) for b in ok]] = True
    groups = _merge_ties(layer_map, ties, S)
    for g in groups:
        if not allowed[g].all(axis=0).any():
            names = ", ".join(layer_map.slots[s].name for s in g)
            raise EmqError(f"tied slots {names} have no bit-width in common (check pins, slot_bits and ties)")
    col_bits = np.array(cols, dtype=np.float64)
    constraints = []
    for b in budgets:
        kind = b.spec
        constraints.append(
            Constraint(
                b, np.outer(kind.per_bit(layer_map, act_bits), col_bits), kind.limit(b.value, layer_map, act_bits)
            )
        )
    return Problem(
        layer_map=layer_map,
        bits=cols,
        allowed=allowed,
        groups=groups,
        constraints=constraints,
        act_bits=act_bits,
        pins=pin_idx,
    )


def _slot(lm: LayerMap, key: str | int, param: str) -> int:
    return resolve_slot(lm.slots, key, param, lm.model)


def _merge_ties(lm: LayerMap, ties: Sequence[Sequence[str | int]], n: int) -> list[list[int]]:
    """Slots joined by any tie group form one decision (connected components)."""
    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    for t in ties:
        idx = [_slot(lm, k, "ties") for k in t]
        graph.add_edges_from((idx[0], i) for i in idx[1:])
    return sorted((sorted(c) for c in nx.connected_components(graph)), key=lambda g: g[0])
