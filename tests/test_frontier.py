"""The cost-quality frontier (emq.frontier, `emq frontier`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import spearmanr

from emq.bench import Bench
from emq.cli.main import main
from emq.frontier import FrontierStudy, _crossover
from emq.specs import oriented
from emq.supervised import OneHotRidge

BENCHES = ["vgg-digits", "mobilenetv2-digits"]


@pytest.fixture(scope="module")
def study():
    return FrontierStudy(BENCHES, budgets=(0, 10, 40), draws=2, whole_config=False, resamples=100).run()


def test_a_fitted_point_is_ridge_on_k_search_configurations_scored_on_heldout_x_report(study):
    """Recomputed here from the bench's raw arrays: the seeded draw among *search* configurations,
    ridge on their fit-pool metric, Spearman with the report-pool metric on held-out configurations."""
    row = next(
        r
        for r in study.rows
        if r["bench"] == "mobilenetv2-digits" and r["method"] == "ridge-onehot" and r["k"] == 40 and r["draw"] == 1
    )
    b = Bench.open("mobilenetv2-digits")
    metric = b.default_metric
    fit = oriented(metric, b.pool_metric(metric, "fit"))
    report = oriented(metric, b.pool_metric(metric, "report"))
    ok = np.isfinite(fit) & np.isfinite(report)
    search = np.flatnonzero(ok & ~b.heldout)
    held = np.flatnonzero(ok & b.heldout)
    picked = np.random.default_rng([0, 1, 40, 1]).choice(search, size=40, replace=False)
    model = OneHotRidge(b.bits).fit(b.configs[picked], fit[picked])
    assert row["rho"] == pytest.approx(spearmanr(model.predict(b.configs[held]), report[held])[0], abs=1e-9)
    assert row["cost_ptq_evals"] == 40 and row["low"] <= row["rho"] <= row["high"]


def test_every_network_has_zero_budget_choices_fitted_curves_and_a_choice_made_on_the_other_network(study):
    for bench in BENCHES:
        net = study.networks[bench]
        other = next(b for b in BENCHES if b != bench)
        measured = ("layer-kl", "layer-kl-mid")
        assert net["choice"] in (net["fixed"], *measured) and net["fixed"] not in measured
        methods = {r["method"] for r in study.rows if r["bench"] == bench}
        assert {net["fixed"], *measured, "ridge-onehot", "ridge-proxies"} <= methods
        ks = {r["k"] for r in study.rows if r["bench"] == bench and r["method"] == "ridge-onehot"}
        assert ks == {10, 40}
        assert all(r["paired"]["baseline"] == net["choice"] for r in study.rows if r["bench"] == bench and r["paired"])
        assert other in study.settings["benches"]


def test_crossover_is_the_first_budget_where_half_the_draws_beat_the_choice():
    def row(k, low):
        return {"bench": "b", "method": "m", "k": k, "paired": {"estimate": low + 0.01, "low": low, "high": low + 0.02}}

    rows = [row(10, -0.1), row(10, 0.01), row(10, -0.2), row(25, 0.02), row(25, 0.03), row(25, -0.1)]
    assert _crossover(rows, "b", "m", 3)["k"] == 25
    assert _crossover(rows[:3], "b", "m", 3) is None


def test_frontier_command_writes_its_files(tmp_path, capsys):
    out = tmp_path / "f"
    args = ["frontier", "--benches", ",".join(BENCHES), "--budgets", "0,10", "--draws", "1", "--whole-limit", "0"]
    assert main([*args, "--resamples", "50", "--out", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert json.loads((out / "frontier.json").read_text()) == doc
    assert (out / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "frontier_vgg-digits.png").is_file() and (out / "frontier.csv").read_text().startswith("bench,method")


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--budgets", "0,-5"], "--budgets"),
        (["--budgets", "ten"], "--budgets"),
        (["--draws", "0"], "--draws"),
        (["--evolved", "vgg-digits=/no/such.json"], "--evolved"),
        (["--warm", "vgg-digits=/no/such/campaign"], "--warm"),
        (["--warm", "vgg-digits"], "--warm"),
        (["--warm", "nosuchbench=/tmp"], "--warm"),
    ],
)
def test_frontier_bad_input_is_one_line_and_exit_2(tmp_path, capsys, extra, message):
    out = tmp_path / "f"
    assert main(["frontier", "--benches", ",".join(BENCHES), *extra, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_frontier_needs_two_benches(tmp_path, capsys):
    assert main(["frontier", "--benches", "vgg-digits", "--out", str(tmp_path / "f")]) == 2
    assert "benches" in capsys.readouterr().err


@pytest.mark.parametrize(
    "tokens,pays",
    [
        ([("p", "add_s"), ("t", "MKLM"), ("t", "MKL")], ("layer-kl", "layer-kl-mid")),
        ([("p", "mul_s"), ("p", "l2_y"), ("t", "GY"), ("t", "MKL")], ("fixed", "layer-kl")),
        ([("p", "l1_w"), ("t", "E")], ("fixed",)),
    ],
)
def test_an_evolved_proxy_costs_what_its_tree_reads(tmp_path, tokens, pays):
    """On a network without a bench, a formula costs the single-slot runs of every measured table it reads
    (layer-kl's, layer-kl-mid's) and the statistics (what the fixed hand-made proxy costs) if it reads any."""
    from emq.search_space.proxyfile import EvolvedProxy, save_proxy

    path = save_proxy(EvolvedProxy(tokens, -1, name="tree"), tmp_path / "p.json")
    study = FrontierStudy(
        BENCHES, budgets=(0,), draws=1, evolved={"vgg-digits": path}, whole_config=False, resamples=100
    ).run()
    cost = {r["method"]: r["cost_ptq_evals"] for r in study.rows if r["bench"] == "vgg-digits" and r["k"] == 0}
    cost["fixed"] = cost[study.networks["vgg-digits"]["fixed"]]
    assert all(cost[m] > 0 for m in ("fixed", "layer-kl", "layer-kl-mid"))
    assert cost["evolved"] == pytest.approx(sum(cost[m] for m in pays))


def test_a_warm_started_point_is_a_short_campaign_seeded_with_the_other_networks_hall_of_fame(tmp_path):
    """evolved-warm, recomputed: a campaign on vgg-digits (never on mobilenetv2-digits) gives the
    hall of fame; a short campaign seeded with it on k drawn search configurations' fit-pool
    metric gives the proxy whose held-out x report rho the row holds."""
    from emq.bench_setup import BenchSetup
    from emq.evolution import ProxySearch, search
    from emq.evolution.checkpoint import hall_of_fame
    from emq.fitness import FitnessData
    from emq.frontier import WARM, WARM_CAMPAIGN, WARM_FIELDS
    from emq.proxy import table_scores

    search("vgg-digits", generations=1, population=8, out=tmp_path / "camp")
    study = FrontierStudy(
        BENCHES, budgets=(0, 40), draws=1, warm={"mobilenetv2-digits": tmp_path / "camp"}, whole_config=False
    ).run()
    rows = [r for r in study.rows if r["method"] == WARM]
    assert {(r["bench"], r["k"]) for r in rows} == {("mobilenetv2-digits", 40)}
    b = Bench.open("mobilenetv2-digits")
    metric = b.default_metric
    raw = b.pool_metric(metric, "fit")
    fit, report = oriented(metric, raw), oriented(metric, b.pool_metric(metric, "report"))
    ok = np.isfinite(fit) & np.isfinite(report)
    search_rows, held = np.flatnonzero(ok & ~b.heldout), np.flatnonzero(ok & b.heldout)
    picked = np.random.default_rng([0, 1, 40, 0]).choice(search_rows, size=40, replace=False)
    stats = BenchSetup.of(b).network_stats(progress=False)
    data = FitnessData.from_arrays(b.bits, (b.configs[picked], raw[picked]), None, metric=metric)
    trees = hall_of_fame(tmp_path / "camp" / "checkpoint.npz")
    params = {k: getattr(WARM_CAMPAIGN, k) for k in WARM_FIELDS}
    best = ProxySearch(**params, random_state=0, seed_trees=trees, metric=metric).fit(data, stats=stats)
    proxy = best.best_proxy_
    idx = np.searchsorted(list(stats.bits), b.configs[held])
    scores = proxy.orientation * table_scores(proxy.stats_table(stats).cpu().numpy(), idx)
    assert rows[0]["rho"] == pytest.approx(spearmanr(scores, report[held])[0], abs=1e-9)
    assert rows[0]["cost_ptq_evals"] > 40  # k plus the statistics it reads
    assert WARM in study.networks["mobilenetv2-digits"]["crossover"]
