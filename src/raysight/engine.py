"""Inference on a checkpoint: numpy in, numpy out, torch inside.

The engine knows nothing of gRPC or Ray, so it serves the CLI, evaluation and the Serve
deployment alike.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from raysight.checkpoint import LoadedCheckpoint, Manifest, build_from_checkpoint, load_checkpoint
from raysight.data.transforms import normalize
from raysight.errors import InputError

logger = logging.getLogger(__name__)


def _owned(array: np.ndarray, dtype: type[np.generic] | None = None) -> np.ndarray:
    """`array` as C-contiguous, writable `dtype`, copied only when it is not already.

    torch refuses to share memory it may not write (an array mapped from Ray's object store,
    or over a request's bytes) without a warning; a copy of such a batch costs far less than
    the forward pass.
    """
    return np.require(array, dtype=dtype or array.dtype, requirements=["C", "W"])


class Engine:
    """A checkpoint's model on one device, ready for batches."""

    def __init__(self, checkpoint: LoadedCheckpoint, device: str | torch.device = "cpu") -> None:
        self.manifest: Manifest = checkpoint.manifest
        self.device = torch.device(device)
        # Channels-last (NHWC) convolution weights, as training uses: oneDNN's and cuDNN's
        # convolutions run NHWC natively. Measured on CPU, 1 thread, against NCHW: 1.4-3.5x
        # for the MNIST convnet (batches of 1-32), 2.3-2.4x for catsdogs, 1.01-1.28x for the
        # ResNets, logits equal to 1e-7 (bench/engine_layout.py). NCHW inputs stay as they come:
        # the first convolution's output follows its weight's layout.
        self.model = (
            build_from_checkpoint(checkpoint)
            .to(self.device, memory_format=torch.channels_last)  # type: ignore[call-overload]
            .eval()
        )
        self._mean = self.manifest.preprocessing.mean
        self._std = self.manifest.preprocessing.std
        # (x / 255 - mean) / std as one multiply-add per pixel: scale and shift (1, C, 1, 1).
        std = np.asarray(self._std, dtype=np.float64).reshape(1, -1, 1, 1)
        mean = np.asarray(self._mean, dtype=np.float64).reshape(1, -1, 1, 1)
        self._scale = (1.0 / (255.0 * std)).astype(np.float32)
        self._shift = (-mean / std).astype(np.float32)

    @classmethod
    def from_directory(cls, path: str | Path, device: str | torch.device = "cpu") -> Engine:
        """Load and verify a checkpoint directory, then place the model on `device`."""
        return cls(load_checkpoint(path), device)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.manifest.class_names

    def _check_shape(self, batch: np.ndarray, what: str) -> None:
        expected = tuple(self.manifest.input_shape)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != expected:
            raise InputError(
                f"{what} must have shape [-1, {', '.join(map(str, expected))}], "
                f"got {list(batch.shape)}"
            )

    @torch.no_grad()
    def logits(self, inputs: np.ndarray) -> np.ndarray:
        """Logits of model-ready inputs.

        Args:
            inputs: (B, C, H, W) float32, already normalised with the checkpoint's mean/std.

        Returns:
            (B, K) float32 logits, K = number of classes.
        """
        self._check_shape(inputs, "inputs")
        x = torch.from_numpy(_owned(inputs, np.float32)).to(self.device)
        return self.model(x).float().cpu().numpy()

    def normalize(self, images: np.ndarray) -> np.ndarray:
        """Raw pixels to model-ready inputs with the checkpoint's mean/std (as training did).

        In numpy: a serving replica calls this per request on its event loop, where torch's
        per-call overhead on one small image cost more than the arithmetic (a profile at 32
        concurrent UINT8 streams put it at about a third of the loop's time).

        Args:
            images: (B, C, H, W) uint8.

        Returns:
            (B, C, H, W) float32 `(images / 255 - mean) / std`.

        Raises:
            InputError: the images are not uint8 or not the model's shape.
        """
        self._check_shape(images, "images")
        if images.dtype != np.uint8:
            raise InputError(f"images must be uint8 pixels, got {images.dtype}")
        out = images.astype(np.float32)
        out *= self._scale
        out += self._shift
        return out

    @torch.no_grad()
    def classify_pixels(self, images: np.ndarray) -> np.ndarray:
        """Logits of raw pixels, normalised here with the checkpoint's preprocessing.

        Args:
            images: (B, C, H, W) uint8.

        Returns:
            (B, K) float32 logits.
        """
        self._check_shape(images, "images")
        if images.dtype != np.uint8:
            raise InputError(f"images must be uint8 pixels, got {images.dtype}")
        x = torch.from_numpy(_owned(images)).to(self.device)
        return self.model(normalize(x, self._mean, self._std)).float().cpu().numpy()
