"""Batched image transforms in torch; they run on whatever device the batch is on."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from raysight.errors import DataError

logger = logging.getLogger(__name__)

_MAX_PIXEL = 255.0
# channel_stats converts this many pixels at a time to float64 (16 MiB), whatever the
# image size, so even large datasets are summarised in bounded memory.
_STATS_CHUNK_ELEMENTS = 1 << 21


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) standard deviation, in [0, 1] pixel units.

    Args:
        images: (N, C, H, W) uint8.

    Returns:
        (mean, std), each a tuple of C floats.

    Raises:
        DataError: If `images` is empty or not an (N, C, H, W) uint8 array.
    """
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) == 0:
        raise DataError(f"channel_stats needs non-empty (N, C, H, W) uint8, got {images.shape}")
    n, c, h, w = images.shape
    rows = max(1, _STATS_CHUNK_ELEMENTS // (c * h * w))
    total = np.zeros(c, dtype=np.float64)
    total_sq = np.zeros(c, dtype=np.float64)
    for start in range(0, n, rows):
        chunk = images[start : start + rows].astype(np.float64)  # (rows, C, H, W)
        # Sums of integer pixels stay exact in float64 (below 2**53) for any realistic N.
        total += chunk.sum(axis=(0, 2, 3))
        total_sq += np.square(chunk).sum(axis=(0, 2, 3))
    count = n * h * w
    mean = total / count
    var = np.maximum(total_sq / count - mean**2, 0.0)  # clamp rounding below zero
    std = np.sqrt(var)
    return (
        tuple(float(m) / _MAX_PIXEL for m in mean),
        tuple(float(s) / _MAX_PIXEL for s in std),
    )


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Scale uint8 pixels to [0, 1], then standardise per channel.

    Args:
        x: (B, C, H, W) uint8.
        mean: C per-channel means in [0, 1] units.
        std: C per-channel standard deviations in [0, 1] units.

    Returns:
        (B, C, H, W) float32 `(x / 255 - mean) / std`, on x's device.

    Raises:
        ValueError: If `x` is not uint8 or `mean`/`std` do not have one value per channel.
    """
    if x.dtype != torch.uint8:
        raise ValueError(f"normalize expects uint8 pixels, got {x.dtype}")
    channels = x.shape[1]
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"{channels} channels but {len(mean)} means and {len(std)} stds")
    mean_t = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return (x.to(torch.float32) / _MAX_PIXEL - mean_t) / std_t


def _generator_device(x: torch.Tensor, generator: torch.Generator | None) -> torch.device:
    # Random draws must happen on the generator's device; results are moved to x's.
    return generator.device if generator is not None else x.device


def random_crop(
    x: torch.Tensor, padding: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Shift each image by its own random offset of up to `padding` pixels, filling with zeros.

    Equivalent to zero-padding every side by `padding` and cropping the original size at a
    random position, done for the whole batch with one gather.

    Args:
        x: (B, C, H, W), any dtype.
        padding: Largest shift in each direction; 0 returns `x` unchanged.
        generator: Source of randomness, for reproducibility.

    Returns:
        (B, C, H, W), same dtype and device as `x`.

    Raises:
        ValueError: If `padding` is negative.
    """
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if padding == 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))  # (B, C, H+2p, W+2p)
    draw_device = _generator_device(x, generator)
    # Top-left corner of each crop inside the padded image, in [0, 2p].
    top = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=draw_device)
    left = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=draw_device)
    rows = top.to(x.device)[:, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = left.to(x.device)[:, None] + torch.arange(w, device=x.device)  # (B, W)
    batch = torch.arange(b, device=x.device)[:, None, None, None]  # (B, 1, 1, 1)
    channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]  # (1, C, 1, 1)
    # Broadcasting the four indices gives (B, C, H, W).
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror left-right a randomly chosen half (B // 2) of the batch.

    Args:
        x: (B, C, H, W), any dtype.
        generator: Source of randomness, for reproducibility.

    Returns:
        (B, C, H, W), same dtype and device as `x`.
    """
    b = x.shape[0]
    chosen = torch.randperm(b, generator=generator, device=_generator_device(x, generator))
    flip = torch.zeros(b, dtype=torch.bool, device=x.device)
    flip[chosen[: b // 2].to(x.device)] = True
    return torch.where(flip[:, None, None, None], x.flip(-1), x)
