"""The train state: optimizer and scheduler state for resuming, stored without pickle.

``train_state.safetensors`` holds the state's tensors, each keyed by its path in the
structure (e.g. ``optimizer.state.0.exp_avg``), and in its metadata a JSON document with
everything else, where each tensor appears as a reference to its key.
"""

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from raysight.checkpoint.fields import as_count, check_field_names, parse_json_object
from raysight.checkpoint.files import cpu_contiguous
from raysight.errors import CheckpointError

logger = logging.getLogger(__name__)

# The safetensors metadata key holding the JSON part of the train state.
_METADATA_KEY = "train_state"
# Markers in that JSON for what JSON cannot express directly: a reference to a tensor in the
# file, a tuple (Adam's betas), and a dict with non-string keys (optimizer state is keyed by
# parameter index, and load_state_dict silently drops entries whose keys are strings).
_TENSOR_TAG = "__tensor__"
_TUPLE_TAG = "__tuple__"
_ITEMS_TAG = "__items__"
_TAGS = frozenset({_TENSOR_TAG, _TUPLE_TAG, _ITEMS_TAG})
_FIELDS = frozenset({"optimizer", "scheduler", "epoch", "extra"})


@dataclass(frozen=True)
class TrainState:
    """What resuming training needs besides the weights.

    Attributes:
        optimizer: ``optimizer.state_dict()``.
        scheduler: ``scheduler.state_dict()``, or None without a scheduler. Entries holding
            functions (e.g. a ``LambdaLR`` lambda) are not stored, since only pickle could
            store them; the scheduler built for resuming supplies its own.
        epoch: Epochs completed.
        extra: Further JSON-serialisable values, e.g. the best metric so far.
    """

    optimizer: dict[str, Any]
    scheduler: dict[str, Any] | None
    epoch: int
    extra: dict[str, Any]


def encode_train_state(state: TrainState) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Split a train state into the tensors and the metadata of a safetensors file.

    Returns:
        The tensors, keyed by their path, and the metadata holding the JSON document.

    Raises:
        CheckpointError: The state holds a value or key of an unsupported type, two tensors
            with the same path, or a circular reference.
    """
    as_count(state.epoch, "epoch", "train state")
    tensors: dict[str, torch.Tensor] = {}
    document = {
        "optimizer": _encode(state.optimizer, ("optimizer",), tensors),
        "scheduler": _encode(state.scheduler, ("scheduler",), tensors),
        "epoch": state.epoch,
        "extra": _encode(state.extra, ("extra",), tensors),
    }
    try:
        return tensors, {_METADATA_KEY: json.dumps(document)}
    except ValueError as error:  # a circular reference
        raise CheckpointError(f"train state cannot be written as JSON: {error}") from error


def decode_train_state(
    metadata: Mapping[str, str], tensors: dict[str, torch.Tensor], source: str
) -> TrainState:
    """Invert ``encode_train_state``.

    Args:
        metadata: The safetensors file's metadata.
        tensors: The file's tensors, already on the wanted device.
        source: The file, for error messages.

    Returns:
        The train state; its tensors are those of ``tensors``.

    Raises:
        CheckpointError: The metadata is missing or malformed, or refers to a missing tensor.
    """
    document = metadata.get(_METADATA_KEY)
    if document is None:
        raise CheckpointError(f"{source}: train state metadata missing")
    data = parse_json_object(document, "train state", source)
    check_field_names(data, _FIELDS, "", source)
    try:
        optimizer = _decode(data["optimizer"], tensors, source)
        scheduler = _decode(data["scheduler"], tensors, source)
        extra = _decode(data["extra"], tensors, source)
    except (TypeError, ValueError) as error:  # a malformed marker, e.g. __items__ not pairs
        raise CheckpointError(f"{source}: train state is malformed ({error})") from error
    if not isinstance(optimizer, dict):
        raise CheckpointError(f"{source}: field 'optimizer' must be an object")
    if scheduler is not None and not isinstance(scheduler, dict):
        raise CheckpointError(f"{source}: field 'scheduler' must be an object or null")
    if not isinstance(extra, dict):
        raise CheckpointError(f"{source}: field 'extra' must be an object")
    epoch = as_count(data["epoch"], "epoch", source)
    return TrainState(optimizer=optimizer, scheduler=scheduler, epoch=epoch, extra=extra)


def _encode(value: Any, path: tuple[str, ...], tensors: dict[str, torch.Tensor]) -> Any:
    """Encode ``value`` for JSON, moving its tensors into ``tensors``.

    A tensor's key is its path in the structure, e.g. ``optimizer.state.0.exp_avg``.
    """
    if isinstance(value, torch.Tensor):
        key = ".".join(path)
        if key in tensors:
            raise CheckpointError(f"train state has two tensors named {key}")
        tensors[key] = cpu_contiguous(value)
        return {_TENSOR_TAG: key}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, tuple):
        return {_TUPLE_TAG: [_encode(v, (*path, str(i)), tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, (*path, str(i)), tensors) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        return _encode_mapping(value, path, tensors)
    raise CheckpointError(
        f"train state value {'.'.join(path)} has unsupported type {type(value).__name__}"
    )


def _encode_mapping(
    value: Mapping[Any, Any], path: tuple[str, ...], tensors: dict[str, torch.Tensor]
) -> Any:
    # Functions (e.g. an older OneCycleLR's anneal_func) cannot be stored without pickle.
    # Leaving them out is safe: schedulers set them in __init__, and load_state_dict only
    # updates the keys it is given.
    items = [(k, v) for k, v in value.items() if not callable(v)]
    if len(items) < len(value):
        logger.debug("train state: not storing functions under %s", ".".join(path))
    if all(isinstance(k, str) and k not in _TAGS for k, _ in items):
        return {k: _encode(v, (*path, k), tensors) for k, v in items}
    encoded = []
    for key, item in items:
        if key is not None and not isinstance(key, bool | int | float | str):
            raise CheckpointError(
                f"train state key {key!r} under {'.'.join(path)} has unsupported type"
            )
        encoded.append([key, _encode(item, (*path, str(key)), tensors)])
    return {_ITEMS_TAG: encoded}


def _decode(value: Any, tensors: dict[str, torch.Tensor], source: str) -> Any:
    """Invert ``_encode``."""
    if isinstance(value, list):
        return [_decode(v, tensors, source) for v in value]
    if not isinstance(value, dict):
        return value
    if value.keys() == {_TENSOR_TAG}:
        try:
            return tensors[value[_TENSOR_TAG]]
        except (KeyError, TypeError):
            raise CheckpointError(
                f"{source}: train state refers to missing tensor {value[_TENSOR_TAG]!r}"
            ) from None
    if value.keys() == {_TUPLE_TAG}:
        return tuple(_decode(v, tensors, source) for v in value[_TUPLE_TAG])
    if value.keys() == {_ITEMS_TAG}:
        return {k: _decode(v, tensors, source) for k, v in value[_ITEMS_TAG]}
    return {k: _decode(v, tensors, source) for k, v in value.items()}
