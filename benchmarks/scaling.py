"""Bench-build throughput with the serial executor, the process pool and Ray at 1 and 2
workers, Ray's start-up overhead, and the scaling efficiency from 1 to 2 workers.

Every run builds the same configurations of the default model into a fresh file and must
give the same records (checked). Configurations per second are over the evaluation stage
(the build log's seconds: worker start-up and engine construction included); Ray's start-up
(ray.init once, then each executor's actors) is measured on its own. Efficiency = rate(2) /
(2 x rate(1)) within one round; `--repeats` rounds give medians and ranges, since the time per
configuration drifts between runs on a shared machine.

    python benchmarks/scaling.py [--configs 40] [--repeats 3] [--test-limit N] [--out benchmarks/results/scaling.json]

    Needs the ray extra for its Ray rows: pip install -e ".[ray]"
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import tempfile
import time
from contextlib import closing
from pathlib import Path
from statistics import median
from typing import Any

from emq.bench import Bench, bench_build
from emq.executors import make_executor
from emq.fileio import atomic_write_text
from emq.tables import markdown_table


def _records(path: Path) -> list[tuple]:
    with closing(sqlite3.connect(path)) as con:
        return con.execute("SELECT idx, config, top1, loss, kl, outcomes FROM records ORDER BY idx").fetchall()


def _build(path: Path, executor, args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    bench_build(
        path,
        configs=args.configs,
        seed=args.seed,
        noise_samples=0,
        test_limit=args.test_limit,
        progress=False,
        executor=executor,
    )
    wall = time.perf_counter() - t0
    entry = Bench.open(path).meta["build_log"][-1]
    return {
        "evaluated": entry["evaluated"],
        "seconds": entry["seconds"],
        "wall": round(wall, 2),
        "rate": entry["evaluated"] / entry["seconds"],
    }


SETUPS = (("serial", 1), ("process", 1), ("process", 2), ("ray", 1), ("ray", 2))


def _executor(name: str, workers: int) -> tuple[Any, float | None]:
    """The executor and, for Ray, the seconds until its actors are up."""
    if name != "ray":
        return make_executor(name, workers), None
    t0 = time.perf_counter()
    executor = make_executor("ray", workers)
    executor.worker_pids()
    return executor, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", type=int, default=40)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--test-limit", type=int)
    ap.add_argument("--repeats", type=int, default=3, help="rounds of all five setups; medians and ranges are reported")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/scaling.json"))
    args = ap.parse_args()
    import ray

    work = Path(tempfile.mkdtemp(prefix="emq-scaling-"))
    load0 = os.getloadavg()
    runs: list[dict] = []
    reference = None
    t0 = time.perf_counter()
    ray.init(
        num_cpus=2, include_dashboard=False, log_to_driver=False
    )  # one cluster for every Ray run, as a user keeps one running
    cluster_start = time.perf_counter() - t0
    for repeat in range(args.repeats):
        for name, workers in SETUPS:
            executor, startup = _executor(name, workers)
            path = work / f"{name}-{workers}-r{repeat}.sqlite"
            with executor:
                run = _build(path, executor, args)
            records = _records(path)
            reference = reference or records
            runs.append(
                {
                    "repeat": repeat,
                    "executor": name,
                    "workers": workers,
                    **run,
                    "actors_start": startup,
                    "same_records": records == reference,
                }
            )
            print(
                f"round {repeat + 1}: {name} x{workers}: {run['evaluated']} configurations "
                f"in {run['seconds']:.1f} s ({run['rate']:.2f}/s)",
                flush=True,
            )
    ray.shutdown()
    load1 = os.getloadavg()

    def rate(name: str, workers: int, repeat: int) -> float:
        return next(r["rate"] for r in runs if (r["executor"], r["workers"], r["repeat"]) == (name, workers, repeat))

    rows = []
    for name, workers in SETUPS:
        rates = [rate(name, workers, k) for k in range(args.repeats)]
        effs = [rate(name, 2, k) / (2 * rate(name, 1, k)) for k in range(args.repeats)] if workers == 2 else []
        starts = [
            r["actors_start"]
            for r in runs
            if (r["executor"], r["workers"]) == (name, workers) and r["actors_start"] is not None
        ]
        same = all(r["same_records"] for r in runs if (r["executor"], r["workers"]) == (name, workers))
        rows.append(
            [
                name,
                workers,
                f"{median(rates):.3f} ({min(rates):.3f}–{max(rates):.3f})",
                f"{median(effs):.2f} ({min(effs):.2f}–{max(effs):.2f})" if effs else "",
                f"{median(starts):.1f}" if starts else "",
                same,
            ]
        )
    print(
        markdown_table(
            [
                "executor",
                "workers",
                "configs / s, median (range)",
                "efficiency 1→2, median (range)",
                "actors up, s",
                "same records",
            ],
            rows,
        )
    )
    print(
        f"Ray cluster start (ray.init, once): {cluster_start:.1f} s; load average {load0[0]:.1f} "
        f"before, {load1[0]:.1f} after ({os.cpu_count()} cores); {args.repeats} rounds of {args.configs} "
        "configurations of the default model" + (f", first {args.test_limit} test images" if args.test_limit else "")
    )
    payload = {
        "settings": vars(args) | {"out": str(args.out)},
        "load_average": [load0[0], load1[0]],
        "ray_cluster_start": cluster_start,
        "runs": runs,
    }
    atomic_write_text(args.out, json.dumps(payload, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
