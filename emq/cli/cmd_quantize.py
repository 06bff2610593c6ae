"""`emq quantize`: post-training-quantize a model with one configuration and evaluate it."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..allocation.bitmap import load_bitmap
from ..api import layers, quantize
from ..errors import EmqError
from ..quant import PTQSettings
from .common import add_model_args, add_ptq_args, emit_json, markdown_table, parse_bits


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="PTQ-quantize a model with a bit configuration and evaluate it")
    add_model_args(p)
    p.add_argument("--bits", help="per-slot weight bit-widths, comma-separated (see `emq layers`)")
    p.add_argument("--bitmap", type=Path, help="bit map JSON keyed by module name (from `emq allocate --out`), instead of --bits")
    add_ptq_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> PTQSettings:
    return PTQSettings(act_bits=args.act_bits, weight_symmetric=args.symmetric, bn=args.bn, calib_size=args.calib_size, calib_seed=args.calib_seed)


def run(args: argparse.Namespace) -> int:
    if bool(args.bits) == bool(args.bitmap):
        raise EmqError("give the configuration with --bits b0,b1,... (one per slot; see `emq layers`) or --bitmap FILE, not both")
    if args.bitmap:
        lm = layers(args.model, input_size=args.input_size, num_classes=args.num_classes)
        bits = list(load_bitmap(args.bitmap, lm))
    else:
        bits = parse_bits(args.bits)
    res = quantize(args.model, bits, data=args.data, settings=settings_from_args(args), weights=args.weights, input_size=args.input_size)
    if args.json:
        emit_json({k: v for k, v in res.to_json().items()})
        return 0
    print(markdown_table(["top-1 %", "loss", "KL to FP", "size (bytes)", "BitOps", "seconds"], [[res.top1, res.loss, res.kl, res.size_bytes, res.bitops, res.seconds]]))
    return 0
