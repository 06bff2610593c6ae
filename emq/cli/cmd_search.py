"""`emq search`: evolve proxies on one bench or several and compare them with the hand-made ones."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..api import (
    AGGREGATES,
    DEFAULT_AGGREGATE,
    METRICS,
    PRESETS,
    DPSConfig,
    EmqError,
    ProxySearch,
    SearchResult,
    load_checkpoint,
    make_space,
    resolve_target,
    simplify,
    to_sympy,
)
from .commands import COMMANDS
from .common import (
    add_device_arg,
    add_executor_args,
    add_model_args,
    check_bench_for_search,
    check_executor_args,
    check_out_dir,
    emit_json,
    executor_from_args,
    open_bench,
)


def _names(text: str | None) -> list[str]:
    return [t for t in (text or "").replace(" ", "").split(",") if t]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help=COMMANDS["search"])
    p.add_argument(
        "--bench",
        action="append",
        help="bench file or a shipped bench's name (default: 'default'); repeat it to fit several benches at once, "
        "each with its own model's statistics",
    )
    add_model_args(p)
    p.set_defaults(model=None)  # the bench's model
    p.add_argument("--metric", choices=sorted(METRICS), help="target metric (default: the bench's)")
    p.add_argument("--generations", type=int, default=30, help="generations (default 30)")
    p.add_argument("--population", type=int, default=64, help="population size (default 64)")
    p.add_argument("--max-evaluations", type=int, help="stop after this many candidate evaluations")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    add_executor_args(
        p,
        "workers evaluating candidates, and computing the benches' statistics (default 1 = serial; results are identical)",
    )
    p.add_argument("--out", type=Path, help="run directory (default: emq_runs/search-s<seed>)")
    p.add_argument("--resume", action="store_true", help="continue the campaign in --out from its checkpoint")
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=5,
        help="generations between checkpoints (default 5); a kill loses at most this many",
    )
    p.add_argument("--no-dps", action="store_true", help="switch diversity-prompting selection off (ablation)")
    p.add_argument(
        "--crowding",
        type=float,
        default=0.98,
        help="DPS: |corr| above which two candidates count as one phenotype (default 0.98)",
    )
    p.add_argument("--space", choices=sorted(PRESETS), default="full", help="search-space preset (default full)")
    p.add_argument("--terminals", help="comma-separated terminals to use instead of the preset's")
    p.add_argument("--exclude-terminals", help="comma-separated terminals to leave out, e.g. H,trace,eig")
    p.add_argument("--include-ops", help="comma-separated opt-in operations to add, e.g. tanh,cube")
    p.add_argument("--exclude-ops", help="comma-separated operations to leave out")
    p.add_argument(
        "--aggregate",
        choices=AGGREGATES,
        default=DEFAULT_AGGREGATE,
        help=f"with several --bench: how the per-bench Spearmans make the fitness (default {DEFAULT_AGGREGATE}: best on held-out networks, README)",
    )
    p.add_argument(
        "--aggregate-k",
        type=float,
        default=1.0,
        help="the k of --aggregate mean-std: fitness = mean - k x std (default 1)",
    )
    p.add_argument(
        "--parsimony",
        type=float,
        default=0.0,
        help="size pressure: selection uses fitness - C x nodes (default 0 = none)",
    )
    p.add_argument("--top", type=int, default=5, help="proxies to list (default 5)")
    add_device_arg(p)
    p.add_argument("--json", action="store_true", help="print a JSON summary instead of tables")
    p.set_defaults(func=run)


def _open_benches(args: argparse.Namespace) -> tuple[list, list]:
    """The opened benches and the model of each (None: the bench's own), checked before any model work."""
    specs = args.bench or ["default"]
    if len(specs) == 1:
        bench = open_bench(specs[0])  # fail fast on a bad bench, before any model work
        model = check_bench_for_search(bench, specs[0], args.model)
        if all(v is None for v in (args.model, args.data, args.weights, args.num_classes, args.input_size)):
            return [bench], [
                None
            ]  # the bench's own model and data (a bundle's statistics when the data is not installed)
        return [bench], [
            resolve_target(
                model, args.data, weights=args.weights, num_classes=args.num_classes, input_size=args.input_size
            )
        ]
    for flag, value in (
        ("--model", args.model),
        ("--data", args.data),
        ("--weights", args.weights),
        ("--num-classes", args.num_classes),
        ("--input-size", args.input_size),
    ):
        if value is not None:
            raise EmqError(
                f"{flag} {value}: with several --bench each bench's own model and data are used; leave {flag} out"
            )
    benches = [open_bench(spec) for spec in specs]
    for bench, spec in zip(benches, specs, strict=True):
        check_bench_for_search(bench, spec, None)
    return benches, [None] * len(benches)


def _print_best(result: SearchResult) -> None:
    """The best proxy as a simplified formula and as LaTeX."""
    best = result.best
    formula, how = simplify(to_sympy(best.tokens, best.prims))
    print(f"best proxy (orientation {best.orientation:+d}, {how}): p_l(b) = {formula}")
    print(f"LaTeX: p_l(b) = {result.summary['best_latex']}")


def run(args: argparse.Namespace) -> int:
    terms = _names(args.terminals)
    space = make_space(
        args.space, terms or None, _names(args.exclude_terminals), _names(args.include_ops), _names(args.exclude_ops)
    )
    if args.top < 1:
        raise EmqError(f"--top {args.top}: use 1 or more")
    check_executor_args(args)
    out = args.out or Path("emq_runs") / f"search-s{args.seed}"
    check_out_dir(out)
    est = ProxySearch(
        generations=args.generations,
        population=args.population,
        metric=args.metric,
        space=space,
        max_evaluations=args.max_evaluations,
        dps=DPSConfig(enabled=not args.no_dps, crowding_threshold=args.crowding),
        random_state=args.seed,
        workers=args.workers,
        out_dir=out,
        warm_start=args.resume,
        checkpoint_every=args.checkpoint_every,
        progress=not (args.json or args.quiet),
        aggregate=args.aggregate,
        aggregate_k=args.aggregate_k,
        parsimony=args.parsimony,
        device=str(args.device),
    )
    est.config()  # bad settings are refused before any bench or model work
    benches, models = _open_benches(args)
    has_campaign = (out / "checkpoint.npz").exists()
    if has_campaign != args.resume:
        raise EmqError(
            f"--out {out} already holds a campaign: pass --resume to continue it or choose another directory"
            if has_campaign
            else f"--resume: no checkpoint in {out}; run without --resume first"
        )
    if args.resume:
        load_checkpoint(out / "checkpoint.npz")  # a truncated checkpoint is refused before the statistics
    with executor_from_args(args) as executor:
        est.set_params(executor=executor)
        result = est.fit(benches, model=models).result_
    if args.json:
        emit_json(result.to_json())
        return 0
    print(result.to_markdown(args.top))
    _print_best(result)
    return 0
