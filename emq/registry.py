"""The one registry of named plugins: proxies, executors, weight quantizers, budget kinds and terminals.

A `Registry` maps names to entries in declaration order (or by name, `order="name"`) and
refuses a second entry under a taken name, so a plugin defined twice, or two plugins that
chose the same name, fail at import instead of one silently replacing the other. A plugin
with settings describes each as an `Option` (name, type, default, help); the CLI builds its
flags from them, so a plugin with options is one new file.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from .errors import EmqError
from .specs import ParameterError

T = TypeVar("T")


@dataclass(frozen=True)
class Option:
    """One setting of a plugin: the keyword its constructor takes, with type, default and help.

    `flag` is its command-line flag (default `--name-with-dashes`); `minimum` the least value a
    number may take."""

    name: str
    type: type
    default: Any
    help: str
    flag: str = ""
    minimum: float | None = None

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def dest(self) -> str:
        """The argparse destination of `cli_flag`."""
        return self.cli_flag.lstrip("-").replace("-", "_")


class Registry(Mapping[str, T], Generic[T]):
    """Named entries of one kind (`what`, e.g. "executor"); unknown names are refused naming `param`."""

    def __init__(self, what: str, param: str, order: Literal["declaration", "name"] = "declaration") -> None:
        self.what, self.param, self.order = what, param, order
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """Register `entry` under `name`; a taken name is an error naming both entries."""
        if not name:
            raise EmqError(f"{self.what} {_describe(entry)} has no name")
        if name in self._entries:
            raise EmqError(
                f"{self.what} {name!r} is defined twice ({_describe(self._entries[name])} and {_describe(entry)})"
            )
        self._entries[name] = entry
        if self.order == "name":
            self._entries = dict(sorted(self._entries.items()))
        return entry

    def remove(self, name: str) -> None:
        """Forget `name` (tests and plugins that register temporary entries)."""
        self._entries.pop(name, None)

    @contextmanager
    def temporarily(self, name: str, entry: T) -> Iterator[T]:
        """`entry` under `name` while the block runs, forgotten after it (tests): registered by `add`,
        so a taken name is refused here too."""
        self.add(name, entry)
        try:
            yield entry
        finally:
            self.remove(name)

    def get_entry(self, name: str) -> T:
        """The entry `name`, or a ParameterError listing the registered names."""
        if name not in self._entries:
            raise ParameterError(self.param, name, f"unknown {self.what}; use one of {', '.join(self._entries)}")
        return self._entries[name]

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}: {', '.join(self._entries)})"


def _describe(entry: Any) -> str:
    if isinstance(entry, type):
        return f"{entry.__module__}.{entry.__qualname__}"
    return f"a {type(entry).__qualname__} of {type(entry).__module__}"
