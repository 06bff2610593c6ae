"""Bench-building throughput: configurations per second with 1 and 2 worker processes.

    python benchmarks/bench_build.py [--configs 24] [--workers 1 2] [--test-limit N]

    Needs only emq's core dependencies (no extra).

Each run builds a fresh bench of the default model in a temporary folder (no noise
ceiling), so the figure includes engine start-up in every worker, as a real build does.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from emq.bench import bench_build


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", type=int, default=24)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--test-limit", type=int, default=None, help="evaluate on the first N test images only")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for w in args.workers:
            t0 = time.perf_counter()
            info = bench_build(
                Path(tmp) / f"w{w}.sqlite",
                configs=args.configs,
                seed=0,
                workers=w,
                noise_samples=0,
                test_limit=args.test_limit,
                progress=False,
            )
            wall = time.perf_counter() - t0
            evals = info["build_log"][-1]["seconds"]
            print(
                f"workers={w}: {info['records']} configs in {wall:.1f} s total ({info['records'] / wall:.2f} "
                f"configs/s), evaluation phase {evals:.1f} s ({info['records'] / evals:.2f} configs/s)"
            )


if __name__ == "__main__":
    main()
