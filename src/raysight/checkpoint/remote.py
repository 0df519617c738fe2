"""Checkpoints at any location: a local directory, or an object-store URI (s3://, gs://).

An object store has no rename, so a checkpoint cannot appear there at once as it does on
disk. It is saved whole on local disk first, then uploaded. What makes a checkpoint
loadable is its manifest: a reader refuses a checkpoint without one, and checks every other
file against the sha256 the manifest lists. So an upload removes the manifest already there
first and writes its own last: meanwhile a reader finds the previous checkpoint, then none,
then the new one, never a mix that loads.
"""

import hashlib
import logging
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import pyarrow.fs
import torch

from raysight import storage
from raysight.checkpoint.files import sha256_file
from raysight.checkpoint.manifest import Manifest
from raysight.checkpoint.store import MANIFEST_FILE, check_replaceable, save_checkpoint
from raysight.errors import CheckpointError, DataError

logger = logging.getLogger(__name__)


def check_destination(location: str) -> None:
    """Refuse a location a checkpoint cannot be saved at, before the work that makes it.

    Args:
        location: A local directory or an object-store URI.

    Raises:
        CheckpointError: The location's scheme cannot be opened, its bucket does not
            exist, or something other than a checkpoint or an empty directory is there.
    """
    filesystem, path = _resolve(location)
    if isinstance(filesystem, pyarrow.fs.LocalFileSystem):
        check_replaceable(Path(path))
        return
    bucket = path.split("/", 1)[0]
    if _info(filesystem, bucket, location).type != pyarrow.fs.FileType.Directory:
        raise CheckpointError(f"{location}: bucket {bucket!r} not found")
    _check_replaceable_remote(filesystem, path, location)


def publish_checkpoint(
    location: str, *, state_dict: Mapping[str, torch.Tensor], manifest: Manifest
) -> str:
    """Save a checkpoint at a local directory or an object-store URI.

    A local directory is written atomically by ``save_checkpoint``. For a URI, the
    checkpoint is saved to a local temporary directory and uploaded, manifest last,
    replacing any checkpoint already there.

    Args:
        location: A local directory or a URI such as ``s3://bucket/runs/mnist``.
        state_dict: Weights of the unwrapped model.
        manifest: Built with ``Manifest.new``.

    Returns:
        Where the checkpoint is: the absolute directory, or ``location`` for a URI.

    Raises:
        CheckpointError: Anything ``save_checkpoint`` or ``check_destination`` refuses, or
            a failed upload; the message then names the local copy, which is kept.
    """
    filesystem, path = _resolve(location)
    if isinstance(filesystem, pyarrow.fs.LocalFileSystem):
        return str(save_checkpoint(path, state_dict=state_dict, manifest=manifest))
    _check_replaceable_remote(filesystem, path, location)
    # Not under the cluster's temp dir: after a failed upload the copy must outlive it.
    staging = Path(tempfile.mkdtemp(prefix="raysight-upload-"))
    try:
        local = save_checkpoint(
            staging / "checkpoint",
            state_dict=state_dict,
            manifest=manifest,
            log_level=logging.DEBUG,  # the line that matters names the URI, below
        )
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        _upload(local, filesystem, path, location)
    except CheckpointError as error:
        # Training may have taken hours; a network error must not throw its result away.
        raise CheckpointError(f"{error}; the checkpoint is kept at {local}") from error
    shutil.rmtree(staging, ignore_errors=True)  # the checkpoint is published either way
    logger.info("saved checkpoint %s (epoch %d)", location, manifest.epoch)
    return location


def manifest_sha256(location: str | Path) -> str:
    """The sha256 of a checkpoint's manifest file, at a local directory or a URI: the
    digest that pins the checkpoint (serving's checkpoint_sha256).

    Raises:
        CheckpointError: the manifest cannot be read.
    """
    text = str(location)
    if not storage.is_uri(text):
        return sha256_file(Path(text) / MANIFEST_FILE)
    return hashlib.sha256(_manifest_bytes(text)).hexdigest()


def read_manifest_at(location: str) -> tuple[Manifest, str]:
    """Read and validate the manifest of the checkpoint at a local directory or a URI,
    without its weights.

    Returns:
        The manifest and the sha256 of the bytes it was parsed from: the digest that pins
        this checkpoint (``load_checkpoint(..., expected_sha256=)`` then loads exactly it).

    Raises:
        CheckpointError: the manifest is missing, unreadable or invalid.
    """
    data = _manifest_bytes(location)
    source = f"{location.rstrip('/')}/{MANIFEST_FILE}"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CheckpointError(f"{source}: cannot read manifest ({error})") from error
    return Manifest.from_json(text, source), hashlib.sha256(data).hexdigest()


