"""Common checks every registered proxy must pass (in the spirit of scikit-learn's check_estimator).

A new proxy file in emq/baselines is picked up by the registry and therefore by these
checks without editing this file.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from test_baselines import BITS, tiny_target

from emq.baselines import PROXIES, get_proxy, register_proxy
from emq.baselines.registry import check_complete
from emq.errors import EmqError
from emq.proxy import ProxyContext, SeparableProxy, WholeConfigProxy
from emq.quant import PTQSettings
from emq.search_space.evaluate import TableEvaluator, tree_terminals
from emq.search_space.primitives import MEASURED_TERMINALS
from emq.search_space.pset import HANDMADE
from emq.search_space.stats import StatsSettings, compute_stats
from emq.sensitivity import ensure_measured

FAST = StatsSettings(
    calib_size=32,
    batch_size=16,
    hessian_images=16,
    hessian_batch_size=16,
    hessian_min_probes=2,
    hessian_max_probes=4,
    eig_iters=2,
    act_cap=16,
    act_bits=6,
)
CONFIGS = np.array([[2, 3, 4], [4, 4, 4], [2, 2, 2], [3, 4, 2]])


@pytest.fixture(scope="module")
def setting():
    target = tiny_target()
    stats = compute_stats(target, bits=BITS, settings=FAST, use_cache=False)
    target.model.train()  # a proxy must not switch the caller's model to eval (or anything else)
    return target, stats


def _fingerprint(model: torch.nn.Module) -> dict:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grad": [p.grad is None for p in model.parameters()],
        "hooks": [len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()],
    }


@pytest.mark.parametrize("name", list(PROXIES))
def test_common_checks(name, setting):
    target, stats = setting
    cls = PROXIES[name]
    proxy = get_proxy(name)
    assert proxy.name == name and proxy.orientation in (1, -1) and proxy.description and proxy.cost
    assert isinstance(proxy, SeparableProxy if proxy.separable else WholeConfigProxy)
    before = _fingerprint(target.model)

    def fresh() -> ProxyContext:  # nothing cached from an earlier call
        return ProxyContext(target, BITS, PTQSettings(act_bits=6, calib_size=32), stats)

    def scores(configs: np.ndarray) -> np.ndarray:
        return get_proxy(name).score_configs(fresh(), configs)

    s = scores(CONFIGS)
    assert s.shape == (len(CONFIGS),) and s.dtype == np.float64 and np.isfinite(s).all()
    perm = np.array([2, 0, 3, 1])
    np.testing.assert_allclose(scores(CONFIGS[perm]), s[perm], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(
        get_proxy(name).oriented_scores(fresh(), CONFIGS), cls.orientation * s, rtol=1e-9, atol=1e-12
    )
    if proxy.separable:
        table = proxy.table(fresh())
        assert table.shape == (stats.num_slots, len(BITS)) and np.isfinite(table).all()
        idx = np.searchsorted(BITS, CONFIGS)
        np.testing.assert_allclose(table[np.arange(stats.num_slots)[None, :], idx].sum(1), s, rtol=1e-12)
    after = _fingerprint(target.model)
    assert after.keys() == before.keys()
    for k in ("training", "requires_grad", "grad", "hooks"):
        assert after[k] == before[k], f"{name} changed the model's {k}"
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v), f"{name} changed the model's {k}"


def test_space_formulas_agree_with_their_proxies(setting):
    """Each HANDMADE form ranks like its registered proxy: a positive multiple of its table (no tied layers here)."""
    target, stats = setting
    assert len(set(stats.layer_slot)) == len(stats.layer_slot)
    owners = {p.formula: n for n, p in PROXIES.items() if p.formula}
    assert sorted(owners) == sorted(HANDMADE) and all(owners[k] == k for k in owners)  # one name per concept
    measured = ensure_measured(
        dataclasses.replace(stats, meta=dict(stats.meta)), target, None, terminals=list(MEASURED_TERMINALS)
    )
    ev = TableEvaluator(measured)
    for key, (_, tokens) in HANDMADE.items():
        formula = ev.table(tokens).numpy()
        table = get_proxy(key).table(ProxyContext(target, BITS, None, stats))
        ratio = formula / table
        assert ratio.min() > 0 and ratio.max() == pytest.approx(ratio.min(), rel=1e-6), key


def test_registry_refuses_incomplete_or_clashing_proxies():
    class Base(SeparableProxy):
        description, cost = "a test proxy", "free"

        def table(self, ctx):
            return np.zeros((1, len(ctx.bits)))

    def make(**attrs) -> type:
        return type("Probe", (Base,), attrs)

    with pytest.raises(EmqError, match="set name, description"):
        register_proxy(make(name="probe", orientation=0))  # refused, never silently left out
    with pytest.raises(EmqError, match="proxy 'kl' is defined twice"):
        register_proxy(make(name="kl"))
    with pytest.raises(EmqError, match="formula 'nope'"):
        register_proxy(make(name="probe", formula="nope"))
    stray = make(name="stray", __module__="emq.baselines.stray")
    with pytest.raises(EmqError, match="emq.baselines.stray.Probe are not registered"):
        check_complete([stray])
    assert "probe" not in PROXIES and "stray" not in PROXIES
    check_complete(list(PROXIES.values()))


def test_registry_order_is_the_declaration_order():
    """Reports list proxies in declaration order: modules in `emq.baselines.FIRST`'s order, classes as
    written in each."""
    assert list(PROXIES) == [
        "hawq-v1",
        "hawq-v2",
        "fisher",
        "fisher-batch",
        "snip",
        "synflow",
        "synflow-signed",
        "qe",
        "ompq",
        "bitsum",
        "size",
        "bitops",
        "emq-published",
        "gmpq",
        "seam",
        "kl",
        "layer-kl",
        "layer-loss",
        "layer-sqnr",
        "layer-kl-mid",
        "emq-zoo",
    ]


def test_a_measured_evolved_proxy_measures_under_the_contexts_settings_and_leaves_its_statistics_alone(setting):
    """emq-zoo reads the measured sensitivity: scored in a context of some PTQ settings it uses the sensitivity
    measured under those (the one layer-kl uses there), not one an earlier context measured under others, and
    it attaches nothing to the caller's statistics."""
    target, stats = setting
    zoo = get_proxy("emq-zoo")
    keys = set(stats.meta)
    for ptq in (PTQSettings(act_bits=6, calib_size=32), PTQSettings()):
        ctx = ProxyContext(target, BITS, ptq, stats)
        assert set(stats.meta) == keys
        copy = dataclasses.replace(stats, meta=dict(stats.meta))
        measured = ensure_measured(copy, target, ptq, terminals=tree_terminals(zoo.tokens))
        form = TableEvaluator(measured).table(zoo.tokens).numpy()
        np.testing.assert_allclose(zoo.table(ctx), form, rtol=1e-12)
        # data is needed only where the statistics do not carry this sensitivity
        assert zoo.needs_data_for(ctx) and not zoo.needs_data_for(ProxyContext(target, BITS, ptq, measured))
        get_proxy("layer-kl").table(ctx)  # the same measurement: the context's, from the cache
        assert ctx.cache["sensitivity"].tables["kl"] == pytest.approx(
            np.asarray(measured.meta["sensitivity"]["tables"]["kl"])
        )
    assert set(stats.meta) == keys


