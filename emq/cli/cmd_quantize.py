"""`emq quantize`: post-training-quantize a model with one configuration and evaluate it."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..api import EmqError, quantize
from .commands import COMMANDS
from .common import (
    add_device_arg,
    add_model_args,
    add_ptq_args,
    emit_json,
    markdown_table,
    parse_bits,
    ptq_settings,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help=COMMANDS["quantize"])
    add_model_args(p)
    p.add_argument("--bits", help="per-slot weight bit-widths, comma-separated (see `emq layers`)")
    p.add_argument(
        "--bitmap", type=Path, help="bit map JSON keyed by module name (from `emq allocate --out`), instead of --bits"
    )
    add_ptq_args(p)
    add_device_arg(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if bool(args.bits) == bool(args.bitmap):
        raise EmqError(
            "give the configuration with --bits b0,b1,... (one per slot; see `emq layers`) or --bitmap FILE, not both"
        )
    bits = parse_bits(args.bits) if args.bits else None
    res = quantize(
        args.model,
        bits,
        data=args.data,
        settings=ptq_settings(args),
        weights=args.weights,
        input_size=args.input_size,
        num_classes=args.num_classes,
        bitmap=args.bitmap,
        progress=not args.quiet,
        device=args.device,
    )
    if args.json:
        emit_json(res.to_json())
        return 0
    print(
        markdown_table(
            ["top-1 %", "loss", "KL to FP", "size (bytes)", "BitOps", "seconds"],
            [[res.top1, res.loss, res.kl, res.size_bytes, res.bitops, res.seconds]],
        )
    )
    return 0