def copy_checkpoint(uri: str, local: Path) -> None:
    """Copy the checkpoint at an object-store URI into the empty local directory ``local``,
    to be checked and loaded there.

    Raises:
        CheckpointError: the URI cannot be opened or copied, or nothing is there.
    """
    try:
        filesystem, path = storage.resolve(uri)
    except Exception as exc:  # a malformed URI or missing credentials
        raise CheckpointError(f"cannot open checkpoint {uri}: {exc}") from exc
    try:
        pyarrow.fs.copy_files(
            path,
            str(local),
            source_filesystem=filesystem,
            destination_filesystem=pyarrow.fs.LocalFileSystem(),
        )
    except OSError as exc:
        raise CheckpointError(f"cannot copy checkpoint {uri}: {exc}") from exc
    if not any(local.iterdir()):
        raise CheckpointError(f"checkpoint {uri}: no such checkpoint (nothing at that URI)")


def _manifest_bytes(location: str) -> bytes:
    """The manifest file of the checkpoint at a local directory or a URI, byte for byte."""
    filesystem, path = _resolve(location)
    try:
        with filesystem.open_input_stream(f"{path.rstrip('/')}/{MANIFEST_FILE}") as stream:
            data: bytes = stream.read()
    except FileNotFoundError:
        raise CheckpointError(
            f"{location}: no checkpoint there ({MANIFEST_FILE} not found)"
        ) from None
    except OSError as error:
        raise CheckpointError(f"{location}: cannot read its {MANIFEST_FILE} ({error})") from error
    return data


def _resolve(location: str) -> tuple[pyarrow.fs.FileSystem, str]:
    try:
        return storage.resolve(location)
    except DataError as error:
        raise CheckpointError(
            f"{error}; a checkpoint goes to a local directory or an s3:// or gs:// URI"
        ) from error


def _info(filesystem: pyarrow.fs.FileSystem, path: str, location: str) -> pyarrow.fs.FileInfo:
    try:
        return filesystem.get_file_info(path)
    except OSError as error:  # no credentials, no network, no permission
        raise CheckpointError(f"{location}: cannot reach this location ({error})") from error


def _check_replaceable_remote(filesystem: pyarrow.fs.FileSystem, path: str, location: str) -> None:
    """As ``check_replaceable``: only a checkpoint or nothing may be replaced."""
    info = _info(filesystem, path, location)
    if info.type == pyarrow.fs.FileType.NotFound:
        return
    if info.type != pyarrow.fs.FileType.Directory:
        raise CheckpointError(f"{location}: exists and is not a checkpoint directory")
    try:
        entries = filesystem.get_file_info(pyarrow.fs.FileSelector(path))
    except OSError as error:
        raise CheckpointError(f"{location}: cannot list ({error})") from error
    names = {entry.base_name for entry in entries}
    if names and MANIFEST_FILE not in names:
        raise CheckpointError(f"{location}: exists, is not empty and is not a checkpoint")


def _upload(local: Path, filesystem: pyarrow.fs.FileSystem, path: str, location: str) -> None:
    """Replace whatever is at ``path`` with the files of ``local``, manifest last."""
    manifest_path = f"{path}/{MANIFEST_FILE}"
    names = sorted(file.name for file in local.iterdir() if file.name != MANIFEST_FILE)
    try:
        # Without its manifest the previous checkpoint no longer loads, so its files may go.
        if _info(filesystem, manifest_path, location).type == pyarrow.fs.FileType.File:
            filesystem.delete_file(manifest_path)
        # A previous train_state.safetensors would otherwise outlive its manifest.
        filesystem.delete_dir_contents(path, missing_dir_ok=True)
        for name in [*names, MANIFEST_FILE]:
            pyarrow.fs.copy_files(
                str(local / name),
                f"{path}/{name}",
                source_filesystem=pyarrow.fs.LocalFileSystem(),
                destination_filesystem=filesystem,
            )
    except OSError as error:
        raise CheckpointError(f"{location}: cannot upload the checkpoint ({error})") from error
