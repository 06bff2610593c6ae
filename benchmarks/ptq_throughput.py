"""PTQ throughput on the default model: configurations evaluated per second, with and
without the per-(layer, bit) quantized-weight cache, measured in the same run.

    python benchmarks/ptq_throughput.py [--configs 30]

    Needs only emq's core dependencies (no extra).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from emq.quant import PTQEngine
from emq.specs import DEFAULT_BITS
from emq.target import resolve_target


def rate(engine: PTQEngine, configs: np.ndarray) -> float:
    t0 = time.perf_counter()
    for c in configs:
        engine.evaluate(c.tolist())
    return len(configs) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--configs", type=int, default=30)
    args = ap.parse_args()
    t = resolve_target("default")
    configs = np.random.default_rng(0).choice(DEFAULT_BITS, size=(args.configs, t.layer_map.num_slots))
    cached = PTQEngine(t)
    cached.evaluate_fp()
    cached.evaluate([2] * t.layer_map.num_slots)  # warm-up, not timed
    for b in (3, 4):
        cached.evaluate([b] * t.layer_map.num_slots)
    uncached = PTQEngine(t)
    uncached.cache_enabled = False
    uncached.evaluate_fp()
    r_cached, r_uncached = rate(cached, configs), rate(uncached, configs)
    print(
        f"default model, {len(t.data.test)} test images, {cached.settings.calib_size} calibration "
        f"images, {args.configs} configurations"
    )
    print(f"with weight cache:    {r_cached:.2f} configurations/s")
    print(f"without weight cache: {r_uncached:.2f} configurations/s")
    print(f"speed-up from the cache: {r_cached / r_uncached:.2f}x")


if __name__ == "__main__":
    main()
