"""Arguments and helpers shared by several subcommands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..specs import parse_config


def add_model_args(p: argparse.ArgumentParser, data: bool = True) -> None:
    p.add_argument("--model", default="default", help="'default' (embedded) or a torchvision classifier name (default: default)")
    p.add_argument("--weights", type=Path, help="local weights file (state dict), loaded with weights_only=True")
    p.add_argument("--num-classes", type=int, help="number of classes of a torchvision model (default: the data's)")
    p.add_argument("--input-size", type=int, help="input resolution (default: 24 for default, 224 for torchvision, 32 for CIFAR-10)")
    if data:
        p.add_argument("--data", help="'default', an ImageFolder directory or a CIFAR-10 directory (default: the model's own: 'default' for the default model)")


def add_ptq_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--act-bits", type=int, default=8, help="activation bit-width (default 8; 32 = unquantized)")
    p.add_argument("--bn", choices=["reestimate", "fold", "none"], default="reestimate", help="BatchNorm handling (default: reestimate on calibration data)")
    p.add_argument("--symmetric", action="store_true", help="symmetric weight quantization (default: asymmetric)")
    p.add_argument("--calib-size", type=int, default=512, help="calibration images (default 512)")
    p.add_argument("--calib-seed", type=int, default=0, help="seed of the calibration draw (default 0)")


def parse_bits(text: str, param: str = "bits") -> list[int]:
    """Comma-separated bit-widths from a flag's text (`param` names the flag in errors)."""
    return list(parse_config(text, param))


def emit_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.4e}"
        return str(v)

    cells = [[fmt(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]

    def line(vals: list[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"

    out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in cells]
    return "\n".join(out)
