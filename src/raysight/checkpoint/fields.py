"""Strict readers for the JSON documents a checkpoint holds: the manifest and the train state.

Each reader checks one value's type and returns it typed, or raises ``CheckpointError`` naming
the field and the document's source, so a bad file is reported where it is and not where it
is later used.
"""

import json
import math
from collections.abc import Iterator
from typing import Any

from raysight.errors import CheckpointError

_SHA256_HEX_LENGTH = 64


def parse_json_object(text: str, what: str, source: str) -> dict[str, Any]:
    """Parse a JSON document that must be an object, naming `what` and `source` if not."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{source}: {what} is not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{source}: {what} must be a JSON object")
    return data


def check_field_names(
    data: dict[str, Any], expected: set[str] | frozenset[str], prefix: str, source: str
) -> None:
    missing = sorted(expected - data.keys())
    if missing:
        raise CheckpointError(f"{source}: field '{prefix}{missing[0]}' is missing")
    extra = sorted(data.keys() - expected)
    if extra:
        raise CheckpointError(f"{source}: unexpected field '{prefix}{extra[0]}'")


def as_string(value: Any, field: str, source: str) -> str:
    if not isinstance(value, str):
        raise CheckpointError(f"{source}: field {field!r} must be a string")
    return value


def as_object(value: Any, field: str, source: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise CheckpointError(f"{source}: field {field!r} must be an object")
    return value


def as_count(value: Any, field: str, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CheckpointError(f"{source}: field {field!r} must be a non-negative integer")
    return value


def as_number(value: Any, field: str, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CheckpointError(f"{source}: field {field!r} must be a number")
    return float(value)


def as_strings(value: Any, field: str, source: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise CheckpointError(f"{source}: field {field!r} must be a list of strings")
    return tuple(value)


def as_numbers(value: Any, field: str, source: str) -> tuple[float, ...]:
    if not isinstance(value, list):
        raise CheckpointError(f"{source}: field {field!r} must be a list of numbers")
    return tuple(as_number(item, field, source) for item in value)


def as_optional_numbers(value: Any, field: str, source: str) -> tuple[float, ...] | None:
    return None if value is None else as_numbers(value, field, source)


def as_sha256_hex(value: Any, field: str, source: str) -> str:
    if (
        not isinstance(value, str)
        or len(value) != _SHA256_HEX_LENGTH
        or any(c not in "0123456789abcdef" for c in value)
    ):
        raise CheckpointError(f"{source}: field {field!r} must be a lowercase hex sha256")
    return value


def check_finite(data: dict[str, Any], source: str) -> None:
    """Refuse NaN and infinities anywhere in `data`'s plain values, naming the field.

    Standard JSON has no such numbers, yet Python's json reads the literals NaN, Infinity
    and -Infinity (and 1e999, as infinity), so a parsed document may hold them. A reader of
    the manifest must be able to trust each number it carries: normalisation, metrics,
    model arguments, training config.
    """
    for field, value, in_list in _floats(data, ""):
        if not math.isfinite(value):
            # Spelled as the file spells it (NaN, Infinity), not as Python prints it.
            spelled = json.dumps(value)
            requirement = "must hold finite numbers" if in_list else "must be a finite number"
            raise CheckpointError(f"{source}: field {field!r} {requirement}, got {spelled}")


def _floats(value: Any, field: str, in_list: bool = False) -> Iterator[tuple[str, float, bool]]:
    """Each float in `value` with the dotted name of the field holding it (a list's items
    carry the list's name) and whether it is a list item."""
    if isinstance(value, float):
        yield field, value, in_list
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _floats(item, f"{field}.{key}" if field else str(key))
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _floats(item, field, in_list=True)
