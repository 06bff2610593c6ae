"""The instrument behind every reported number: per-image outcomes, test pools, split-half
reliability, bootstrap intervals, the ridge reference, and a campaign that never sees
held-out configurations or the report pool (poisoned with NaN: identical campaign)."""

from __future__ import annotations

import shutil
import sqlite3
from contextlib import closing

import numpy as np
import pytest
from scipy.stats import spearmanr

from emq.bench import Bench, store
from emq.bench.outcomes import decode, encode
from emq.bench.pools import TestPools
from emq.bench.reliability import default_metric, reliability
from emq.bench.space import ConfigSpace, config_text, is_heldout
from emq.errors import EmqError
from emq.evolution import ProxySearch
from emq.fitness import FitnessData
from emq.supervised import OneHotRidge
from emq.uncertainty import Bootstrap, combined_reliability, spearman_brown, split_half

BITS = (2, 3, 4)


def _spearman(a, b):
    return spearmanr(a, b).statistic


# ------------------------------------------------------------------ per-image outcomes


def test_outcomes_round_trip_and_damage_is_an_error():
    rng = np.random.default_rng(0)
    per = {"correct": rng.random(1001) < 0.7, "loss": rng.exponential(1.0, 1001), "kl": rng.exponential(0.01, 1001)}
    out = decode(encode(per))
    assert len(out) == 1001 and (out.correct == per["correct"]).all()
    assert np.allclose(out.loss, per["loss"], rtol=1e-3) and np.allclose(out.kl, per["kl"], rtol=1e-3, atol=1e-7)
    assert out.metric("top1").mean() == pytest.approx(100 * per["correct"].mean())
    per["kl"][3] = np.nan
    assert np.isnan(decode(encode(per)).kl[3])  # NaN is kept, never turned into a number
    blob = encode(per)
    with pytest.raises(EmqError, match="record 7: per-image outcomes are damaged"):
        decode(blob[:-5], "record 7")
    # format 1 (zlib of the float16 arrays), as older bench files hold it, still reads the same
    import struct
    import zlib

    half = [np.packbits(per["correct"]).tobytes(), *(per[k].astype("<f2").tobytes() for k in ("loss", "kl"))]
    old = decode(struct.pack("<BI", 1, 1001) + zlib.compress(b"".join(half)))
    new = decode(encode(per))
    assert (old.correct == new.correct).all() and np.array_equal(old.loss, new.loss, equal_nan=True)
    assert np.array_equal(old.kl, new.kl, equal_nan=True) and blob[0] == 2


# ------------------------------------------------------------------ test pools


def test_pools_are_disjoint_by_source_class_stratified_and_deterministic():
    sources = np.repeat(np.arange(60), 6)  # 60 sources with 6 renders each
    labels = np.repeat(np.arange(60) % 4, 6)
    pools = TestPools.split(sources, labels)
    fit, report = pools.mask("fit"), pools.mask("report")
    assert not (fit & report).any() and (fit | report).all()
    for s in range(60):  # all renders of a source land in one pool
        assert len(set(report[sources == s])) == 1
    for c in range(4):
        n_fit, n_rep = len(set(sources[fit & (labels == c)])), len(set(sources[report & (labels == c)]))
        assert abs(n_fit - n_rep) <= 1
    again = TestPools.split(sources, labels)
    assert (again.report_sources == pools.report_sources).all()
    assert (TestPools.from_json(pools.to_json()).mask("report") == report).all()
    with pytest.raises(EmqError, match="independent sources"):
        TestPools.split([0, 0, 1], [0, 0, 1])


# ------------------------------------------------------------------ reliability and bootstrap


