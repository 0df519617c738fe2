"""Fine-tuning: start a run from the weights of a trained checkpoint (its parent).

Transfer learning as in *Deep Learning with Python*: the parent's features are reused, the
classifier is learnt anew when the classes change, and with `freeze_backbone` only the
classifier trains (feature extraction). The driver checks the parent's manifest against the
run before any worker starts (`check_parent`), loads its weights once, pinned to that
manifest, and puts them in Ray's object store (`share_parent`); each worker copies them into
its freshly built model (`start_from_parent`).

The classifier is the model's last `nn.Linear`, which is the last module of every registered
model (a unit test sweeps them).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import ray
import torch
from torch import nn

from raysight.checkpoint import (
    Manifest,
    ParentCheckpoint,
    copy_checkpoint,
    load_checkpoint,
    read_manifest_at,
)
from raysight.cluster import staging_dir
from raysight.errors import CheckpointError, ConfigError
from raysight.models import build_model
from raysight.storage import is_uri

logger = logging.getLogger(__name__)

# Model arguments set by the data rather than by --model-arg.
_DATA_ARGS = frozenset({"in_channels", "num_classes", "image_size"})


@dataclass(frozen=True)
class Parent:
    """The checkpoint a run starts from, checked against the run on the driver."""

    record: ParentCheckpoint  # what the child's manifest records
    manifest: Manifest
    keep_head: bool  # same class names in the same order: the classifier is reused too


@dataclass(frozen=True)
class ParentWeights:
    """What each worker needs to start from the parent (pickled to each worker)."""

    weights: ray.ObjectRef  # dict[str, torch.Tensor]: the parent's state_dict, on the CPU
    keep_head: bool
    record: ParentCheckpoint


def check_parent(
    source: str, model: str, model_kwargs: Mapping[str, Any], class_names: Sequence[str]
) -> Parent:
    """Read the manifest of the checkpoint at `source`, without its weights, and check that
    its weights fit the model this run builds.

    Every tensor must match by name and shape, except the classifier's when the classes
    differ; other architecture arguments (a resnet's image size) may differ freely.

    Args:
        source: A checkpoint directory or an s3:// / gs:// URI.
        model: The registry name of the model this run trains.
        model_kwargs: Its resolved arguments.
        class_names: The classes of this run's data, in label order.

    Returns:
        The parent, pinned by the sha256 of the manifest that was checked.

    Raises:
        ConfigError: the checkpoint cannot be read, is of another model, takes images of
            other channels, or has tensors of other shapes; naming the differing model
            arguments and the flags that match the parent.
    """
    try:
        manifest, sha256 = read_manifest_at(source)
    except CheckpointError as exc:
        raise ConfigError(f"init_from: {exc}") from exc
    if manifest.model != model:
        raise ConfigError(
            f"init_from: {source} holds a {manifest.model}, not a {model}; "
            f"fine-tune it with --model {manifest.model}"
        )
    channels, here = manifest.input_shape[0], model_kwargs["in_channels"]
    if channels != here:
        raise ConfigError(
            f"init_from: {source} takes {channels}-channel images, this run's data has "
            f"{here}; fine-tune it on {channels}-channel images (--channels {channels} for an "
            "image folder)"
        )
    keep_head = manifest.class_names == tuple(class_names)
    child = build_model(model, **model_kwargs, device="meta")
    skip = set() if keep_head else classifier_keys(child)
    wrong = mismatches(_shapes(child.state_dict()), _parent_shapes(manifest, source), skip)
    if wrong:
        raise ConfigError(
            _mismatch_message(source, model, wrong, manifest.model_kwargs, model_kwargs)
        )
    record = ParentCheckpoint(sha256=sha256, source=source, dataset=manifest.dataset)
    return Parent(record=record, manifest=manifest, keep_head=keep_head)


def share_parent(parent: Parent, *, freeze_backbone: bool) -> ParentWeights:
    """Load the parent's weights on the driver, pinned to the manifest `check_parent` read,
    and put them in the object store once, for every worker to fetch.

    Args:
        parent: From `check_parent`.
        freeze_backbone: Whether the run trains the classifier alone (for the log line).

    Raises:
        ConfigError: the checkpoint changed since it was checked, or is damaged.
    """
    source = parent.record.source
    try:
        weights = _load_weights(source, parent.record.sha256)
    except CheckpointError as exc:
        raise ConfigError(f"init_from: {exc}") from exc
    logger.info(
        "fine-tuning from %s (%s, manifest sha256 %s): %s classifier%s",
        source,
        parent.record.dataset,
        parent.record.sha256[:12],
        "its" if parent.keep_head else "a new",
        ", backbone frozen" if freeze_backbone else "",
    )
    return ParentWeights(weights=ray.put(weights), keep_head=parent.keep_head, record=parent.record)


def start_from_parent(model: nn.Module, parent: ParentWeights, *, freeze: bool) -> None:
    """On a worker: copy the parent's weights into a freshly built model, and freeze its
    backbone if asked. Call it before resuming, so that a restarted run's own checkpoint
    is loaded over the parent's weights, and before building the optimizer."""
    transfer_weights(model, ray.get(parent.weights), keep_head=parent.keep_head)
    if freeze:
        freeze_backbone(model)


def classifier_name(model: nn.Module) -> str:
    """The qualified name of the model's classifier: its last `nn.Linear`.

    Raises:
        ConfigError: the model has no `nn.Linear`.
    """
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise ConfigError(f"{type(model).__name__} has no nn.Linear classifier to fine-tune")
    return names[-1]


def classifier_keys(model: nn.Module) -> set[str]:
    """The state_dict keys of the classifier (its weight, and bias when it has one)."""
    name = classifier_name(model)
    return {f"{name}.{key}" for key in model.get_submodule(name).state_dict()}


def mismatches(
    own: Mapping[str, torch.Size], parent: Mapping[str, torch.Size], skip: set[str]
) -> list[str]:
    """What keeps the parent's tensors from filling the model's, one line each.

    Args:
        own: The model's tensor shapes by state_dict key.
        parent: The parent's, likewise.
        skip: Keys that are not copied (a re-initialised classifier's).

    Returns:
        An empty list when every other tensor has a counterpart of the same shape.
    """
    wrong = []
    for name, shape in own.items():
        if name in skip:
            continue
        if name not in parent:
            wrong.append(f"{name} is not in the parent")
        elif parent[name] != shape:
            wrong.append(f"{name} is {list(parent[name])} in the parent, {list(shape)} here")
    wrong.extend(f"{name} is in the parent only" for name in parent if name not in own)
    return wrong


def transfer_weights(
    model: nn.Module, state: Mapping[str, torch.Tensor], *, keep_head: bool
) -> None:
    """Copy every parameter and buffer of `state` into `model`, the classifier's only when
    `keep_head`; otherwise the classifier keeps its fresh initialisation.

    Raises:
        ConfigError: a tensor is missing or of another shape (the driver's check catches
            this first; here it guards callers that skip it).
    """
    skip = set() if keep_head else classifier_keys(model)
    wrong = mismatches(_shapes(model.state_dict()), _shapes(state), skip)
    if wrong:
        raise ConfigError(f"the parent's weights do not fit the model: {'; '.join(wrong)}")
    model.load_state_dict({k: v for k, v in state.items() if k not in skip}, strict=False)


def freeze_backbone(model: nn.Module) -> None:
    """Stop gradients everywhere but in the classifier. DDP leaves parameters without
    `requires_grad` out of its gradient buckets, and `build_optimizer` out of its groups."""
    trainable = classifier_name(model)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith(f"{trainable}."))


