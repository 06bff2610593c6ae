"""The transfer matrix of the README: leave-one-network-out and single-bench campaigns on
the shipped benches, each evolved proxy reported on benches it was never searched on
(held-out configurations x report pool, 95 % bootstrap intervals), beside every faithful
separable hand-made proxy, the whole-configuration references and their cost.

    python benchmarks/transfer.py [--benches default,vgg-digits,mobilenetv2-digits,resnet20-fashion] [--seeds 0,1,2] [--out runs/transfer]

    Needs only emq's core dependencies (no extra).
"""

from __future__ import annotations

import argparse
import logging
import os
import time

from emq.evolution.evaluator import DEFAULT_AGGREGATE
from emq.transfer import WHOLE_CONFIG, TransferStudy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--benches", default="default,stratified,vgg-digits,mobilenetv2-digits,resnet20-fashion")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--generations", type=int, default=30)
    ap.add_argument("--population", type=int, default=48)
    ap.add_argument("--protocols", default="leave-one-out,single")
    ap.add_argument("--aggregate", default=DEFAULT_AGGREGATE)
    ap.add_argument("--whole-limit", type=int, default=20)
    ap.add_argument("--out", default="runs/transfer")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    t0 = time.perf_counter()
    study = TransferStudy(
        args.benches.split(","),
        [int(s) for s in args.seeds.split(",")],
        args.generations,
        args.population,
        tuple(args.protocols.split(",")),
        args.aggregate,
        WHOLE_CONFIG,
        args.whole_limit,
        out_dir=args.out,
    )
    result = study.run()
    print(result.to_markdown())
    load = os.getloadavg()
    print(
        f"\n{len(study.plan)} campaigns in {time.perf_counter() - t0:.0f} s (load average {load[0]:.1f}, {os.cpu_count()} cores); files in {args.out}"
    )


if __name__ == "__main__":
    main()