def _direct_split_half(sums, counts, splits, seed):
    rng = np.random.default_rng(seed)
    k = len(counts)
    rhos = []
    for _ in range(splits):
        half = rng.permutation(k)[: k // 2]
        other = np.setdiff1d(np.arange(k), half)
        a = sums[:, half].sum(1) / counts[half].sum()
        b = sums[:, other].sum(1) / counts[other].sum()
        rhos.append(_spearman(a, b))
    return float(np.mean(rhos))


def test_split_half_matches_a_direct_loop_and_behaves_at_the_extremes():
    rng = np.random.default_rng(1)
    n, k = 12, 9
    counts = rng.integers(1, 4, k).astype(float)
    sums = rng.normal(size=(n, k)) * counts + rng.normal(size=(n, 1)) * counts
    got = split_half(sums, counts, splits=50, seed=3)
    raw = _direct_split_half(sums, counts, 50, 3)
    assert got.raw == pytest.approx(raw, abs=1e-12) and got.corrected == pytest.approx(2 * raw / (1 + raw), abs=1e-12)
    signal = np.arange(n, dtype=float)[:, None] * np.ones(k)  # no image noise at all: perfectly reliable
    assert split_half(signal, np.ones(k), 20).corrected == pytest.approx(1.0)
    noise = rng.normal(size=(40, 200))  # nothing but noise: reliability about 0
    assert abs(split_half(noise, np.ones(200), 50).corrected) < 0.2
    assert spearman_brown(0.5) == pytest.approx(2 / 3)
    assert combined_reliability(0.9, 0.8) == pytest.approx(0.7) and combined_reliability(0.9, None) is None


def test_bootstrap_matches_a_direct_loop_and_pairs_replicates():
    rng = np.random.default_rng(2)
    n, k, r = 15, 7, 40
    counts = rng.integers(1, 5, k).astype(float)
    sums = rng.normal(size=(n, k)) * counts + np.arange(n)[:, None] * counts
    scores_a = np.arange(n) + rng.normal(0, 3, n)
    scores_b = rng.normal(size=n)
    boot = Bootstrap(sums=sums, counts=counts, sign=-1, resamples=r, seed=5)
    # the same draws, done one replicate at a time with scipy
    g = np.random.default_rng(5)
    rows = g.integers(0, n, size=(r, n))
    weights = g.multinomial(k, np.full(k, 1.0 / k), size=r)
    reps_a, reps_diff = [], []
    for i in range(r):
        target = -(sums[rows[i]] @ weights[i]) / (counts @ weights[i])
        ra, rb = _spearman(scores_a[rows[i]], target), _spearman(scores_b[rows[i]], target)
        reps_a.append(ra)
        reps_diff.append(ra - rb)
    iv = boot.interval(scores_a)
    point = _spearman(scores_a, -sums.sum(1) / counts.sum())
    assert iv.estimate == pytest.approx(point)
    assert (iv.low, iv.high) == pytest.approx(tuple(np.percentile(reps_a, [2.5, 97.5])))
    diff = boot.paired(scores_a, scores_b)
    assert (diff.low, diff.high) == pytest.approx(tuple(np.percentile(reps_diff, [2.5, 97.5])))
    assert diff.estimate == pytest.approx(point - _spearman(scores_b, -sums.sum(1) / counts.sum()))


def test_ridge_reference_recovers_a_linear_one_hot_truth():
    rng = np.random.default_rng(4)
    configs = rng.choice(BITS, size=(200, 6))
    coef = rng.normal(size=(6, 3))
    y = sum(coef[s, np.searchsorted(BITS, configs[:, s])] for s in range(6)) + rng.normal(0, 0.05, 200)
    model = OneHotRidge(BITS).fit(configs[:150], y[:150])
    assert _spearman(model.predict(configs[150:]), y[150:]) > 0.95 and model.alpha_ > 0


# ------------------------------------------------------------------ a synthetic bench with outcomes


N_SOURCES, RENDERS = 40, 5


def _write_bench(path, n_slots, n_configs=150, seed=0, poison=False):
    """A bench file with real per-image outcomes of a known generative model (no PTQ)."""
    rng = np.random.default_rng(seed)
    configs = [tuple(int(b) for b in row) for row in rng.choice(BITS, size=(n_configs, n_slots))]
    configs = list(dict.fromkeys(configs))
    sources = np.repeat(np.arange(N_SOURCES), RENDERS)
    labels = np.repeat(np.arange(N_SOURCES) % 4, RENDERS)
    pools = TestPools.split(sources, labels)
    report = pools.mask("report")
    weight = rng.uniform(0.2, 1.0, n_slots)
    difficulty = rng.normal(0, 1.0, N_SOURCES)[sources]
    space = ConfigSpace(tuple(f"s{i}" for i in range(n_slots)), BITS)
    meta = {
        "schema_version": store.SCHEMA_VERSION,
        "kind": "ptq-build",
        "model": "tiny",
        "space": space.to_json(),
        "test_pools": pools.to_json(),
        "default_metric": "kl",
    }
    rows = []
    for i, c in enumerate(configs):
        quality = float(np.dot(weight, c)) / n_slots
        kl = np.exp(-2.0 * quality + 0.3 * difficulty + rng.normal(0, 0.3, sources.size))
        loss = kl + 0.5
        correct = rng.random(sources.size) < 1 / (1 + np.exp(-(quality - 2.5 - difficulty)))
        text = config_text(c)
        if poison:
            bad = np.ones(sources.size, dtype=bool) if is_heldout(text) else report
            kl, loss = np.where(bad, np.nan, kl), np.where(bad, np.nan, loss)
        row = {
            "idx": i,
            "config": text,
            "top1": 100 * correct.mean(),
            "loss": float(np.mean(loss)),
            "kl": float(np.mean(kl)),
            "size_bytes": float(sum(c)),
            "bitops": float(sum(c)),
            "seconds": 0.0,
            "seed": 0,
            "source": "synthetic",
            "outcomes": encode({"correct": correct, "loss": loss, "kl": kl}),
        }
        rows.append(row)
    with closing(store.connect(path)) as con:
        store.init_bench(con, meta, [(r["config"], "synthetic") for r in rows])
        store.insert_records(con, rows)
    return path


def test_fitness_uses_search_by_fit_and_reports_heldout_by_report(tmp_path, tiny_setting):
    stats = tiny_setting[0]
    b = Bench.open(_write_bench(tmp_path / "b.sqlite", stats.num_slots))
    fd = FitnessData.from_bench(b, "kl", stats.bits)
    fit = b.pools.mask("fit")
    search_rows = np.flatnonzero(~b.heldout)
    direct = [b.outcomes(b.config_texts[i]).kl[fit].mean() for i in search_rows]
    assert np.allclose(-np.asarray(direct), fd.search.target, rtol=1e-12)
    report = b.pools.mask("report")
    held_rows = np.flatnonzero(b.heldout)
    assert np.allclose([-b.outcomes(b.config_texts[i]).kl[report].mean() for i in held_rows], fd.heldout.target)
    assert fd.for_campaign().heldout is None and fd.pools == "fit/report"
    rel = reliability(b)
    assert rel["kl"]["split_half"]["corrected"] > 0.9 and rel["kl"]["test_retest"] is None  # no repeats in this file
    assert default_metric(rel) in ("kl", "loss", "top1")


def test_poisoned_heldout_and_report_pool_leave_the_campaign_identical(tmp_path, tiny_setting):
    stats = tiny_setting[0]
    clean = Bench.open(_write_bench(tmp_path / "clean.sqlite", stats.num_slots))
    poisoned = Bench.open(_write_bench(tmp_path / "poisoned.sqlite", stats.num_slots, poison=True))
    assert (
        np.isnan(poisoned.pool_metric("kl", "report")).all()
        and not np.isnan(poisoned.pool_metric("kl", "fit")[~poisoned.heldout]).any()
    )

    def campaign(bench):
        est = ProxySearch(generations=3, population=16, random_state=0, metric="kl").fit(bench, stats=stats)
        log = [{k: v for k, v in rec.items() if k not in ("seconds", "evals_per_s")} for rec in est.log_]
        hof = [(r["canonical"], r["search_spearman"], r["orientation"]) for r in est.hall_of_fame_]
        return est, log, hof

    a, log_a, hof_a = campaign(clean)
    b, log_b, hof_b = campaign(poisoned)
    assert log_a == log_b and hof_a == hof_b and a.best_proxy_.expression == b.best_proxy_.expression
    assert a.summary_["best_handmade"] == b.summary_["best_handmade"]
    assert (
        np.isfinite(a.summary_["best_heldout_spearman"]) and b.summary_["best_heldout_spearman"] is None
    )  # the poison reached the report only


def test_a_format_1_bench_is_refused_with_the_way_out(tmp_path, tiny_setting):
    path = _write_bench(tmp_path / "old.sqlite", tiny_setting[0].num_slots)
    with closing(sqlite3.connect(path)) as con:
        con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
        con.commit()
    with pytest.raises(EmqError, match="bench format 1.*rebuild it with `emq bench build`"):
        Bench.open(path)
    shutil.rmtree(tmp_path)