class FrozenBackbone(nn.Module):
    """Trains a model with a frozen backbone: `train()` switches only the classifier to
    training mode, and the backbone runs as at inference.

    Without it, the backbone's BatchNorm layers would normalise with each batch's statistics
    and overwrite the parent's running statistics, which a small dataset estimates poorly:
    frozen weights would then see inputs normalised differently from those they learnt on.
    Wrap the model the training steps call (the one DDP wraps); save the inner `model`.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.classifier = classifier_name(model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits `(B, num_classes)` of images `(B, C, H, W)`, as the inner model."""
        logits: torch.Tensor = self.model(x)
        return logits

    def train(self, mode: bool = True) -> Self:
        """Set the classifier's mode to `mode`; the backbone stays in eval mode."""
        super().train(mode)
        self.model.eval()
        self.model.get_submodule(self.classifier).train(mode)
        return self


def _shapes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Size]:
    return {name: tensor.shape for name, tensor in state.items()}


def _parent_shapes(manifest: Manifest, source: str) -> dict[str, torch.Size]:
    """The shapes of the parent's tensors, from its manifest: its model built on the meta
    device, which allocates nothing."""
    try:
        parent = build_model(manifest.model, **manifest.model_kwargs, device="meta")
    except (ConfigError, TypeError) as exc:
        raise ConfigError(f"init_from: cannot rebuild the model of {source} ({exc})") from exc
    return _shapes(parent.state_dict())


