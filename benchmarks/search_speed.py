"""How fast emq scores proxy candidates, and how that compares with EMQ-style naive scoring.

Measures on one bench (default: the shipped one), in the same run:

1. table path, no screening/cache: per candidate, the packed table P[S, B] and the Spearman
   correlation over every search configuration;
2. screened path: the same candidates through compatibility screening (static + probe);
3. a real campaign (generations x population) with screening and the fitness cache;
4. the naive evaluator: the proxy recomputed layer by layer for every configuration (how
   EMQ scores), timed on a sample of configurations and extrapolated to the split.

Usage: python benchmarks/search_speed.py [--bench default] [--generations 100] [--population 64]

Needs only emq's core dependencies (no extra).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch

from emq.evolution import ProxySearch
from emq.evolution.estimator import load_fitness_data
from emq.evolution.evaluator import CandidateEvaluator
from emq.search_space.evaluate import TableEvaluator, naive_config_score
from emq.search_space.pset import gen_half_and_half, make_space, to_tokens
from emq.search_space.stats import compute_stats
from emq.search_space.terminals import DEFAULT_ACT_SAMPLES
from emq.target import resolve_target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", default="default")
    ap.add_argument("--model", default="default")
    ap.add_argument("--weights", type=Path, help="weights of the bench's model, when not the shipped ones")
    ap.add_argument("--candidates", type=int, default=500)
    ap.add_argument("--generations", type=int, default=100)
    ap.add_argument("--population", type=int, default=64)
    ap.add_argument("--naive-candidates", type=int, default=5)
    ap.add_argument("--naive-configs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data, _ = load_fitness_data(args.bench, None)
    stats = compute_stats(resolve_target(args.model, weights=args.weights), bits=data.bits)
    space = make_space()
    random.seed(args.seed)
    trees = [to_tokens(gen_half_and_half(space, 1, 4)) for _ in range(args.candidates)]
    ev = TableEvaluator(stats, space.terminals, space.prims)
    ce = CandidateEvaluator(stats, data, space, act_samples=DEFAULT_ACT_SAMPLES)
    res: dict = {
        "bench": data.source,
        "search_configs": len(data.search),
        "layers": len(stats.layers),
        "slots": stats.num_slots,
        "bits": list(data.bits),
    }

    t0 = time.perf_counter()
    with torch.no_grad():
        for t in trees:
            data.search.spearman(data.search.scores(ev.table(t)))
    res["table_candidates_per_s"] = len(trees) / (time.perf_counter() - t0)

    t0 = time.perf_counter()
    outs = [ce.evaluate(t) for t in trees]
    res["screened_candidates_per_s"] = len(trees) / (time.perf_counter() - t0)
    res["screened_valid_share"] = float(np.mean([o.valid for o in outs]))

    valid = [t for t, o in zip(trees, outs, strict=True) if o.valid][: args.naive_candidates]
    lut = {b: i for i, b in enumerate(stats.bits)}
    sample = data.search.configs[: args.naive_configs]
    t0 = time.perf_counter()
    with torch.no_grad():
        for t in valid:
            for c in sample:
                naive_config_score(t, stats, [lut[int(b)] for b in c])
    per_config = (time.perf_counter() - t0) / (len(valid) * len(sample))
    res["naive_seconds_per_candidate"] = per_config * len(data.search)
    res["naive_candidates_per_s"] = 1.0 / res["naive_seconds_per_candidate"]
    res["speedup_table_vs_naive"] = res["table_candidates_per_s"] / res["naive_candidates_per_s"]

    r = ProxySearch(args.generations, args.population, random_state=args.seed).fit(data, stats=stats).result_
    s = r.summary
    res["campaign"] = {
        "generations": s["generations"],
        "population": args.population,
        "seconds": s["seconds"],
        "candidates": s["candidates"],
        "evaluations": s["evaluations"],
        "candidates_per_s": s["candidates_per_s"],
        "saved_share": s["screening"]["saved_share"],
        "best_search_spearman": s["best_search_spearman"],
        "best_heldout_spearman": s["best_heldout_spearman"],
        "best_handmade": s["best_handmade"],
        "best_handmade_heldout_spearman": s["best_handmade_heldout_spearman"],
        "ceiling": s["ceiling"],
        "best_expression": s["best_expression"],
        "metric": s["metric"],
    }
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(
        f"bench {res['bench']}: {res['search_configs']} search configurations, {res['layers']} layers / {res['slots']} slots, bits {res['bits']}"
    )
    print(f"table path (no screening, no cache): {res['table_candidates_per_s']:.0f} candidates/s")
    print(
        f"screened path:                      {res['screened_candidates_per_s']:.0f} candidates/s ({res['screened_valid_share']:.0%} valid)"
    )
    print(
        f"naive per-configuration scoring:    {res['naive_candidates_per_s']:.3f} candidates/s ({res['naive_seconds_per_candidate']:.1f} s per candidate)"
    )
    print(f"speed-up table vs naive:            {res['speedup_table_vs_naive']:.0f}x")
    c = res["campaign"]
    print(
        f"campaign {c['generations']} generations x {c['population']}: {c['seconds']:.1f} s, {c['candidates_per_s']:.0f} candidates/s, {c['saved_share']:.0%} saved by screening + cache"
    )
    print(
        f"best evolved ({c['metric']}): search x fit rho {c['best_search_spearman']:.3f}, held-out x report rho {c['best_heldout_spearman']:.3f}  ({c['best_expression']})"
    )
    print(
        f"best hand-made chosen on search x fit ({c['best_handmade']}): held-out x report rho {c['best_handmade_heldout_spearman']:.3f}; ceiling {c['ceiling']}"
    )
    print("(point estimates; intervals and paired differences: emq score --proxy best_proxy.json)")


if __name__ == "__main__":
    main()
