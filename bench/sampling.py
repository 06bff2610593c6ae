"""Deterministic, duplicate-free samplers of configurations from a ConfigSpace.

`stratified` spreads configurations evenly over the model-size range: uniform random
configurations pile up around the middle size (a sum of independent slots), which leaves
the small and large budgets that allocation cares about almost unsampled.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from emq.specs import ParameterError

from .space import ConfigSpace

SAMPLERS = ("stratified", "uniform")


def _capacity(space: ConfigSpace) -> float:
    return float(np.prod([len(space.slot_choices(i)) for i in range(space.num_slots)], dtype=float))


def uniform_random(
    space: ConfigSpace, n: int, rng: np.random.Generator, exclude: Iterable[tuple[int, ...]] = ()
) -> list[tuple[int, ...]]:
    """n distinct configurations, every free slot uniform over the allowed bits."""
    seen = set(exclude)
    out: list[tuple[int, ...]] = []
    choices = [np.array(space.slot_choices(i)) for i in range(space.num_slots)]
    if n > _capacity(space) - len(seen):
        raise ParameterError("configs", n, f"the space has only {_capacity(space):.0f} configurations")
    while len(out) < n:
        cfg = tuple(int(c[rng.integers(len(c))]) for c in choices)
        if cfg not in seen:
            seen.add(cfg)
            out.append(cfg)
    return out


def _biased_pool(space: ConfigSpace, m: int, rng: np.random.Generator) -> np.ndarray:
    """m configurations whose bit level p ~ U(0,1) shifts every slot together (covers all sizes)."""
    k = len(space.bits)
    p = rng.uniform(0.0, 1.0, size=(m, 1))
    idx = rng.binomial(k - 1, np.broadcast_to(p, (m, space.num_slots)))
    pool = np.asarray(space.bits)[idx]
    for slot, b in space.pinned.items():
        pool[:, slot] = b
    return pool


def stratified(
    space: ConfigSpace,
    n: int,
    params: Sequence[float],
    rng: np.random.Generator,
    *,
    bins: int = 10,
    exclude: Iterable[tuple[int, ...]] = (),
) -> list[tuple[int, ...]]:
    """n distinct configurations, the same number in each of `bins` equal-width size bins.

    Bins that cannot be filled (few configurations have that size) pass their quota on
    to the others, so exactly n come back whenever the space holds that many.
    """
    seen = set(exclude)
    if n > _capacity(space) - len(seen):
        raise ParameterError("configs", n, f"the space has only {_capacity(space):.0f} configurations")
    w = np.asarray(params, dtype=np.float64)
    lo = sum(w[i] * min(space.slot_choices(i)) for i in range(space.num_slots))
    hi = sum(w[i] * max(space.slot_choices(i)) for i in range(space.num_slots))
    span = max(hi - lo, 1e-12)
    buckets: list[list[tuple[int, ...]]] = [[] for _ in range(bins)]
    pool_size = max(64, 8 * n)
    for _ in range(50):
        pool = _biased_pool(space, pool_size, rng)
        which = np.minimum(((pool @ w - lo) / span * bins).astype(int), bins - 1)
        for cfg_arr, b in zip(pool, which, strict=True):
            cfg = tuple(int(v) for v in cfg_arr)
            if cfg not in seen:
                seen.add(cfg)
                buckets[b].append(cfg)
        if sum(len(b) for b in buckets) >= 4 * n and min(len(b) for b in buckets) * bins >= n:
            break
    out: list[tuple[int, ...]] = []
    depth = 0
    while len(out) < n:
        layer = [b[depth] for b in buckets if depth < len(b)]
        if not layer:
            out += uniform_random(space, n - len(out), rng, exclude=set(out) | seen)
            break
        out += layer[: n - len(out)]
        depth += 1
    return out


def plan_configs(
    space: ConfigSpace,
    *,
    n: int,
    seed: int,
    params: Sequence[float],
    sampler: str = "stratified",
    user: Sequence[Sequence[int]] = (),
) -> list[tuple[tuple[int, ...], str]]:
    """The build plan: uniform configurations, the user's list, then n sampled ones.

    Returns (config, source) pairs without duplicates; the same arguments always give the
    same plan, which is what makes a build resumable.
    """
    if sampler not in SAMPLERS:
        raise ParameterError("sampler", sampler, f"use one of {', '.join(SAMPLERS)}")
    if n < 0:
        raise ParameterError("configs", n, "must be >= 0")
    plan: list[tuple[tuple[int, ...], str]] = []
    seen: set[tuple[int, ...]] = set()
    for cfg in space.uniform_configs():
        if cfg not in seen:
            seen.add(cfg)
            plan.append((cfg, "uniform-bits"))
    for i, raw in enumerate(user):
        cfg = space.validate(raw, f"user configuration #{i + 1}")
        if cfg not in seen:
            seen.add(cfg)
            plan.append((cfg, "user"))
    rng = np.random.default_rng(seed)
    k = max(n - len(plan), 0)
    sampled = (
        stratified(space, k, params, rng, exclude=seen)
        if sampler == "stratified"
        else uniform_random(space, k, rng, exclude=seen)
    )
    plan += [(cfg, sampler) for cfg in sampled]
    return plan
