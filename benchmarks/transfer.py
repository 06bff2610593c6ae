"""The transfer matrix of the README: leave-one-network-out and single-bench campaigns on
the shipped benches, each evolved proxy reported on benches it was never searched on
(held-out configurations x report pool, 95 % bootstrap intervals), beside every faithful
separable hand-made proxy, the whole-configuration references and their cost.

    python benchmarks/transfer.py [--benches default,vgg-digits,mobilenetv2-digits,resnet20-fashion]
                                  [--seeds 0,1,2] [--out runs/transfer]

    Needs only emq's core dependencies (no extra).
"""

from __future__ import annotations

import argparse
import logging
import os
import time

from emq.evolution.engine import TRANSFER_CAMPAIGN
from emq.transfer import DEFAULT_PROTOCOLS, SEEDS, WHOLE_CONFIG, WHOLE_LIMIT, TransferStudy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--benches", default="default,stratified,vgg-digits,mobilenetv2-digits,resnet20-fashion")
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    ap.add_argument("--generations", type=int, default=TRANSFER_CAMPAIGN.generations)
    ap.add_argument("--population", type=int, default=TRANSFER_CAMPAIGN.population)
    ap.add_argument("--protocols", default=",".join(DEFAULT_PROTOCOLS))
    ap.add_argument("--aggregate", default=TRANSFER_CAMPAIGN.aggregate)
    ap.add_argument("--whole-limit", type=int, default=WHOLE_LIMIT)
    ap.add_argument("--out", default="runs/transfer")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    t0 = time.perf_counter()
    study = TransferStudy(
        args.benches.split(","),
        seeds=[int(s) for s in args.seeds.split(",")],
        generations=args.generations,
        population=args.population,
        protocols=tuple(args.protocols.split(",")),
        aggregate=args.aggregate,
        whole_config=WHOLE_CONFIG,
        whole_limit=args.whole_limit,
        out_dir=args.out,
    )
    result = study.run()
    print(result.to_markdown())
    load = os.getloadavg()
    print(
        f"\n{len(study.plan)} campaigns in {time.perf_counter() - t0:.0f} s (load "
        f"average {load[0]:.1f}, {os.cpu_count()} cores); files in {args.out}"
    )


if __name__ == "__main__":
    main()
