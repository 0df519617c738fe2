"""Command-line flags made from a config dataclass: one flag per field, help from its metadata.

The config modules describe each field with `raysight.config.doc` and know nothing of
argparse; this module, used by the CLI only, turns those descriptions into flags and the
parsed flags back into plain values for the class's `from_dict`.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Collection
from typing import Any, Literal, get_args, get_origin

from raysight.config import parse_assignment
from raysight.errors import ConfigError


def add_flags(
    parser: argparse.ArgumentParser,
    cls: type[Any],
    *,
    title: str,
    required: Collection[str] = (),
) -> None:
    """Add one `--field-name` flag per field of `cls`, in an argument group.

    Every default is None, so only the flags a person gives override the class's defaults
    (or a config file); `flag_overrides` collects them. Types map to flags as: bool ->
    `--x/--no-x`; Literal -> choices; tuple[T, T] -> two values of T; dict -> repeated
    KEY=VALUE; `X | None` -> X; any other class -> that class as the converter.

    Args:
        parser: The (sub)command's parser.
        cls: A dataclass whose fields carry `help` metadata (`raysight.config.doc`), and
            optionally `flag` (the flag's name) and `metavar`.
        title: Heading of the group in `--help`.
        required: Fields whose flag must be given (argparse then names the missing flag).

    Raises:
        TypeError: a field has no help or a type no flag can express, so a new field cannot
            silently go undocumented.
    """
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(title)
    for field in dataclasses.fields(cls):
        help_text = field.metadata.get("help")
        if not help_text:
            raise TypeError(
                f"{cls.__name__}.{field.name} has no help: declare it with "
                "field(..., metadata=doc(...))"
            )
        flag = field.metadata.get("flag", "--" + field.name.replace("_", "-"))
        group.add_argument(
            flag,
            dest=field.name,
            default=None,
            required=field.name in required,
            help=_help(help_text, field),
            **_kind(cls, field, hints[field.name]),
        )


def flag_overrides(args: argparse.Namespace, cls: type[Any]) -> dict[str, Any]:
    """The fields of `cls` given on the command line, as plain values for `from_dict`.

    Args:
        args: What the parser built with `add_flags(parser, cls, ...)` returned.
        cls: The same dataclass.

    Returns:
        Field name -> value for every flag given; a repeated KEY=VALUE flag becomes one
        mapping, a multi-value flag a tuple.
    """
    hints = typing.get_type_hints(cls)
    overrides: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        value = getattr(args, field.name)
        if value is None:
            continue
        origin = get_origin(_without_none(hints[field.name]))
        if origin is dict:
            value = dict(value)
        elif origin is tuple:
            value = tuple(value)
        overrides[field.name] = value
    return overrides


def _help(text: str, field: dataclasses.Field[Any]) -> str:
    # argparse %-formats help strings; a literal "%" must be doubled.
    text = text.replace("%", "%%")
    # The flag's own default is None (so unset flags override nothing): show the class's.
    # None and "" mean "derived", which the help text explains.
    if field.default is dataclasses.MISSING or field.default in (None, ""):
        return text
    return f"{text} (default: {field.default})"


def _kind(cls: type[Any], field: dataclasses.Field[Any], hint: Any) -> dict[str, Any]:
    """argparse keywords that make the flag parse values of the field's type."""
    base = _without_none(hint)
    origin, args = get_origin(base), get_args(base)
    if base is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is Literal:
        return {"choices": args, "type": type(args[0])}
    if origin is tuple and args and Ellipsis not in args and len(set(args)) == 1:
        return {"nargs": len(args), "type": args[0], "metavar": field.metadata.get("metavar")}
    if origin is dict:
        return {"action": "append", "type": _key_value, "metavar": "KEY=VALUE"}
    if origin is None and isinstance(base, type):
        return {"type": base}
    raise TypeError(f"{cls.__name__}.{field.name}: no flag for type {hint}")


def _without_none(hint: Any) -> Any:
    """X for `X | None`; the hint unchanged otherwise (a wider union stays a union)."""
    if get_origin(hint) in (typing.Union, types.UnionType):
        arms = [a for a in get_args(hint) if a is not type(None)]
        if len(arms) == 1:
            return arms[0]
    return hint


def _key_value(text: str) -> tuple[str, Any]:
    try:
        return parse_assignment(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
