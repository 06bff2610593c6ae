"""Full and read-only disks, missing or impossible output folders, two builders on one file,
file modes: every failure is one line naming the file (exit 2 at the CLI) and leaves no
partial output behind.

Full disks are small tmpfs mounts and read-only disks read-only tmpfs mounts (root), or a
folder without write permission (any other user); without either the test skips and says why.
"""

import json
import logging
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

import emq.bench.builder as builder
from emq.bench import bench_build, store
from emq.bench.lock import claim
from emq.cli.main import main
from emq.errors import EmqError
from emq.evolution import checkpoint
from emq.fileio import atomic_write_text
from emq.models import CifarResNet
from emq.quant import PTQSettings

# the smallest real bench the CLI accepts: the three uniform configurations, three more, four calibration repeats
SETTINGS = PTQSettings(calib_size=64)
ARGS = {"configs": 6, "seed": 1, "noise_samples": 4, "test_limit": 100}
CLI = ["--configs", "6", "--seed", "1", "--noise-samples", "4", "--calib-size", "64", "--test-limit", "100"]
EVALUATED = 10  # configurations + calibration repeats
IS_ROOT = os.geteuid() == 0


def _mount(target: Path, *options: str) -> None:
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(target)], capture_output=True, text=True
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip() or 'mount failed'})")


@pytest.fixture
def mounts(tmp_path):
    """`mount(size)`: a fresh tmpfs of that size; `readonly(dir)`: make such a mount read-only.
    Every mount is undone at teardown."""
    made: list[Path] = []

    def mount(size: str = "40k") -> Path:
        if not IS_ROOT:
            pytest.skip("mounting a small tmpfs (a full disk) needs root")
        d = tmp_path / f"mnt{len(made)}"
        d.mkdir()
        _mount(d, f"size={size}")
        made.append(d)
        return d

    yield mount
    for d in reversed(made):
        subprocess.run(["umount", "-l", str(d)], check=False)


@pytest.fixture
def make_readonly(mounts, tmp_path):
    """`make_readonly(files)`: a read-only folder holding copies of `files`."""
    made: list[Path] = []

    def make(files=()) -> Path:
        d = mounts("8m") if IS_ROOT else tmp_path / "ro"
        d.mkdir(exist_ok=True)
        for f in files:
            shutil.copy2(f, d / Path(f).name)
        if IS_ROOT:
            res = subprocess.run(["mount", "-o", "remount,ro", str(d)], capture_output=True, text=True)
            if res.returncode != 0:
                pytest.skip(f"cannot remount a tmpfs read-only ({res.stderr.strip()})")
        else:
            for p in [*d.iterdir(), d]:
                p.chmod(p.stat().st_mode & ~0o222)
            made.append(d)
        return d

    yield make
    for d in made:
        for p in [d, *d.iterdir()]:
            p.chmod(p.stat().st_mode | 0o200)


def _fill(directory: Path) -> None:
    """Use up every free byte of the file system holding `directory`."""
    with pytest.raises(OSError), open(directory / "filler", "wb") as f:
        while True:
            f.write(b"x" * 1024)
            f.flush()


