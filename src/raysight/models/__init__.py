"""Model registry: every architecture by name, its variants as data.

A model is rebuilt from ``(name, resolve_kwargs(...))`` alone, which is what a checkpoint
stores, so serving needs no training code. Placement (``device``, ``dtype``) is never part
of the stored arguments: the caller decides it when building.
"""

import inspect
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from torch import nn

from raysight.errors import ConfigError
from raysight.models.catsdogs import CatsDogsNet
from raysight.models.convnet import ConvNet
from raysight.models.resnet import ResNet, ResNet9

logger = logging.getLogger(__name__)

__all__ = [
    "MODELS",
    "CatsDogsNet",
    "ConvNet",
    "ModelSpec",
    "ResNet",
    "ResNet9",
    "build_model",
    "model_names",
    "resolve_kwargs",
]

# Builder arguments that choose where tensors live, not what the architecture is.
_PLACEMENT_ARGS = frozenset({"device", "dtype"})


@dataclass(frozen=True)
class ModelSpec:
    """One registered model.

    Attributes:
        name: Registry key, as stored in checkpoints.
        builder: Callable taking ``in_channels``, ``num_classes``, ``image_size`` and the
            architecture keyword arguments; returns the module.
        defaults: Preset keyword arguments, e.g. ``{"layers": (2, 2, 2, 2)}`` for resnet18.
            The user's keyword arguments override them.
        description: One line for people choosing a model.
    """

    name: str
    builder: Callable[..., nn.Module]
    defaults: Mapping[str, Any]
    description: str


_RESNET18_LAYERS = (2, 2, 2, 2)

MODELS: Mapping[str, ModelSpec] = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            ModelSpec(
                name="convnet",
                builder=ConvNet,
                defaults=MappingProxyType({}),
                description="Chollet's MNIST convnet (93k params at 28x28); "
                "padding='same' for tiny images",
            ),
            ModelSpec(
                name="catsdogs",
                builder=CatsDogsNet,
                defaults=MappingProxyType({}),
                description="Chollet's cats-vs-dogs convnet from scratch (1.0M params at "
                "180x180, dropout 0.5); padding='same' under 78x78",
            ),
            ModelSpec(
                name="resnet9",
                builder=ResNet9,
                defaults=MappingProxyType({}),
                description="Myrtle.ai's fast CIFAR ResNet-9 (6.6M params at width 64)",
            ),
            ModelSpec(
                name="resnet18",
                builder=ResNet,
                defaults=MappingProxyType({"layers": _RESNET18_LAYERS}),
                description="CIFAR-style ResNet-18 (11.2M params with 10 classes)",
            ),
            ModelSpec(
                name="resnet",
                builder=ResNet,
                defaults=MappingProxyType({"layers": _RESNET18_LAYERS, "width": 64}),
                description="CIFAR-style ResNet with user-chosen layers and width "
                "(ResNet-18 by default)",
            ),
        )
    }
)


def model_names() -> tuple[str, ...]:
    """Return the registered model names, in registration order."""
    return tuple(MODELS)


def _spec(name: str) -> ModelSpec:
    """Look up ``name`` or raise ConfigError listing the known names."""
    try:
        return MODELS[name]
    except KeyError:
        known = ", ".join(model_names())
        raise ConfigError(f"unknown model {name!r}; known models: {known}") from None


def _to_json_value(key: str, value: Any) -> Any:
    """Return ``value`` with tuples turned into lists; raise if JSON cannot hold it."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_to_json_value(key, item) for item in value]
    raise ConfigError(
        f"model argument {key} must be a number, string or list, got {type(value).__name__}"
    )


def resolve_kwargs(
    name: str,
    *,
    in_channels: int,
    num_classes: int,
    image_size: tuple[int, int],
    **kwargs: Any,
) -> dict[str, Any]:
    """Return the complete keyword arguments that rebuild model ``name``.

    The result merges the builder's own defaults, the registry preset and ``kwargs``, in
    that order of precedence (last wins), with tuples turned into lists so it can be stored
    as JSON. ``build_model(name, **resolve_kwargs(name, ...))`` builds the same architecture.
    ``device`` and ``dtype`` are accepted and left out, since they are placement. Values are
    checked when the model is built, not here.

    Args:
        name: Registered model name.
        in_channels: Channels of the input image.
        num_classes: Number of output logits.
        image_size: ``(height, width)`` of the input.
        **kwargs: Architecture arguments of the model, e.g. ``width`` or ``padding``.

    Returns:
        A JSON-serialisable dict of every architecture argument.

    Raises:
        ConfigError: The name is unknown, an argument is not accepted by the model, or a
            value cannot be stored as JSON.
    """
    spec = _spec(name)
    parameters = inspect.signature(spec.builder).parameters
    unknown = sorted(set(kwargs) - set(parameters))
    if unknown:
        accepted = ", ".join(p for p in parameters if p not in _PLACEMENT_ARGS)
        raise ConfigError(
            f"unknown argument {', '.join(unknown)} for model {name!r}; accepted: {accepted}"
        )
    signature_defaults = {
        p.name: p.default
        for p in parameters.values()
        if p.default is not inspect.Parameter.empty and p.name not in _PLACEMENT_ARGS
    }
    chosen = {k: v for k, v in kwargs.items() if k not in _PLACEMENT_ARGS}
    resolved = {
        "in_channels": in_channels,
        "num_classes": num_classes,
        "image_size": image_size,
        **signature_defaults,
        **spec.defaults,
        **chosen,
    }
    return {key: _to_json_value(key, value) for key, value in resolved.items()}


def build_model(
    name: str,
    *,
    in_channels: int,
    num_classes: int,
    image_size: tuple[int, int],
    **kwargs: Any,
) -> nn.Module:
    """Build registered model ``name``.

    Args:
        name: Registered model name (see ``model_names()``).
        in_channels: Channels of the input image.
        num_classes: Number of output logits.
        image_size: ``(height, width)`` of the input.
        **kwargs: Architecture arguments of the model, plus optional ``device`` and
            ``dtype`` for where and how to allocate the parameters.

    Returns:
        The model, in training mode, on ``device`` (default: torch's default device).

    Raises:
        ConfigError: The name or an argument is unknown, or a value is invalid.
    """
    resolved = resolve_kwargs(
        name, in_channels=in_channels, num_classes=num_classes, image_size=image_size, **kwargs
    )
    placement = {k: v for k, v in kwargs.items() if k in _PLACEMENT_ARGS}
    logger.debug("building model %s with %s", name, resolved)
    return MODELS[name].builder(**resolved, **placement)
