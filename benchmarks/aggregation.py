"""Which multi-bench aggregate should `emq search --bench A --bench B` use by default?

Runs the leave-one-network-out study of `benchmarks/transfer.py` once per aggregate (mean,
min, mean minus k x spread) with the same seeds, benches and budget, then reports on every
held-out bench (held-out configurations x report pool, never seen by any campaign):

- each aggregate's evolved rho (mean and spread over seeds) and how many seeds beat / lose to
  the bench's best hand-made proxy (paired interval excluding zero);
- the paired difference of each aggregate to `mean` per seed (same bench, same seed, the
  bench's bootstrap replicates), counted as wins / losses where the interval excludes zero.

    python benchmarks/aggregation.py [--aggregates mean,min,mean-std] [--seeds 0,1,2] [--out runs/aggregation]

    Needs only emq's core dependencies (no extra).

Choosing a default from these numbers uses the held-out benches once, at the level of the
tool's settings; the README says so next to the leave-one-out headline.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from emq.evolution.engine import TRANSFER_CAMPAIGN
from emq.fileio import atomic_write_text, ensure_dir
from emq.ranking import paired_difference, score
from emq.tables import markdown_table
from emq.transfer import SEEDS, TransferStudy

BENCHES = "default,stratified,vgg-digits,mobilenetv2-digits,resnet20-fashion"


def _study(agg: str, args: argparse.Namespace, out: Path) -> TransferStudy:
    return TransferStudy(
        args.benches.split(","),
        seeds=[int(s) for s in args.seeds.split(",")],
        generations=args.generations,
        population=args.population,
        protocols=("leave-one-out",),
        aggregate=agg,
        whole_config=(),
        out_dir=out / agg,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--benches", default=BENCHES)
    ap.add_argument("--aggregates", default="mean,min,mean-std")
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    ap.add_argument("--generations", type=int, default=TRANSFER_CAMPAIGN.generations)
    ap.add_argument("--population", type=int, default=TRANSFER_CAMPAIGN.population)
    ap.add_argument("--out", default="runs/aggregation")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = ensure_dir(Path(args.out))
    aggs = args.aggregates.split(",")
    t0 = time.perf_counter()
    studies = {agg: _study(agg, args, out) for agg in aggs}
    results = {}
    for agg, study in studies.items():
        t = time.perf_counter()
        results[agg] = study.run()
        print(f"{agg}: {len(results[agg].cells)} held-out cells in {time.perf_counter() - t:.0f} s", flush=True)

    base = aggs[0]
    per_cell: dict[tuple[str, int], dict[str, dict]] = {}
    for agg, res in results.items():
        for c in res.cells:
            per_cell.setdefault((c["test"], c["seed"]), {})[agg] = c
    versus: dict[tuple[str, int], dict[str, dict | None]] = {}
    for (test, seed), by_agg in per_cell.items():
        files = [
            out / agg / "proxies" / f"leave-one-out__{'+'.join(by_agg[agg]['train'])}__s{seed}.json" for agg in aggs
        ]
        rep = score(test, proxies=[], proxy_files=files, reference=False)
        evolved = [p for p in rep.proxies if p.kind == "evolved"]
        versus[(test, seed)] = {
            agg: paired_difference(rep, p, evolved[0]) for agg, p in zip(aggs[1:], evolved[1:], strict=True)
        }

    tests = list(dict.fromkeys(t for t, _ in per_cell))
    head = (
        ["held out"]
        + [f"{a}: ρ mean ± sd (better/worse than best hand-made)" for a in aggs]
        + [f"{a} − {base}: mean Δρ (wins/losses)" for a in aggs[1:]]
    )
    rows, summary = [], {}
    for test in tests:
        cells = {a: [per_cell[(test, s)][a] for t, s in per_cell if t == test] for a in aggs}
        row = [test]
        for a in aggs:
            rho = np.array([c["rho"] for c in cells[a]])
            better = sum(1 for c in cells[a] if c["paired"] and c["paired"]["low"] > 0)
            worse = sum(1 for c in cells[a] if c["paired"] and c["paired"]["high"] < 0)
            row.append(f"{rho.mean():.3f} ± {rho.std():.3f} ({better}/{worse})")
            summary.setdefault(a, {"rho": [], "better": 0, "worse": 0})
            summary[a]["rho"] += rho.tolist()
            summary[a]["better"] += better
            summary[a]["worse"] += worse
        for a in aggs[1:]:
            ds = [versus[(t, s)][a] for t, s in per_cell if t == test]
            est = np.array([d["estimate"] for d in ds if d])
            wins = sum(1 for d in ds if d and d["low"] > 0)
            losses = sum(1 for d in ds if d and d["high"] < 0)
            row.append(f"{est.mean():+.3f} ({wins}/{losses})")
        rows.append(row)
    print(markdown_table(head, rows))
    print()
    print(
        markdown_table(
            ["aggregate", "mean held-out ρ", "worst held-out ρ", "cells better / worse than best hand-made"],
            [
                [a, f"{np.mean(s['rho']):.3f}", f"{np.min(s['rho']):.3f}", f"{s['better']}/{s['worse']}"]
                for a, s in summary.items()
            ],
        )
    )
    record = {
        "settings": vars(args),
        "cells": {a: r.cells for a, r in results.items()},
        "versus": [{"test": t, "seed": s, "base": base, "paired": v} for (t, s), v in versus.items()],
    }
    atomic_write_text(out / "aggregation.json", json.dumps(record, indent=1, default=str) + "\n")
    load = os.getloadavg()
    print(
        f"\n{sum(len(s.plan) for s in studies.values())} campaigns in {time.perf_counter() - t0:.0f} s "
        f"(load average {load[0]:.1f}, {os.cpu_count()} cores); files in {out}"
    )


if __name__ == "__main__":
    main()
