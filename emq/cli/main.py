"""Entry point of the `emq` console script.

Every `emq/cli/cmd_<name>.py` module defines `register(subparsers)`, which adds its
subparser and sets `func(args) -> int`. User errors (`EmqError`) become one line on
stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys

from .. import __version__
from ..errors import EmqError
from ..specs import ParameterError

# Python parameter names whose flag is not simply --name-with-dashes
FLAGS = {"pins": "--pin", "ties": "--tie", "config": "--bits", "out_dir": "--out", "warm_start": "--resume", "random_state": "--seed", "weight_symmetric": "--symmetric", "fmt": "--format"}


def flag_for(param: str) -> str:
    """The CLI flag of a library parameter, for error messages."""
    return FLAGS.get(param, "--" + param.replace("_", "-"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emq", description="Discover training-free proxies for mixed-precision quantization and allocate bit-widths with them.")
    parser.add_argument("--version", action="version", version=f"emq {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    import emq.cli as pkg

    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("cmd_"):
            importlib.import_module(f"emq.cli.{info.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except ParameterError as e:
        print(f"emq {args.command}: error: {e.with_flag(flag_for(e.param))}", file=sys.stderr)
        return 2
    except EmqError as e:
        print(f"emq {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `emq ... --json | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"emq {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
