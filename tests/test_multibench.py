"""Multi-bench fitness (one orientation, per-bench rhos aggregated), the Pareto hall of fame
and parsimony pressure (issue 14, parts 1 and 3)."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from helpers import heldout_report_spearman
from test_honest_numbers import _write_bench

from emq.bench import Bench
from emq.cli.main import main
from emq.errors import EmqError
from emq.evolution import ProxySearch
from emq.evolution.evaluator import CandidateEvaluator, aggregate
from emq.evolution.halloffame import HallOfFame, pareto_mask
from emq.fitness import FitnessData
from emq.search_space.proxyfile import load_proxy
from emq.search_space.pset import make_space
from emq.specs import ParameterError

TIMING = {"seconds", "evals_per_s"}
SMALL = {"generations": 3, "population": 12, "random_state": 1}


def _story(est: ProxySearch) -> tuple:
    """Everything a campaign decided: its log, hall of fame, population, cache and summary choices."""
    camp = est._campaign
    log = [{k: v for k, v in r.items() if k not in TIMING} for r in est.log_]
    hof = [(r["canonical"], r["fitness"], r["orientation"]) for r in est.hall_of_fame_]
    cache = sorted(
        (k, o.fitness, o.orientation, o.reason, None if o.signature is None else o.signature.tobytes())
        for k, o in camp.cache.items()
    )
    return (
        json.dumps(log, sort_keys=True, default=str),
        hof,
        [camp.key_of(i) for i in camp.population],
        cache,
        est.best_proxy_.expression,
        est.summary_["best_handmade"],
    )


@pytest.fixture(scope="module")
def second_bench(tiny_setting):
    """A second bench of the tiny network: its held-out records as search split, and a
    target half reversed, so that proxies' signs disagree between the benches."""
    _, fd, _ = tiny_setting
    kl_search, kl_held = -fd.heldout.target, -fd.search.target
    kl_search = np.where(np.arange(len(kl_search)) % 2 == 0, kl_search, kl_search.max() + kl_search.min() - kl_search)
    return FitnessData.from_arrays(
        fd.bits, (fd.heldout.configs, kl_search), (fd.search.configs, kl_held), metric="kl", source="second.sqlite"
    )


def test_one_bench_in_a_list_is_the_plain_campaign(tiny_setting):
    stats, fd, _ = tiny_setting
    plain = ProxySearch(**SMALL).fit(fd, stats=stats)
    listed = ProxySearch(**SMALL).fit([fd], stats=[stats])
    assert _story(plain) == _story(listed)
    assert plain.summary_["best_heldout_spearman"] == listed.summary_["best_heldout_spearman"]
    assert all(len(o.per_bench) == 1 for o in plain._campaign.cache.values() if o.valid)


@pytest.mark.parametrize("how, k", [("mean", 1.0), ("min", 1.0), ("mean-std", 0.5)])
def test_two_benches_fitness_is_the_aggregate_with_one_orientation(tiny_setting, second_bench, how, k):
    stats, fd, _ = tiny_setting
    est = ProxySearch(**SMALL, aggregate=how, aggregate_k=k).fit([fd, second_bench], stats=[stats, stats])
    camp = est._campaign
    space = make_space()
    singles = [CandidateEvaluator(stats, d.for_campaign(), space, camp.config.act_samples) for d in (fd, second_bench)]
    disagree = 0
    for key, o in camp.cache.items():
        if not o.valid:
            continue
        alone = [s.evaluate(camp.tokens[key]) for s in singles]
        signed = [a.orientation * a.fitness for a in alone]
        sign = 1 if np.mean(signed) >= 0 else -1
        disagree += alone[0].orientation != alone[1].orientation
        assert o.orientation == sign
        assert o.per_bench == pytest.approx([sign * r for r in signed], abs=1e-12)
        assert o.fitness == pytest.approx(aggregate([sign * r for r in signed], how, k), abs=1e-12)
        expected = {"mean": np.mean, "min": np.min, "mean-std": lambda v: np.mean(v) - k * np.std(v)}[how](o.per_bench)
        assert o.fitness == pytest.approx(max(expected, -1.0), abs=1e-12)
        sig = np.concatenate([a.orientation * sign * a.signature for a in alone]) / math.sqrt(
            2
        )  # the phenotype of both benches
        np.testing.assert_allclose(o.signature, sig, atol=1e-6)
    assert disagree > 0  # the benches do pull orientations apart, so sharing one is tested
    for (
        row
    ) in est.hall_of_fame_:  # the reported search numbers are the campaign's, each bench's with the one orientation
        o = camp.cache[row["canonical"]]
        assert [b["search_spearman"] for b in row["benches"].values()] == pytest.approx(list(o.per_bench), abs=1e-9)
    summary = est.summary_
    assert list(summary["benches"]) == ["bench1", "second"] and "best_heldout_spearman" not in summary
    assert (
        summary["best_handmade"] == max(est.handmade_, key=lambda r: r["fitness"])["name"]
    )  # chosen on the aggregate of search x fit
    assert all(
        r["fitness"] == pytest.approx(aggregate([b["search_spearman"] for b in r["benches"].values()], how, k))
        for r in est.handmade_
    )
    assert all(np.isfinite(b["best_heldout_spearman"]) for b in summary["benches"].values())


