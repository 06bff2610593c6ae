"""Is the embedded default task one where quantization matters? Prints the figures.

FP top-1, uniform 2/3/4-bit top-1, and the distribution of test top-1 over random
{2,3,4}-bit configurations with 8-bit activations (median vs chance, 5th-95th spread).

    python benchmarks/default_task.py [--configs 200]

    Needs only emq's core dependencies (no extra).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from emq.quant import PTQEngine
from emq.specs import DEFAULT_BITS
from emq.target import resolve_target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--configs", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t = resolve_target("default")
    engine = PTQEngine(t)
    s = t.layer_map.num_slots
    print(f"full precision: top-1 {engine.evaluate_fp().top1:.2f} %  ({len(t.data.test)} test images, chance 10 %)")
    for b in (2, 3, 4, 8):
        r = engine.evaluate([b] * s)
        print(f"uniform {b}-bit: top-1 {r.top1:.2f} %  loss {r.loss:.4f}  KL {r.kl:.4f}")
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    res = [engine.evaluate(rng.choice(DEFAULT_BITS, size=s).tolist()) for _ in range(args.configs)]
    dt = time.perf_counter() - t0
    top1 = np.array([r.top1 for r in res])
    p5, p50, p95 = np.percentile(top1, [5, 50, 95])
    print(
        f"{args.configs} random configurations ({dt / args.configs:.3f} s each): median {p50:.2f} % "
        f"({p50 - 10:.1f} points above chance), 5th-95th percentile {p5:.2f}-{p95:.2f} % "
        f"(spread {p95 - p5:.2f} points), min {top1.min():.2f} %, max {top1.max():.2f} %"
    )


if __name__ == "__main__":
    main()
