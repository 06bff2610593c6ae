"""Transfer studies: the leave-one-network-out protocol and its report."""

from __future__ import annotations

import json
import shutil
import sqlite3
from contextlib import closing

import numpy as np
import pytest
from helpers import heldout_report_spearman

from emq.bench import Bench
from emq.bench.bundles import shipped_bench_path
from emq.bench.outcomes import decode, encode
from emq.errors import EmqError
from emq.search_space.proxyfile import load_proxy
from emq.transfer import Campaign, TransferStudy, plan

TINY = {"seeds": [0], "generations": 2, "population": 12, "whole_config": (), "resamples": 50}


def _copy(name, dest):
    shutil.copyfile(shipped_bench_path(name), dest)
    return str(dest)


def _poison(path):
    """Every per-image outcome of the bench (what every pool metric is computed from) becomes NaN."""
    with closing(sqlite3.connect(path)) as con, con:
        rows = con.execute("SELECT config, outcomes FROM records").fetchall()
        for config, blob in rows:
            o = decode(blob)
            nan = np.full(o.kl.shape, np.nan)
            blob = encode({"correct": o.correct, "loss": nan, "kl": nan})
            con.execute("UPDATE records SET outcomes = ? WHERE config = ?", (blob, config))


def test_plan_groups_benches_by_network():
    campaigns = plan(["default", "stratified", "vgg-digits"], [0, 1])
    loo = [c for c in campaigns if c.protocol == "leave-one-out"]
    assert [(c.train, c.test) for c in loo[:2]] == [
        (("vgg-digits",), ("default", "stratified")),
        (("default", "stratified"), ("vgg-digits",)),
    ]
    assert len(loo) == 4 and {c.seed for c in loo} == {0, 1}
    assert len([c for c in campaigns if c.protocol == "single"]) == 6


def test_plan_leaves_one_task_out():
    campaigns = plan(["default", "resnet20-fashion", "vgg-digits"], [0], ("leave-one-task-out",))
    assert [(c.train, c.test) for c in campaigns] == [
        (("resnet20-fashion",), ("default", "vgg-digits")),
        (("default", "vgg-digits"), ("resnet20-fashion",)),
    ]
    with pytest.raises(EmqError, match="two tasks"):
        plan(["default", "vgg-digits"], [0], ("leave-one-task-out",))


def _tag(cell):
    return Campaign(cell["protocol"], tuple(cell["train"]), (cell["test"],), cell["seed"]).tag


def _fingerprint(run):
    log = [{k: v for k, v in rec.items() if k not in ("seconds", "evals_per_s")} for rec in run["log"]]
    return run["proxy"].expression, run["summary"]["best_fitness"], log


def test_a_poisoned_heldout_bench_leaves_its_leave_one_out_campaign_identical(tmp_path):
    clean = _copy("vgg-digits", tmp_path / "vgg.sqlite")
    poisoned = _copy("vgg-digits", tmp_path / "vgg_poisoned.sqlite")
    _poison(poisoned)
    runs = {}
    for label, vgg in (("clean", clean), ("poisoned", poisoned)):
        study = TransferStudy(["default", "stratified", vgg], protocols=("leave-one-out",), **TINY)
        held = next(c for c in study.plan if c.test == (vgg,))
        assert held.train == ("default", "stratified")  # a multi-bench campaign that must not see the held-out bench
        runs[label] = study.run_campaign(held)
    assert _fingerprint(runs["clean"]) == _fingerprint(runs["poisoned"])
    study = TransferStudy(["default", poisoned], protocols=("single",), **TINY)
    with pytest.raises(EmqError):  # the poison is potent: a campaign that does search on it fails
        study.run_campaign(next(c for c in study.plan if c.train == (poisoned,)))


