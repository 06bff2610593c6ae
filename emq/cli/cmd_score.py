"""`emq score`: every proxy's correlation with a bench, with intervals, the ceiling and the ridge reference."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..api import DEFAULT_LIMIT, DEFAULT_RESAMPLES, METRICS, PROXIES, EmqError, Executor, ScoreReport, score
from .commands import COMMANDS
from .common import (
    add_device_arg,
    add_executor_args,
    check_out_dir,
    emit_json,
    executor_from_args,
    open_bench,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help=COMMANDS["score"])
    p.add_argument(
        "--bench", default="default", help="bench file, or 'default' for the shipped bench (default: default)"
    )
    p.add_argument(
        "--proxies", default="all", help=f"'all', 'none' or comma-separated names: {', '.join(PROXIES)} (default: all)"
    )
    p.add_argument(
        "--proxy",
        action="append",
        default=[],
        metavar="PROXY.json",
        help="an evolved proxy file to score too (repeatable)",
    )
    p.add_argument("--metric", choices=METRICS, help="bench metric to predict (default: the bench's default metric)")
    p.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_LIMIT,
        help="whole-configuration proxies (gmpq, seam, kl) score a seeded sample of at most this many "
        f"configurations per split; 0 = all (default {DEFAULT_LIMIT})",
    )
    p.add_argument("--ompq-beta", type=float, help="OMPQ's beta in theta = exp(-beta * gamma) (default 1.0)")
    p.add_argument("--data", help="override the bench's data ('default' or a directory)")
    p.add_argument(
        "--weights",
        type=Path,
        help="local weights file of the bench's model (checked against the bench's weights hash)",
    )
    add_executor_args(p, "workers for whole-configuration proxies (default 1 = serial; results are identical)")
    p.add_argument(
        "--resamples",
        type=int,
        default=DEFAULT_RESAMPLES,
        help="bootstrap resamples (configurations x test sources, seeded) for the 95 %% intervals "
        f"(default {DEFAULT_RESAMPLES})",
    )
    p.add_argument("--no-reference", action="store_true", help="leave out the supervised ridge reference row")
    p.add_argument("--out", type=Path, help="write score.csv, score.json and scatter_<proxy>.png here")
    add_device_arg(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_out_dir(args.out)
    if args.limit < 0:
        raise EmqError(f"--limit {args.limit}: use 0 (all configurations) or a positive number")
    if args.ompq_beta is not None and not math.isfinite(args.ompq_beta):
        raise EmqError(f"--ompq-beta {args.ompq_beta}: use a finite number")
    open_bench(args.bench)  # a bad bench is refused before any model work
    with executor_from_args(args) as executor:
        report = _score(args, executor)
    written = report.save(args.out) if args.out else []
    if args.json:
        emit_json(report.to_json())
        return 0
    print(report.to_markdown())
    for path in written:
        print(f"wrote {path}")
    return 0


def _score(args: argparse.Namespace, executor: Executor) -> ScoreReport:
    return score(
        args.bench,
        proxies="" if args.proxies == "none" else args.proxies,
        proxy_files=args.proxy,
        metric=args.metric,
        limit=args.limit,
        ompq_beta=args.ompq_beta,
        data=args.data,
        weights=args.weights,
        progress=not (args.json or args.quiet),
        executor=executor,
        resamples=args.resamples,
        reference=not args.no_reference,
        device=args.device,
        threads=args.threads,
    )
