"""How small can a bench's test set be? Reliability of the default metric vs test images, per task.

    python benchmarks/reliability_vs_images.py [--draws 5] [--benches A,B] [--out FILE.json]

A query of the per-image outcomes every shipped bench stores, not a rebuild: a test set of T images
has a report pool of about T/2 images, so for each size the script draws (seeded) that many report
sources of each bench and computes the default metric's split-half reliability over them
(Spearman-Brown corrected, split by source, as `emq bench info` does). The smallest size per task
whose every bench and every draw stays >= 0.95 is the zoo's `--test-limit` for that task.

The per-configuration speed-up of that choice is measured in the same run: one configuration of the
task's network evaluated by the bench's own PTQ engine on the whole test set and on the chosen one
(median of `--repeats` timings each; calibration cost is in both), with the load average printed.
Needs the benches' data for the timing (Fashion-MNIST: `apt-get install dataset-fashion-mnist`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from emq.bench import Bench
from emq.bench.bundles import BUNDLES
from emq.bench.evaluation import EvalSpec, evaluate_config
from emq.bench.reliability import RELIABILITY_TARGET
from emq.bench_setup import ptq_settings
from emq.uncertainty import split_half

SIZES = (250, 500, 750, 1000, 1500, 2000, 3000, 5000)
TASKS = {"default": "digits (default task)", "fashion-mnist": "Fashion-MNIST"}


def curve(bench: Bench, draws: int) -> list[dict]:
    """Corrected split-half reliability of the default metric on report-pool subsets, per test-set size."""
    metric = bench.default_metric
    sums, counts = bench.source_table(metric, "report")
    images_per_source = float(counts.mean())
    total_images = bench.pools.n_images
    rows = []
    for size in [s for s in SIZES if s <= total_images]:
        k = max(4, int(round(size / 2 / images_per_source)))  # report sources in a test set of `size`
        rng = np.random.default_rng(size)
        values = []
        for _ in range(draws):
            pick = rng.choice(counts.size, size=min(k, counts.size), replace=False)
            values.append(split_half(sums[:, pick], counts[pick]).corrected)
        rows.append(
            {
                "test_images": size,
                "report_sources": int(min(k, counts.size)),
                "mean": float(np.mean(values)),
                "min": float(np.min(values)),
            }
        )
    return rows


def time_config(bench: Bench, limit: int | None, config: str, repeats: int) -> float:
    """Median seconds of one configuration's evaluation (fresh engine per limit; first call warms it)."""
    spec = EvalSpec(model=bench.meta["model"], data=bench.meta["data"], settings=ptq_settings(bench), test_limit=limit)
    evaluate_config(spec, config)  # builds the engine, rounding from the cache
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        evaluate_config(spec, config)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--draws", type=int, default=5, help="random report-pool subsets per size (default 5)")
    ap.add_argument("--repeats", type=int, default=3, help="timed evaluations per test-set size (default 3)")
    ap.add_argument("--benches", help="comma-separated shipped benches (default: every one that is built)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "reliability_vs_images.json")
    args = ap.parse_args()
    names = args.benches.split(",") if args.benches else [n for n, b in BUNDLES.items() if b.path.is_file()]
    unknown = [n for n in names if n not in BUNDLES or not BUNDLES[n].path.is_file()]
    if unknown:
        ap.error(f"--benches: not a built shipped bench: {', '.join(unknown)} (see `emq bench list`)")
    result: dict = {"benches": {}, "choice": {}, "target": RELIABILITY_TARGET}
    by_task: dict[str, list[str]] = {}
    for name in names:
        bench = Bench.open(BUNDLES[name].path)
        rows = curve(bench, args.draws)
        result["benches"][name] = {
            "data": bench.meta["data"],
            "metric": bench.default_metric,
            "test_images": bench.pools.n_images,
            "curve": rows,
        }
        by_task.setdefault(bench.meta["data"], []).append(name)
        print(f"\n{name} ({bench.meta['data']}, {bench.default_metric}, {bench.pools.n_images} test images)")
        print("test images | report sources | corrected split-half mean (min over draws)")
        for r in rows:
            print(f"{r['test_images']:>11} | {r['report_sources']:>14} | {r['mean']:.3f} ({r['min']:.3f})")
    for data, names in by_task.items():
        ok = [
            s
            for s in SIZES
            if all(
                any(r["test_images"] == s and r["min"] >= RELIABILITY_TARGET for r in result["benches"][n]["curve"])
                for n in names
            )
        ]
        chosen = min(ok) if ok else None
        full = min(result["benches"][n]["test_images"] for n in names)
        bench = Bench.open(BUNDLES[names[0]].path)
        config = bench.config_texts[0]
        load0 = os.getloadavg()[0]
        t_full = time_config(bench, bench.meta.get("test_limit"), config, args.repeats)
        t_small = time_config(bench, chosen, config, args.repeats) if chosen else float("nan")
        load1 = os.getloadavg()[0]
        result["choice"][data] = {
            "benches": names,
            "test_images": chosen,
            "full_test_images": full,
            "timed_bench": names[0],
            "seconds_full": t_full,
            "seconds_chosen": t_small,
            "speedup": t_full / t_small,
            "load_average": [load0, load1],
        }
        if chosen is None:
            print(
                f"\n{TASKS.get(data, data)}: no test set up to {full} images keeps every bench and draw >= "
                f"{RELIABILITY_TARGET}: build its benches on more images"
            )
            continue
        print(
            f"\n{TASKS.get(data, data)}: smallest test set with every bench and draw >= {RELIABILITY_TARGET}: "
            f"{chosen} images (of {full}); one configuration of {names[0]}: {t_full:.2f} s -> {t_small:.2f} s, "
            f"speed-up {t_full / t_small:.2f}x (load average {load0:.1f} -> {load1:.1f})"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
