"""Diversity-prompting selection on vs off, several seeds, equal evaluation budgets.

For each seed, one campaign with DPS and one without, both stopped at the same number of
candidate evaluations; reports the best proxy's held-out Spearman (best = highest search
fitness) and the final population diversity (unique canonical forms, mean pairwise |corr|
of score vectors), then means and standard deviations.

Usage: python benchmarks/dps_ablation.py [--bench default] [--seeds 5] [--budget 3000]

Needs only emq's core dependencies (no extra).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from emq.evolution import DPSConfig, ProxySearch
from emq.evolution.estimator import load_fitness_data
from emq.search_space.stats import compute_stats
from emq.target import resolve_target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", default="default")
    ap.add_argument("--model", default="default")
    ap.add_argument("--weights", type=Path, help="weights of the bench's model, when not the shipped ones")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--budget", type=int, default=3000, help="candidate evaluations per campaign")
    ap.add_argument("--population", type=int, default=64)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data, _ = load_fitness_data(args.bench, None)
    stats = compute_stats(resolve_target(args.model, weights=args.weights), bits=data.bits)
    rows = []
    for seed in range(args.seeds):
        for dps in (True, False):
            est = ProxySearch(
                generations=100000,
                population=args.population,
                random_state=seed,
                max_evaluations=args.budget,
                dps=DPSConfig(enabled=dps),
            )
            s = est.fit(data, stats=stats).summary_
            rows.append(
                {
                    "seed": seed,
                    "dps": dps,
                    "heldout": s["best_heldout_spearman"],
                    "search": s["best_search_spearman"],
                    "evaluations": s["evaluations"],
                    "generations": s["generations"],
                    **s["final_diversity"],
                }
            )
    summary = {}
    for dps in (True, False):
        sel = [r for r in rows if r["dps"] is dps]
        summary["dps_on" if dps else "dps_off"] = {
            k: [float(np.mean([r[k] for r in sel])), float(np.std([r[k] for r in sel]))]
            for k in ("heldout", "search", "unique_forms", "mean_abs_corr", "evaluations")
        }
    if args.json:
        print(json.dumps({"runs": rows, "summary": summary}, indent=2))
        return
    print(f"{'seed':>4} {'DPS':>4} {'held-out':>9} {'search':>7} {'evals':>6} {'gens':>5} {'unique':>6} {'|corr|':>7}")
    for r in rows:
        print(
            f"{r['seed']:>4} {'on' if r['dps'] else 'off':>4} {r['heldout']:>9.3f} {r['search']:>7.3f} "
            f"{r['evaluations']:>6} {r['generations']:>5} {r['unique_forms']:>6.0f} {r['mean_abs_corr']:>7.3f}"
        )
    for k, v in summary.items():
        print(
            f"{k}: held-out {v['heldout'][0]:.3f} ± {v['heldout'][1]:.3f}, search {v['search'][0]:.3f}, unique "
            f"forms {v['unique_forms'][0]:.1f}, mean |corr| {v['mean_abs_corr'][0]:.3f}"
        )


if __name__ == "__main__":
    main()
