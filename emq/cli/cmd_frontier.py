"""`emq frontier`: for each network held out in turn, the held-out rho of what a user can do with
k PTQ evaluations on it (k = 0: proxies and measured sensitivity; k > 0: models fitted on k
measured configurations), against its cost (emq.frontier)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from ..api import BUDGETS, DEFAULT_RESAMPLES, DRAWS, Bench, EmqError, FrontierStudy, make_space
from .commands import COMMANDS
from .common import add_space_arg, check_out_dir, comma_list, emit_json


def _ints(text: str, flag: str) -> list[int]:
    try:
        return [int(t) for t in comma_list(text, flag)]
    except ValueError as e:
        raise EmqError(f"{flag} {text!r}: give comma-separated non-negative integers") from e


def _per_bench(text: str, flag: str, what: str, exists: Callable[[Path], bool]) -> dict[str, Path]:
    """BENCH=PATH,... as a dict, each path checked before any work."""
    out = {}
    for item in comma_list(text, flag) if text.strip() else []:
        bench, sep, path = item.partition("=")
        if not sep or not exists(Path(path)):
            raise EmqError(f"{flag} {item!r}: give BENCH={what}")
        out[bench] = Path(path)
    return out


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("frontier", help=COMMANDS["frontier"])
    p.add_argument("--benches", required=True, help="comma-separated benches of different networks (each held out)")
    budgets = ",".join(map(str, BUDGETS))
    p.add_argument("--budgets", default=budgets, help=f"configurations measured per network (default {budgets})")
    p.add_argument("--draws", type=int, default=DRAWS, help=f"seeded draws of the k configurations (default {DRAWS})")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws (default 0)")
    p.add_argument(
        "--evolved",
        default="",
        help="BENCH=PROXY.json,...: an evolved proxy per bench that never saw it (e.g. a leave-one-out campaign's)",
    )
    p.add_argument(
        "--warm",
        default="",
        help="BENCH=CAMPAIGN_DIR,...: a campaign per bench that never saw it, whose hall of fame seeds a short "
        "campaign on each draw of k configurations (evolved-warm)",
    )
    add_space_arg(p, "with --warm: the short campaigns' ")
    p.add_argument(
        "--whole-limit",
        type=int,
        default=20,
        help="held-out configurations the whole-configuration KL ranks (default 20; 0 = skip it)",
    )
    p.add_argument(
        "--resamples", type=int, default=DEFAULT_RESAMPLES, help=f"bootstrap resamples (default {DEFAULT_RESAMPLES})"
    )
    p.add_argument("--out", type=Path, required=True, help="directory for frontier.json, frontier.csv and the plots")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_out_dir(args.out)
    benches = comma_list(args.benches, "--benches")
    budgets = _ints(args.budgets, "--budgets")
    if any(k < 0 for k in budgets):
        raise EmqError(f"--budgets {args.budgets}: give comma-separated non-negative integers")
    for flag, value in (("--draws", args.draws), ("--resamples", args.resamples)):
        if value < 1:
            raise EmqError(f"{flag} {value}: use a positive number")
    if args.whole_limit < 0:
        raise EmqError(f"--whole-limit {args.whole_limit}: use 0 (skip) or a positive number")
    evolved = _per_bench(args.evolved, "--evolved", "PROXY.json with an existing proxy file", Path.is_file)
    warm = _per_bench(
        args.warm, "--warm", "CAMPAIGN_DIR with a campaign's checkpoint.npz", lambda p: (p / "checkpoint.npz").is_file()
    )
    for b in benches:
        Bench.open(b)  # a missing or unreadable bench fails here, before any work
    study = FrontierStudy(
        benches,
        budgets=budgets,
        draws=args.draws,
        seed=args.seed,
        evolved=evolved,
        warm=warm,
        space=make_space(args.space),
        whole_config=args.whole_limit > 0,
        whole_limit=max(args.whole_limit, 1),
        resamples=args.resamples,
    )
    result = study.run()
    paths = result.save(args.out)
    if args.json:
        emit_json(result.to_json())
    else:
        print(result.to_markdown())
        print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0
