"""Checkpoints: the contract between training and serving.

A checkpoint is a directory holding

* ``model.safetensors``: the model's state_dict;
* ``manifest.json``: everything needed to rebuild and serve the model (``Manifest``),
  including the sha256 of each tensor file;
* ``train_state.safetensors`` (optional): optimizer and scheduler state for resuming.

Nothing is pickled, so loading a checkpoint cannot run code. Saving is atomic: the files are
written to a hidden sibling directory and renamed onto the target, so the target path only
ever holds a complete checkpoint.
"""

import dataclasses
import hashlib
import json
import logging
import math
import os
import secrets
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from safetensors.torch import load as parse_safetensors_bytes  # no pickle: a flat tensor format
from torch import nn

from raysight import __version__
from raysight.errors import CheckpointError, ConfigError
from raysight.models import build_model

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
# The manifest fields each version added after version 1. A reader accepts every version up
# to FORMAT_VERSION and upgrades older manifests when it reads them (an added field reads as
# None); a writer always writes FORMAT_VERSION.
_FIELDS_ADDED_IN: dict[int, frozenset[str]] = {2: frozenset({"class_frequencies"})}
# How far the recorded class frequencies may sum from 1: float64 counts over a dataset sum
# to 1 within a few ulps; a larger gap means the field was edited or computed wrongly.
_FREQUENCY_SUM_TOLERANCE = 1e-6
MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "model.safetensors"
TRAIN_STATE_FILE = "train_state.safetensors"

# The safetensors metadata key holding the JSON part of the train state.
_TRAIN_STATE_METADATA_KEY = "train_state"
# Markers in that JSON for what JSON cannot express directly: a reference to a tensor in the
# file, a tuple (Adam's betas), and a dict with non-string keys (optimizer state is keyed by
# parameter index, and load_state_dict silently drops entries whose keys are strings).
_TENSOR_TAG = "__tensor__"
_TUPLE_TAG = "__tuple__"
_ITEMS_TAG = "__items__"
_TAGS = frozenset({_TENSOR_TAG, _TUPLE_TAG, _ITEMS_TAG})
_TRAIN_STATE_FIELDS = frozenset({"optimizer", "scheduler", "epoch", "extra"})

_SHA256_HEX_LENGTH = 64
_HASH_CHUNK_BYTES = 1 << 20
_SAFETENSORS_LENGTH_BYTES = 8  # the file starts with the header length, a little-endian u64


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
            CheckpointError: The document is not JSON, has an unknown format version, or a
                field is missing, unexpected or of the wrong type. The message names the
                field and ``source``.
        """
        data = _json_object(text, "manifest", source)
        version = _check_format_version(data, source)
        _check_field_names(data, _fields_of_version(cls, version), "", source)
        manifest = cls(
            format_version=FORMAT_VERSION,
            model=_string(data["model"], "model", source),
            model_kwargs=_object(data["model_kwargs"], "model_kwargs", source),
            input_shape=_input_shape(data["input_shape"], source),
            preprocessing=_preprocessing(data["preprocessing"], source),
            class_names=_strings(data["class_names"], "class_names", source),
            class_frequencies=_optional_numbers(
                data.get("class_frequencies"), "class_frequencies", source
            ),
            dataset=_string(data["dataset"], "dataset", source),
            metrics=_metrics(data["metrics"], source),
            train_config=_object(data["train_config"], "train_config", source),
            epoch=_count(data["epoch"], "epoch", source),
            weights_sha256=_sha256_hex(data["weights_sha256"], "weights_sha256", source),
            train_state_sha256=_optional_sha256_hex(data["train_state_sha256"], source),
            raysight_version=_string(data["raysight_version"], "raysight_version", source),
            created_at=_timestamp(data["created_at"], source),
        )
        _check_consistency(manifest, source)
        return manifest


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


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A checkpoint read and verified by ``load_checkpoint``.

    Attributes:
        path: The checkpoint directory.
        manifest: Its manifest.
        state_dict: The model weights.
        train_state: Optimizer and scheduler state, when asked for and present.
    """

    path: Path
    manifest: Manifest
    state_dict: dict[str, torch.Tensor]
    train_state: TrainState | None


