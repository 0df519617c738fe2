"""Argument checks shared by the model constructors; each raises ConfigError naming the field."""

from collections.abc import Sequence

from raysight.errors import ConfigError


def positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is an int >= 1 (bools excluded), else raise ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


def image_size_pair(value: object) -> tuple[int, int]:
    """Return ``value`` as ``(height, width)``; lists are accepted because JSON has no tuples."""
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 2:
        raise ConfigError(f"image_size must be (height, width), got {value!r}")
    return positive_int("image_size[0]", value[0]), positive_int("image_size[1]", value[1])
