"""File mechanics under a checkpoint: fsync, sha256, and safetensors bytes without pickle."""

import hashlib
import json
import os
from pathlib import Path

import safetensors
import torch
from safetensors.torch import load as parse_safetensors_bytes  # no pickle: a flat tensor format

from raysight.errors import CheckpointError

_HASH_CHUNK_BYTES = 1 << 20
_SAFETENSORS_LENGTH_BYTES = 8  # the file starts with the header length, a little-endian u64


def cpu_contiguous(tensor: torch.Tensor) -> torch.Tensor:
    """A detached, contiguous CPU tensor, as safetensors requires."""
    return tensor.detach().cpu().contiguous()


def fsync(path: Path) -> None:
    """Flush a file or directory to disk, so a rename never exposes unwritten data."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def read_verified(file: Path, expected_sha256: str) -> bytes:
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


def parse_safetensors(file: Path, data: bytes) -> dict[str, torch.Tensor]:
    try:
        return parse_safetensors_bytes(data)
    except safetensors.SafetensorError as error:
        raise CheckpointError(f"{file}: not a valid safetensors file ({error})") from error


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file that has already parsed successfully."""
    header_length = int.from_bytes(data[:_SAFETENSORS_LENGTH_BYTES], "little")
    header_end = _SAFETENSORS_LENGTH_BYTES + header_length
    header = json.loads(data[_SAFETENSORS_LENGTH_BYTES:header_end])
    metadata: dict[str, str] = header.get("__metadata__") or {}
    return metadata


def to_device(
    tensors: dict[str, torch.Tensor], device: str | torch.device
) -> dict[str, torch.Tensor]:
    if torch.device(device).type == "cpu":
        return tensors
    return {name: tensor.to(device) for name, tensor in tensors.items()}