def save_checkpoint(
    directory: str | Path,
    *,
    state_dict: Mapping[str, torch.Tensor],
    manifest: Manifest,
    train_state: TrainState | None = None,
    log_level: int = logging.INFO,
) -> Path:
    """Write a checkpoint atomically, replacing any checkpoint already at ``directory``.

    Everything is written and fsynced in a hidden sibling directory, which is then renamed
    onto ``directory``. To replace an existing checkpoint, the old one is first renamed
    aside and removed once the new one is in place, so ``directory`` holds either the old
    checkpoint, the new one, or (after a crash between the two renames) nothing; the old
    one then survives as ``.{name}.old-*`` beside it.

    Args:
        directory: The checkpoint directory to create or replace.
        state_dict: Weights of the unwrapped model (not a DDP wrapper's, whose keys carry a
            ``module.`` prefix).
        manifest: Built with ``Manifest.new``; its hash fields are filled in here.
        train_state: Optimizer and scheduler state for resuming, if wanted.
        log_level: Level of the "saved checkpoint" line; the training loop saves every epoch
            and passes ``logging.DEBUG`` so that its epoch line alone reaches the console.

    Returns:
        The checkpoint directory.

    Raises:
        CheckpointError: The manifest is inconsistent or not serialisable, the weights do
            not fit the model it names, the train state holds an unsupported value, or
            ``directory`` exists and is not a checkpoint.
    """
    target = Path(directory)
    source = str(target)
    # Everything that can be checked is checked before touching the disk.
    _check_consistency(manifest, source)
    manifest.to_json()
    weights = {name: _cpu_contiguous(tensor) for name, tensor in state_dict.items()}
    _rebuild(manifest, weights, source)
    encoded_train_state = None if train_state is None else _encode_train_state(train_state)
    _check_replaceable(target)

    target.parent.mkdir(parents=True, exist_ok=True)
    # mkdir rather than tempfile.mkdtemp, whose mode 0o700 would outlive the rename and hide
    # the checkpoint from a server running as another user.
    staging = target.parent / f".{target.name}.tmp-{secrets.token_hex(8)}"
    staging.mkdir()
    try:
        _write_files(staging, weights, manifest, encoded_train_state)
        _move_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.log(log_level, "saved checkpoint %s (epoch %d)", target, manifest.epoch)
    return target


