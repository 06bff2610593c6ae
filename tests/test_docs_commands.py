"""Every command the README and docs/ quote still runs, and every relative link still lands.

Each `emq ...` invocation in a fenced code block (not Python) or an inline code span of README.md
and docs/*.md is checked in-process against the real entry point: `emq <subcommand> --help` exits
0 and its help lists every flag the invocation quotes; where a flag has fixed choices, the values
the docs list (`--executor serial|process|ray`) must be among them. Each quoted `python
benchmarks/NAME.py ...` is checked the same way: the script exists, `--help` exits 0 (run in-process,
so a script needing the benchmark-only extra `.[bench]` is skipped without it, except in CI, where
`.ci/run` installs it) and lists every quoted flag. Relative links and images must point to files
that exist, and `#anchors` to a heading of the target file.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import runpy
import sys
from functools import lru_cache
from pathlib import Path

import pytest

from emq.cli.commands import COMMANDS
from emq.cli.main import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```", re.S | re.M)
CODE_SPAN = re.compile(r"`([^`]+)`")
# a command inside a code line: at its start or after a shell separator
SHELL_EMQ = re.compile(r"(?:^|&&|\|\||;|\$)\s*(emq\s[^#\n]*)")
SHELL_BENCHMARK = re.compile(r"(?:^|&&|\|\||;|\$)\s*(python\s+benchmarks/[^#\n]*)")
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _lists(help_text: str, flag: str) -> bool:
    """Whether a help text names the flag (as a whole word: --seed is not --seeds)."""
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text) is not None


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subparsers of a parser by name (empty when it has none)."""
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}


def quoted_commands(path: Path, shell: re.Pattern = SHELL_EMQ, prefix: str = "emq ") -> list[tuple[str, str]]:
    """(where, command) for every `emq ...` invocation (or what `shell` and `prefix` match) quoted in a
    markdown file."""
    text = path.read_text(encoding="utf-8")
    found = []
    for m in FENCE.finditer(text):
        if m.group(1).strip().lower() in ("python", "py", "pycon"):
            continue
        start = _line(text, m.start(2))
        for k, line in enumerate(m.group(2).splitlines()):
            found += [(f"{path.name}:{start + k}", c.group(1).strip()) for c in shell.finditer(line)]
    prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)  # keep line numbers
    for m in CODE_SPAN.finditer(prose):
        span = " ".join(m.group(1).replace("\\|", "|").split())  # a span may wrap over lines; `\|` in tables
        if span.startswith(prefix):
            found.append((f"{path.name}:{_line(prose, m.start())}", span))
    return found


def split_command(command: str) -> tuple[list[str], list[tuple[str, str | None]]]:
    """The subcommand path (`["bench", "build"]`) and each quoted flag with the word after it."""
    words = command.replace("[", " ").replace("]", " ").replace("(", " ").replace(")", " ").split()[1:]
    path = words[:1]
    if path == ["bench"] and len(words) > 1 and not words[1].startswith("-"):
        path.append(words[1])
    flags = []
    for i, word in enumerate(words):
        for flag in FLAG.findall(word.split("=")[0]):
            value = word.split("=", 1)[1] if "=" in word else (words[i + 1] if i + 1 < len(words) else None)
            flags.append((flag, value))
    return path, flags


