"""The Ray executor on a real local Ray cluster (one per module): same results as the serial
executor, the context fetched once per worker, retries, failures recorded, and bench builds
that survive a worker killed by SIGKILL and a driver killed and resumed."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason='Ray is not installed: pip install "emq[ray]" to run the Ray executor tests')

from emq.bench import Bench, bench_build  # noqa: E402
from emq.bench.store import records_so_far  # noqa: E402
from emq.errors import EmqError  # noqa: E402
from emq.evolution import search  # noqa: E402
from emq.executors import TaskFailure, make_executor  # noqa: E402
from emq.quant import PTQSettings  # noqa: E402
from emq.ranking import score  # noqa: E402

SETTINGS = PTQSettings(calib_size=128)
ARGS = {"configs": 8, "seed": 1, "noise_samples": 4, "test_limit": 300}
CLI = ["--configs", "8", "--seed", "1", "--noise-samples", "4", "--calib-size", "128", "--test-limit", "300"]

_UNPICKLED = 0  # per process: how many times a Counted context arrived in it


class Counted:
    """A context that counts, in the process that receives it, how often it was unpickled."""

    def __init__(self, k: int) -> None:
        self.k = k

    def __setstate__(self, state: dict) -> None:
        global _UNPICKLED
        _UNPICKLED += 1
        self.__dict__.update(state)


def _times_k(ctx, t):
    return ctx.k * t, os.getpid(), _UNPICKLED


def _fails_on_seven(ctx, t):
    if t == 7:
        raise ValueError("seven is bad input")
    return t


def _once(ctx, t):
    """Fails the first time it sees each task (a marker file remembers), then succeeds."""
    marker = ctx["dir"] / f"{ctx['kind']}-{t}"
    if not marker.exists():
        marker.touch()
        if ctx["kind"] == "oserror":
            raise OSError("the network file system blinked")
        os.kill(os.getpid(), signal.SIGKILL)  # the worker process dies mid-task
    return t


@pytest.fixture(scope="module")
def cluster():
    # the workers import this module's task functions by name, so they need its folder on their path;
    # 4 logical CPUs: the module's pool (2 actors, idle between tests) and a driver test's own 2 actors
    ray.init(
        num_cpus=4,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).parent)}},
    )
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def pool(cluster):
    ex = make_executor("ray", workers=2)
    yield ex
    ex.close()


@pytest.fixture(scope="module")
def serial_bench(tmp_path_factory):
    path = tmp_path_factory.mktemp("ray") / "serial.sqlite"
    bench_build(path, settings=SETTINGS, progress=False, **ARGS)
    return path


def _records(path):
    with closing(sqlite3.connect(path)) as con:
        recs = con.execute(
            "SELECT idx, config, top1, loss, kl, size_bytes, bitops, seed, source, outcomes FROM records ORDER BY idx"
        ).fetchall()
        reps = con.execute(
            "SELECT config, top1, loss, kl, calib_seed, outcomes FROM repeats ORDER BY config"
        ).fetchall()
    return recs, reps


def test_map_matches_serial_in_order_and_unordered(pool):
    tasks = list(range(20))
    ctx = Counted(3)
    ordered = list(pool.map(_times_k, tasks, context=ctx, chunksize=3))
    assert [r[0] for r in ordered] == [3 * t for t in tasks]
    unordered = list(pool.map(_times_k, tasks, context=ctx, ordered=False))
    assert sorted(r[0] for r in unordered) == [3 * t for t in tasks]
    pids = {r[1] for r in ordered + unordered}
    assert len(pids) == 2  # both actors worked
    assert {r[2] for r in ordered + unordered} == {1}  # each worker received the context once, for 40 tasks


def test_a_failing_task_raises_or_is_returned_as_a_failure(pool):
    out = list(pool.map(_fails_on_seven, range(10), context=None, failures=True))
    assert out[:7] == list(range(7)) and out[8:] == [8, 9]
    assert out[7] == TaskFailure(7, "ValueError: seven is bad input", 1)  # bad input is not retried
    with pytest.raises(
        ValueError, match="seven is bad input"
    ):  # the task's own error, as the serial executor raises it
        list(pool.map(_fails_on_seven, range(10)))


@pytest.mark.parametrize("kind", ["oserror", "sigkill"])
def test_transient_errors_and_dead_workers_are_retried(pool, tmp_path, kind):
    ctx = {"dir": tmp_path, "kind": kind}
    assert list(pool.map(_once, range(3), context=ctx)) == list(range(3))
    assert len(list(tmp_path.iterdir())) == 3  # every task failed once and was run again


def test_a_task_that_keeps_killing_its_worker_is_recorded(cluster, tmp_path):
    with make_executor("ray", workers=1) as one:  # one worker: chunk [1, 2] and chunk [3] are queued on it together
        out = list(one.map(_kills_always, [1, 2, 3], context=tmp_path, failures=True, chunksize=2))
    assert out[0] == 1 and out[2] == 3  # its chunk-mate and the chunk queued behind it run again alone and succeed
    assert isinstance(out[1], TaskFailure) and "worker died" in out[1].error
    attempts = len(list(tmp_path.glob("attempt-*")))  # each attempt that really ran: in its chunk, then alone
    assert out[1].attempts == attempts == 2 * (one.max_retries + 1)


def _kills_always(ctx, t):
    if t == 2:
        (ctx / f"attempt-{os.getpid()}").touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return t


def test_bad_settings_are_refused(cluster):
    with pytest.raises(EmqError, match="workers"):
        make_executor("ray", workers=64)  # the 4-CPU cluster cannot hold them
    with pytest.raises(EmqError, match="max_retries"):
        make_executor("ray", workers=1, max_retries=-1)
    with pytest.raises(EmqError, match="gpus_per_worker"):
        make_executor("ray", workers=1, gpus_per_worker=-1)


def test_campaign_fitness_on_ray_equals_serial(pool, tiny_setting):
    stats, fd, _ = tiny_setting
    kw = {"generations": 4, "population": 16, "seed": 3}

    def fingerprint(result):
        return [(r["canonical"], r["search_spearman"], r["heldout_spearman"]) for r in result.hall_of_fame], [
            r["best_search"] for r in result.log
        ]

    assert fingerprint(search(fd, stats=stats, executor=pool, **kw)) == fingerprint(search(fd, stats=stats, **kw))


def test_whole_configuration_scores_on_ray_equal_serial(pool):
    on_ray = score("default", proxies="kl", limit=3, executor=pool, reference=False).proxies[0]
    serial = score("default", proxies="kl", limit=3, reference=False).proxies[0]
    assert list(on_ray.rows) == list(serial.rows) and list(on_ray.scores) == list(serial.scores)


def test_ray_build_equals_serial_build_even_when_a_worker_is_killed(pool, serial_bench, tmp_path):
    out = tmp_path / "ray.sqlite"
    error: list[BaseException] = []
    before = pool.worker_pids()

    def build():
        try:
            bench_build(out, settings=SETTINGS, progress=False, executor=pool, **ARGS)
        except BaseException as e:  # noqa: BLE001 - reported by the test thread
            error.append(e)

    t = threading.Thread(target=build)
    t.start()
    deadline = time.time() + 240
    while time.time() < deadline and t.is_alive() and records_so_far(out) < 2:
        time.sleep(0.05)
    assert t.is_alive() and records_so_far(out) < 8, "the build finished before a worker could be killed"
    victim = before[0]
    os.kill(victim, signal.SIGKILL)
    t.join(300)
    assert not t.is_alive() and not error, error
    assert pool.worker_pids()[0] != victim  # the killed worker was restarted
    assert _records(out) == _records(serial_bench)  # nothing lost, nothing duplicated, same numbers
    log = Bench.open(out).meta["build_log"][-1]
    assert log["executor"] == "ray" and log["workers"] == 2 and log["failed"] == 0


@pytest.mark.slow
def test_killing_the_driver_then_resuming_gives_the_serial_bench(cluster, serial_bench, tmp_path):
    out = tmp_path / "driver.sqlite"
    cmd = [
        sys.executable,
        "-m",
        "emq.cli.main",
        "bench",
        "build",
        "--out",
        str(out),
        *CLI,
        "--executor",
        "ray",
        "--workers",
        "2",
        "--ray-address",
        cluster,
    ]
    log = tmp_path / "driver.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and records_so_far(out) < 2:
        time.sleep(0.05)
    assert proc.poll() is None, f"the build finished before the driver could be killed: {log.read_text()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = _records(out)[0]
    assert 2 <= len(partial) < 8
    done = subprocess.run([*cmd, "--resume", "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["records"] == 8
    assert set(partial) <= set(_records(out)[0])
    assert _records(out) == _records(serial_bench)
