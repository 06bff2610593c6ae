"""`emq search`: evolve proxies on one bench or several and compare them with the hand-made ones."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..api import (
    METRICS,
    DPSConfig,
    EmqError,
    ProxySearch,
    SearchConfig,
    SearchResult,
    load_checkpoint,
    make_space,
    simplify,
    to_sympy,
)
from .commands import COMMANDS
from .common import (
    add_device_arg,
    add_executor_args,
    add_model_args,
    add_space_arg,
    check_bench_for_search,
    check_executor_args,
    check_out_dir,
    emit_json,
    executor_from_args,
    model_spec,
    open_bench,
)
from .fieldargs import add_field_args, field_values

# the campaign settings that are flags of `emq search`
_FLAGS = (
    "generations",
    "population",
    "seed",
    "max_evaluations",
    "checkpoint_every",
    "aggregate",
    "aggregate_k",
    "parsimony",
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
    add_field_args(p, SearchConfig(), _FLAGS)
    add_executor_args(
        p,
        "workers evaluating candidates, and computing the benches' statistics (default 1 = serial; results are "
        "identical)",
    )
    p.add_argument("--out", type=Path, help="run directory (default: emq_runs/search-s<seed>)")
    p.add_argument("--resume", action="store_true", help="continue the campaign in --out from its checkpoint")
    add_field_args(p, DPSConfig())
    add_space_arg(p)
    p.add_argument("--terminals", help="comma-separated terminals to use instead of the preset's")
    p.add_argument("--exclude-terminals", help="comma-separated terminals to leave out, e.g. H,trace,eig")
    p.add_argument("--include-ops", help="comma-separated opt-in operations to add, e.g. tanh,cube")
    p.add_argument("--exclude-ops", help="comma-separated operations to leave out")
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
        return [bench], [model_spec(args, model).resolve()]
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
    seen: dict[Path, str] = {}
    for bench, spec in zip(benches, specs, strict=True):
        path = Path(bench.path).resolve()
        if path in seen:
            raise EmqError(f"--bench {spec}: a bench is named twice (as {seen[path]} and {spec}); give each bench once")
        seen[path] = spec
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
        args.space,
        terminals=terms or None,
        exclude_terminals=_names(args.exclude_terminals),
        include_ops=_names(args.include_ops),
        exclude_ops=_names(args.exclude_ops),
    )
    if args.top < 1:
        raise EmqError(f"--top {args.top}: use 1 or more")
    check_executor_args(args)
    out = args.out or Path("emq_runs") / f"search-s{args.seed}"
    check_out_dir(out)
    settings = field_values(args, SearchConfig, _FLAGS)
    est = ProxySearch(
        metric=args.metric,
        space=space,
        dps=DPSConfig(**field_values(args, DPSConfig)),
        random_state=settings.pop("seed"),
        workers=args.workers,
        out_dir=out,
        warm_start=args.resume,
        progress=not (args.json or args.quiet),
        device=str(args.device),
        **settings,
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