def test_an_evolved_proxy_costs_every_measured_table_it_reads(setting):
    """A tree over MKL and MKLM pays for both measurements (the single-slot runs of layer-kl and of
    layer-kl-mid, summed); one over MKL for layer-kl's alone; a statistics-only tree costs nothing of its own."""
    from emq.search_space.proxyfile import EvolvedProxy

    target, stats = setting
    ctx = ProxyContext(target, BITS, PTQSettings(calib_size=32), stats)
    kl, mid = (get_proxy(n).setup_cost(ctx) for n in ("layer-kl", "layer-kl-mid"))
    both = EvolvedProxy([("p", "add_s"), ("t", "MKLM"), ("t", "MKL")], -1).setup_cost(ctx)
    assert both["measurements"] == 2
    for key in ("ptq_equivalents", "single_slot_evaluations", "seconds"):
        assert both[key] == pytest.approx(kl[key] + mid[key]) and kl[key] > 0 and mid[key] > 0
    for key in ("ptq_evaluation_seconds", "ptq_evaluation_test_images"):  # the unit, not summed
        assert both[key] == kl[key]
    one = EvolvedProxy([("p", "sqrt_s"), ("t", "MKL")], -1).setup_cost(ctx)
    assert one["measurements"] == 1 and one["ptq_equivalents"] == pytest.approx(kl["ptq_equivalents"])
    assert EvolvedProxy([("p", "l1_w"), ("t", "W")], 1).setup_cost(ctx) is None
    assert get_proxy("emq-zoo").setup_cost(ctx)["ptq_equivalents"] == pytest.approx(both["ptq_equivalents"])


def test_variants_are_labelled_and_never_faithful():
    """A variant of a published method keeps its own name, says so, and is never picked as
    the best hand-made proxy (emq.ranking compares against faithful proxies only)."""
    variants = {name for name in PROXIES if not get_proxy(name).faithful}
    assert variants == {"fisher-batch", "synflow-signed", "layer-kl-mid"}
    for name in variants:
        assert "not" in get_proxy(name).description
    assert {"fisher", "synflow"} <= set(PROXIES) - variants
