"""Issue 7 acceptance: measured PTQ top-1 of allocations at several average-bit budgets.

For each budget: the evolved proxy's ILP allocation, HAWQ-V2's and OMPQ's, uniform bits,
the best bench configuration in budget (oracle) and the median random bench configuration
in (budget - 0.25, budget]. Every allocation is quantized and evaluated for real.

    python benchmarks/allocation_quality.py [--proxy best_proxy.json] [--budgets 2.5,3.0,3.5]

    Needs only emq's core dependencies (no extra).

Without --proxy a campaign (--generations, --population, --seed) is run first.
"""

from __future__ import annotations

import argparse
import time

from emq.allocation import Allocator
from emq.baselines import get_proxy
from emq.bench import Bench
from emq.bench_setup import BenchSetup
from emq.evolution import search
from emq.pipeline_demo import REFERENCE_PROXIES, compare_allocations
from emq.search_space.proxyfile import load_proxy
from emq.search_space.stats import compute_stats
from emq.target import resolve_target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--proxy", help="an evolved proxy JSON (default: run a campaign)")
    ap.add_argument("--bench", default="default")
    ap.add_argument("--budgets", default="2.5,3.0,3.5")
    ap.add_argument("--generations", type=int, default=30)
    ap.add_argument("--population", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.perf_counter()
    target = resolve_target("default")
    bench = Bench.open(args.bench)
    setup = BenchSetup.of(
        bench, target
    )  # the bench's PTQ and statistics settings: allocations comparable with its records
    stats = compute_stats(target, bits=setup.bits, settings=setup.stats)
    if args.proxy:
        evolved = load_proxy(args.proxy)
    else:
        res = search(
            bench=bench,
            model=target,
            stats=stats,
            generations=args.generations,
            population=args.population,
            seed=args.seed,
        )
        evolved = res.best
        print(
            f"evolved (seed {args.seed}): {res.summary['best_expression']}  held-out "
            f"rho {res.summary['best_heldout_spearman']:.3f}"
        )
    allocator = Allocator(target, setup.ptq, stats=stats, stats_settings=setup.stats)
    proxies = {"evolved": evolved, **{n: get_proxy(n) for n in REFERENCE_PROXIES}}
    print(f"full precision top-1 {allocator.engine().evaluate_fp().top1:.2f} %")
    print("| budget (avg bits) | method | avg bits | top-1 % | KL |")
    print("|---|---|---|---|---|")
    for budget in (float(b) for b in args.budgets.split(",")):
        rows, extra = compare_allocations(allocator, bench, proxies, budget)
        for r in rows:
            print(f"| {budget:g} | {r.method} | {r.avg_bits:.3f} | {r.top1:.2f} | {r.kl:.4f} |")
        if "median_random_top1" in extra:
            print(
                f"| {budget:g} | median random in budget (n={extra['random_configs']}) | "
                f"| {extra['median_random_top1']:.2f} | |"
            )
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
