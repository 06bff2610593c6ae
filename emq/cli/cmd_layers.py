"""`emq layers`: the layer map of a model."""

from __future__ import annotations

import argparse

from ..api import (
    DEFAULT_BITS_TEXT,
    build_model,
    check_bit_set,
    layers,
)
from .commands import COMMANDS
from .common import add_model_args, emit_json, markdown_table, parse_bits


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("layers", help=COMMANDS["layers"])
    add_model_args(p, data=False)
    p.add_argument(
        "--bits-allowed", default=DEFAULT_BITS_TEXT, help=f"bit-widths to list as allowed (default {DEFAULT_BITS_TEXT})"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    bits_allowed = ",".join(map(str, check_bit_set(parse_bits(args.bits_allowed, "bits_allowed"))))
    if args.weights is not None:
        build_model(
            args.model, num_classes=args.num_classes, weights=args.weights
        )  # the layer map does not depend on them, but a bad file is an error
    lm = layers(args.model, input_size=args.input_size, num_classes=args.num_classes)
    if args.json:
        emit_json(lm.to_json())
        return 0
    rows = [[i, s.name, ", ".join(s.modules), s.params, s.macs, bits_allowed] for i, s in enumerate(lm.slots)]
    print(markdown_table(["slot", "name", "modules", "weight params", "MACs", "bits allowed"], rows))
    print(
        f"\n{lm.num_slots} slots, {len(lm.layers)} layers; full-precision size {lm.fp_size_bytes:,.0f} bytes; "
        f"input {lm.input_size}px"
    )
    return 0
