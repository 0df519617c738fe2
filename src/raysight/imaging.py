"""Image preparation shared by training and serving: Pillow and numpy only.

Training (`raysight.data.imagefolder`) and serving (`raysight.codec.image`) both turn a
decoded image into model pixels here, so the same file gives the same pixels in both.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

# Pillow mode per channel count: grey or RGB.
MODES: dict[int, str] = {1: "L", 3: "RGB"}


def check_geometry(size: tuple[int, int], channels: int) -> None:
    """Check an output size and channel count.

    Args:
        size: Output (H, W).
        channels: 1 for grey, 3 for RGB.

    Raises:
        ValueError: If `channels` is not 1 or 3, or `size` is not positive.
    """
    if channels not in MODES:
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    out_h, out_w = size
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"size must be positive, got {size}")


def _crop_box(width: int, height: int, size: tuple[int, int]) -> tuple[float, float, float, float]:
    # The centred source region with the target's aspect ratio: resizing just this region is
    # the same as "resize the shorter side, then centre crop", with a single resampling.
    out_h, out_w = size
    scale = min(width / out_w, height / out_h)
    # min(): out * (side / out) can round to just past the side (30 * (31 / 30) > 31), and
    # Pillow refuses a box that starts a hair before the edge.
    crop_w, crop_h = min(out_w * scale, width), min(out_h * scale, height)
    left, top = (width - crop_w) / 2, (height - crop_h) / 2
    return (left, top, left + crop_w, top + crop_h)


def to_pixels(image: Image.Image, size: tuple[int, int], channels: int) -> np.ndarray:
    """Turn a loaded image into fixed-size model pixels.

    The image is turned upright per its EXIF orientation, converted to grey ("L") or "RGB",
    then scaled with bilinear filtering so its shorter side fits and centre-cropped to `size`.

    Args:
        image: A decoded image (call `load()` first so decoding errors surface there).
        size: Output (H, W); see `check_geometry`.
        channels: 1 for grey, 3 for RGB.

    Returns:
        (C, H, W) uint8 array.
    """
    out_h, out_w = size
    upright = ImageOps.exif_transpose(image).convert(MODES[channels])
    box = _crop_box(upright.width, upright.height, size)
    resized = upright.resize((out_w, out_h), Image.Resampling.BILINEAR, box=box)
    pixels = np.asarray(resized, dtype=np.uint8).reshape(out_h, out_w, channels)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))  # (H, W, C) -> (C, H, W)
