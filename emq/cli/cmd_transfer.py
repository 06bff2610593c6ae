"""`emq transfer`: leave-one-network-out and single-bench campaigns, each proxy reported on
benches it was never searched on (held-out configurations x report pool, with intervals)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..api import (
    DEFAULT_PROTOCOLS,
    DEFAULT_RESAMPLES,
    PROTOCOLS,
    PROXIES,
    SEEDS,
    TRANSFER_CAMPAIGN,
    WHOLE_CONFIG,
    WHOLE_LIMIT,
    Bench,
    EmqError,
    TransferStudy,
)
from .commands import COMMANDS
from .common import (
    add_executor_args,
    add_space_arg,
    check_executor_args,
    check_out_dir,
    comma_list,
    emit_json,
    executor_from_args,
)
from .fieldargs import add_field_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("transfer", help=COMMANDS["transfer"])
    p.add_argument(
        "--benches",
        required=True,
        help="comma-separated bench files or shipped names (at least two networks for leave-one-out)",
    )
    seeds = ",".join(map(str, SEEDS))
    p.add_argument("--seeds", default=seeds, help=f"campaign seeds per cell (default {seeds})")
    add_field_args(p, TRANSFER_CAMPAIGN, ("generations", "population", "aggregate"))
    p.add_argument(
        "--protocols",
        default=",".join(DEFAULT_PROTOCOLS),
        help=f"comma-separated, of {', '.join(PROTOCOLS)} (default {','.join(DEFAULT_PROTOCOLS)})",
    )
    add_space_arg(p, "the campaigns' ")
    p.add_argument(
        "--whole-config",
        default=",".join(WHOLE_CONFIG),
        help="whole-configuration references scored on each bench ('none' to skip; default kl,gmpq,seam)",
    )
    p.add_argument(
        "--whole-limit",
        type=int,
        default=WHOLE_LIMIT,
        help=f"configurations per split the whole-configuration references quantize (default {WHOLE_LIMIT})",
    )
    p.add_argument(
        "--resamples",
        type=int,
        default=DEFAULT_RESAMPLES,
        help=f"bootstrap resamples for the intervals (default {DEFAULT_RESAMPLES})",
    )
    add_executor_args(
        p,
        "workers evaluating each campaign's candidates and the whole-configuration references (default 1 = serial; "
        "results are identical)",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="directory for transfer.json, transfer.csv, transfer.png and the campaigns",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_out_dir(args.out)
    check_executor_args(args)
    protocols = comma_list(args.protocols, "--protocols")
    bad = [x for x in protocols if x not in PROTOCOLS]
    if bad:
        raise EmqError(f"--protocols {args.protocols}: unknown {', '.join(bad)}; use some of {', '.join(PROTOCOLS)}")
    try:
        seeds = [int(s) for s in comma_list(args.seeds, "--seeds")]
    except ValueError as e:
        raise EmqError(f"--seeds {args.seeds}: give comma-separated integers") from e
    for flag, value in (
        ("--generations", args.generations),
        ("--population", args.population),
        ("--whole-limit", args.whole_limit),
        ("--resamples", args.resamples),
    ):
        if value < 1:
            raise EmqError(f"{flag} {value}: use a positive number")
    whole = () if args.whole_config.strip() == "none" else tuple(comma_list(args.whole_config, "--whole-config"))
    wrong = [w for w in whole if w not in PROXIES or PROXIES[w].separable]
    if wrong:
        raise EmqError(
            f"--whole-config: {', '.join(wrong)} is not a whole-configuration proxy; use some of kl, gmpq, seam or "
            "'none'"
        )
    benches = comma_list(args.benches, "--benches")
    for b in benches:
        Bench.open(b)  # a missing or unreadable bench fails here, before any campaign
    with executor_from_args(args) as executor:
        study = TransferStudy(
            benches,
            seeds=seeds,
            generations=args.generations,
            population=args.population,
            protocols=protocols,
            aggregate=args.aggregate,
            whole_config=whole,
            whole_limit=args.whole_limit,
            resamples=args.resamples,
            space=args.space,
            out_dir=args.out,
            progress=not args.json,
            executor=executor,
        )
        result = study.run()
    if args.json:
        emit_json(result.to_json())
    else:
        print(result.to_markdown())
        print(f"wrote {args.out / 'transfer.json'}, transfer.csv, transfer.png")
    return 0
