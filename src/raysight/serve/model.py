"""The served model: a loaded checkpoint, its identity, and the OIP view of its tensors."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raysight.checkpoint import copy_checkpoint, load_checkpoint
from raysight.checkpoint.signing import SIGNATURE_FILE, verify_signature
from raysight.cluster import staging_dir
from raysight.engine import Engine
from raysight.errors import CheckpointError
from raysight.serve.settings import CheckpointTrust

logger = logging.getLogger(__name__)

INPUT_NAME = "images"
"""The one OIP input: [-1, C, H, W], FP32 already normalised or UINT8 raw pixels."""


@dataclass(frozen=True)
class ServedModel:
    """A checkpoint loaded on a device, with the names clients address it by."""

    engine: Engine
    name: str
    version: str  # the first 12 hex digits of the weights' sha256: changes with every swap
    checkpoint: str

    @property
    def input_shape(self) -> tuple[int, int, int]:
        channels, height, width = self.engine.manifest.input_shape
        return channels, height, width

    @property
    def num_classes(self) -> int:
        return len(self.engine.class_names)

    def run(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Forward a normalised (B, C, H, W) float32 batch; (B, K) logits and probabilities."""
        logits = self.engine.logits(inputs)
        return {"logits": logits, "probabilities": softmax(logits)}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (B, K) logits, stable for large values."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


def resolve_device(setting: str) -> str:
    """The torch device of a `device` setting: "auto" is cuda when this process has a GPU."""
    if setting != "auto":
        return setting
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


NO_TRUST_CHECKS = CheckpointTrust()
"""No pin, no signature: the checkpoint's own hashes only."""


def load_served_model(
    checkpoint: str, name: str, device: str, trust: CheckpointTrust = NO_TRUST_CHECKS
) -> ServedModel:
    """Load and verify `checkpoint` (a directory or an s3:// / gs:// URI).

    A checkpoint whose signature is checked is first copied to a private directory and
    checked and loaded from there, so the files that load are the files that verified.

    Raises:
        CheckpointError: missing, corrupted, truncated, of an unknown format, not the
            pinned checkpoint, or not signed as `trust` requires.
    """
    if "://" in checkpoint:
        engine = _load_remote(checkpoint, device, trust)
    elif trust.signer:
        with staging_dir("raysight-ckpt-") as tmp:
            local = Path(tmp) / "checkpoint"
            try:
                shutil.copytree(checkpoint, local)
            except FileNotFoundError:
                raise CheckpointError(f"{checkpoint}: checkpoint directory not found") from None
            except OSError as exc:
                raise CheckpointError(f"cannot copy checkpoint {checkpoint}: {exc}") from exc
            engine = _load_checked(local, device, trust)
    else:
        engine = Engine(load_checkpoint(checkpoint, expected_sha256=trust.sha256), device)
    manifest = engine.manifest
    served = ServedModel(
        engine=engine,
        name=name or f"{manifest.model}-{manifest.dataset}",
        version=manifest.weights_sha256[:12],
        checkpoint=checkpoint,
    )
    logger.info(
        "serving %s version %s from %s on %s",
        served.name,
        served.version,
        checkpoint,
        engine.device,
    )
    return served


def check_signature(directory: str | Path, trust: CheckpointTrust) -> None:
    """Check a checkpoint directory's signature as `trust` says: verified when a signer is
    trusted and the checkpoint is signed or must be; an unsigned one otherwise only warned
    about.

    Raises:
        CheckpointError: unsigned where a signature is required, or wrongly signed.
    """
    if not trust.signer:
        return
    if trust.require_signature or (Path(directory) / SIGNATURE_FILE).is_file():
        verify_signature(directory, trust.signer)
    else:
        logger.warning("checkpoint is unsigned; serving it (require_signature is off)")


def _load_checked(local: Path, device: str, trust: CheckpointTrust) -> Engine:
    """Check the signature of a private copy as `trust` says, then load it."""
    check_signature(local, trust)
    return Engine(load_checkpoint(local, expected_sha256=trust.sha256), device)


def _load_remote(uri: str, device: str, trust: CheckpointTrust) -> Engine:
    """Copy an object-store checkpoint to local disk, then check and load it there."""
    with staging_dir("raysight-ckpt-") as tmp:
        local = Path(tmp) / "checkpoint"
        local.mkdir()
        copy_checkpoint(uri, local)
        return _load_checked(local, device, trust)
