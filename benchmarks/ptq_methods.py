"""Does the PTQ method change which configurations are good? Per model and weight-rounding
method (MSE-clipped rounding, GPTQ, AdaRound): uniform 2/3/4-bit top-1 and KL, the one-off
rounding preparation time (computed afresh in an empty cache), the time per configuration,
and the Spearman between the rankings two methods give the same configurations (with a
seeded 95 % bootstrap interval over configurations).

    python benchmarks/ptq_methods.py [--models default,vgg-digits] [--methods mse,gptq,adaround] [--configs 100]

    Needs only emq's core dependencies (no extra).

Every method sees the same configurations, the same calibration draw (half 0 of the
calibration sources, as bench builds) and the same test images.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from emq.bench.evaluation import limit_test
from emq.bench.sampling import plan_configs
from emq.bench.space import ConfigSpace
from emq.quant import PTQEngine, PTQSettings
from emq.specs import DEFAULT_BITS
from emq.tables import markdown_table
from emq.target import resolve_target

BITS = DEFAULT_BITS
RESAMPLES = 1000


def measure(model: str, method: str, configs: np.ndarray, *, test_limit: int | None, options: dict) -> dict:
    target = resolve_target(model)
    if test_limit:
        target = replace(target, data=limit_test(target.require_data(), test_limit))
    with tempfile.TemporaryDirectory() as cache:
        engine = PTQEngine(
            target, PTQSettings(calib_half=0, weight_quantizer=method, quantizer_options=options), cache_dir=cache
        )
        prep = engine.prepare_rounding(BITS)
        t0 = time.perf_counter()
        results = [engine.evaluate(c.tolist()) for c in configs]
        per_config = (time.perf_counter() - t0) / len(configs)
    fp = engine.evaluate_fp()
    return {
        "model": model,
        "method": method,
        "options": engine.rounding.describe()["options"],
        "fp_top1": fp.top1,
        "prep_seconds": prep,
        "seconds_per_config": per_config,
        "top1": [r.top1 for r in results],
        "kl": [r.kl for r in results],
    }


def agreement(a: np.ndarray, b: np.ndarray, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    reps = [spearmanr(a[i], b[i])[0] for i in (rng.integers(0, len(a), len(a)) for _ in range(RESAMPLES))]
    lo, hi = np.nanpercentile(reps, [2.5, 97.5])
    return {"rho": float(spearmanr(a, b)[0]), "low": float(lo), "high": float(hi)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="default,mobilenetv2-digits,vgg-digits,resnet20-fashion")
    ap.add_argument("--methods", default="mse,gptq,adaround")
    ap.add_argument("--configs", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--fashion-test-limit", type=int, default=5000, help="test images of resnet20-fashion (as its shipped bench)"
    )
    ap.add_argument("--adaround-iters", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/ptq_methods.json"))
    args = ap.parse_args()
    rows, agree, runs = [], [], []
    for model in args.models.split(","):
        lm = resolve_target(model, need_data=False).layer_map
        space = ConfigSpace.for_layer_map(lm, BITS, None, 8)
        configs = np.array(
            [c for c, _ in plan_configs(space, n=args.configs, seed=args.seed, params=lm.params, sampler="uniform")]
        )
        uniform = [int(np.flatnonzero((configs == b).all(1))[0]) for b in BITS]
        limit = args.fashion_test_limit if "fashion" in model else None
        by_method = {}
        for method in args.methods.split(","):
            r = measure(
                model,
                method,
                configs,
                test_limit=limit,
                options={"iters": args.adaround_iters} if method == "adaround" else {},
            )
            by_method[method] = r
            runs.append(r)
            u = [r["top1"][i] for i in uniform]
            k = [r["kl"][i] for i in uniform]
            rows.append(
                [
                    model,
                    method,
                    f"{r['fp_top1']:.2f}",
                    *(f"{v:.2f}" for v in u),
                    *(f"{v:.3f}" for v in k),
                    f"{r['prep_seconds']:.1f}",
                    f"{r['seconds_per_config']:.2f}",
                ]
            )
            print(
                markdown_table(
                    [
                        "model",
                        "method",
                        "FP top-1",
                        "2-bit",
                        "3-bit",
                        "4-bit",
                        "KL 2",
                        "KL 3",
                        "KL 4",
                        "prep s",
                        "s / config",
                    ],
                    rows[-1:],
                ),
                flush=True,
            )
        methods = list(by_method)
        for i, a in enumerate(methods):
            for b in methods[i + 1 :]:
                for metric in ("top1", "kl"):
                    g = agreement(np.array(by_method[a][metric]), np.array(by_method[b][metric]))
                    agree.append([model, f"{a} vs {b}", metric, f"{g['rho']:.3f} [{g['low']:.3f}, {g['high']:.3f}]"])
    load = os.getloadavg()
    print(
        f"\nuniform-bit top-1 (%) and KL per method ({args.configs} configurations each; load "
        f"average {load[0]:.1f}, {os.cpu_count()} cores):"
    )
    print(
        markdown_table(
            ["model", "method", "FP top-1", "2-bit", "3-bit", "4-bit", "KL 2", "KL 3", "KL 4", "prep s", "s / config"],
            rows,
        )
    )
    print(
        f"\nranking agreement between methods on the same {args.configs} configurations (Spearman [95 % bootstrap "
        "over configurations]):"
    )
    print(markdown_table(["model", "methods", "metric", "Spearman"], agree))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"runs": runs, "agreement": agree, "load": load, "configs": args.configs}, indent=1) + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
