"""The manifest: a checkpoint's description, its schema and its validation.

``manifest.json`` holds everything serving needs besides the weights: the model and its
arguments, the input shape, the preprocessing, the class names and frequencies, the metrics,
the training config, the checkpoint it was fine-tuned from, and the sha256 of each tensor
file. Reading it is strict: an unknown
format version, a missing or unexpected field, a wrong type, a number that is not finite or
fields that contradict each other are errors that name the field and the file.
"""

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from raysight import __version__
from raysight.checkpoint.fields import (
    as_count,
    as_number,
    as_numbers,
    as_object,
    as_optional_numbers,
    as_sha256_hex,
    as_string,
    as_strings,
    check_field_names,
    check_finite,
    parse_json_object,
)
from raysight.errors import CheckpointError

FORMAT_VERSION = 3
# The manifest fields each version added after version 1. A reader accepts every version up
# to FORMAT_VERSION and upgrades older manifests when it reads them (an added field reads as
# None); a writer always writes FORMAT_VERSION.
_FIELDS_ADDED_IN: dict[int, frozenset[str]] = {
    2: frozenset({"class_frequencies"}),
    3: frozenset({"parent"}),
}
# How far the recorded class frequencies may sum from 1: float64 counts over a dataset sum
# to 1 within a few ulps; a larger gap means the field was edited or computed wrongly.
_FREQUENCY_SUM_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Preprocessing:
    """Input normalisation the model was trained with.

    Attributes:
        mean: Per-channel mean, in [0, 1] pixel units.
        std: Per-channel standard deviation, in [0, 1] pixel units.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class ParentCheckpoint:
    """The checkpoint whose weights a fine-tuned model started from.

    Attributes:
        sha256: sha256 of the parent's ``manifest.json``: the digest that pins it (the
            manifest lists the hash of every other file), as serving's checkpoint_sha256.
        source: Where the parent was read from, as given: a directory or a URI.
        dataset: What the parent was trained on, so the lineage reads without the parent.
    """

    sha256: str
    source: str
    dataset: str


@dataclass(frozen=True)
class Manifest:
    """Description of a checkpoint, stored as ``manifest.json``.

    Build one with ``Manifest.new``; ``save_checkpoint`` fills in the file hashes.

    Attributes:
        format_version: Version of the checkpoint layout; readers refuse versions they
            do not know. Always ``FORMAT_VERSION`` in memory: an older manifest is
            upgraded when read, and written back at the current version.
        model: Registry name of the model.
        model_kwargs: Resolved arguments; ``build_model(model, **model_kwargs)`` rebuilds it.
        input_shape: ``(C, H, W)`` the model expects.
        preprocessing: Normalisation applied to ``[0, 1]`` pixels before the model.
        class_names: Label of each output logit, in order.
        class_frequencies: Fraction of the training samples in each class, in
            ``class_names`` order, summing to 1. Counted over the split the weights were
            trained on, after the validation hold-out was taken out of it (and after
            ``limit_train``). Serving exports it as each class's prior, the baseline a
            drift alert compares the predicted classes against. None for checkpoints
            written before format version 2 and for checkpoints saved without it.
        dataset: Name of the training dataset.
        metrics: Evaluation metrics of these weights, e.g. ``{"val_accuracy": 0.99}``.
        train_config: The resolved training configuration.
        parent: The checkpoint these weights were fine-tuned from; None when they were
            trained from scratch, and for checkpoints written before format version 3.
        epoch: Epochs completed when the checkpoint was taken.
        weights_sha256: sha256 of ``model.safetensors``.
        train_state_sha256: sha256 of ``train_state.safetensors``, None when absent.
        raysight_version: Version of raysight that wrote the checkpoint.
        created_at: ISO 8601 UTC time of creation.
    """

    format_version: int
    model: str
    model_kwargs: dict[str, Any]
    input_shape: tuple[int, int, int]
    preprocessing: Preprocessing
    class_names: tuple[str, ...]
    class_frequencies: tuple[float, ...] | None
    dataset: str
    metrics: dict[str, float]
    train_config: dict[str, Any]
    parent: ParentCheckpoint | None
    epoch: int
    weights_sha256: str
    train_state_sha256: str | None
    raysight_version: str
    created_at: str

    @classmethod
    def new(
        cls,
        *,
        model: str,
        model_kwargs: Mapping[str, Any],
        input_shape: tuple[int, int, int],
        preprocessing: Preprocessing,
        class_names: tuple[str, ...] | list[str],
        dataset: str,
        metrics: Mapping[str, float],
        train_config: Mapping[str, Any],
        epoch: int,
        class_frequencies: Sequence[float] | None = None,
        parent: ParentCheckpoint | None = None,
    ) -> "Manifest":
        """Create a manifest stamped with this version and the current time.

        The hashes are left empty; ``save_checkpoint`` computes them from the written files.

        Args:
            model: Registry name of the model.
            model_kwargs: Output of ``raysight.models.resolve_kwargs``.
            input_shape: ``(C, H, W)`` the model expects.
            preprocessing: Normalisation used in training.
            class_names: Label of each output logit, in order.
            dataset: Name of the training dataset.
            metrics: Evaluation metrics of these weights.
            train_config: The resolved, JSON-serialisable training configuration.
            epoch: Epochs completed.
            class_frequencies: Fraction of the training samples in each class, in
                ``class_names`` order; None when unknown.
            parent: The checkpoint the weights were fine-tuned from, if any.

        Returns:
            The manifest, ready to pass to ``save_checkpoint``.
        """
        return cls(
            format_version=FORMAT_VERSION,
            model=model,
            model_kwargs=dict(model_kwargs),
            input_shape=(input_shape[0], input_shape[1], input_shape[2]),
            preprocessing=preprocessing,
            class_names=tuple(class_names),
            class_frequencies=(
                None if class_frequencies is None else tuple(map(float, class_frequencies))
            ),
            dataset=dataset,
            metrics=dict(metrics),
            train_config=dict(train_config),
            parent=parent,
            epoch=epoch,
            weights_sha256="",
            train_state_sha256=None,
            raysight_version=__version__,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )

    def to_json(self) -> str:
        """Serialise to indented, standard JSON (no NaN or infinity).

        Raises:
            CheckpointError: A field holds a value JSON cannot represent.
        """
        try:
            return json.dumps(dataclasses.asdict(self), indent=2, allow_nan=False) + "\n"
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"manifest cannot be written as JSON: {error}") from error

    @classmethod
    def from_json(cls, text: str, source: str) -> "Manifest":
        """Parse a manifest strictly.

        Args:
            text: The JSON document.
            source: Where it came from (a path), for error messages.

        Returns:
            The manifest.

        Raises:
            CheckpointError: The document is not JSON, has an unknown format version, a
                field is missing, unexpected or of the wrong type, a number is NaN or
                infinite, or fields contradict each other. The message names the field
                and ``source``.
        """
        data = parse_json_object(text, "manifest", source)
        version = _check_format_version(data, source)
        check_field_names(data, _fields_of_version(cls, version), "", source)
        manifest = cls(
            format_version=FORMAT_VERSION,
            model=as_string(data["model"], "model", source),
            model_kwargs=as_object(data["model_kwargs"], "model_kwargs", source),
            input_shape=_input_shape(data["input_shape"], source),
            preprocessing=_preprocessing(data["preprocessing"], source),
            class_names=as_strings(data["class_names"], "class_names", source),
            class_frequencies=as_optional_numbers(
                data.get("class_frequencies"), "class_frequencies", source
            ),
            dataset=as_string(data["dataset"], "dataset", source),
            metrics=_metrics(data["metrics"], source),
            train_config=as_object(data["train_config"], "train_config", source),
            parent=_parent(data.get("parent"), source),
            epoch=as_count(data["epoch"], "epoch", source),
            weights_sha256=as_sha256_hex(data["weights_sha256"], "weights_sha256", source),
            train_state_sha256=_optional_sha256_hex(data["train_state_sha256"], source),
            raysight_version=as_string(data["raysight_version"], "raysight_version", source),
            created_at=_timestamp(data["created_at"], source),
        )
        check_manifest(manifest, source)
        return manifest


def check_manifest(manifest: Manifest, source: str) -> None:
    """Check what the field readers cannot: that every number is finite and that the fields
    agree with each other, so serving can rely on them.

    Run on load and before a save, so that a manifest that would not load is never written.

    Raises:
        CheckpointError: naming the field and ``source``.
    """
    check_finite(dataclasses.asdict(manifest), source)
    _check_consistency(manifest, source)


def _check_consistency(manifest: Manifest, source: str) -> None:
    """Check the manifest's fields against each other; every number is already finite."""
    channels, height, width = manifest.input_shape
    if min(manifest.input_shape) < 1:
        raise CheckpointError(f"{source}: field 'input_shape' must be positive")
    mean, std = manifest.preprocessing.mean, manifest.preprocessing.std
    if len(mean) != channels or len(std) != channels:
        raise CheckpointError(
            f"{source}: field 'preprocessing' needs one mean and one std per channel ({channels})"
        )
    if not all(s > 0 for s in std):
        raise CheckpointError(f"{source}: field 'preprocessing.std' must be positive")
    _check_class_frequencies(manifest, source)
    kwargs = manifest.model_kwargs
    expected = {
        "num_classes": len(manifest.class_names),
        "in_channels": channels,
        "image_size": [height, width],
    }
    for name, value in expected.items():
        stored = kwargs.get(name, value)
        if (list(stored) if isinstance(stored, tuple) else stored) != value:
            raise CheckpointError(
                f"{source}: field 'model_kwargs.{name}' is {stored!r}, "
                f"but the manifest implies {value!r}"
            )


