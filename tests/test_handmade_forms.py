"""Every hand-made form the space seeds ranks every shipped bench exactly as its registry proxy.

The forms (emq.search_space.pset.HANDMADE) are what every campaign's initial population starts
from, so a form that drifts from its proxy would silently seed a different proxy. Spearman
over all of a bench's configurations must be 1.0 (a form equals its proxy's table up to a
positive constant factor, tied layers included). Statistics: the bundled file where the bench
ships a complete one, else computed from the data that ships with scikit-learn (default and stratified
share one model and one computation). That computation takes minutes (Hessians of 22 layers),
so it goes through the user's statistics cache (~/.cache/emq, what `emq score --bench default`
fills; entries are keyed by weights, data and settings, so sharing it cannot change a value):
a warm cache makes it a load of seconds.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from emq.baselines import PROXIES, get_proxy
from emq.bench import Bench
from emq.bench.bundles import BUNDLES
from emq.bench_setup import BenchSetup
from emq.proxy import ProxyContext, table_scores
from emq.search_space.evaluate import TableEvaluator
from emq.search_space.netstats import NetworkStats
from emq.search_space.proxyfile import EvolvedProxy
from emq.search_space.pset import HANDMADE, make_space

SHIPPED = ("default", "stratified", "vgg-digits", "mobilenetv2-digits", "resnet20-fashion")
_LOADED: dict[str, tuple[Bench, NetworkStats, TableEvaluator]] = {}


def _bench(name: str) -> tuple[Bench, NetworkStats, TableEvaluator]:
    """Bench, statistics and a table evaluator over the default space, made once per bench."""
    if name not in _LOADED:
        bench = Bench.open(name)
        stats = BenchSetup.of(bench).network_stats(progress=False)  # as emq score gets them (bundled)
        space = make_space("measured")  # the bundles carry the measured sensitivity the measured forms read
        _LOADED[name] = bench, stats, TableEvaluator(stats, space.terminals, space.prims, probe_layers=1)
    return _LOADED[name]


@pytest.fixture(scope="module", params=SHIPPED)
def shipped(request) -> tuple[str, Bench, NetworkStats, TableEvaluator]:
    if not BUNDLES[request.param].path.is_file():
        pytest.skip(f"the shipped bench {request.param} is not in this installation")
    return (request.param, *_bench(request.param))


def form_and_proxy_scores(
    tokens, key: str, bench: Bench, stats: NetworkStats, ev: TableEvaluator
) -> tuple[np.ndarray, np.ndarray]:
    """The form's and the registry proxy's scores of every configuration of the bench."""
    ctx = ProxyContext(None, tuple(bench.bits), BenchSetup.of(bench).ptq, stats)  # the bench's PTQ: its sensitivity
    idx = ctx.bit_index(bench.configs)
    return table_scores(ev.table(tokens).numpy(), idx), get_proxy(key).score_configs(ctx, bench.configs)


def test_the_default_space_seeds_every_statistics_only_form_and_the_measured_preset_all():
    """FD, SG and every terminal a statistics-only form needs are in the default space, so no form is
    left out; the measured sensitivity's forms need the measured preset (L x B single-slot PTQ runs)."""
    measured = {k for k, (_, tokens) in HANDMADE.items() if not EvolvedProxy(tokens).statistics_only}
    assert measured == {"layer-kl", "layer-loss", "layer-sqnr", "layer-kl-mid"}
    assert list(make_space().handmade()) == [k for k in HANDMADE if k not in measured]
    assert list(make_space("measured").handmade()) == list(HANDMADE)
    assert all(PROXIES[key].formula == key for key in HANDMADE)


@pytest.mark.parametrize("key", list(HANDMADE))
def test_seeded_form_ranks_the_bench_as_its_proxy(key, shipped):
    name, bench, stats, ev = shipped
    tokens = make_space("measured").handmade()[key][1]
    form, proxy = form_and_proxy_scores(tokens, key, bench, stats, ev)
    assert np.isfinite(form).all() and np.ptp(proxy) > 0
    rho = spearmanr(form, proxy).statistic
    assert rho == pytest.approx(1.0, abs=1e-12), f"{key} on {name}: Spearman {rho}"


def test_a_wrong_form_is_caught():
    """The check above can fail: swapping one operator of a form changes the ranking."""
    loaded = _bench("resnet20-fashion")
    wrong = [("p", "mul_s"), ("p", "l1_w"), ("p", "add_w"), ("t", "G"), ("t", "W"), ("t", "b")]  # snip with + for *
    form, proxy = form_and_proxy_scores(wrong, "snip", *loaded)
    assert spearmanr(form, proxy).statistic < 1.0 - 1e-6
    untied = [("t", "b")]  # bitsum without the slot share counts tied slots twice
    form, proxy = form_and_proxy_scores(untied, "bitsum", *loaded)
    assert spearmanr(form, proxy).statistic < 1.0 - 1e-6
