"""How fast emq scores proxy candidates, on one bench or several at once, and against references.

Measures on the benches given (default: the shipped default bench; several = one campaign over
all of them, a candidate scored on every one), in the same run:

1. table path, no screening/cache: per candidate and bench, the packed table P[S, B] and the
   Spearman correlation over every search configuration;
2. screened path: the same candidates through compatibility screening (static + probe), on
   all benches at once (what a campaign's evaluator does);
3. the reference: the screened path with the generic segment operations (index_add_ /
   gather, as before the CPU path used numpy's reduceat / repeat), and how far its fitness
   is from the fast path's (Spearman of the per-bench rhos over up to --agreement random
   valid candidates, target >= 0.999; the max absolute difference);
4. a real campaign (generations x population) over all the benches, with screening and the
   fitness cache;
5. the naive evaluator on the first bench: the proxy recomputed layer by layer for every
   configuration (how EMQ scores), timed on a sample and extrapolated to the split.

The load average is printed next to the times (the machine may be shared).

Usage: python benchmarks/search_speed.py [--bench default[,vgg-digits,...]] [--generations 100] [--population 64]
       python benchmarks/search_speed.py --bench default,vgg-digits,mobilenetv2-digits,resnet20-fashion

Needs only emq's core dependencies (no extra).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time

import numpy as np
import torch
from scipy import stats as sps

from emq.evolution import ProxySearch
from emq.evolution.estimator import _statistics, load_fitness_data
from emq.evolution.evaluator import CandidateEvaluator
from emq.search_space.evaluate import naive_config_score
from emq.search_space.pset import gen_half_and_half, make_space, to_tokens
from emq.search_space.terminals import DEFAULT_ACT_SAMPLES, Segments


def _generic(ce: CandidateEvaluator) -> CandidateEvaluator:
    """The evaluator with the generic segment operations (the reference path)."""
    for bench in ce.benches:
        for packed in (bench.tables.packed, bench.tables.probe_packed):
            packed._segments = {T: Segments(sg.seg, sg.cnt, None, None) for T, sg in packed.segments.items()}
    return ce


def _rate(ce: CandidateEvaluator, trees: list) -> tuple[float, list]:
    t0 = time.perf_counter()
    outs = [ce.evaluate(t) for t in trees]
    return len(trees) / (time.perf_counter() - t0), outs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", default="default", help="a bench, or several separated by commas")
    ap.add_argument("--candidates", type=int, default=500)
    ap.add_argument("--agreement", type=int, default=1000, help="valid candidates compared with the reference")
    ap.add_argument("--generations", type=int, default=100)
    ap.add_argument("--population", type=int, default=64)
    ap.add_argument("--naive-candidates", type=int, default=5)
    ap.add_argument("--naive-configs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    names = [b for b in args.bench.split(",") if b]
    datas, stats = [], []
    for name in names:
        data, bench = load_fitness_data(name, None)
        datas.append(data)
        stats.append(_statistics(bench, None, data))
    space = make_space()
    random.seed(args.seed)
    trees = [to_tokens(gen_half_and_half(space, 1, 4)) for _ in range(args.candidates)]
    campaign_data = [d.for_campaign() for d in datas]
    ce = CandidateEvaluator(stats, campaign_data, space, act_samples=DEFAULT_ACT_SAMPLES)
    res: dict = {
        "benches": names,
        "search_configs": [len(d.search) for d in datas],
        "layers": [len(s.layers) for s in stats],
        "weights": [sum(layer.W.numel() for layer in s.layers) for s in stats],
        "load_before": [round(x, 2) for x in os.getloadavg()],
    }

    t0 = time.perf_counter()
    with torch.no_grad():
        for t in trees:
            for bench, data in zip(ce.benches, campaign_data, strict=True):
                data.search.spearman(data.search.scores(bench.tables.table(t)))
    res["table_candidates_per_s"] = len(trees) / (time.perf_counter() - t0)

    res["screened_candidates_per_s"], outs = _rate(ce, trees)
    res["screened_valid_share"] = float(np.mean([o.valid for o in outs]))
    reference = _generic(CandidateEvaluator(stats, campaign_data, space, act_samples=DEFAULT_ACT_SAMPLES))
    res["reference_screened_candidates_per_s"], _ = _rate(reference, trees)
    res["speedup_screened_vs_reference"] = res["screened_candidates_per_s"] / res["reference_screened_candidates_per_s"]

    fast_rhos, ref_rhos, tried = [], [], 0
    while len(fast_rhos) < args.agreement and tried < 50 * args.agreement:
        t = to_tokens(gen_half_and_half(space, 1, 4))
        tried += 1
        a = ce.evaluate(t)
        if a.valid:
            b = reference.evaluate(t)
            if b.valid:
                fast_rhos.append(a.per_bench)
                ref_rhos.append(b.per_bench)
    fast, ref = np.array(fast_rhos), np.array(ref_rhos)
    res["agreement"] = {
        "valid_candidates": len(fast),
        "spearman_per_bench": [float(sps.spearmanr(fast[:, k], ref[:, k]).statistic) for k in range(len(names))],
        "max_abs_rho_difference": float(np.abs(fast - ref).max()) if len(fast) else None,
    }

    first, first_stats = datas[0], stats[0]
    valid = [t for t, o in zip(trees, outs, strict=True) if o.valid][: args.naive_candidates]
    lut = {b: i for i, b in enumerate(first_stats.bits)}
    sample = first.search.configs[: args.naive_configs]
    t0 = time.perf_counter()
    with torch.no_grad():
        for t in valid:
            for c in sample:
                naive_config_score(t, first_stats, [lut[int(b)] for b in c])
    per_config = (time.perf_counter() - t0) / max(len(valid) * len(sample), 1)
    res["naive_seconds_per_candidate_first_bench"] = per_config * len(first.search)

    r = ProxySearch(args.generations, args.population, random_state=args.seed).fit(datas, stats=stats).result_
    s = r.summary
    res["campaign"] = {
        "generations": s["generations"],
        "population": args.population,
        "seconds": s["seconds"],
        "candidates": s["candidates"],
        "evaluations": s["evaluations"],
        "candidates_per_s": s["candidates_per_s"],
        "saved_share": s["screening"]["saved_share"],
        "best_fitness": s["best_fitness"],
        "best_expression": s["best_expression"],
    }
    res["load_after"] = [round(x, 2) for x in os.getloadavg()]
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(
        f"benches {', '.join(names)}: search configurations {res['search_configs']}, layers {res['layers']}, "
        f"weights {res['weights']}; load average {res['load_before'][0]:.1f} before, {res['load_after'][0]:.1f} after"
    )
    print(f"table path (no screening, no cache), all benches: {res['table_candidates_per_s']:.0f} candidates/s")
    print(
        f"screened path, all benches:  {res['screened_candidates_per_s']:.0f} candidates/s "
        f"({res['screened_valid_share']:.0%} valid); "
        f"reference (generic segment ops) {res['reference_screened_candidates_per_s']:.0f}/s: "
        f"{res['speedup_screened_vs_reference']:.2f}x"
    )
    ag = res["agreement"]
    print(
        f"agreement with the reference over {ag['valid_candidates']} valid candidates: Spearman per bench "
        f"{', '.join(f'{v:.6f}' for v in ag['spearman_per_bench'])} (target >= 0.999); max |rho difference| "
        f"{ag['max_abs_rho_difference']:.2e}"
    )
    print(
        f"naive per-configuration scoring on {names[0]}: {res['naive_seconds_per_candidate_first_bench']:.1f} s "
        "per candidate"
    )
    c = res["campaign"]
    print(
        f"campaign {c['generations']} generations x {c['population']} over {len(names)} benches: {c['seconds']:.1f} s, "
        f"{c['candidates_per_s']:.0f} candidates/s (target >= 1,000 over the four shipped networks), "
        f"{c['saved_share']:.0%} saved by screening + cache"
    )
    print(f"best evolved: fitness {c['best_fitness']:.3f}  ({c['best_expression']})")


if __name__ == "__main__":
    main()
