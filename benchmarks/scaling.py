"""Bench-build throughput with the serial executor, the process pool and Ray at 1 and 2
workers, Ray's start-up overhead, and the scaling efficiency from 1 to 2 workers.

Every run builds the same configurations of the default model into a fresh file and must
give the same records (checked). Configurations per second are over the evaluation stage
(the build log's seconds: worker start-up and engine construction included); Ray's start-up
(ray.init once, then each executor's actors) is measured on its own. Efficiency = rate(2) / (2 x rate(1)).

    python benchmarks/scaling.py [--configs 40] [--test-limit N] [--out benchmarks/results/scaling.json]
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

from emq.bench import Bench, bench_build
from emq.executors import make_executor
from emq.fileio import atomic_write_text
from emq.tables import markdown_table


def _records(path: Path) -> list[tuple]:
    with closing(sqlite3.connect(path)) as con:
        return con.execute("SELECT idx, config, top1, loss, kl, outcomes FROM records ORDER BY idx").fetchall()


def _build(path: Path, executor, args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    bench_build(path, configs=args.configs, seed=args.seed, noise_samples=0, test_limit=args.test_limit, progress=False, executor=executor)
    wall = time.perf_counter() - t0
    entry = Bench.open(path).meta["build_log"][-1]
    return {"evaluated": entry["evaluated"], "seconds": entry["seconds"], "wall": round(wall, 2), "rate": entry["evaluated"] / entry["seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", type=int, default=40)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--test-limit", type=int)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/scaling.json"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="emq-scaling-"))
    load0 = os.getloadavg()
    runs: dict[tuple[str, int], dict] = {}
    reference = None
    cluster_start = None
    for name, workers in (("serial", 1), ("process", 1), ("process", 2), ("ray", 1), ("ray", 2)):
        startup = None
        if name == "ray":
            import ray

            t0 = time.perf_counter()
            if not ray.is_initialized():  # one cluster for both Ray runs, as a user keeps one running
                ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
                cluster_start = time.perf_counter() - t0
            executor = make_executor("ray", workers)
            executor.worker_pids()  # the actors are up
            startup = time.perf_counter() - t0
        else:
            executor = make_executor(name, workers)
        with executor:
            path = work / f"{name}-{workers}.sqlite"
            run = _build(path, executor, args)
        run["startup"] = round(startup, 2) if startup is not None else None
        records = _records(path)
        reference = reference or records
        run["same_records"] = records == reference
        runs[(name, workers)] = run
        print(f"{name} x{workers}: {run['evaluated']} configurations in {run['seconds']:.1f} s ({run['rate']:.2f}/s)"
              + (f", Ray start-up {startup:.1f} s" if startup is not None else ""), flush=True)
    if cluster_start is not None:
        import ray

        ray.shutdown()
    load1 = os.getloadavg()
    rows = []
    for (name, workers), r in runs.items():
        one = runs.get((name, 1))
        eff = r["rate"] / (workers * one["rate"]) if one and workers > 1 else None
        r["efficiency"] = eff
        rows.append([name, workers, r["evaluated"], f"{r['seconds']:.1f}", f"{r['rate']:.3f}", f"{eff:.2f}" if eff else "", r["startup"] or "", r["same_records"]])
    print(markdown_table(["executor", "workers", "configurations", "seconds", "configs / s", "efficiency 1→2", "Ray start-up s", "same records"], rows))
    if cluster_start is not None:
        print(f"Ray start-up: the cluster (ray.init) {cluster_start:.1f} s, once; then each executor's actors (start-up column, cluster included for the first)")
    print(f"load average {load0[0]:.1f} before, {load1[0]:.1f} after ({os.cpu_count()} cores); {args.configs} configurations of the default model"
          + (f", first {args.test_limit} test images" if args.test_limit else ""))
    payload = {"settings": vars(args) | {"out": str(args.out)}, "load_average": [load0[0], load1[0]], "ray_cluster_start": cluster_start,
               "runs": [{"executor": n, "workers": w, **r} for (n, w), r in runs.items()]}
    atomic_write_text(args.out, json.dumps(payload, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
