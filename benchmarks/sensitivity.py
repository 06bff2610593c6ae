"""Measured sensitivity (emq.sensitivity): the speed-up from prefix reuse and the cost in PTQ-equivalent
evaluations, measured in the same run, with the machine's load.

Each round measures the same tables twice, with prefix reuse and with every single-slot run over
the whole network (no disk cache either way), and checks that they agree; the order alternates
between rounds. The reference unit is one PTQ evaluation of a configuration on the bench's test
split, timed by the measurement itself.

    python benchmarks/sensitivity.py [--bench default] [--images 64] [--rounds 2]

Needs only emq's core dependencies (no extra) and the bench's data.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from emq.bench import Bench
from emq.bench_setup import BenchSetup
from emq.sensitivity import SensitivitySettings, measure_sensitivity


def run(setup: BenchSetup, images: int, reuse: bool) -> tuple[float, object]:
    s = SensitivitySettings(min_images=images, max_images=images, prefix_reuse=reuse)
    t0 = time.perf_counter()
    sens = measure_sensitivity(setup.target, bits=setup.bits, ptq=setup.ptq, settings=s, use_cache=False)
    return time.perf_counter() - t0, sens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bench", default="default")
    ap.add_argument("--images", type=int, default=64, help="evaluation images (the calibration pass is the PTQ's)")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    setup = BenchSetup.of(Bench.open(args.bench))
    times: dict[bool, list[float]] = {True: [], False: []}
    measured = {}
    for r in range(args.rounds):
        for reuse in (True, False) if r % 2 == 0 else (False, True):
            seconds, sens = run(setup, args.images, reuse)
            times[reuse].append(sens.meta["seconds"] - sens.meta["rounding_seconds"])
            measured[reuse] = sens
            print(
                f"round {r} reuse={reuse}: {seconds:.1f} s wall, {times[reuse][-1]:.1f} s measuring, "
                f"{sens.meta['ptq_equivalents']:.1f} PTQ evaluations of {sens.meta['ptq_evaluation_seconds']:.2f} s; "
                f"load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    same = all(np.allclose(measured[True].tables[k], measured[False].tables[k], rtol=1e-9) for k in ("kl", "nsr"))
    a, b = statistics.median(times[True]), statistics.median(times[False])
    s = measured[True].meta
    print(
        f"{args.bench}: {s['single_slot_evaluations']} single-slot evaluations on {s['images']} images "
        f"(+ the PTQ calibration pass over {setup.ptq.calib_size} images each)"
    )
    print(f"median seconds measuring: prefix reuse {a:.1f}, full network {b:.1f}; speed-up {b / a:.2f}x")
    print(f"tables identical with and without reuse: {same}; load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
