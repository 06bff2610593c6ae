"""`emq export`: render a proxy file as sympy, LaTeX, Python, DOT and PNG."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..api import (
    EXPORT_FORMATS,
    export,
    load_proxy,
)
from .commands import COMMANDS
from .common import check_out_dir, emit_json, make_out_dir


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help=COMMANDS["export"])
    p.add_argument("proxy", type=Path, help="proxy file (emq-proxy/1 JSON), e.g. a run's best_proxy.json")
    p.add_argument("--to", default="all", choices=[*EXPORT_FORMATS, "all"], help="what to write (default all)")
    p.add_argument("--out", type=Path, default=Path("."), help="output directory (default: current)")
    p.add_argument("--json", action="store_true", help="print the written files as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_out_dir(args.out)
    proxy = load_proxy(args.proxy)  # a bad proxy file is refused before the output directory is made
    make_out_dir(args.out)
    written = export(proxy, args.to, args.out)
    if args.json:
        emit_json({k: str(v) for k, v in written.items()})
    else:
        for k, v in written.items():
            print(f"{k}: {v}")
    return 0
