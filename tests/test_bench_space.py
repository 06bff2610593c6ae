"""Configuration spaces, samplers and the search / held-out split (no PTQ: fast)."""

import itertools

import numpy as np
import pytest

from emq.bench import Bench
from emq.bench.sampling import plan_configs, stratified, uniform_random
from emq.bench.space import ConfigSpace, config_text, is_heldout, parse_config
from emq.errors import EmqError

NAMES = tuple(f"s{i}" for i in range(8))
PARAMS = np.array([10, 10, 40, 40, 160, 160, 640, 40], dtype=float)


def test_parse_config_accepts_emqapi_forms():
    assert parse_config("[4, 3, 2]") == (4, 3, 2)
    assert parse_config("4,3,2") == (4, 3, 2)
    assert parse_config((4, 3, 2)) == parse_config([4, 3, 2]) == parse_config(np.array([4, 3, 2]))
    with pytest.raises(EmqError, match="integers"):
        parse_config("4,x,2")
    with pytest.raises(EmqError, match="not an integer"):
        parse_config([4, 3.5])


def test_space_validation_messages():
    space = ConfigSpace(NAMES, (2, 3, 4), {0: 8})
    assert space.validate("8,2,3,4,2,3,4,2") == (8, 2, 3, 4, 2, 3, 4, 2)
    with pytest.raises(EmqError, match="slot 0 \\(s0\\) has 4 bits; allowed: 8"):
        space.validate("4,2,3,4,2,3,4,2")
    with pytest.raises(EmqError, match="7 bit-widths, but the model has 8 slots"):
        space.validate("8,2,3,4,2,3,4")
    with pytest.raises(EmqError, match="outside 1..8"):
        ConfigSpace(NAMES, (2, 9))
    with pytest.raises(EmqError, match="duplicates"):
        ConfigSpace(NAMES, (2, 2))
    with pytest.raises(EmqError, match="pinned slot 12"):
        ConfigSpace(NAMES, (2, 3), {12: 4})
    assert space.uniform_configs() == [(8,) + (b,) * 7 for b in (2, 3, 4)]
    assert ConfigSpace.from_json(space.to_json()) == space


def test_samplers_are_deterministic_distinct_and_respect_pins():
    space = ConfigSpace(NAMES, (2, 3, 4), {7: 8})
    a = uniform_random(space, 200, np.random.default_rng(3))
    b = uniform_random(space, 200, np.random.default_rng(3))
    assert a == b and len(set(a)) == 200
    assert all(c[7] == 8 and set(c[:7]) <= {2, 3, 4} for c in a)
    s = stratified(space, 200, PARAMS, np.random.default_rng(3))
    assert s == stratified(space, 200, PARAMS, np.random.default_rng(3))
    assert len(set(s)) == 200 and all(c[7] == 8 for c in s)
    with pytest.raises(EmqError, match="only 2187"):
        uniform_random(space, 3000, np.random.default_rng(0))


def test_stratified_covers_the_size_range_evenly():
    names = tuple(f"s{i}" for i in range(20))
    params = np.random.default_rng(0).integers(10, 1000, 20).astype(float)
    space = ConfigSpace(names, (2, 3, 4))
    lo, hi = 2 * params.sum(), 4 * params.sum()

    def bin_counts(cfgs):
        size = np.array(cfgs) @ params
        return np.histogram(size, bins=10, range=(lo, hi))[0]

    strat = bin_counts(stratified(space, 300, params, np.random.default_rng(1)))
    unif = bin_counts(uniform_random(space, 300, np.random.default_rng(1)))
    # uniform sampling leaves the extreme bins (near) empty; stratified fills every bin
    assert strat.min() >= 20 and strat.max() <= 40
    assert unif[0] + unif[-1] < 5


def test_plan_includes_uniform_and_user_configs_without_duplicates():
    space = ConfigSpace(NAMES, (2, 3, 4))
    user = ["2,2,2,2,2,2,2,2", "4,4,4,4,2,2,2,2"]
    plan = plan_configs(space, n=50, seed=7, params=PARAMS, sampler="stratified", user=user)
    cfgs = [c for c, _ in plan]
    assert len(plan) == 50 and len(set(cfgs)) == 50
    assert [src for _, src in plan[:4]] == ["uniform-bits"] * 3 + ["user"]
    assert plan == plan_configs(space, n=50, seed=7, params=PARAMS, sampler="stratified", user=user)
    assert plan != plan_configs(space, n=50, seed=8, params=PARAMS, sampler="stratified", user=user)
    with pytest.raises(EmqError, match="user configuration #1"):
        plan_configs(space, n=10, seed=0, params=PARAMS, sampler="uniform", user=["5,2,2,2,2,2,2,2"])
    with pytest.raises(EmqError, match="sampler="):
        plan_configs(space, n=10, seed=0, params=PARAMS, sampler="latin")


def test_heldout_split_is_a_stable_fifth():
    cfgs = uniform_random(ConfigSpace(tuple(f"s{i}" for i in range(20)), (2, 3, 4)), 2000, np.random.default_rng(0))
    flags = [is_heldout(config_text(c)) for c in cfgs]
    assert 0.16 < np.mean(flags) < 0.24
    # membership is a pure function of the text, the same in every process and release: the
    # held-out fifth of all 81 four-slot configurations is pinned, and so are the shipped
    # benches' splits (782 / 218 and 816 / 184 records in the README)
    four = [config_text(c) for c in itertools.product((2, 3, 4), repeat=4)]
    assert [c for c in four if is_heldout(c)] == PINNED_HELDOUT
    assert [int(Bench.open(name).heldout.sum()) for name in ("default", "stratified")] == [218, 184]


PINNED_HELDOUT = [
    "2,2,4,2",
    "2,2,4,3",
    "2,3,2,2",
    "2,4,3,4",
    "2,4,4,2",
    "3,2,2,3",
    "3,2,3,4",
    "3,3,2,4",
    "3,3,4,4",
    "3,4,2,2",
    "3,4,3,4",
    "4,2,2,3",
    "4,2,4,3",
    "4,3,2,2",
    "4,3,3,3",
    "4,3,4,3",
    "4,4,4,4",
]
