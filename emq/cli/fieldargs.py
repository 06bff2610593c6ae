"""Flags generated from settings dataclasses: a field declared with help text (`emq.specs.setting`)
is one flag (its value under the field's name in the parsed arguments), with the field's type,
the default of the instance given and the field's help, so a setting is named, defaulted and
explained in one place."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any


def _flag_fields(cls: type, names: typing.Collection[str] | None) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("help") and (names is None or f.name in names)]


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


def _value_type(hint: Any) -> type:
    """int for `int` and `int | None`."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def add_field_args(parser: argparse.ArgumentParser, defaults: Any, names: typing.Collection[str] | None = None) -> None:
    """One flag per field of the dataclass instance `defaults` that has help text (only those in
    `names` when given), defaulting to that instance's value."""
    cls = type(defaults)
    hints = typing.get_type_hints(cls)
    for f in _flag_fields(cls, names):
        value = getattr(defaults, f.name)
        text = f.metadata["help"].format(default=value)
        kind = _value_type(hints[f.name])
        if kind is bool:
            parser.add_argument(_flag(f), dest=f.name, action="store_false" if value else "store_true", help=text)
            continue
        default = f.metadata.get("flag_default", value)
        choices = f.metadata.get("choices")
        metavar = None if choices else _flag(f)[2:].replace("-", "_").upper()  # the flag's, not the field's name
        parser.add_argument(
            _flag(f), dest=f.name, type=kind, default=default, choices=choices, metavar=metavar, help=text
        )


def field_values(args: argparse.Namespace, cls: type, names: typing.Collection[str] | None = None) -> dict[str, Any]:
    """The values of the flags `add_field_args` made for `cls`, by field name."""
    return {f.name: getattr(args, f.name) for f in _flag_fields(cls, names)}