def _mismatch_message(
    source: str,
    model: str,
    wrong: list[str],
    parent_kwargs: Mapping[str, Any],
    own_kwargs: Mapping[str, Any],
) -> str:
    """Name the first mismatching tensor, the model arguments behind it and their fix."""
    more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
    message = f"init_from: {source} does not fit this {model}: {wrong[0]}{more}"
    names = _shape_changing(model, parent_kwargs, own_kwargs)
    if not names:
        return message
    differ = ", ".join(
        f"{k} is {parent_kwargs[k]!r} in the parent and {own_kwargs[k]!r} here" for k in names
    )
    fixes = [
        f"--model-arg {k}={_flag_value(parent_kwargs[k])}" for k in names if k not in _DATA_ARGS
    ]
    if "image_size" in names:
        height, width = parent_kwargs["image_size"]
        fixes.append(f"images of its size (--image-size {height} {width} for an image folder)")
    return f"{message}, because {differ}; use the parent's: {', '.join(fixes)}"


def _shape_changing(
    model: str, parent_kwargs: Mapping[str, Any], own_kwargs: Mapping[str, Any]
) -> list[str]:
    """The model arguments whose value differs from the parent's and changes the shapes of
    the model's tensors: those worth naming (a resnet's image_size may differ freely)."""
    own = _shapes(build_model(model, **own_kwargs, device="meta").state_dict())
    names = []
    for name in sorted(parent_kwargs.keys() & own_kwargs.keys() - {"num_classes"}):
        if parent_kwargs[name] == own_kwargs[name]:
            continue
        try:
            reverted = build_model(
                model, **{**own_kwargs, name: parent_kwargs[name]}, device="meta"
            )
        except ConfigError:  # this run's model cannot take the parent's value with the others
            names.append(name)
            continue
        if _shapes(reverted.state_dict()) != own:
            names.append(name)
    return names


def _flag_value(value: Any) -> str:
    """A model argument as `--model-arg KEY=VALUE` reads it back (YAML): [2, 2], same."""
    if isinstance(value, list):
        return "[" + ",".join(map(str, value)) + "]"
    return str(value)


def _load_weights(source: str, sha256: str) -> dict[str, torch.Tensor]:
    """The weights of the checkpoint at `source` whose manifest has `sha256`; a URI is
    copied to local disk first, and the copy removed once loaded."""
    if not is_uri(source):
        return load_checkpoint(source, expected_sha256=sha256).state_dict
    with staging_dir("raysight-parent-") as tmp:
        local = Path(tmp) / "checkpoint"
        local.mkdir()
        copy_checkpoint(source, local)
        return load_checkpoint(local, expected_sha256=sha256).state_dict