def test_poisoned_heldout_and_report_pools_of_every_bench_leave_the_campaign_identical(tmp_path, tiny_setting):
    stats = tiny_setting[0]

    def campaign(poison: bool) -> ProxySearch:
        folder = tmp_path / ("poisoned" if poison else "clean")
        folder.mkdir()
        benches = [
            Bench.open(_write_bench(folder / f"b{seed}.sqlite", stats.num_slots, seed=seed, poison=poison))
            for seed in (0, 1)
        ]
        return ProxySearch(**SMALL, metric="kl").fit(benches, stats=[stats, stats])

    clean, poisoned = campaign(False), campaign(True)
    assert _story(clean) == _story(poisoned)
    for label in clean.summary_["benches"]:
        assert np.isfinite(clean.summary_["benches"][label]["best_heldout_spearman"])
        assert (
            poisoned.summary_["benches"][label]["best_heldout_spearman"] is None
        )  # the poison reached the report only


def test_resume_covers_every_bench_in_order(tmp_path, tiny_setting, second_bench):
    stats, fd, _ = tiny_setting
    straight = ProxySearch(**SMALL).fit([fd, second_bench], stats=[stats, stats])
    out = tmp_path / "run"
    ProxySearch(**{**SMALL, "generations": 1}, out_dir=out, checkpoint_every=1).fit(
        [fd, second_bench], stats=[stats, stats]
    )
    resumed = ProxySearch(**SMALL, out_dir=out, warm_start=True).fit([fd, second_bench], stats=[stats, stats])
    assert _story(straight) == _story(resumed)
    with pytest.raises(EmqError, match="different bench"):
        ProxySearch(**SMALL, out_dir=out, warm_start=True).fit([second_bench, fd], stats=[stats, stats])


def test_bad_multi_bench_arguments_name_the_parameter(tiny_setting, second_bench):
    stats, fd, _ = tiny_setting
    with pytest.raises(ParameterError, match="stats.*one per bench"):
        ProxySearch(**SMALL).fit([fd, second_bench], stats=[stats])
    with pytest.raises(ParameterError, match="stats.*one per bench"):
        ProxySearch(**SMALL).fit([fd, second_bench], stats=stats)
    with pytest.raises(ParameterError, match="bench"):
        ProxySearch(**SMALL).fit([], stats=[])
    for params in (
        {"aggregate": "median"},
        {"aggregate_k": -1.0},
        {"aggregate_k": float("nan")},
        {"parsimony": -0.1},
        {"parsimony": float("inf")},
    ):
        with pytest.raises(ParameterError, match=next(iter(params))):
            ProxySearch(**SMALL, **params).config()


