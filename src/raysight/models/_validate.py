"""Argument checks shared by the model constructors; each raises ConfigError naming the field.

`dropout_layer` is here too: it is the check of a rate plus the layer the rate chooses.
"""

from collections.abc import Sequence

from torch import nn

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


def probability(name: str, value: object) -> float:
    """Return ``value`` as a float if it is a number in [0, 1), else raise ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
        raise ConfigError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def dropout_layer(rate: object) -> nn.Module:
    """``nn.Dropout(rate)``, or ``nn.Identity`` at 0, which draws no random numbers.

    Neither holds parameters, so the state_dict is the same whatever the rate, and a
    checkpoint saved before the argument existed (rate 0) loads into the same model.

    Raises:
        ConfigError: ``rate`` is not a number in [0, 1).
    """
    rate = probability("dropout", rate)
    return nn.Dropout(rate) if rate else nn.Identity()
