"""Image preparation shared by training and serving: Pillow and numpy only.

Training (`raysight.data.imagefolder`) and serving (`raysight.codec.image`) both decode an
opened image and turn it into model pixels here, so the same file gives the same pixels in
both. Both also name a refused file's format here.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

# Pillow mode per channel count: grey or RGB.
MODES: dict[int, str] = {1: "L", 3: "RGB"}

# Leading bytes that announce a format, as (Pillow's name, offset, bytes): enough to name a
# refused file's format without handing its bytes to that format's reader. Common formats
# only; anything else goes unnamed.
_SIGNATURES: tuple[tuple[str, int, bytes], ...] = (
    ("PNG", 0, b"\x89PNG\r\n\x1a\n"),
    ("JPEG", 0, b"\xff\xd8\xff"),
    ("WEBP", 8, b"WEBP"),  # after "RIFF" and the chunk size
    ("GIF", 0, b"GIF87a"),
    ("GIF", 0, b"GIF89a"),
    ("BMP", 0, b"BM"),
    ("TIFF", 0, b"II*\x00"),  # little-endian
    ("TIFF", 0, b"MM\x00*"),  # big-endian
    ("ICO", 0, b"\x00\x00\x01\x00"),
    ("PSD", 0, b"8BPS"),
    ("JPEG2000", 0, b"\x00\x00\x00\x0cjP  \r\n\x87\n"),  # JP2 file
    ("JPEG2000", 0, b"\xff\x4f\xff\x51"),  # bare codestream
    ("AVIF", 4, b"ftypavif"),
    ("HEIF", 4, b"ftypheic"),  # iPhone photos
)
# How formats are named to people, where Pillow's upper-case name reads badly.
_DISPLAY_NAMES = {"WEBP": "WebP", "JPEG2000": "JPEG 2000"}


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


def sniff_format(data: bytes) -> str | None:
    """The format a file's leading bytes announce, by Pillow's name, e.g. "GIF".

    Only compares bytes: no image reader sees `data`, so this is safe on any input. For
    messages about a file no accepted reader opened.

    Args:
        data: The encoded file, or at least its first 16 bytes.

    Returns:
        The format's name, or None if the bytes announce none of the common formats.
    """
    for name, offset, magic in _SIGNATURES:
        if data.startswith(magic, offset):
            return name
    return None


def display_name(fmt: str) -> str:
    """A format as people write it: Pillow's "WEBP" -> "WebP"; most names are unchanged."""
    return _DISPLAY_NAMES.get(fmt, fmt)


def prepare_decode(image: Image.Image, size: tuple[int, int]) -> None:
    """Let a JPEG decode at 1/2, 1/4 or 1/8 scale when `to_pixels` shrinks it that much anyway.

    libjpeg then computes a fraction of the pixels: a 12-megapixel photo for a 32x32 model
    decodes at 500x375 instead of 4000x3000. The scale keeps the decoded image at least as
    large as the size `to_pixels` resizes it to, so that step never enlarges and the pixels
    stay close to a full decode. Other formats ignore the request. Training and serving both
    call this, so a file gives the same pixels in both.

    Args:
        image: Opened and not yet loaded (call before `load()`).
        size: The (H, W) `to_pixels` will be asked for.
    """
    # The image is still as stored, and to_pixels may then rotate it per EXIF, swapping
    # width and height. The longer output side, asked for in both axes, covers the target
    # either way round. (The shorter side would not: a 64x8 (H, W) target from a 256x256
    # photo needs 64 rows, and 1/8 scale would leave 32.) Pillow picks the largest scale
    # whose result still covers the request. Mode None: keep the mode, so grey comes from
    # the same RGB -> "L" conversion as always.
    side = max(size)
    image.draft(None, (side, side))


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
        image: A decoded image (call `prepare_decode`, then `load()` first, so decoding
            errors surface there).
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