def _check_class_frequencies(manifest: Manifest, source: str) -> None:
    """One non-negative fraction per class, summing to 1 (or no frequencies at all)."""
    frequencies = manifest.class_frequencies
    if frequencies is None:
        return
    if len(frequencies) != len(manifest.class_names):
        raise CheckpointError(
            f"{source}: field 'class_frequencies' has {len(frequencies)} values "
            f"for {len(manifest.class_names)} classes"
        )
    if not all(f >= 0 for f in frequencies):
        raise CheckpointError(
            f"{source}: field 'class_frequencies' must hold non-negative fractions"
        )
    total = math.fsum(frequencies)
    if abs(total - 1.0) > _FREQUENCY_SUM_TOLERANCE:
        raise CheckpointError(
            f"{source}: field 'class_frequencies' sums to {total:.6g}; fractions must sum to 1"
        )


# --- reading manifest.json ------------------------------------------------------------


def _check_format_version(data: dict[str, Any], source: str) -> int:
    """Reject a manifest this build cannot read, before looking at any other field.

    Returns:
        The manifest's format version, between 1 and ``FORMAT_VERSION``.
    """
    if "format_version" not in data:
        raise CheckpointError(f"{source}: field 'format_version' is missing")
    version = data["format_version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"{source}: field 'format_version' must be an integer")
    if not 1 <= version <= FORMAT_VERSION:
        raise CheckpointError(
            f"{source}: unknown checkpoint format version {version}; "
            f"this build of raysight reads versions 1 to {FORMAT_VERSION}"
        )
    return version


def _fields_of_version(cls: type[Manifest], version: int) -> set[str]:
    """The manifest fields a document of format ``version`` holds."""
    later = {name for v, names in _FIELDS_ADDED_IN.items() if v > version for name in names}
    return {f.name for f in dataclasses.fields(cls)} - later


def _input_shape(value: Any, source: str) -> tuple[int, int, int]:
    if not isinstance(value, list) or len(value) != 3:
        raise CheckpointError(f"{source}: field 'input_shape' must be [C, H, W]")
    channels, height, width = (as_count(v, "input_shape", source) for v in value)
    return channels, height, width


def _preprocessing(value: Any, source: str) -> Preprocessing:
    if not isinstance(value, dict):
        raise CheckpointError(f"{source}: field 'preprocessing' must be an object")
    check_field_names(value, {"mean", "std"}, "preprocessing.", source)
    return Preprocessing(
        mean=as_numbers(value["mean"], "preprocessing.mean", source),
        std=as_numbers(value["std"], "preprocessing.std", source),
    )


def _parent(value: Any, source: str) -> ParentCheckpoint | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise CheckpointError(f"{source}: field 'parent' must be an object or null")
    check_field_names(value, {"sha256", "source", "dataset"}, "parent.", source)
    return ParentCheckpoint(
        sha256=as_sha256_hex(value["sha256"], "parent.sha256", source),
        source=as_string(value["source"], "parent.source", source),
        dataset=as_string(value["dataset"], "parent.dataset", source),
    )


def _metrics(value: Any, source: str) -> dict[str, float]:
    metrics = as_object(value, "metrics", source)
    return {name: as_number(v, f"metrics.{name}", source) for name, v in metrics.items()}


def _optional_sha256_hex(value: Any, source: str) -> str | None:
    return None if value is None else as_sha256_hex(value, "train_state_sha256", source)


def _timestamp(value: Any, source: str) -> str:
    text = as_string(value, "created_at", source)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise CheckpointError(f"{source}: field 'created_at' is not an ISO 8601 time") from None
    if moment.utcoffset() is None:
        raise CheckpointError(f"{source}: field 'created_at' has no time zone")
    return text
