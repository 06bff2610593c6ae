"""The first `emq score --bench NAME --proxies <separable>` on each shipped bench, with an empty cache.

Each run gets a fresh EMQ_CACHE_DIR, so nothing computed before helps; the bench's statistics
come from its bundle (emq.search_space.shipped). Prints wall and CPU seconds (the command's own,
resource.getrusage(RUSAGE_CHILDREN)) and the load average before each run (target: <= 10 s on
2 idle cores). `--reference` also times, in the same run, computing the statistics the bundle
replaces (the bench's own settings, no cache): what the first use cost before.

Usage: python benchmarks/first_use.py [--benches default,stratified,vgg-digits,mobilenetv2-digits,resnet20-fashion]
                                      [--proxies hawq-v2] [--reference]
Needs only emq's core dependencies (no extra).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from emq.bench.bundles import BUNDLES

REFERENCE = (
    "from emq.bench import Bench; from emq.bench_setup import BenchSetup; "
    "from emq.search_space.stats import compute_stats; s = BenchSetup.of(Bench.open({name!r})); "
    "compute_stats(s.target, bits=s.bits, settings=s.stats, use_cache=False, progress=False)"
)


def _timed(command: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="emq-first-use-") as cache:
        load = os.getloadavg()[0]
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        done = subprocess.run(
            command,
            env={**os.environ, "EMQ_CACHE_DIR": cache},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        wall = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited with {done.returncode}: run it alone to see why")
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "load_before": round(load, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benches", default=",".join(BUNDLES))
    ap.add_argument("--proxies", default="hawq-v2")
    ap.add_argument("--reference", action="store_true", help="also time computing the statistics (the old first use)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    for name in args.benches.split(","):
        row = {"bench": name}
        row["score"] = _timed(
            [sys.executable, "-m", "emq.cli.main", "-q", "score", "--bench", name, "--proxies", args.proxies]
        )
        if args.reference:
            row["reference_stats"] = _timed([sys.executable, "-c", REFERENCE.format(name=name)])
            row["ratio_cpu"] = round(row["score"]["cpu_s"] / max(row["reference_stats"]["cpu_s"], 1e-9), 3)
        rows.append(row)
    if args.json:
        print(json.dumps(rows))
        return
    for row in rows:
        s = row["score"]
        line = (
            f"{row['bench']:>20}: emq score --proxies {args.proxies}: wall {s['wall_s']:.1f} s, "
            f"CPU {s['cpu_s']:.1f} s, load {s['load_before']:.1f}"
        )
        if "reference_stats" in row:
            r = row["reference_stats"]
            line += (
                f"; computing the statistics instead: wall {r['wall_s']:.1f} s, CPU {r['cpu_s']:.1f} s "
                f"(score/reference CPU {row['ratio_cpu']:.2f})"
            )
        print(line)


if __name__ == "__main__":
    main()
