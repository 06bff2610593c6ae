"""Does MQ-Bench-101's rounding (AdaRound) rank configurations as the zoo's (GPTQ) does? Builds the
ResNet-18 zoo bench once more with AdaRound, exactly as the GPTQ one was built (same model, recipe,
seed, so the same configurations, calibration draw and test images), and reports the Spearman
between the two benches' values of each metric over their common configurations, with a seeded
95 % bootstrap interval over configurations, next to both benches' reliabilities (their product's
square root bounds what any agreement can reach).

    python benchmarks/adaround_vs_gptq.py [--bench resnet18-fashion] [--iters 2000] [--out FILE.sqlite]

    Needs the bench's data (Fashion-MNIST: apt-get install dataset-fashion-mnist); no extra.

The AdaRound build is an ordinary `emq bench build --weight-quantizer adaround` run: stopped, it
resumes where it was on the next run (nothing is recomputed). Results go to
benchmarks/results/adaround_vs_gptq.json, the build's wall seconds and the load average with them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from emq.bench import Bench
from emq.bench.bundles import BUNDLES

RESAMPLES = 1000
ROOT = Path(__file__).resolve().parents[1]


def agreement(a: np.ndarray, b: np.ndarray, seed: int = 0) -> dict:
    """Spearman of two value vectors over the same configurations, with a seeded percentile interval."""
    rng = np.random.default_rng(seed)
    reps = [spearmanr(a[i], b[i])[0] for i in (rng.integers(0, len(a), len(a)) for _ in range(RESAMPLES))]
    lo, hi = np.nanpercentile(reps, [2.5, 97.5])
    return {"rho": float(spearmanr(a, b)[0]), "low": float(lo), "high": float(hi)}


def build(name: str, out: Path, iters: int) -> None:
    """`emq bench build` of the bundle's model and recipe with AdaRound (resumed where `out` exists)."""
    bundle = BUNDLES[name]
    recipe = list(bundle.build)
    recipe[recipe.index("--weight-quantizer") + 1] = "adaround"
    cmd = [sys.executable, "-m", "emq.cli.main", "bench", "build", "--model", bundle.model, "--out", str(out)]
    cmd += [*recipe, "--quantizer-option", f"iters={iters}"] + (["--resume"] if out.is_file() else [])
    print("$", " ".join(cmd), flush=True)
    if subprocess.call(cmd, cwd=ROOT) != 0:
        raise SystemExit(f"the AdaRound build of {name} failed; run this script again to resume it")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", default="resnet18-fashion", help="a zoo bench built with GPTQ")
    ap.add_argument("--iters", type=int, default=2000, help="AdaRound iterations per layer and bit-width")
    ap.add_argument("--out", type=Path, help="the AdaRound bench (default benchmarks/results/BENCH-adaround.sqlite)")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/adaround_vs_gptq.json")
    args = ap.parse_args()
    if not BUNDLES[args.bench].build:
        ap.error(f"--bench {args.bench}: not a zoo bench (it has no build recipe)")
    out = (args.out or ROOT / f"benchmarks/results/{args.bench}-adaround.sqlite").resolve()
    build(args.bench, out, args.iters)
    gptq, ada = Bench.open(args.bench), Bench.open(out)
    common = sorted(set(gptq.config_texts) & set(ada.config_texts))
    gi = [gptq.get_idx_by_cfg(c) for c in common]
    ai = [ada.get_idx_by_cfg(c) for c in common]
    rows = {}
    for metric in ("kl", "loss", "top1"):
        rows[metric] = agreement(gptq.metrics[metric][gi], ada.metrics[metric][ai])
        rel = [b.reliability[metric]["combined"] for b in (gptq, ada)]
        rows[metric]["combined_reliability"] = {"gptq": rel[0], "adaround": rel[1]}
        rows[metric]["bound"] = float(np.sqrt(rel[0] * rel[1])) if None not in rel else None
    seconds = sum(e.get("seconds", 0.0) for e in ada.meta.get("build_log", []))
    doc = {
        "bench": args.bench,
        "adaround_bench": str(out.relative_to(ROOT) if out.is_relative_to(ROOT) else out),
        "adaround_rounding": ada.meta["rounding"]["build"],
        "configurations": len(common),
        "fp_top1": gptq.meta["fp_reference"]["top1"],
        "agreement": rows,
        "adaround_build_seconds": seconds,
        "load_average": os.getloadavg(),
        "cpus": os.cpu_count(),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{args.bench}: AdaRound vs GPTQ on {len(common)} common configurations (95 % bootstrap over them)")
    for metric, r in rows.items():
        bound = f"{r['bound']:.3f}" if r["bound"] is not None else "n/a"
        print(f"  {metric:5s} Spearman {r['rho']:.3f} [{r['low']:.3f}, {r['high']:.3f}]  (reliability bound {bound})")
    load = os.getloadavg()[0]
    print(f"AdaRound build {seconds / 60:.1f} min wall; load average {load:.1f} on {os.cpu_count()} cores")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
