"""layer-kl-mid against layer-kl: does the context of the single-slot measurement matter?

A pre-declared comparison (issue 25; the context was fixed before any run and nothing here is chosen
by looking at held-out data): `layer-kl` measures each slot at b bits with every other slot at 8,
`layer-kl-mid` with every other slot at the middle bit-width of the bench's bit set (3 of {2, 3, 4}).
Per bench: both proxies' Spearman on held-out configurations x report pool with its 95 % bootstrap
interval, their paired difference (mid minus layer-kl) on the same replicates, Fisher and ridge fitted
on the bench beside them, the bench's ceiling, and the measurement's cost on the network. Each bench's
row is written as soon as it is done, so a rerun resumes.

Usage: python benchmarks/layer_context.py [--benches default,vgg-digits,...] [--out FILE]

Needs only emq's core dependencies (no extra) and each bench's data.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from emq.fileio import atomic_write_text
from emq.ranking import paired_difference, score

ZOO = (
    "default,stratified,vgg-digits,mobilenetv2-digits,regnet-digits,resnet20-fashion,resnet18-fashion,"
    "mobilenetv3-fashion,shufflenetv2-fashion,squeezenet-shapes,efficientnet-shapes,regnet-shapes,densenet-shapes,"
    "vgg11bn-shapes"
)
PROXIES = "layer-kl,layer-kl-mid,fisher"


def row(bench: str) -> dict:
    t0, load = time.perf_counter(), os.getloadavg()[0]
    report = score(bench, proxies=PROXIES)
    rows = {p.name: p for p in report.proxies}
    return {
        "ceiling": report.ceiling,
        "seconds": time.perf_counter() - t0,
        "load": [round(load, 2), round(os.getloadavg()[0], 2)],
        "proxies": {
            name: {"rho": p.correlations.get("spearman_heldout_report"), "interval": p.interval, "setup": p.setup}
            for name, p in rows.items()
        },
        "mid_minus_layer_kl": paired_difference(report, rows["layer-kl-mid"], rows["layer-kl"]),
    }


def summary(rows: dict) -> dict:
    diffs = {b: r["mid_minus_layer_kl"] for b, r in rows.items()}
    return {
        "benches": len(rows),
        "better": sorted(b for b, d in diffs.items() if d["low"] > 0),
        "worse": sorted(b for b, d in diffs.items() if d["high"] < 0),
        "mean_difference": float(np.mean([d["estimate"] for d in diffs.values()])),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benches", default=ZOO, help="comma-separated benches (default: the 14 zoo benches)")
    ap.add_argument("--out", default="benchmarks/results/layer_context.json")
    args = ap.parse_args()
    out = Path(args.out)
    done = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else {}
    rows = done.get("rows", {})
    for bench in (b for b in args.benches.split(",") if b):
        if bench not in rows:
            rows[bench] = row(bench)
            atomic_write_text(out, json.dumps({"rows": rows}, indent=1, default=str) + "\n")
        d, p = rows[bench]["mid_minus_layer_kl"], rows[bench]["proxies"]
        print(
            f"{bench}: layer-kl {p['layer-kl']['rho']:.3f}, layer-kl-mid {p['layer-kl-mid']['rho']:.3f}, "
            f"difference {d['estimate']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
        )
    result = {"rows": rows, "summary": summary(rows), "proxies": PROXIES}
    atomic_write_text(out, json.dumps(result, indent=1, default=str) + "\n")
    print(json.dumps(result["summary"], indent=1))


if __name__ == "__main__":
    main()