def test_transfer_report_files_and_numbers(tmp_path, capsys):
    from emq.cli.main import main

    out = tmp_path / "t"
    code = main(
        [
            "transfer",
            "--benches",
            "default,vgg-digits",
            "--seeds",
            "0,1",
            "--generations",
            "1",
            "--population",
            "12",
            "--protocols",
            "leave-one-out",
            "--whole-config",
            "none",
            "--resamples",
            "50",
            "--out",
            str(out),
            "--json",
        ]
    )
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert json.loads((out / "transfer.json").read_text()) == doc
    assert (out / "transfer.png").read_bytes()[:4] == b"\x89PNG" and (out / "transfer.csv").read_text().startswith(
        "protocol,train,test"
    )
    rows = {r["test"]: r for r in doc["summary"]}
    assert set(rows) == {"default", "vgg-digits"} and all(r["seeds"] == 2 for r in rows.values())
    for cell in doc["cells"]:
        assert cell["test"] not in cell["train"] and cell["low"] <= cell["rho"] <= cell["high"]
        assert cell["paired"]["baseline"] == cell["best_handmade"] == doc["references"][cell["test"]]["best_handmade"]
    cell = doc["cells"][0]  # its rho, recomputed from the saved proxy and the raw arrays of the bench it is tested on
    tag = Campaign(cell["protocol"], tuple(cell["train"]), (cell["test"],), cell["seed"]).tag
    proxy = load_proxy(out / "proxies" / f"{tag}.json")
    assert proxy.expression == cell["formula"]
    assert cell["rho"] == pytest.approx(heldout_report_spearman(proxy, cell["test"]), abs=1e-9)
    for ref in doc["references"].values():
        names = {r["name"] for r in ref["rows"]}
        assert "ridge" in names and ref["best_handmade"] in names and ref["ceiling"] is not None
        assert ref["best_handmade"] not in ("layer-kl", "layer-loss", "layer-sqnr")  # statistics-only
        assert "emq-zoo" not in names  # evolved on every shipped bench: in-sample on all of them
    from emq.baselines.registry import PROXIES

    for cell in doc["cells"]:
        vs = cell["versus"]
        assert set(vs) == {"fixed", "oracle", "layer-kl", "layer-kl-mid", "ridge"}  # no whole-configuration one asked
        assert vs["oracle"]["paired"] == cell["paired"] and vs["oracle"]["name"] == cell["best_handmade"]
        campaign = json.loads((out / "campaigns" / _tag(cell) / "summary.json").read_text())
        assert PROXIES[vs["fixed"]["name"]].formula == campaign["best_handmade"]  # chosen on the training benches
        ref = {r["name"]: r for r in doc["references"][cell["test"]]["rows"]}
        # ridge scores every configuration, so the paired estimate is exactly the difference of the two rhos
        assert vs["ridge"]["paired"]["estimate"] == pytest.approx(cell["rho"] - ref["ridge"]["rho"], abs=1e-9)
        assert vs["ridge"]["cost_ptq_evals"] == int((~Bench.open(cell["test"]).heldout).sum())  # fitted on them
        assert vs["layer-kl"]["cost_ptq_evals"] > 1  # tens of single-slot runs, in PTQ-equivalent evaluations
        assert cell["cost_ptq_evals"] is None or cell["cost_ptq_evals"] > 0  # what the evolved proxy reads
    csv_head = (out / "transfer.csv").read_text().splitlines()[0]
    assert "fixed_name" in csv_head and "layer-kl_better" in csv_head and "cost_ptq_evals" in csv_head


@pytest.mark.parametrize(
    "tokens,cost",
    [
        ([("p", "add_s"), ("t", "MKLM"), ("t", "MKL")], 7.0 + 10.0),
        ([("p", "sqrt_s"), ("t", "MDL")], 7.0),
        ([("p", "mul_s"), ("p", "l2_y"), ("t", "GY"), ("t", "MKL")], 60.0 + 7.0),
        ([("p", "l1_w"), ("t", "E")], 60.0),
    ],
)
def test_an_evolved_proxys_cost_on_the_new_network_is_what_its_tree_reads(tokens, cost):
    """In a transfer cell the evolved proxy costs the references' rows of what it reads: layer-kl's table for
    MKL / MDL / MNSR, layer-kl-mid's for MKLM, the statistics (the fixed statistics-only proxy's row) for any
    other terminal; unknown when one of those rows has no cost."""
    from emq.search_space.proxyfile import EvolvedProxy
    from emq.transfer import _evolved_cost

    rows = [{"name": "layer-kl", "cost_ptq_evals": 7.0}, {"name": "layer-kl-mid", "cost_ptq_evals": 10.0}]
    refs = {"rows": [*rows, {"name": "fisher", "cost_ptq_evals": 60.0}]}
    proxy = EvolvedProxy(tokens, -1)
    assert _evolved_cost(proxy, refs, "fisher") == pytest.approx(cost)
    unknown = {"rows": [{**r, "cost_ptq_evals": None} for r in refs["rows"]]}
    assert _evolved_cost(proxy, unknown, "fisher") is None


def test_the_measured_space_seeds_the_measured_forms_and_fixed_stays_statistics_only(tmp_path):
    """`space="measured"` (emq transfer --space measured): campaigns read the bundled measured sensitivity, start
    from layer-kl, layer-loss and layer-sqnr as well, and still name a statistics-only form as the best hand-made
    one (the "fixed" comparison is what a user without any evaluation budget would pick), though layer-kl fits
    the training benches better."""
    study = TransferStudy(
        ["default", "vgg-digits"], protocols=("leave-one-out",), space="measured", out_dir=tmp_path, **TINY
    )
    runs = study.campaigns()
    assert study.evaluate(runs).settings["space"] == "measured"
    measured_fits_better = []
    for run in runs:
        handmade = next(iter(run["summary"]["benches"].values()))["handmade"]
        assert {"layer-kl", "layer-loss", "layer-sqnr", "fisher"} <= set(handmade)
        best = run["summary"]["best_handmade"]
        assert best not in ("layer-kl", "layer-loss", "layer-sqnr")
        measured_fits_better.append(handmade["layer-kl"]["search_spearman"] > handmade[best]["search_spearman"])
    assert any(measured_fits_better)  # on default (0.966 against fisher's 0.923): the filter is what kept it out
    with pytest.raises(EmqError, match="preset"):
        TransferStudy(["default", "vgg-digits"], space="nosuch")


def test_a_leave_one_task_out_study_saves_its_report(tmp_path):
    """Every protocol's cells reach the heat map (a leave-one-task-out study once failed there, after
    transfer.json was written)."""
    study = TransferStudy(
        ["vgg-digits", "resnet20-fashion"], protocols=("leave-one-task-out",), out_dir=tmp_path, **TINY
    )
    result = study.run()
    assert {c["protocol"] for c in result.cells} == {"leave-one-task-out"}
    assert (tmp_path / "transfer.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "transfer.json").read_text())["summary"] == json.loads(json.dumps(result.summary()))
