"""`emq quantize`: post-training-quantize a model with one configuration and evaluate it."""

from __future__ import annotations

import argparse

from ..api import quantize
from ..errors import EmqError
from ..quant import PTQSettings
from .common import add_model_args, add_ptq_args, emit_json, markdown_table, parse_bits


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="PTQ-quantize a model with a bit configuration and evaluate it")
    add_model_args(p)
    p.add_argument("--bits", help="per-slot weight bit-widths, comma-separated (see `emq layers`)")
    add_ptq_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> PTQSettings:
    return PTQSettings(act_bits=args.act_bits, weight_symmetric=args.symmetric, bn=args.bn, calib_size=args.calib_size, calib_seed=args.calib_seed)


def run(args: argparse.Namespace) -> int:
    if not args.bits:
        raise EmqError("give the configuration with --bits b0,b1,... (one per slot; see `emq layers`)")
    res = quantize(args.model, parse_bits(args.bits), data=args.data, settings=settings_from_args(args), weights=args.weights, input_size=args.input_size)
    if args.json:
        emit_json({k: v for k, v in res.to_json().items()})
        return 0
    print(markdown_table(["top-1 %", "loss", "KL to FP", "size (bytes)", "BitOps", "seconds"], [[res.top1, res.loss, res.kl, res.size_bytes, res.bitops, res.seconds]]))
    return 0