@lru_cache(maxsize=None)
def help_of(path: tuple[str, ...]) -> tuple[int, str]:
    """Exit code and text of `emq <path> --help`, run through the console script's main()."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            code = main([*path, "--help"])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return code, out.getvalue()


@lru_cache(maxsize=None)
def choices_of(path: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """Flag -> its fixed choices, for the flags of `emq <path>` that have them."""
    parser = build_parser(path[0])
    for part in path:
        parser = _subcommands(parser)[part]
    return {s: tuple(map(str, a.choices)) for a in parser._actions if a.choices for s in a.option_strings}


def listed_values(value: str | None) -> list[str]:
    """The literal values quoted after a flag (`ray`, `serial|process|ray`); metavars (NAME, FILE) are not."""
    if not value:
        return []
    return [v for v in value.strip(",").split("|") if v and v == v.lower() and not v.startswith("-")]


def lone_flags(path: Path) -> list[tuple[str, str]]:
    """(where, flag) for the flags of inline code spans that quote flags without their command."""
    prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), path.read_text(encoding="utf-8"))
    return [
        (f"{path.name}:{_line(prose, m.start())}", flag)
        for m in CODE_SPAN.finditer(prose)
        if m.group(1).startswith("--")
        for flag in FLAG.findall(m.group(1))
    ]


def command_paths() -> list[tuple[str, ...]]:
    """Every subcommand path of emq: (`layers`,), (`bench`, `build`), ..."""
    paths = []
    for name in COMMANDS:
        nested = _subcommands(_subcommands(build_parser(name))[name])
        paths += [(name, part) for part in nested] if nested else [(name,)]
    return paths


CASES = [case for doc in DOCS for case in quoted_commands(doc)]
BENCHMARK_CASES = [case for doc in DOCS for case in quoted_commands(doc, SHELL_BENCHMARK, "python benchmarks/")]


@lru_cache(maxsize=None)
def script_help(script: str) -> tuple[object, str]:
    """Exit code (or the error) and text of `python <script> --help`, run in this process."""
    out, argv = io.StringIO(), sys.argv
    sys.argv = [script, "--help"]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            runpy.run_path(str(ROOT / script), run_name="__main__")
        code: object = "no exit"
    except SystemExit as e:
        code = e.code
    except Exception as e:  # noqa: BLE001 - reported as the test's failure
        code = f"{type(e).__name__}: {e}"
    finally:
        sys.argv = argv
    return code, out.getvalue()


def test_docs_quote_benchmarks():
    assert len({c.split()[1] for _, c in BENCHMARK_CASES}) >= 10, BENCHMARK_CASES


@pytest.mark.parametrize("where,command", BENCHMARK_CASES, ids=[f"{w} {c[7:67]}" for w, c in BENCHMARK_CASES])
def test_quoted_benchmark_runs(where: str, command: str):
    script = command.split()[1]
    assert (ROOT / script).is_file(), f"{where}: `{command}` names no script ({script})"
    code, text = script_help(script)
    if "needs the bench extra" in str(code) and not os.environ.get("CI"):
        pytest.skip(f"{script} needs the bench extra: pip install -e '.[bench]' (.ci/run installs it)")
    assert code == 0, f"{where}: `python {script} --help` ended with {code}"
    for flag, _ in split_command(command)[1]:
        assert _lists(text, flag), f"{where}: `python {script} --help` does not list {flag} (quoted in `{command}`)"


def test_docs_quote_commands():
    """The scan finds the quickstart command, so an empty parametrization cannot pass silently."""
    assert ("emq demo" in {c for _, c in CASES}) and len(CASES) >= 20, CASES


@pytest.mark.parametrize("where,command", CASES, ids=[f"{w} {c[:60]}" for w, c in CASES])
def test_quoted_command_runs(where: str, command: str):
    path, flags = split_command(command)
    assert path and path[0] in COMMANDS, f"{where}: `{command}` names no emq subcommand"
    code, text = help_of(tuple(path))
    assert code == 0, f"{where}: `emq {' '.join(path)} --help` exited {code}"
    choices = choices_of(tuple(path))
    for flag, value in flags:
        assert _lists(text, flag), (
            f"{where}: `emq {' '.join(path)} --help` does not list {flag} (quoted in `{command}`)"
        )
        unknown = [v for v in listed_values(value) if flag in choices and v not in choices[flag]]
        assert not unknown, f"{where}: {flag} has no choice {unknown} (choices: {choices.get(flag)})"


def test_lone_flags_exist():
    """A flag quoted without its command (`--metric top1`) is still a flag of some emq command."""
    helps = [help_of(())[1], *(help_of(p)[1] for p in command_paths())]
    missing = [
        f"{where}: {flag}" for doc in DOCS for where, flag in lone_flags(doc) if not any(_lists(h, flag) for h in helps)
    ]
    assert not missing, "flags quoted in the docs that no emq command has:\n" + "\n".join(missing)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def test_relative_links_resolve():
    broken = []
    for doc in DOCS:
        text = FENCE.sub("", doc.read_text(encoding="utf-8"))
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            dest = (doc.parent / file).resolve() if file else doc
            if not dest.exists():
                broken.append(f"{doc.name}: {target} (no file {os.path.relpath(dest, ROOT)})")
            elif anchor and dest.suffix == ".md":
                anchors = {slug(h) for h in HEADING.findall(FENCE.sub("", dest.read_text(encoding="utf-8")))}
                if anchor not in anchors:
                    broken.append(f"{doc.name}: {target} (no heading #{anchor} in {dest.name})")
    assert not broken, "broken links:\n" + "\n".join(broken)
