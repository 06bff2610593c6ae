"""Entry point of the `emq` console script.

Every `emq/cli/cmd_<name>.py` module defines `register(subparsers)`, which adds its
subparser and sets `func(args) -> int`; `emq.cli.commands` lists them with their help.
Only the module of the command being run is imported, so `emq --help` and `emq --version`
do not import torch. User errors (`EmqError`) become one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from .. import __version__
from .commands import COMMANDS

# Python parameter names whose flag is not simply --name-with-dashes
FLAGS = {
    "pins": "--pin",
    "ties": "--tie",
    "config": "--bits",
    "out_dir": "--out",
    "warm_start": "--resume",
    "random_state": "--seed",
    "weight_symmetric": "--symmetric",
    "fmt": "--format",
}

CACHE_NOTE = (
    "statistics are cached in $EMQ_CACHE_DIR/stats, by default ~/.cache/emq/stats: one cache for all runs of this user, "
    "keyed by model weights, data, bits and every statistics setting (set EMQ_CACHE_DIR for a private or shared one)"
)


def flag_for(param: str) -> str:
    """The CLI flag of a library parameter, for error messages."""
    return FLAGS.get(param, "--" + param.replace("_", "-"))


def _command_in(argv: list[str]) -> str | None:
    """The subcommand named in argv (the first word that is not a top-level option)."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; the full one of `command` only (all of them when None), one-line
    placeholders for the others (enough for `emq --help` and for choosing)."""
    parser = argparse.ArgumentParser(
        prog="emq",
        description="Discover training-free proxies for mixed-precision quantization and allocate bit-widths with them.",
        epilog=CACHE_NOTE,
    )
    parser.add_argument("--version", action="version", version=f"emq {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details (INFO)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars; warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, text in COMMANDS.items():
        if command is None or name == command:
            importlib.import_module(f"emq.cli.cmd_{name}").register(sub)
        else:
            sub.add_parser(name, help=text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command_in(argv)
    parser = build_parser(command if command in COMMANDS else "")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    from ..api import EmqError, ParameterError  # the command's module has imported the API already

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
