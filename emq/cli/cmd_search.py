"""`emq search`: evolve proxies on a bench and compare them with the hand-made ones."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import EmqError
from ..evolution import DPSConfig, search
from ..search_space.primitives import PRESETS
from ..search_space.pset import make_space
from ..specs import METRICS
from ..target import resolve_target
from .common import add_model_args, emit_json, markdown_table


def _names(text: str | None) -> list[str]:
    return [t for t in (text or "").replace(" ", "").split(",") if t]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="evolve proxy formulas whose scores rank a bench's bit configurations")
    p.add_argument("--bench", default="default", help="bench file or 'default' (the shipped bench)")
    add_model_args(p)
    p.add_argument("--metric", choices=sorted(METRICS), help="target metric (default: the bench's)")
    p.add_argument("--generations", type=int, default=30, help="generations (default 30)")
    p.add_argument("--population", type=int, default=64, help="population size (default 64)")
    p.add_argument("--max-evaluations", type=int, help="stop after this many candidate evaluations")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--workers", type=int, default=1, help="evaluation processes (default 1 = serial; results are identical)")
    p.add_argument("--out", type=Path, help="run directory (default: emq_runs/search-s<seed>)")
    p.add_argument("--resume", action="store_true", help="continue the campaign in --out from its checkpoint")
    p.add_argument("--no-dps", action="store_true", help="switch diversity-prompting selection off (ablation)")
    p.add_argument("--crowding", type=float, default=0.98, help="DPS: |corr| above which two candidates count as one phenotype (default 0.98)")
    p.add_argument("--space", choices=sorted(PRESETS), default="full", help="search-space preset (default full)")
    p.add_argument("--terminals", help="comma-separated terminals to use instead of the preset's")
    p.add_argument("--exclude-terminals", help="comma-separated terminals to leave out, e.g. H,trace,eig")
    p.add_argument("--include-ops", help="comma-separated opt-in operations to add, e.g. tanh,cube")
    p.add_argument("--exclude-ops", help="comma-separated operations to leave out")
    p.add_argument("--top", type=int, default=5, help="proxies to list (default 5)")
    p.add_argument("--json", action="store_true", help="print a JSON summary instead of tables")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    terms = _names(args.terminals)
    space = make_space(args.space, terms or None, _names(args.exclude_terminals), _names(args.include_ops), _names(args.exclude_ops))
    if args.top < 1:
        raise EmqError(f"--top {args.top}: use 1 or more")
    from ..bench import Bench

    bench = Bench.open(args.bench)  # fail fast on a bad bench, before any model work
    target = resolve_target(args.model, args.data, weights=args.weights, num_classes=args.num_classes, input_size=args.input_size)
    out = args.out or Path("emq_runs") / f"search-s{args.seed}"
    result = search(
        bench, target, generations=args.generations, population=args.population, seed=args.seed, workers=args.workers,
        out=out, resume=args.resume, metric=args.metric, space=space, max_evaluations=args.max_evaluations,
        dps=DPSConfig(enabled=not args.no_dps, crowding_threshold=args.crowding), progress=not args.json,
    )
    if args.json:
        emit_json(result.summary)
        return 0
    rows = [[r["rank"], r["expression"], r["size"], r["search_spearman"], r["heldout_spearman"], r["heldout_kendall"], f"{r['orientation']:+d}"] for r in result.hall_of_fame[: args.top]]
    rows += [[f"hand-made: {r['name']}", r["expression"], r["size"], r["search_spearman"], r["heldout_spearman"], r["heldout_kendall"], f"{r['orientation']:+d}"] for r in result.baselines]
    print(markdown_table(["rank", "proxy", "size", "search rho", "held-out rho", "held-out tau", "orient."], rows))
    s = result.summary
    ceiling = f"; bench noise ceiling {s['noise_ceiling']:.3f}" if s.get("noise_ceiling") is not None else ""
    print(f"\n{s['evaluations']} evaluations of {s['candidates']} candidates in {s['seconds']:.1f} s ({s['screening']['saved_share']:.0%} saved by screening and the cache){ceiling}")
    print(f"run directory: {out} (best_proxy.json, hall_of_fame.csv, log.jsonl, fitness.png, diversity.png)")
    return 0
