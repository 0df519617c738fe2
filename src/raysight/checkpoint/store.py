"""Checkpoints on disk: save atomically, read the manifest, verify hashes, load, rebuild.

Saving writes every file into a hidden sibling directory, fsyncs it and renames it onto the
target, so the target path only ever holds a complete checkpoint. Loading reads each file
once, and hashes and parses the same bytes, so what is loaded is exactly what was verified.
"""

import dataclasses
import hashlib
import logging
import os
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch
from torch import nn

from raysight.checkpoint.files import (
    cpu_contiguous,
    fsync,
    parse_safetensors,
    read_verified,
    safetensors_metadata,
    sha256_file,
    to_device,
)
from raysight.checkpoint.manifest import Manifest, check_manifest
from raysight.checkpoint.train_state import TrainState, decode_train_state, encode_train_state
from raysight.errors import CheckpointError, ConfigError
from raysight.models import build_model
from raysight.storage import is_uri

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "model.safetensors"
TRAIN_STATE_FILE = "train_state.safetensors"


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
        CheckpointError: The manifest holds a number that is not finite (a NaN metric of a
            diverged run), is inconsistent or not serialisable, the weights do not fit the
            model it names, the train state holds an unsupported value, or ``directory``
            exists and is not a checkpoint or is a URI.
    """
    if isinstance(directory, str) and is_uri(directory):
        # Path() would read "s3://bucket/x" as the local folders "s3:/bucket/x".
        raise CheckpointError(
            f"{directory}: save_checkpoint writes local directories; "
            "publish_checkpoint writes to object stores"
        )
    target = Path(directory)
    source = str(target)
    # Everything that can be checked is checked before touching the disk.
    check_manifest(manifest, source)
    manifest.to_json()
    weights = {name: cpu_contiguous(tensor) for name, tensor in state_dict.items()}
    _rebuild(manifest, weights, source)
    encoded_train_state = None if train_state is None else encode_train_state(train_state)
    check_replaceable(target)

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


def read_manifest(directory: str | Path, *, expected_sha256: str = "") -> Manifest:
    """Read and validate a checkpoint's manifest without reading the weights.

    Args:
        directory: The checkpoint directory.
        expected_sha256: When not empty, the sha256 the manifest file must have (a pin). The
            manifest lists the sha256 of every other file, so a pinned manifest pins the
            whole checkpoint, the way an image digest pins every layer of a container image.

    Returns:
        The manifest.

    Raises:
        CheckpointError: The directory or manifest is missing, the manifest is invalid, of
            a format version this build does not read, or not the pinned one.
    """
    path = Path(directory)
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint directory not found")
    manifest_path = path / MANIFEST_FILE
    try:
        data = manifest_path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{manifest_path}: manifest missing") from None
    except OSError as error:
        raise CheckpointError(f"{manifest_path}: cannot read manifest ({error})") from error
    if expected_sha256:
        _check_pin(data, expected_sha256, str(manifest_path))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CheckpointError(f"{manifest_path}: cannot read manifest ({error})") from error
    return Manifest.from_json(text, source=str(manifest_path))


def _check_pin(manifest: bytes, expected_sha256: str, source: str) -> None:
    """Refuse a manifest whose sha256 is not the pinned one.

    Raises:
        CheckpointError: naming both digests.
    """
    found = hashlib.sha256(manifest).hexdigest()
    if found != expected_sha256.lower():
        raise CheckpointError(
            f"{source}: sha256 is {found}, not the pinned {expected_sha256.lower()}; "
            "the checkpoint at this path is not the one the configuration names"
        )


def verify_checkpoint(directory: str | Path, *, expected_sha256: str = "") -> Manifest:
    """Check a checkpoint fully: its manifest and the hash of every file it lists.

    Args:
        directory: The checkpoint directory.
        expected_sha256: The manifest's pinned sha256, or empty (see ``read_manifest``).

    Returns:
        The manifest.

    Raises:
        CheckpointError: Anything ``read_manifest`` rejects, a missing file, or a file
            whose sha256 differs from the manifest's.
    """
    path = Path(directory)
    manifest = read_manifest(path, expected_sha256=expected_sha256)
    read_verified(path / WEIGHTS_FILE, manifest.weights_sha256)
    train_state_file = path / TRAIN_STATE_FILE
    if manifest.train_state_sha256 is not None:
        read_verified(train_state_file, manifest.train_state_sha256)
    elif train_state_file.exists():
        raise CheckpointError(f"{train_state_file}: not recorded in the manifest")
    return manifest


def load_checkpoint(
    directory: str | Path,
    *,
    with_train_state: bool = False,
    map_location: str | torch.device = "cpu",
    expected_sha256: str = "",
) -> LoadedCheckpoint:
    """Read and verify a checkpoint.

    Each file is read once, hashed and parsed from the same bytes, so what is loaded is
    exactly what was verified.

    Args:
        directory: The checkpoint directory.
        with_train_state: Also load the optimizer and scheduler state. The result's
            ``train_state`` is None when the checkpoint has none.
        map_location: Device for the loaded tensors.
        expected_sha256: The manifest's pinned sha256, or empty (see ``read_manifest``).

    Returns:
        The verified checkpoint.

    Raises:
        CheckpointError: Anything ``verify_checkpoint`` rejects, or a file that is not
            valid safetensors.
    """
    path = Path(directory)
    manifest = read_manifest(path, expected_sha256=expected_sha256)
    weights_file = path / WEIGHTS_FILE
    data = read_verified(weights_file, manifest.weights_sha256)
    state_dict = to_device(parse_safetensors(weights_file, data), map_location)
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


def _write_files(
    staging: Path,
    weights: dict[str, torch.Tensor],
    manifest: Manifest,
    train_state: tuple[dict[str, torch.Tensor], dict[str, str]] | None,
) -> None:
    """Write the tensor files, then the manifest with their hashes, and flush them to disk."""
    safetensors.torch.save_file(weights, staging / WEIGHTS_FILE)
    train_state_sha256 = None
    if train_state is not None:
        tensors, metadata = train_state
        safetensors.torch.save_file(tensors, staging / TRAIN_STATE_FILE, metadata=metadata)
        train_state_sha256 = sha256_file(staging / TRAIN_STATE_FILE)
    final = dataclasses.replace(
        manifest,
        weights_sha256=sha256_file(staging / WEIGHTS_FILE),
        train_state_sha256=train_state_sha256,
    )
    (staging / MANIFEST_FILE).write_text(final.to_json(), encoding="utf-8")
    for file in staging.iterdir():
        fsync(file)
    fsync(staging)


def check_replaceable(target: Path) -> None:
    """Refuse to replace anything at ``target`` that is not a checkpoint or empty directory.

    Raises:
        CheckpointError: naming ``target`` and what is there.
    """
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
    fsync(target.parent)


# --- loading helpers ------------------------------------------------------------------


def _load_train_state(
    path: Path, manifest: Manifest, map_location: str | torch.device
) -> TrainState | None:
    file = path / TRAIN_STATE_FILE
    if manifest.train_state_sha256 is None:
        if file.exists():
            raise CheckpointError(f"{file}: not recorded in the manifest")
        return None
    data = read_verified(file, manifest.train_state_sha256)
    tensors = to_device(parse_safetensors(file, data), map_location)
    return decode_train_state(safetensors_metadata(data), tensors, str(file))
