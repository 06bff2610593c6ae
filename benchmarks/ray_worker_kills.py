"""Kill Ray workers with SIGKILL during a bench build: are the records the serial build's?

Builds the same bench twice: once with the serial executor, once with `--executor ray`
(2 workers on a local cluster) while a watcher kills a worker process with `kill -9`
each time the record count passes one of `--kill-at` (default: after 20 and 60 records).
Ray restarts the actor and runs its configurations in flight again. Prints whether the
records (every column, per-image outcomes included) are identical, the kill moments and
the times.

    python benchmarks/ray_worker_kills.py [--configs 100] [--kill-at 20,60]

    Needs the ray extra: pip install -e ".[ray]"
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import tempfile
import threading
import time
from contextlib import closing
from pathlib import Path

from emq.bench import Bench, bench_build
from emq.bench.store import records_so_far
from emq.executors import make_executor


def _records(path: Path) -> list[tuple]:
    with closing(sqlite3.connect(path)) as con:
        return con.execute(
            "SELECT idx, config, top1, loss, kl, size_bytes, bitops, seed, source, outcomes FROM records ORDER BY idx"
        ).fetchall()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", type=int, default=100)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--kill-at", default="20,60", help="record counts after which a worker is killed")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="emq-ray-kills-"))
    build = {"configs": args.configs, "seed": args.seed, "noise_samples": 0, "progress": False}

    t0 = time.perf_counter()
    bench_build(work / "serial.sqlite", **build)
    serial_s = time.perf_counter() - t0

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    executor = make_executor("ray", 2)
    kills: list[str] = []
    out = work / "ray.sqlite"

    def watch() -> None:
        for at in (int(x) for x in args.kill_at.split(",")):
            while records_so_far(out) < at and watcher_on.is_set():
                time.sleep(0.05)
            if not watcher_on.is_set():
                return
            pid = executor.worker_pids()[len(kills) % 2]
            os.kill(pid, signal.SIGKILL)
            kills.append(f"worker pid {pid} killed after {records_so_far(out)} records")

    watcher_on = threading.Event()
    watcher_on.set()
    watcher = threading.Thread(target=watch, daemon=True)
    t0 = time.perf_counter()
    watcher.start()
    with executor:
        bench_build(out, executor=executor, **build)
    ray_s = time.perf_counter() - t0
    watcher_on.clear()
    ray.shutdown()
    same = _records(out) == _records(work / "serial.sqlite")
    n = len(_records(out))
    print(
        f"{args.configs} configurations; serial build {serial_s:.0f} s, Ray build (2 workers) {ray_s:.0f} s; load "
        f"average {os.getloadavg()[0]:.1f}"
    )
    for k in kills:
        print(f"  {k}")
    print(
        f"records: {n} of {args.configs}, {len({r[1] for r in _records(out)})} distinct; identical to the serial "
        f"build: {same}; failures recorded: {len(Bench.open(out).failures)}"
    )


if __name__ == "__main__":
    main()