def read_manifest(directory: str | Path) -> Manifest:
    """Read and validate a checkpoint's manifest without reading the weights.

    Args:
        directory: The checkpoint directory.

    Returns:
        The manifest.

    Raises:
        CheckpointError: The directory or manifest is missing, or the manifest is invalid
            or of a format version this build does not read.
    """
    path = Path(directory)
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint directory not found")
    manifest_path = path / MANIFEST_FILE
    try:
        text = manifest_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointError(f"{manifest_path}: manifest missing") from None
    except (OSError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{manifest_path}: cannot read manifest ({error})") from error
    return Manifest.from_json(text, source=str(manifest_path))


def verify_checkpoint(directory: str | Path) -> Manifest:
    """Check a checkpoint fully: its manifest and the hash of every file it lists.

    Args:
        directory: The checkpoint directory.

    Returns:
        The manifest.

    Raises:
        CheckpointError: Anything ``read_manifest`` rejects, a missing file, or a file
            whose sha256 differs from the manifest's.
    """
    path = Path(directory)
    manifest = read_manifest(path)
    _read_verified(path / WEIGHTS_FILE, manifest.weights_sha256)
    train_state_file = path / TRAIN_STATE_FILE
    if manifest.train_state_sha256 is not None:
        _read_verified(train_state_file, manifest.train_state_sha256)
    elif train_state_file.exists():
        raise CheckpointError(f"{train_state_file}: not recorded in the manifest")
    return manifest


def load_checkpoint(
    directory: str | Path,
    *,
    with_train_state: bool = False,
    map_location: str | torch.device = "cpu",
) -> LoadedCheckpoint:
    """Read and verify a checkpoint.

    Each file is read once, hashed and parsed from the same bytes, so what is loaded is
    exactly what was verified.

    Args:
        directory: The checkpoint directory.
        with_train_state: Also load the optimizer and scheduler state. The result's
            ``train_state`` is None when the checkpoint has none.
        map_location: Device for the loaded tensors.

    Returns:
        The verified checkpoint.

    Raises:
        CheckpointError: Anything ``verify_checkpoint`` rejects, or a file that is not
            valid safetensors.
    """
    path = Path(directory)
    manifest = read_manifest(path)
    weights_file = path / WEIGHTS_FILE
    data = _read_verified(weights_file, manifest.weights_sha256)
    state_dict = _to_device(_parse_safetensors(weights_file, data), map_location)
    train_state = None
    if with_train_state:
        train_state = _load_train_state(path, manifest, map_location)
    logger.info("loaded checkpoint %s (%s, epoch %d)", path, manifest.model, manifest.epoch)
    return LoadedCheckpoint(
        path=path, manifest=manifest, state_dict=state_dict, train_state=train_state
    )


def build_from_checkpoint(loaded: LoadedCheckpoint) -> nn.Module:
    """Rebuild the model of a loaded checkpoint, in eval mode.

    The model is built on the meta device and its parameters are the loaded tensors
    themselves (``load_state_dict(assign=True)``), so nothing is initialised or copied: the
    model lives on the checkpoint's ``map_location`` with the stored dtypes, and shares
    memory with ``loaded.state_dict``.

    Args:
        loaded: Output of ``load_checkpoint``.

    Returns:
        The model in eval mode.

    Raises:
        CheckpointError: The model is unknown to this build, or the weights do not fit it.
    """
    return _rebuild(loaded.manifest, loaded.state_dict, str(loaded.path)).eval()


def _rebuild(manifest: Manifest, state_dict: Mapping[str, torch.Tensor], source: str) -> nn.Module:
    """Build the manifest's model on the meta device and assign ``state_dict`` to it."""
    try:
        model = build_model(manifest.model, **manifest.model_kwargs, device="meta")
    except (ConfigError, TypeError) as error:
        raise CheckpointError(
            f"{source}: cannot rebuild model {manifest.model!r} ({error})"
        ) from error
    try:
        model.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as error:
        raise CheckpointError(
            f"{source}: weights do not match model {manifest.model!r} ({error})"
        ) from error
    # Buffers outside the state_dict (persistent=False) would still be on the meta device.
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise CheckpointError(f"{source}: model {manifest.model!r} has unsaved tensors")
    return model


# --- saving helpers -------------------------------------------------------------------


def _cpu_contiguous(tensor: torch.Tensor) -> torch.Tensor:
    """A detached, contiguous CPU tensor, as safetensors requires."""
    return tensor.detach().cpu().contiguous()


def _write_files(
    staging: Path,
    weights: dict[str, torch.Tensor],
    manifest: Manifest,
    train_state: tuple[dict[str, torch.Tensor], str] | None,
) -> None:
    """Write the tensor files, then the manifest with their hashes, and flush them to disk."""
    safetensors.torch.save_file(weights, staging / WEIGHTS_FILE)
    train_state_sha256 = None
    if train_state is not None:
        tensors, document = train_state
        safetensors.torch.save_file(
            tensors, staging / TRAIN_STATE_FILE, metadata={_TRAIN_STATE_METADATA_KEY: document}
        )
        train_state_sha256 = _sha256_file(staging / TRAIN_STATE_FILE)
    final = dataclasses.replace(
        manifest,
        weights_sha256=_sha256_file(staging / WEIGHTS_FILE),
        train_state_sha256=train_state_sha256,
    )
    (staging / MANIFEST_FILE).write_text(final.to_json(), encoding="utf-8")
    for file in staging.iterdir():
        _fsync(file)
    _fsync(staging)


def _check_replaceable(target: Path) -> None:
    """Refuse to replace anything at ``target`` that is not a checkpoint or empty directory."""
    if not target.exists() and not target.is_symlink():
        return
    if not target.is_dir() or target.is_symlink():
        raise CheckpointError(f"{target}: exists and is not a checkpoint directory")
    if any(target.iterdir()) and not (target / MANIFEST_FILE).is_file():
        raise CheckpointError(f"{target}: exists, is not empty and is not a checkpoint")


def _move_into_place(staging: Path, target: Path) -> None:
    """Rename ``staging`` onto ``target``, replacing a previous checkpoint there."""
    if not target.exists():
        os.replace(staging, target)
    else:
        # rename() cannot replace a non-empty directory, so move the old one aside first.
        aside = target.parent / f".{target.name}.old-{secrets.token_hex(4)}"
        os.replace(target, aside)
        try:
            os.replace(staging, target)
        except BaseException:
            os.replace(aside, target)
            raise
        try:
            shutil.rmtree(aside)
        except OSError as error:  # the new checkpoint is in place; only disk space is lost
            logger.warning("could not remove previous checkpoint %s: %s", aside, error)
    _fsync(target.parent)


def _fsync(path: Path) -> None:
    """Flush a file or directory to disk, so a rename never exposes unwritten data."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


# --- loading helpers ------------------------------------------------------------------


def _read_verified(file: Path, expected_sha256: str) -> bytes:
    """Read ``file`` and check its sha256 against the manifest's."""
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{file}: file missing") from None
    except OSError as error:
        raise CheckpointError(f"{file}: cannot read ({error})") from error
    if hashlib.sha256(data).hexdigest() != expected_sha256:
        raise CheckpointError(
            f"{file}: sha256 hash mismatch with the manifest; the file is modified or incomplete"
        )
    return data


def _parse_safetensors(file: Path, data: bytes) -> dict[str, torch.Tensor]:
    try:
        return parse_safetensors_bytes(data)
    except safetensors.SafetensorError as error:
        raise CheckpointError(f"{file}: not a valid safetensors file ({error})") from error


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file that has already parsed successfully."""
    header_length = int.from_bytes(data[:_SAFETENSORS_LENGTH_BYTES], "little")
    header_end = _SAFETENSORS_LENGTH_BYTES + header_length
    header = json.loads(data[_SAFETENSORS_LENGTH_BYTES:header_end])
    metadata: dict[str, str] = header.get("__metadata__") or {}
    return metadata


def _to_device(
    tensors: dict[str, torch.Tensor], device: str | torch.device
) -> dict[str, torch.Tensor]:
    if torch.device(device).type == "cpu":
        return tensors
    return {name: tensor.to(device) for name, tensor in tensors.items()}


def _load_train_state(
    path: Path, manifest: Manifest, map_location: str | torch.device
) -> TrainState | None:
    file = path / TRAIN_STATE_FILE
    if manifest.train_state_sha256 is None:
        if file.exists():
            raise CheckpointError(f"{file}: not recorded in the manifest")
        return None
    data = _read_verified(file, manifest.train_state_sha256)
    tensors = _to_device(_parse_safetensors(file, data), map_location)
    document = _safetensors_metadata(data).get(_TRAIN_STATE_METADATA_KEY)
    if document is None:
        raise CheckpointError(f"{file}: train state metadata missing")
    return _decode_train_state(document, tensors, str(file))


# --- train state codec ----------------------------------------------------------------


def _encode_train_state(state: TrainState) -> tuple[dict[str, torch.Tensor], str]:
    """Split a train state into tensors (keyed by their path) and a JSON document."""
    _count(state.epoch, "epoch", "train state")
    tensors: dict[str, torch.Tensor] = {}
    document = {
        "optimizer": _encode(state.optimizer, ("optimizer",), tensors),
        "scheduler": _encode(state.scheduler, ("scheduler",), tensors),
        "epoch": state.epoch,
        "extra": _encode(state.extra, ("extra",), tensors),
    }
    try:
        return tensors, json.dumps(document)
    except ValueError as error:  # a circular reference
        raise CheckpointError(f"train state cannot be written as JSON: {error}") from error


def _encode(value: Any, path: tuple[str, ...], tensors: dict[str, torch.Tensor]) -> Any:
    """Encode ``value`` for JSON, moving its tensors into ``tensors``.

    A tensor's key is its path in the structure, e.g. ``optimizer.state.0.exp_avg``.
    """
    if isinstance(value, torch.Tensor):
        key = ".".join(path)
        if key in tensors:
            raise CheckpointError(f"train state has two tensors named {key}")
        tensors[key] = _cpu_contiguous(value)
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


def _decode_train_state(document: str, tensors: dict[str, torch.Tensor], source: str) -> TrainState:
    data = _json_object(document, "train state", source)
    _check_field_names(data, _TRAIN_STATE_FIELDS, "", source)
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
    epoch = _count(data["epoch"], "epoch", source)
    return TrainState(optimizer=optimizer, scheduler=scheduler, epoch=epoch, extra=extra)


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


# --- manifest validation --------------------------------------------------------------


def _json_object(text: str, what: str, source: str) -> dict[str, Any]:
    """Parse a JSON document that must be an object, naming `what` and `source` if not."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{source}: {what} is not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{source}: {what} must be a JSON object")
    return data


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


