"""Encoded image bytes -> model pixels, with limits enforced before any pixel is decoded.

The pixels are prepared by `raysight.imaging.to_pixels`, the function training uses on image
folders, so a file sent to the server gives the model the same pixels it gave in training.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from raysight import imaging
from raysight.errors import InputError

logger = logging.getLogger(__name__)

# How formats are listed in messages: these first, in this order, then the rest sorted.
_PREFERRED_ORDER = ("PNG", "JPEG", "WEBP")
# What Pillow raises on bytes it cannot identify or decode (UnidentifiedImageError is an
# OSError; some plugins raise SyntaxError, ValueError or EOFError on corrupt data).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError)


@dataclass(frozen=True)
class ImageLimits:
    """What a request's image may be; checked before the image is decoded.

    Attributes:
        max_bytes: The largest encoded file, in bytes.
        max_pixels: The most pixels (width × height, read from the file header). Checked
            before decoding, so a small file that would expand to gigabytes (a decompression
            bomb) costs nothing. At most Pillow's `Image.MAX_IMAGE_PIXELS`, so this check,
            not Pillow's warning, is what refuses an image.
        formats: The accepted formats, as Pillow names them (upper case). Only their
            readers ever see a request's bytes. "JPEG" includes what Pillow calls "MPO", a
            JPEG that carries extra pictures (many phone and camera photos): its first
            picture is an ordinary JPEG, which is what gets decoded.
    """

    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000
    formats: frozenset[str] = frozenset({"PNG", "JPEG", "WEBP"})

    def __post_init__(self) -> None:
        if self.max_bytes <= 0 or self.max_pixels <= 0:
            raise ValueError(
                f"max_bytes and max_pixels must be positive, got {self.max_bytes}, "
                f"{self.max_pixels}"
            )
        if not self.formats:
            raise ValueError("formats must name at least one image format")
        Image.init()  # registers every reader Pillow has, so the names can be checked
        unknown = sorted(self.formats - set(Image.OPEN))
        if unknown:
            raise ValueError(
                f"formats {unknown} name no reader Pillow has; use upper-case reader "
                "names such as PNG, JPEG (which also reads MPO) or WEBP"
            )
        pillow_limit = Image.MAX_IMAGE_PIXELS
        if pillow_limit is not None and self.max_pixels > pillow_limit:
            raise ValueError(
                f"max_pixels {self.max_pixels} is above PIL.Image.MAX_IMAGE_PIXELS "
                f"({pillow_limit}); raise that as well"
            )


DEFAULT_LIMITS = ImageLimits()


def _describe(formats: Iterable[str]) -> str:
    # {"WEBP", "PNG", "JPEG"} -> "PNG, JPEG or WebP"
    def rank(name: str) -> tuple[int, str]:
        order = _PREFERRED_ORDER.index(name) if name in _PREFERRED_ORDER else len(_PREFERRED_ORDER)
        return (order, name)

    names = [imaging.display_name(f) for f in sorted(formats, key=rank)]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def _open(data: bytes, limits: ImageLimits) -> Image.Image:
    # Reads the header only: format and size, no pixels yet. Only the accepted formats'
    # readers are tried: each of Pillow's many readers would otherwise parse untrusted bytes.
    try:
        return Image.open(io.BytesIO(data), formats=sorted(limits.formats))
    except Image.DecompressionBombError as exc:
        # Pillow refuses sizes over twice its own limit while reading the header, before our
        # size check can run; the image is far over ours too.
        raise InputError(
            f"image: too many pixels; the limit is {limits.max_pixels} (width × height)",
            reason="image_too_many_pixels",
        ) from exc
    except _DECODE_ERRORS as exc:
        raise _unopened(data, limits) from exc


def _unopened(data: bytes, limits: ImageLimits) -> InputError:
    # No accepted reader opened the file: name its format from the leading bytes where they
    # announce one that is not accepted (no reader of that format ever sees them).
    fmt = imaging.sniff_format(data)
    if fmt is not None and fmt not in limits.formats:
        return InputError(
            f"image: {imaging.display_name(fmt)} is not accepted; "
            f"send a {_describe(limits.formats)} image",
            reason="image_format",
        )
    return InputError(f"image: not a {_describe(limits.formats)} image", reason="not_an_image")


def _check_header(image: Image.Image, limits: ImageLimits) -> None:
    width, height = image.size
    if width * height > limits.max_pixels:
        raise InputError(
            f"image: {width}x{height} is {width * height} pixels, "
            f"over the limit of {limits.max_pixels}",
            reason="image_too_many_pixels",
        )


def decode_image(
    data: bytes,
    *,
    size: tuple[int, int],
    channels: int,
    limits: ImageLimits = DEFAULT_LIMITS,
) -> np.ndarray:
    """Decode a request's encoded image into model pixels.

    Checks, cheapest first: not empty, at most `limits.max_bytes`, a readable header of an
    accepted format, at most `limits.max_pixels`; then decodes, turns the image upright per
    its EXIF orientation, converts to grey or RGB, and resizes the shorter side and centre
    crops to `size` with bilinear filtering, exactly as training does (a large JPEG decodes
    at a reduced scale that still covers `size`; see `raysight.imaging.prepare_decode`).

    Args:
        data: The encoded file, e.g. a PNG, JPEG or WebP as stored on disk.
        size: Output (H, W), the model's input size.
        channels: 1 for grey, 3 for RGB, the model's input channels.
        limits: What the image may be.

    Returns:
        (C, H, W) uint8 array.

    Raises:
        InputError: If the image is empty, too large, not an accepted format, has too many
            pixels, or is truncated or corrupt; the message says which.
        ValueError: If `size` or `channels` is invalid (a server setting, not the request).
    """
    imaging.check_geometry(size, channels)
    if not data:
        raise InputError("image: empty; send the encoded image file", reason="empty_image")
    if len(data) > limits.max_bytes:
        raise InputError(
            f"image: {len(data)} bytes, over the limit of {limits.max_bytes} bytes",
            reason="image_too_large",
        )
    with _open(data, limits) as image:
        _check_header(image, limits)
        imaging.prepare_decode(image, size)
        try:
            image.load()  # decode now, so truncation is reported here and not later
            return imaging.to_pixels(image, size, channels)
        except _DECODE_ERRORS as exc:
            logger.debug("image decode failed: %s", exc)
            raise InputError(
                "image: truncated or corrupt; send the complete file", reason="corrupt_image"
            ) from exc
