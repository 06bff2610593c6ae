"""What sharing one PTQ pass per configuration saves the whole-configuration proxies (gmpq, seam, kl).

On a seeded sample of a bench's configurations, in the same run: (a) the reference, each proxy
scoring alone in its own context (one PTQ pass per proxy and configuration, as before);
(b) the three together (`emq score`'s path: one pass per configuration). Checks the scores are
identical, prints seconds per configuration of both, their ratio, the load average, and what
`emq score --bench NAME` with its defaults then spends on them (2 x --limit configurations).
`--full` also times that whole command with a fresh cache (target: <= 3 minutes on 2 idle cores).

Usage: python benchmarks/whole_config.py [--bench default] [--configs 8] [--limit 200] [--full]
Needs only emq's core dependencies (no extra).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from emq.baselines import get_proxy
from emq.bench import Bench
from emq.bench_setup import BenchSetup
from emq.proxy import ProxyContext
from emq.ranking import _sample, _whole_config_scores
from emq.threads import set_threads

NAMES = ("gmpq", "seam", "kl")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", default="default")
    ap.add_argument("--configs", type=int, default=8)
    ap.add_argument("--limit", type=int, default=200, help="emq score's --limit, for the projection")
    ap.add_argument("--threads", type=int, help="torch threads (default: emq's automatic choice)")
    ap.add_argument("--full", action="store_true", help="also time `emq score --bench NAME` with its defaults")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    threads = set_threads(args.threads)
    b = Bench.open(args.bench)
    setup = BenchSetup.of(b)
    configs = b.configs[_sample(np.ones(len(b.configs), bool), args.configs, 0)]
    proxies = [get_proxy(n) for n in NAMES]

    def context() -> ProxyContext:
        ctx = ProxyContext(setup.target, setup.bits, setup.ptq)
        for p in proxies:  # engine and FP references: once per context, not per configuration
            p.reference(ctx)
        return ctx

    load = os.getloadavg()
    alone, t_alone = {}, 0.0
    for p in proxies:
        ctx = context()
        t0 = time.perf_counter()
        alone[p.name] = p.oriented_scores(ctx, configs)
        t_alone += time.perf_counter() - t0
    ctx = context()
    t0 = time.perf_counter()
    shared, _ = _whole_config_scores(proxies, ctx, configs, progress=False, executor=None)
    t_shared = time.perf_counter() - t0
    same = all(np.array_equal(shared[:, j], alone[n]) for j, n in enumerate(NAMES))
    n = len(configs)
    total = 2 * args.limit
    res = {
        "bench": args.bench,
        "configs": n,
        "threads": threads,
        "load_before": [round(x, 2) for x in load],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "alone_s_per_config": round(t_alone / n, 3),
        "shared_s_per_config": round(t_shared / n, 3),
        "speedup": round(t_alone / t_shared, 2),
        "identical_scores": same,
        f"projected_s_for_{total}_configs_alone": round(t_alone / n * total, 1),
        f"projected_s_for_{total}_configs_shared": round(t_shared / n * total, 1),
    }
    if args.full:
        with tempfile.TemporaryDirectory() as cache:
            load_full = os.getloadavg()
            t0 = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "emq.cli.main", "-q", "score", "--bench", args.bench],
                env={**os.environ, "EMQ_CACHE_DIR": cache},
                stdout=subprocess.DEVNULL,
                check=True,
            )
            res["full_score_wall_s"] = round(time.perf_counter() - t0, 1)
            res["full_score_load_before"] = [round(x, 2) for x in load_full]
    if args.json:
        print(json.dumps(res))
        return
    for k, v in res.items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()
