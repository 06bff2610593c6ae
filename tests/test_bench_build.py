"""Building benches for real (PTQ on the default model): records, resume, kill -9, queries."""

import json
import multiprocessing as mp
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from dataclasses import replace

import numpy as np
import pytest

from emq.bench import Bench, bench_build, bench_export, store
from emq.bench.evaluation import EvalSpec, engine_for
from emq.bench.store import records_so_far
from emq.cli.main import main
from emq.errors import EmqError
from emq.quant import PTQEngine, PTQSettings

SETTINGS = PTQSettings(calib_size=128)
# a quick bench: 128 calibration and 300 test images keep each evaluation well under a second
ARGS = {"configs": 8, "seed": 1, "noise_samples": 4, "test_limit": 300}
CLI = ["--configs", "8", "--seed", "1", "--noise-samples", "4", "--calib-size", "128", "--test-limit", "300"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "ref.sqlite"
    bench_build(path, settings=SETTINGS, progress=False, **ARGS)
    return path


def _records(path):
    with closing(sqlite3.connect(path)) as con:
        return con.execute(
            "SELECT idx, config, top1, loss, kl, size_bytes, bitops, seed, source FROM records ORDER BY idx"
        ).fetchall()


def test_build_records_match_a_direct_ptq_evaluation(built):
    b = Bench.open(built)
    assert len(b) == 8 and b.bits == (2, 3, 4) and len(b.slot_names) == 20
    assert b.sources[:3] == ["uniform-bits"] * 3
    built_with = PTQSettings(**b.meta["ptq_settings"])
    assert (
        built_with.calib_half == 0 and replace(built_with, calib_half=None) == SETTINGS
    )  # one half of the calibration sources
    engine = engine_for(EvalSpec(model="default", settings=built_with, test_limit=300))
    for i in (0, 4):
        res = engine.evaluate(b.configs[i])
        assert b.query_by_idx(i) == pytest.approx(res.top1)
        assert b.query_by_idx(i, "kl") == pytest.approx(res.kl)
        assert b.query_by_cfg(tuple(b.configs[i])) == b.query_by_cfg(b.fix_bit_cfg(i)) == b.query_by_idx(i)
    assert b.metrics["kl"][0] > b.metrics["kl"][2]  # all-2-bit drifts further from FP than all-4-bit
    assert set(b.ceiling) == {"top1", "loss", "kl"} and b.default_metric in ("top1", "loss", "kl")
    assert b.pools is not None and b.pools.n_images == 300 and b.has_outcomes
    assert b.outcomes(b.config_texts[4]).metric("top1").mean() == pytest.approx(b.metrics["top1"][4])
    assert b.meta["ptq_settings"]["calib_size"] == 128 and b.meta["versions"]["torch"]


def test_arrays_splits_and_budget_filters(built):
    b = Bench.open(built)
    cfgs, m = b.arrays()
    assert cfgs.shape == (8, 20) and cfgs.dtype == np.int64 and set(m) >= {"top1", "loss", "kl", "size_bytes", "bitops"}
    s, _ = b.arrays("search")
    h, _ = b.arrays("heldout")
    assert len(s) + len(h) == 8
    limit = float(np.median(m["size_bytes"]))
    small, ms = b.arrays(max_size_bytes=limit)
    assert len(small) == int((m["size_bytes"] <= limit).sum()) and (ms["size_bytes"] <= limit).all()
    with pytest.raises(EmqError, match="split 'train'"):
        b.arrays("train")
    with pytest.raises(EmqError, match="out of range"):
        b.query_by_idx(8)
    with pytest.raises(EmqError, match="not in bench"):
        b.query_by_cfg([2] * 19 + [3] if b.config_texts[0] != ",".join(["2"] * 19 + ["3"]) else [3] * 19 + [2])


def test_export_and_cli_info(built, tmp_path, capsys):
    csv_path = bench_export(built, "csv", tmp_path / "b.csv")
    lines = csv_path.read_text().splitlines()
    assert len(lines) == 9 and lines[0].startswith("index,config,split,source,top1")
    obj = json.loads(bench_export(built, "json", tmp_path / "b.json").read_text())
    assert len(obj["records"]) == 8 and obj["meta"]["model"] == "default"
    assert main(["bench", "info", str(built), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["records"] == 8 and len(info["slots"]) == 20 and info["allowed_bits"] == [2, 3, 4]
    assert set(info["reliability"]) == {"top1", "loss", "kl"} and "top1" in info["metrics"]
    assert info["test_pools"]["fit"]["images"] + info["test_pools"]["report"]["images"] == 300
    assert main(["bench", "info", str(tmp_path / "missing.sqlite")]) == 2


def test_rebuild_and_resume_rules(built, tmp_path):
    before = _records(built)
    # resuming a finished build evaluates nothing and changes no record
    info = bench_build(built, resume=True, settings=SETTINGS, progress=False, **ARGS)
    assert info["records"] == 8 and _records(built) == before
    with pytest.raises(EmqError, match="the file exists; pass --resume"):
        bench_build(built, settings=SETTINGS, progress=False, **ARGS)
    with pytest.raises(EmqError, match="different seed"):
        bench_build(built, resume=True, settings=SETTINGS, progress=False, **{**ARGS, "seed": 2})
    with pytest.raises(EmqError, match="different ptq_settings"):
        bench_build(built, resume=True, settings=PTQSettings(calib_size=64), progress=False, **ARGS)


def _insert_many(path, start):
    with closing(store.connect(path)) as con:
        for i in range(40):
            k = (start + i) % 60
            store.insert_record(
                con, {"idx": k, "config": f"{k},2", "top1": 1.0, "size_bytes": 1.0, "bitops": 1.0, "source": "t"}
            )


def test_two_writers_never_duplicate_or_corrupt(tmp_path):
    path = tmp_path / "shared.sqlite"
    store.connect(path).close()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_insert_many, args=(path, s)) for s in (0, 20)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    with closing(sqlite3.connect(path)) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("SELECT count(*), count(DISTINCT config) FROM records").fetchone() == (60, 60)


@pytest.mark.slow
def test_kill_minus_nine_then_resume_gives_the_uninterrupted_records(built, tmp_path):
    out = tmp_path / "killed.sqlite"
    assert records_so_far(out) == 0 and not out.exists()  # looking creates no file (the build would refuse it)
    cmd = [sys.executable, "-m", "emq.cli.main", "bench", "build", "--out", str(out), *CLI]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and records_so_far(out) < 2:
        time.sleep(0.05)
    assert proc.poll() is None, "the build finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = _records(out)
    assert 2 <= len(partial) < 8
    done = subprocess.run([*cmd, "--resume", "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["records"] == 8 == records_so_far(out)
    resumed = _records(out)
    assert set(partial) <= set(resumed)
    assert resumed == _records(built)


def test_a_configuration_that_keeps_failing_is_recorded_and_a_resume_retries_it(built, tmp_path, monkeypatch, capsys):
    import emq.bench.builder as builder

    bad = _records(built)[5][1]
    real = builder.evaluate_config

    def flaky(spec, config):
        if config == bad:
            raise RuntimeError("the GPU fell off the bus")
        return real(spec, config)

    monkeypatch.setattr(builder, "evaluate_config", flaky)
    out = tmp_path / "failing.sqlite"
    stages = (
        ["build", "retest"] if bad in Bench.open(built).repeats else ["build"]
    )  # it may be in the retest sample too
    with pytest.raises(EmqError, match=rf"{len(stages)} evaluation\(s\) failed .*the GPU fell off the bus.*--resume"):
        bench_build(out, settings=SETTINGS, progress=False, **ARGS)
    with closing(store.connect(out, readonly=True)) as con:
        failures = store.read_failures(con)
    assert [(f["config"], f["stage"], f["attempts"]) for f in failures] == [(bad, st, 1) for st in stages]
    assert [r[1] for r in _records(out)] == [r[1] for r in _records(built) if r[1] != bad]  # the rest is stored
    assert main(["bench", "info", str(out)]) == 0
    assert f"{len(stages)} evaluation(s) failed" in capsys.readouterr().out
    monkeypatch.setattr(builder, "evaluate_config", real)  # the cause is fixed
    info = bench_build(out, resume=True, settings=SETTINGS, progress=False, **ARGS)
    assert info["failures"] == [] and _records(out) == _records(built)


def test_a_new_build_where_everything_fails_says_nothing_was_stored(tmp_path, monkeypatch):
    import emq.bench.builder as builder

    def broken(spec, config):
        raise RuntimeError("no kernel image for this device")

    monkeypatch.setattr(builder, "evaluate_config", broken)
    out = tmp_path / "broken.sqlite"
    with pytest.raises(EmqError, match="every configuration failed, nothing was stored.*no kernel image"):
        bench_build(out, settings=SETTINGS, progress=False, **ARGS)
    assert not out.exists()


def test_a_bench_setup_evaluates_on_the_test_images_of_the_bench(built):
    """A bench built on the first 300 test images: what verifies an allocation against it (its setup's
    target) sees those 300 images and reproduces its records, not the whole test set."""
    from emq.bench_setup import BenchSetup

    b = Bench.open(built)
    setup = BenchSetup.of(b)
    assert len(setup.target.require_data().test) == 300
    res = PTQEngine(setup.target, setup.ptq).evaluate(b.configs[4])
    assert res.top1 == pytest.approx(b.query_by_idx(4)) and res.kl == pytest.approx(b.query_by_idx(4, "kl"))
    import emq

    alloc = emq.allocate(proxy="bitsum", budgets={"avg-bits": 3.0}, bench=str(built), evaluate=True)
    assert alloc.test_images == 300 and "on 300 test images" in alloc.summary()
