"""How fast emq scores proxy candidates, on one bench or several at once, and against a reference.

Measures on the benches given (default: the shipped default bench; several = one campaign over
all of them, a candidate scored on every one), in the same run:

1. table path, no screening/cache: per candidate and bench, the packed table P[S, B] and the
   Spearman correlation over every search configuration;
2. screened path: the same candidates through compatibility screening (static + probe), on
   all benches at once (what a campaign's evaluator does);
3. the reference: the screened path applying a tree op by op (no fused reductions) and
   recomputing every subtree (no subtree memo) with glibc's allocator as it is (emq.allocator),
   as before all three, timed first; and how far its fitness
   is from the fast path's (Spearman of the per-bench rhos over up to --agreement random
   valid candidates, target >= 0.999; the max absolute difference);
4. a real campaign (generations x population) over all the benches, with screening and the
   fitness cache, and the same campaign on the reference path (run first): rates, and whether
   both found the same hall of fame;
5. the naive evaluator on the first bench: the proxy recomputed layer by layer for every
   configuration (how EMQ scores), timed on a sample and extrapolated to the split.

Every time is printed with the load average (the machine may be shared) and with the process's
CPU time. `--record FILE` adds the figures, the command and the load to a JSON file (keyed by
the bench list).

Usage: python benchmarks/search_speed.py [--bench default[,vgg-digits,...]] [--generations 100] [--population 64]
                                        [--workers 2]
       python benchmarks/search_speed.py --bench default,vgg-digits,mobilenetv2-digits,resnet20-fashion

Needs only emq's core dependencies (no extra).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from scipy import stats as sps

from emq.evolution import ProxySearch, evaluator
from emq.evolution.estimator import _statistics, load_fitness_data
from emq.evolution.evaluator import CandidateEvaluator
from emq.fileio import atomic_write_text
from emq.search_space import evaluate
from emq.search_space.evaluate import naive_config_score
from emq.search_space.pset import gen_half_and_half, make_space, to_tokens
from emq.search_space.terminals import DEFAULT_ACT_SAMPLES


@contextmanager
def _reference() -> Iterator[None]:
    """Evaluators built inside recompute every subtree (no memo), apply a tree op by op (no fused
    reductions) and leave glibc's allocator as it is: the path before all three. The allocator
    setting is process-wide and cannot be undone, so every reference timing runs before the first fast
    evaluator is built."""
    kept, evaluate.MEMO_ENTRIES = evaluate.MEMO_ENTRIES, 0
    fused, evaluate.FUSED = evaluate.FUSED, False
    keep = evaluator.keep_freed_memory
    evaluator.keep_freed_memory = lambda: False
    try:
        yield
    finally:
        evaluate.MEMO_ENTRIES = kept
        evaluate.FUSED = fused
        evaluator.keep_freed_memory = keep


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _rate(ce: CandidateEvaluator, trees: list) -> tuple[dict, list]:
    t0, c0, l0 = time.perf_counter(), time.process_time(), _load()
    outs = [ce.evaluate(t) for t in trees]
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"per_s": len(trees) / wall, "per_cpu_s": len(trees) / cpu, "load": [l0, _load()]}, outs


def _campaign(args: argparse.Namespace, datas: list, stats: list, workers: int = 1) -> dict:
    l0, c0 = _load(), time.process_time()
    est = ProxySearch(args.generations, args.population, random_state=args.seed, workers=workers)
    r = est.fit(datas, stats=stats).result_
    s = r.summary
    return {
        "generations": s["generations"],
        "population": args.population,
        "seconds": s["seconds"],
        "cpu_seconds_whole_fit": time.process_time() - c0,
        "candidates": s["candidates"],
        "evaluations": s["evaluations"],
        "candidates_per_s": s["candidates_per_s"],
        "saved_share": s["screening"]["saved_share"],
        "best_fitness": s["best_fitness"],
        "best_expression": s["best_expression"],
        "hall_of_fame": [row["canonical"] for row in r.hall_of_fame],
        "load": [l0, _load()],
    }


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
    ap.add_argument(
        "--workers", type=int, default=1, help="also run the campaign on a process pool of this many workers"
    )
    ap.add_argument("--no-reference-campaign", action="store_true", help="skip the campaign on the reference path")
    ap.add_argument("--record", help="add the figures to this JSON file (e.g. benchmarks/results/search_speed.json)")
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
    res: dict = {
        "benches": names,
        "search_configs": [len(d.search) for d in datas],
        "layers": [len(s.layers) for s in stats],
        "weights": [sum(layer.W.numel() for layer in s.layers) for s in stats],
        "load_before": [round(x, 2) for x in os.getloadavg()],
    }

    with _reference():
        reference = CandidateEvaluator(stats, campaign_data, space, act_samples=DEFAULT_ACT_SAMPLES)
        res["reference_screened"], _ = _rate(reference, trees)
        if not args.no_reference_campaign:
            res["reference_campaign"] = _campaign(args, datas, stats)

    ce = CandidateEvaluator(stats, campaign_data, space, act_samples=DEFAULT_ACT_SAMPLES)
    t0, l0 = time.perf_counter(), _load()
    with torch.no_grad():
        for t in trees:
            for bench, data in zip(ce.benches, campaign_data, strict=True):
                data.search.spearman(data.search.scores(bench.tables.table(t)))
    res["table"] = {"per_s": len(trees) / (time.perf_counter() - t0), "load": [l0, _load()]}

    ce = CandidateEvaluator(stats, campaign_data, space, act_samples=DEFAULT_ACT_SAMPLES)  # fresh: an empty memo
    res["screened"], outs = _rate(ce, trees)
    res["screened_valid_share"] = float(np.mean([o.valid for o in outs]))
    res["speedup_screened_vs_reference"] = res["screened"]["per_s"] / res["reference_screened"]["per_s"]
    res["speedup_screened_vs_reference_cpu"] = res["screened"]["per_cpu_s"] / res["reference_screened"]["per_cpu_s"]

    fast_rhos, ref_rhos, tried, same_reason = [], [], 0, True
    while len(fast_rhos) < args.agreement and tried < 50 * args.agreement:
        t = to_tokens(gen_half_and_half(space, 1, 4))
        tried += 1
        a, b = ce.evaluate(t), reference.evaluate(t)
        same_reason &= a.reason == b.reason
        if a.valid and b.valid:
            fast_rhos.append(a.per_bench)
            ref_rhos.append(b.per_bench)
    fast, ref = np.array(fast_rhos), np.array(ref_rhos)
    res["agreement"] = {
        "valid_candidates": len(fast),
        "candidates_tried": tried,
        "same_rejections": bool(same_reason),
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

    res["campaign"] = _campaign(args, datas, stats)
    if not args.no_reference_campaign:
        ref_c = res["reference_campaign"]
        res["campaign_speedup_vs_reference"] = res["campaign"]["candidates_per_s"] / ref_c["candidates_per_s"]
        res["campaign_same_as_reference"] = (
            res["campaign"]["hall_of_fame"] == ref_c["hall_of_fame"]
            and res["campaign"]["best_fitness"] == ref_c["best_fitness"]
        )
    if args.workers > 1:  # the same campaign on a process pool: its rate, and the same hall of fame
        res["campaign_workers"] = _campaign(args, datas, stats, workers=args.workers) | {"workers": args.workers}
        res["campaign_workers_same"] = (
            res["campaign_workers"]["hall_of_fame"] == res["campaign"]["hall_of_fame"]
            and res["campaign_workers"]["best_fitness"] == res["campaign"]["best_fitness"]
        )
    res["load_after"] = [round(x, 2) for x in os.getloadavg()]
    if args.record:
        _record(Path(args.record), res)
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(
        f"benches {', '.join(names)}: search configurations {res['search_configs']}, layers {res['layers']}, "
        f"weights {res['weights']}; load average {res['load_before'][0]:.1f} before, {res['load_after'][0]:.1f} after"
    )
    tb, sc, rs = res["table"], res["screened"], res["reference_screened"]
    print(f"table path (no screening, no cache), all benches: {tb['per_s']:.0f} candidates/s (load {tb['load']})")
    print(
        f"screened path, all benches:  {sc['per_s']:.0f} candidates/s, {sc['per_cpu_s']:.0f} per CPU-second "
        f"({res['screened_valid_share']:.0%} valid; load {sc['load']}); reference (no subtree memo) "
        f"{rs['per_s']:.0f}/s, {rs['per_cpu_s']:.0f} per CPU-second (load {rs['load']}): "
        f"{res['speedup_screened_vs_reference']:.2f}x wall, {res['speedup_screened_vs_reference_cpu']:.2f}x CPU"
    )
    ag = res["agreement"]
    print(
        f"agreement with the reference over {ag['valid_candidates']} valid candidates: Spearman per bench "
        f"{', '.join(f'{v:.6f}' for v in ag['spearman_per_bench'])} (target >= 0.999); max |rho difference| "
        f"{ag['max_abs_rho_difference']:.2e}; same rejections: {ag['same_rejections']}"
    )
    print(
        f"naive per-configuration scoring on {names[0]}: {res['naive_seconds_per_candidate_first_bench']:.1f} s "
        "per candidate"
    )
    for key, label in (
        ("campaign", "campaign"),
        ("campaign_workers", f"campaign on {args.workers} workers"),
        ("reference_campaign", "reference campaign"),
    ):
        if key not in res:
            continue
        c = res[key]
        print(
            f"{label} {c['generations']} generations x {c['population']} over {len(names)} benches: "
            f"{c['seconds']:.1f} s, {c['candidates_per_s']:.0f} candidates/s (load {c['load']}), "
            f"{c['saved_share']:.0%} saved by screening + cache; best {c['best_fitness']:.3f} ({c['best_expression']})"
        )
    if "reference_campaign" in res:
        print(
            f"campaign vs reference: {res['campaign_speedup_vs_reference']:.2f}x; same hall of fame and best fitness: "
            f"{res['campaign_same_as_reference']}"
        )
    if "campaign_workers" in res:
        ratio = res["campaign_workers"]["candidates_per_s"] / res["campaign"]["candidates_per_s"]
        print(
            f"{args.workers} workers vs 1: {ratio:.2f}x; "
            f"same hall of fame and best fitness: {res['campaign_workers_same']}"
        )


def _record(path: Path, res: dict) -> None:
    """Add this run's figures to `path` under its bench list, with the command that reproduces them."""
    runs = json.loads(path.read_text()) if path.exists() else {}
    runs[",".join(res["benches"])] = {"command": "python " + " ".join(sys.argv), **res}
    atomic_write_text(path, json.dumps(runs, indent=2) + "\n")


if __name__ == "__main__":
    main()