def test_cli_searches_two_shipped_benches(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(
            [
                "search",
                "--bench",
                "default",
                "--bench",
                "vgg-digits",
                "--generations",
                "1",
                "--population",
                "12",
                "--out",
                str(out),
                "--json",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert list(summary["benches"]) == ["default", "vgg-digits"]
    for b in summary["benches"].values():
        assert b["best_handmade_heldout_spearman"] is not None
    best_proxy = load_proxy(out / "best_proxy.json")
    for name, b in summary["benches"].items():  # the reported numbers, recomputed from the raw bench arrays
        assert b["best_heldout_spearman"] == pytest.approx(
            heldout_report_spearman(best_proxy, name, b["metric"]), abs=1e-9
        )
    assert summary["aggregate"] == "mean-std" and summary["best_latex"] and summary["pareto"]
    rows = list(csv.DictReader((out / "hall_of_fame.csv").open()))
    assert rows[0]["expression"] == summary["best_expression"]
    assert {"heldout_spearman:default", "heldout_spearman:vgg-digits", "fitness", "pareto"} <= set(rows[0])
    assert float(rows[0]["heldout_spearman:vgg-digits"]) == pytest.approx(
        summary["benches"]["vgg-digits"]["best_heldout_spearman"]
    )
    best = json.loads((out / "best_proxy.json").read_text())
    assert list(best["fitness"]["benches"]) == ["default", "vgg-digits"] and len(best["provenance"]["benches"]) == 2


def test_cli_prints_the_best_proxy_as_latex(tmp_path, capsys):
    assert (
        main(
            [
                "search",
                "--bench",
                "vgg-digits",
                "--generations",
                "1",
                "--population",
                "8",
                "--out",
                str(tmp_path / "run"),
                "--parsimony",
                "0.01",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (
        f"LaTeX: p_l(b) = {summary['best_latex']}" in text and "Pareto front" in text and summary["parsimony"] == 0.01
    )


def test_parsimony_zero_selects_on_fitness_and_pressure_gives_smaller_proxies(tiny_setting):
    stats, fd, _ = tiny_setting
    plain = ProxySearch(**SMALL, parsimony=0.0).fit(fd, stats=stats)
    camp = plain._campaign
    assert all(ind.fitness.values[0] == camp.cache[camp.key_of(ind)].fitness for ind in camp.population)
    assert [r["fitness"] for r in plain.hall_of_fame_] == sorted(
        (r["fitness"] for r in plain.hall_of_fame_), reverse=True
    )
    pressed = ProxySearch(**SMALL, parsimony=0.2).fit(fd, stats=stats)
    # the pressure must show: a smaller best proxy and a population of smaller formulas than without it
    assert len(pressed.best_proxy_.tokens) < len(plain.best_proxy_.tokens)
    mean_size = lambda est: np.mean([len(ind) for ind in est._campaign.population])  # noqa: E731
    assert mean_size(pressed) < mean_size(plain)
    penalised = [r["fitness"] - 0.2 * r["size"] for r in pressed.hall_of_fame_]
    assert penalised[0] == max(penalised)  # the best is the best under the pressure
    camp = pressed._campaign
    assert all(
        ind.fitness.values[0] == pytest.approx(camp.cache[camp.key_of(ind)].fitness - 0.2 * len(ind))
        for ind in camp.population
    )


def test_pareto_front_is_non_dominated_and_sorted(tiny_setting, second_bench):
    stats, fd, _ = tiny_setting
    for est in (
        ProxySearch(**SMALL).fit(fd, stats=stats),
        ProxySearch(**SMALL, hof_size=40).fit([fd, second_bench], stats=[stats, stats]),
    ):
        hof = est.hall_of_fame_
        front = hof.pareto()
        assert len(front) >= 1 and [r["size"] for r in front] == sorted(r["size"] for r in front)
        assert [r["canonical"] for r in hof if r["pareto"]] == [
            r["canonical"] for r in sorted(front, key=lambda r: r["rank"])
        ]
        for r in hof:
            dominated = any(
                o["size"] <= r["size"]
                and o["fitness"] >= r["fitness"]
                and (o["size"] < r["size"] or o["fitness"] > r["fitness"])
                for o in hof
            )
            assert r["pareto"] == (not dominated)
        assert [p["rank"] for p in est.summary_["pareto"]] == [r["rank"] for r in front]
        assert all(set(p["heldout_spearman"]) == set(hof[0]["benches"]) for p in est.summary_["pareto"])


def test_pareto_mask_ties_and_missing_fitness():
    assert pareto_mask([1, 2, 2, 3, 3, 4], [0.5, 0.7, 0.7, 0.6, 0.9, float("nan")]) == [
        True,
        True,
        True,
        False,
        True,
        False,
    ]
    assert pareto_mask([], []) == []
    rows = [{"size": s, "fitness": f, "rank": i} for i, (s, f) in enumerate([(5, 0.9), (1, 0.2), (3, 0.95), (2, 0.2)])]
    assert [r["rank"] for r in HallOfFame(rows).pareto()] == [1, 2]


def test_a_one_bench_campaign_saved_under_another_aggregate_still_resumes(tiny_setting, second_bench, tmp_path):
    stats, fd, _ = tiny_setting
    ProxySearch(**SMALL, aggregate="mean", out_dir=tmp_path / "one").fit(fd, stats=stats)
    more = ProxySearch(**{**SMALL, "generations": 4}, out_dir=tmp_path / "one", warm_start=True).fit(
        fd, stats=stats
    )  # default aggregate now
    assert more.n_generations_ == 4
    ProxySearch(**SMALL, aggregate="mean", out_dir=tmp_path / "two").fit([fd, second_bench], stats=[stats, stats])
    with pytest.raises(
        EmqError, match="aggregate"
    ):  # with two benches the aggregate is the fitness: it must not change
        ProxySearch(**{**SMALL, "generations": 4}, out_dir=tmp_path / "two", warm_start=True).fit(
            [fd, second_bench], stats=[stats, stats]
        )
