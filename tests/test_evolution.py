"""Evolution: determinism, resume after a kill, serial == process pool, DPS switch, budget."""

import json

import pytest

from emq.errors import EmqError
from emq.evolution import Campaign, DPSConfig, search
from emq.evolution.runfiles import TIMING_KEYS
from emq.fitness import FitnessData
from emq.search_space.pset import make_space


def _fingerprint(result):
    rows = [
        (r["canonical"], round(r["search_spearman"], 12), round(r["heldout_spearman"], 12)) for r in result.hall_of_fame
    ]
    log = [{k: v for k, v in rec.items() if k not in TIMING_KEYS} for rec in result.log]
    return rows, json.dumps(log, sort_keys=True, default=str)


@pytest.fixture()
def run(tiny_setting):
    """search() on the tiny setting with small defaults; keyword arguments override them."""
    stats, fd, _ = tiny_setting

    def _run(**kw):
        return search(fd, stats=stats, **{"generations": 6, "population": 16, "seed": 3, **kw})

    return _run


def test_same_seed_same_result_and_different_seed_differs(run):
    a, b, c = run(), run(), run(seed=4)
    assert _fingerprint(a) == _fingerprint(b)
    assert _fingerprint(a) != _fingerprint(c)
    assert a.summary["evaluations"] > 16 and a.summary["best_search_spearman"] > 0.3
    assert len({r["canonical"] for r in a.hall_of_fame}) == len(a.hall_of_fame)  # no duplicates


def test_resume_after_kill_equals_uninterrupted(tmp_path, monkeypatch, run, tiny_setting):
    full = run(out=tmp_path / "full")
    written = full.save(tmp_path / "saved")  # what the result alone holds: the run directory's own files
    assert [p.name for p in written] == [
        "best_proxy.json",
        "hall_of_fame.csv",
        "summary.json",
        "fitness.png",
        "diversity.png",
    ]
    assert all(p.read_bytes() == (tmp_path / "full" / p.name).read_bytes() for p in written[:3])
    stats, fd, _ = tiny_setting
    cfg = dict(generations=6, population=16, seed=3, checkpoint_every=2)
    original = Campaign._generation

    def dying(self, executor):
        if self.generation == 5:
            raise KeyboardInterrupt  # killed during generation 5: the last checkpoint is generation 4
        original(self, executor)

    monkeypatch.setattr(Campaign, "_generation", dying)
    with pytest.raises(KeyboardInterrupt):
        search(fd, stats=stats, **cfg, out=tmp_path / "killed")
    monkeypatch.setattr(Campaign, "_generation", original)
    with pytest.raises(EmqError, match="warm_start=True"):
        search(fd, stats=stats, **cfg, out=tmp_path / "killed")
    killed = tmp_path / "killed"
    orphans = [
        killed / ".checkpoint.npz.k3x9.tmp",
        killed / ".diversity.png.q1w2.tmp",
    ]  # what a kill -9 mid-write leaves
    for f in orphans:
        f.write_bytes(b"partial")
    (killed / "notes.tmp").write_text("the user's")  # not ours: stays
    resumed = search(fd, stats=stats, **cfg, out=killed, resume=True)
    assert not any(f.exists() for f in orphans) and (killed / "notes.tmp").exists()
    assert _fingerprint(resumed) == _fingerprint(full)
    lines = (tmp_path / "killed" / "log.jsonl").read_text().splitlines()
    assert [json.loads(x)["generation"] for x in lines] == list(range(7))
    swapped = FitnessData.from_arrays(
        fd.bits, (fd.heldout.configs, -fd.heldout.target), (fd.search.configs, -fd.search.target), metric="kl"
    )
    with pytest.raises(EmqError, match="different bench"):
        search(swapped, stats=stats, **cfg, out=tmp_path / "killed", resume=True)
    with pytest.raises(EmqError, match="different settings"):
        search(fd, stats=stats, generations=8, population=20, seed=3, out=tmp_path / "killed", resume=True)


def test_process_pool_gives_identical_results(run):
    assert _fingerprint(run(workers=2)) == _fingerprint(run(workers=1))


def test_dps_switch_budget_and_logged_diversity(run):
    on = run(max_evaluations=60, generations=50)
    off = run(max_evaluations=60, generations=50, dps=DPSConfig(enabled=False))
    for r in (on, off):
        assert 60 <= r.summary["evaluations"] < 60 + 2 * 16 * 2  # stops within one generation of the budget
        rec = r.log[-1]
        assert {"unique_forms", "mean_abs_corr", "screening", "best_search", "median_search"} <= set(rec)
        assert not any("heldout" in k for k in rec)  # a campaign never sees the held-out split
    assert on.log[1]["screening"]["seen"] == 16 + 2 * 16  # offspring + one random challenger each
    assert off.log[1]["screening"]["seen"] == 16 + 16
    assert on.summary["screening"]["saved_share"] > 0


def test_restricted_space_is_respected(run):
    r = run(space=make_space("weights-only"), generations=3)
    allowed = set(make_space("weights-only").terminals)
    for row in r.hall_of_fame:
        assert {t for k, t in row["proxy"].tokens if k == "t"} <= allowed


def test_survivor_selection_keeps_phenotypes_apart():
    import numpy as np

    from emq.evolution.dps import diversity, select_survivors

    a = np.array([0.6, 0.0, -0.8])
    b = np.array([0.0, 1.0, 0.0])
    sigs = [a, a * 1.0, b, None]
    fit = [0.9, 0.85, 0.5, -1.0]
    keys = ["x", "y", "z", "w"]
    assert select_survivors(fit, keys, sigs, 2, threshold=0.98) == [0, 2]  # the twin 'y' waits
    assert select_survivors(fit, keys, sigs, 4, threshold=0.98) == [0, 2, 1, 3]  # ... and fills up
    assert select_survivors(fit, keys, sigs, 2, threshold=None) == [0, 1]  # DPS off: truncation
    d = diversity(keys[:3], sigs[:3])
    assert d["unique_forms"] == 3 and d["mean_abs_corr"] == pytest.approx(1 / 3)


def test_a_hall_of_fame_warm_starts_another_campaign(run, tiny_setting, tmp_path):
    """checkpoint.hall_of_fame reads a campaign's hall of fame, best first; as `seed_trees` its
    trees join the next campaign's initial population (a tree outside the space is left out)."""
    from emq.evolution import ProxySearch
    from emq.evolution.checkpoint import hall_of_fame
    from emq.search_space.pset import to_tokens

    stats, fd, _ = tiny_setting
    first = run(out=tmp_path / "first", generations=2)
    trees = hall_of_fame(tmp_path / "first" / "checkpoint.npz")
    assert [[tuple(t) for t in tree] for tree in trees] == [list(r["proxy"].tokens) for r in first.hall_of_fame]
    outside = [["p", "log_s"], ["t", "no-such-terminal"]]
    est = ProxySearch(generations=0, population=6, seed_handmade=False, seed_trees=[*trees[:3], outside])
    est.fit(fd, stats=stats)
    population = [to_tokens(ind) for ind in est._campaign.population]
    assert all([tuple(t) for t in tree] in population for tree in trees[:3])