def _check_field_names(
    data: dict[str, Any], expected: set[str] | frozenset[str], prefix: str, source: str
) -> None:
    missing = sorted(expected - data.keys())
    if missing:
        raise CheckpointError(f"{source}: field '{prefix}{missing[0]}' is missing")
    extra = sorted(data.keys() - expected)
    if extra:
        raise CheckpointError(f"{source}: unexpected field '{prefix}{extra[0]}'")


def _string(value: Any, field: str, source: str) -> str:
    if not isinstance(value, str):
        raise CheckpointError(f"{source}: field {field!r} must be a string")
    return value


def _object(value: Any, field: str, source: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise CheckpointError(f"{source}: field {field!r} must be an object")
    return value


def _count(value: Any, field: str, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CheckpointError(f"{source}: field {field!r} must be a non-negative integer")
    return value


def _number(value: Any, field: str, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CheckpointError(f"{source}: field {field!r} must be a number")
    return float(value)


def _strings(value: Any, field: str, source: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise CheckpointError(f"{source}: field {field!r} must be a list of strings")
    return tuple(value)


def _numbers(value: Any, field: str, source: str) -> tuple[float, ...]:
    if not isinstance(value, list):
        raise CheckpointError(f"{source}: field {field!r} must be a list of numbers")
    return tuple(_number(item, field, source) for item in value)


def _optional_numbers(value: Any, field: str, source: str) -> tuple[float, ...] | None:
    return None if value is None else _numbers(value, field, source)


def _input_shape(value: Any, source: str) -> tuple[int, int, int]:
    if not isinstance(value, list) or len(value) != 3:
        raise CheckpointError(f"{source}: field 'input_shape' must be [C, H, W]")
    channels, height, width = (_count(v, "input_shape", source) for v in value)
    return channels, height, width


def _preprocessing(value: Any, source: str) -> Preprocessing:
    if not isinstance(value, dict):
        raise CheckpointError(f"{source}: field 'preprocessing' must be an object")
    _check_field_names(value, {"mean", "std"}, "preprocessing.", source)
    return Preprocessing(
        mean=_numbers(value["mean"], "preprocessing.mean", source),
        std=_numbers(value["std"], "preprocessing.std", source),
    )


def _metrics(value: Any, source: str) -> dict[str, float]:
    metrics = _object(value, "metrics", source)
    return {name: _number(v, f"metrics.{name}", source) for name, v in metrics.items()}


def _sha256_hex(value: Any, field: str, source: str) -> str:
    if (
        not isinstance(value, str)
        or len(value) != _SHA256_HEX_LENGTH
        or any(c not in "0123456789abcdef" for c in value)
    ):
        raise CheckpointError(f"{source}: field {field!r} must be a lowercase hex sha256")
    return value


def _optional_sha256_hex(value: Any, source: str) -> str | None:
    return None if value is None else _sha256_hex(value, "train_state_sha256", source)


def _timestamp(value: Any, source: str) -> str:
    text = _string(value, "created_at", source)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise CheckpointError(f"{source}: field 'created_at' is not an ISO 8601 time") from None
    if moment.utcoffset() is None:
        raise CheckpointError(f"{source}: field 'created_at' has no time zone")
    return text


def _check_consistency(manifest: Manifest, source: str) -> None:
    """Check the manifest's fields against each other, so serving can rely on them."""
    channels, height, width = manifest.input_shape
    if min(manifest.input_shape) < 1:
        raise CheckpointError(f"{source}: field 'input_shape' must be positive")
    mean, std = manifest.preprocessing.mean, manifest.preprocessing.std
    if len(mean) != channels or len(std) != channels:
        raise CheckpointError(
            f"{source}: field 'preprocessing' needs one mean and one std per channel ({channels})"
        )
    if not all(s > 0 and math.isfinite(s) for s in std):
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
    """One finite, non-negative fraction per class, summing to 1 (or no frequencies at all)."""
    frequencies = manifest.class_frequencies
    if frequencies is None:
        return
    if len(frequencies) != len(manifest.class_names):
        raise CheckpointError(
            f"{source}: field 'class_frequencies' has {len(frequencies)} values "
            f"for {len(manifest.class_names)} classes"
        )
    if not all(math.isfinite(f) and f >= 0 for f in frequencies):
        raise CheckpointError(
            f"{source}: field 'class_frequencies' must hold finite, non-negative fractions"
        )
    total = math.fsum(frequencies)
    if abs(total - 1.0) > _FREQUENCY_SUM_TOLERANCE:
        raise CheckpointError(
            f"{source}: field 'class_frequencies' sums to {total:.6g}; fractions must sum to 1"
        )
