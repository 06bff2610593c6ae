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
import re
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

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
    "quantizer_options": "--quantizer-option",
    "crowding_threshold": "--crowding",
}

CACHE_NOTE = (
    "statistics are cached in $EMQ_CACHE_DIR/stats, by default ~/.cache/emq/stats: one cache for all runs of this "
    "user, keyed by model weights, data, bits and every statistics setting (set EMQ_CACHE_DIR for a private or "
    "shared one)"
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


class _Parser(argparse.ArgumentParser):
    """argparse, but a value that starts with a minus and a digit (`--bits -1,4`, `--budget-size
    -5KB`) is a value for its flag, so the flag's own check can say what is wrong with it, instead
    of "expected one argument". No emq option looks like a negative number. (Python 3.13's
    argparse does the same; its subparsers inherit the class.)"""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-\.?\d")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; the full one of `command` only (all of them when None), one-line
    placeholders for the others (enough for `emq --help` and for choosing)."""
    parser = _Parser(
        prog="emq",
        description="Discover training-free proxies for mixed-precision quantization "
        "and allocate bit-widths with them.",
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
            _add_threads_arg(sub.choices[name])
        else:
            sub.add_parser(name, help=text)
    return parser


def _add_threads_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch intra-op threads of this process (default: the usable cores other work leaves free, at least 1; "
        "workers of --executor process/ray run one each)",
    )


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C, so every `finally` runs: temp files are
    removed, worker pools and a Ray cluster this command started are stopped."""


_SIGTERM_SEEN = threading.Event()  # set by the handler: a library that turns Terminated into a plain
# KeyboardInterrupt on its way out (Ray's blocking calls can) does not make a SIGTERM look like Ctrl-C


def _terminate(signum: int, frame: object) -> None:
    _SIGTERM_SEEN.set()
    raise Terminated(signum)


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises Terminated while a command runs (main thread only; restored after)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _SIGTERM_SEEN.clear()
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    from ..threads import CpuSample  # not through emq.api: the sample must start before torch is imported

    busy_since = CpuSample()  # the imports below are the window that measures how busy the cores are
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command_in(argv)
    parser = build_parser(command if command in COMMANDS else "")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    from ..api import EmqError, ParameterError, set_threads, threads_restored  # imported by the command already

    try:
        with threads_restored(), _sigterm_raises():
            args.threads = set_threads(args.threads, busy_since)  # commands pass it on (threads=)
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
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (Terminated); everything started was stopped on the way out
        terminated = isinstance(e, Terminated) or _SIGTERM_SEEN.is_set()
        print(f"emq {args.command}: {'terminated (SIGTERM)' if terminated else 'interrupted'}", file=sys.stderr)
        return 128 + (signal.SIGTERM if terminated else signal.SIGINT)


if __name__ == "__main__":
    sys.exit(main())