@pytest.fixture
def no_model_work(monkeypatch):
    """Fail the test if the builder starts building a model: checks must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("model work started before the output was checked")

    monkeypatch.setattr(builder, "engine_for", refuse)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "done.sqlite"
    bench_build(path, settings=SETTINGS, progress=False, **ARGS)
    return path


# --- read-only disks and impossible folders (item 4) --------------------------------------


def test_build_into_a_readonly_folder_fails_at_once(make_readonly, no_model_work, capsys):
    ro = make_readonly()
    assert main(["bench", "build", "--out", str(ro / "b.sqlite"), *CLI]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"bench {ro / 'b.sqlite'}: cannot create it" in err
    assert "Read-only file system" in err or "Permission denied" in err
    assert not (ro / "b.sqlite").exists()


def test_out_below_a_file_is_one_line_and_new_folders_are_created(tmp_path, no_model_work, capsys):
    blocker = tmp_path / "plain.txt"
    blocker.write_text("x")
    assert main(["bench", "build", "--out", str(blocker / "sub" / "b.sqlite"), *CLI]) == 2
    assert main(["bench", "export", "default", "--to", "csv", "--out", str(blocker / "b.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(f"cannot create directory {blocker}" in line for line in err)
    # an output in folders that do not exist yet: they are created (every command does this)
    assert main(["bench", "export", "default", "--to", "csv", "--out", str(tmp_path / "new" / "deeper" / "b.csv")]) == 0
    assert (tmp_path / "new" / "deeper" / "b.csv").is_file()


def test_resume_of_a_finished_bench_on_a_readonly_disk_writes_nothing(finished, make_readonly, capsys, caplog):
    ro = make_readonly([finished])
    before = (ro / finished.name).read_bytes()
    assert main(["bench", "build", "--out", str(ro / finished.name), "--resume", "--json", *CLI]) == 0, (
        capsys.readouterr().err
    )
    assert "not compacted" not in caplog.text  # nothing was written, so there is nothing to warn about
    assert json.loads(capsys.readouterr().out)["records"] == ARGS["configs"]
    assert (ro / finished.name).read_bytes() == before and sorted(p.name for p in ro.iterdir()) == [finished.name]


def test_noop_resume_adds_no_build_log_entry(finished, tmp_path):
    copy = tmp_path / "copy.sqlite"
    shutil.copy2(finished, copy)
    build_log = bench_build(copy, resume=True, settings=SETTINGS, progress=False, **ARGS)["build_log"]
    assert len(build_log) == 1 and build_log[0]["evaluated"] == EVALUATED


# --- full disks (items 4 and 5) -----------------------------------------------------------


def test_full_disk_at_creation_is_reported_and_leaves_no_file(mounts):
    d = mounts("8k")
    with pytest.raises(EmqError, match=rf"bench {d / 'b.sqlite'}: the disk is full"):
        store.connect(d / "b.sqlite")
    assert list(d.iterdir()) == []


def test_full_disk_mid_build_names_the_file_and_keeps_every_record(mounts):
    d = mounts("64k")
    with closing(store.connect(d / "b.sqlite")) as con:
        store.init_bench(con, {"kind": "test"}, [])
        n = 0
        with pytest.raises(EmqError, match=rf"bench {d / 'b.sqlite'}: the disk is full") as e:
            for n in range(10_000):  # noqa: B007 - n is read after the loop
                store.insert_record(
                    con,
                    {
                        "idx": n,
                        "config": f"{n}," + "2" * 300,
                        "top1": 1.0,
                        "size_bytes": 1.0,
                        "bitops": 1.0,
                        "source": "t",
                    },
                )
        assert "rollback" not in str(e.value)
    with closing(sqlite3.connect(d / "b.sqlite")) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("SELECT count(*) FROM records").fetchone()[0] == n > 0


@pytest.mark.slow
def test_build_on_a_full_disk_is_one_line_and_a_plain_rerun_says_the_same(mounts, capsys):
    d = mounts("40k")
    out = d / "b.sqlite"
    for _ in range(2):  # no file is left behind, so the rerun does not demand --resume
        assert main(["bench", "build", "--out", str(out), *CLI]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"bench {out}: the disk is full" in err
        assert list(d.iterdir()) == []


def test_compaction_on_a_nearly_full_disk_keeps_the_valid_file(mounts, caplog):
    d = mounts("128k")
    path = d / "b.sqlite"
    with closing(store.connect(path)) as con:
        store.init_bench(con, {"kind": "test"}, [])
        store.insert_records(
            con,
            [
                {"idx": i, "config": f"{i}," + "2" * 200, "top1": 1.0, "size_bytes": 1.0, "bitops": 1.0, "source": "t"}
                for i in range(60)
            ],
        )
        with store.transaction(con):
            con.execute("DELETE FROM records WHERE idx % 2 = 0")  # free pages: VACUUM has work to do
    _fill(d)
    with caplog.at_level(logging.WARNING, logger="emq.bench.store"):
        store.compact(path)
    assert "not compacted" in caplog.text and str(path) in caplog.text
    with closing(sqlite3.connect(path)) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("SELECT count(*) FROM records").fetchone()[0] == 30


def test_checkpoint_on_a_full_disk_is_one_line_and_keeps_the_previous_one(mounts):
    d = mounts("40k")
    path = d / "checkpoint.npz"
    checkpoint.save(path, {"generation": 1}, {"a": np.zeros(4)})
    before = path.read_bytes()
    noise = np.random.default_rng(0).random(20_000)  # 160 kB that do not compress
    with pytest.raises(EmqError, match=rf"cannot write {path}: No space left on device \(the disk is full\)"):
        checkpoint.save(path, {"generation": 2}, {"a": noise})
    assert path.read_bytes() == before and sorted(p.name for p in d.iterdir()) == ["checkpoint.npz"]


def test_cli_output_on_a_full_disk_is_one_line_exit_2(mounts, capsys):
    d = mounts("40k")
    assert main(["bench", "export", "default", "--to", "json", "--out", str(d / "b.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"cannot write {d / 'b.json'}: No space left on device" in err
    assert list(d.iterdir()) == []


# --- two builders on one file (item 7) ----------------------------------------------------


def test_a_second_builder_is_refused_while_one_holds_the_file(tmp_path, no_model_work):
    out = tmp_path / "b.sqlite"
    with claim(out, resume=False):
        for resume in (False, True):
            with pytest.raises(EmqError, match=rf"bench {out}: another build is writing this file"):
                bench_build(out, resume=resume, settings=SETTINGS, progress=False, **ARGS)
    assert out.exists()  # the holder's file is untouched by the refused builders


def test_build_log_entries_of_two_writers_both_survive(tmp_path):
    path = tmp_path / "b.sqlite"
    with closing(store.connect(path)) as a, closing(store.connect(path)) as b:
        store.init_bench(a, {"kind": "test"}, [])
        store.write_meta(a, {"reliability": None}, log_entry={"evaluated": 3})
        store.write_meta(b, {"reliability": None}, log_entry={"evaluated": 5})
        assert store.read_meta(a)["build_log"] == [{"evaluated": 3}, {"evaluated": 5}]


@pytest.mark.slow
def test_two_builders_started_together_one_builds_one_is_refused(tmp_path):
    out = tmp_path / "b.sqlite"
    cmd = [sys.executable, "-m", "emq.cli.main", "bench", "build", "--out", str(out), *CLI]
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = sorted((p.wait(timeout=300), p.stderr.read()) for p in procs)
    assert [rc for rc, _ in results] == [0, 2], results
    assert f"--out {out}: the file exists" in results[1][1] or f"bench {out}: another build is writing" in results[1][1]
    with closing(sqlite3.connect(out)) as con:
        assert (
            json.loads(con.execute("SELECT value FROM meta WHERE key = 'build_log'").fetchone()[0])[0]["evaluated"]
            == EVALUATED
        )


# --- user modules (item 10) and file modes (item 15) --------------------------------------


def test_bench_build_of_a_user_module_without_its_data_is_refused_and_leaves_no_file(tmp_path):
    out = tmp_path / "b.sqlite"
    with pytest.raises(EmqError, match="a user module needs its data"):
        bench_build(out, model=CifarResNet(num_classes=10), settings=SETTINGS, progress=False, **ARGS)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_output_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "out.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.txt").stat().st_mode) == 0o666 & ~umask
