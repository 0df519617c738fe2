"""Image bytes -> model pixels: formats, parity with the training decoder, limits, errors."""

from __future__ import annotations

import io
import re
import struct
import subprocess
import sys
import zlib
from typing import Any

import numpy as np
import pytest
from PIL import Image

from raysight import imaging
from raysight.codec.image import ImageLimits, decode_image
from raysight.data.imagefolder import decode_image as training_decode
from raysight.errors import InputError
from tests.builders import encode_image
from tests.conftest import REPO

SIZE = (24, 32)  # (H, W): not square, so a swapped axis would show


def _photo(height: int = 48, width: int = 80) -> np.ndarray:
    """(H, W, 3) uint8 with structure (gradients), so resampling differences would show."""
    rows = np.linspace(0, 255, height)[:, None]
    cols = np.linspace(0, 255, width)[None, :]
    red = np.broadcast_to(rows, (height, width))
    green = np.broadcast_to(cols, (height, width))
    blue = (red + green) / 2
    return np.stack([red, green, blue], axis=-1).astype(np.uint8)


def _raises(match: str) -> Any:
    return pytest.raises(InputError, match=re.escape(match))


def _png_claiming(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header (IHDR) claims another size: a decompression bomb's shape."""
    data = bytearray(encode_image(np.zeros((1, 1), np.uint8), "PNG"))
    # Signature (8) | length (4) | "IHDR" (4) | width, height (4 + 4) | 5 more bytes | CRC (4)
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
@pytest.mark.parametrize("channels", [1, 3])
def test_formats_decode_to_chw(fmt: str, channels: int) -> None:
    pixels = decode_image(encode_image(_photo(), fmt), size=SIZE, channels=channels)
    assert pixels.shape == (channels, *SIZE)
    assert pixels.dtype == np.uint8
    assert pixels.flags.c_contiguous


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
@pytest.mark.parametrize("channels", [1, 3])
def test_same_pixels_as_training(fmt: str, channels: int) -> None:
    data = encode_image(_photo(61, 97), fmt)  # odd sizes: the crop box is fractional
    served = decode_image(data, size=SIZE, channels=channels)
    trained = training_decode(data, SIZE, channels, "file")
    np.testing.assert_array_equal(served, trained)


def test_exif_orientation_is_applied_as_in_training() -> None:
    # Stored 80 wide x 48 high with "rotate 90° clockwise to view" (orientation 6): upright,
    # the image is 48 wide x 80 high, so a square crop keeps the stored top row as a column.
    stored = _photo(48, 80)
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, format="JPEG", exif=exif, quality=95)
    data = buffer.getvalue()
    served = decode_image(data, size=(80, 48), channels=3)
    np.testing.assert_array_equal(served, training_decode(data, (80, 48), 3, "file"))
    # Upright, red (the stored row gradient) now grows from right to left.
    assert served[0, 40, 0] > served[0, 40, -1]


def _large_jpeg(orientation: int = 1) -> bytes:
    """A 4000x3000 photo-like JPEG (gradients and soft waves) with an EXIF orientation."""
    height, width = 300, 400
    rows, cols = np.mgrid[0:height, 0:width]
    waves = 127.5 + 127.5 * np.sin(cols / width * 16 * np.pi) * np.cos(rows / height * 10 * np.pi)
    small = _photo(height, width)
    small[..., 2] = waves.astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    large = Image.fromarray(small).resize((4000, 3000), Image.Resampling.BICUBIC)
    large.save(buffer, format="JPEG", exif=exif, quality=90)
    return buffer.getvalue()


def _full_decode(data: bytes, size: tuple[int, int], channels: int) -> np.ndarray:
    """The pixels without a reduced decode: every stored pixel decoded, then resized."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return imaging.to_pixels(image, size, channels)


@pytest.fixture
def decoded_sizes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The (W, H) of every image handed to `imaging.to_pixels`: the size after decoding."""
    sizes: list[tuple[int, int]] = []
    to_pixels = imaging.to_pixels

    def recording(image: Image.Image, size: tuple[int, int], channels: int) -> np.ndarray:
        sizes.append(image.size)
        return to_pixels(image, size, channels)

    monkeypatch.setattr(imaging, "to_pixels", recording)
    return sizes


@pytest.mark.parametrize("orientation", [1, 6])
@pytest.mark.parametrize("channels", [1, 3])
def test_a_large_jpeg_decodes_reduced_and_close_to_full(
    orientation: int, channels: int, decoded_sizes: list[tuple[int, int]]
) -> None:
    data = _large_jpeg(orientation)
    served = decode_image(data, size=(32, 32), channels=channels)
    trained = training_decode(data, (32, 32), channels, "file")
    assert decoded_sizes == [(500, 375), (500, 375)]  # an eighth, in serving and training
    np.testing.assert_array_equal(served, trained)
    difference = np.abs(served.astype(int) - _full_decode(data, (32, 32), channels))
    assert difference.mean() < 3


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(encode_image(_photo(61, 97), "JPEG"), id="small-jpeg"),
        pytest.param(encode_image(_photo(600, 800), "PNG"), id="large-png"),
        pytest.param(encode_image(_photo(600, 800), "WEBP"), id="large-webp"),
    ],
)
def test_other_images_give_the_pixels_of_a_full_decode(
    data: bytes, decoded_sizes: list[tuple[int, int]]
) -> None:
    # A JPEG under twice the target, and any PNG or WebP, decode in full as before.
    served = decode_image(data, size=SIZE, channels=3)
    with Image.open(io.BytesIO(data)) as stored:
        assert decoded_sizes[0] == stored.size
    np.testing.assert_array_equal(served, _full_decode(data, SIZE, 3))
    np.testing.assert_array_equal(served, training_decode(data, SIZE, 3, "file"))


def test_empty() -> None:
    with _raises("image: empty; send the encoded image file"):
        decode_image(b"", size=SIZE, channels=3)


def test_too_many_bytes() -> None:
    data = encode_image(_photo(), "PNG")
    with _raises(f"image: {len(data)} bytes, over the limit of 100 bytes"):
        decode_image(data, size=SIZE, channels=3, limits=ImageLimits(max_bytes=100))


def test_not_an_image() -> None:
    with _raises("image: not a PNG, JPEG or WebP image"):
        decode_image(b"definitely not an image", size=SIZE, channels=3)


def test_format_not_accepted() -> None:
    with _raises("image: GIF is not accepted; send a PNG, JPEG or WebP image"):
        decode_image(encode_image(_photo(), "GIF"), size=SIZE, channels=3)
    png_only = ImageLimits(formats=frozenset({"PNG"}))
    with _raises("image: WebP is not accepted; send a PNG image"):
        decode_image(encode_image(_photo(), "WEBP"), size=SIZE, channels=3, limits=png_only)


# A Photoshop file's signature and version, then junk: Pillow cannot write PSD.
_PSD = b"8BPS\x00\x01" + bytes(64)


@pytest.mark.parametrize(
    ("data", "name"),
    [
        pytest.param(encode_image(_photo(), "GIF"), "GIF", id="gif"),
        pytest.param(encode_image(_photo(), "BMP"), "BMP", id="bmp"),
        pytest.param(encode_image(_photo(), "TIFF"), "TIFF", id="tiff"),
        pytest.param(encode_image(_photo(), "ICO"), "ICO", id="ico"),
        pytest.param(encode_image(_photo(), "JPEG2000"), "JPEG 2000", id="jpeg2000"),
        pytest.param(_PSD, "PSD", id="psd"),
    ],
)
def test_other_formats_are_refused_by_name(
    data: bytes, name: str, other_readers: list[str]
) -> None:
    with pytest.raises(InputError) as error:
        decode_image(data, size=SIZE, channels=3)
    assert str(error.value) == f"image: {name} is not accepted; send a PNG, JPEG or WebP image"
    assert error.value.reason == "image_format"
    assert other_readers == []  # named from its leading bytes, not by its reader


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_accepted_formats_need_no_other_reader(fmt: str, other_readers: list[str]) -> None:
    decode_image(encode_image(_photo(), fmt), size=SIZE, channels=3)
    assert other_readers == []


def test_garbage_is_seen_by_no_other_reader(other_readers: list[str]) -> None:
    with _raises("image: not a PNG, JPEG or WebP image"):
        decode_image(b"\x00\x01 no format starts like this", size=SIZE, channels=3)
    assert other_readers == []


def test_a_gif_carrying_a_png_is_refused_as_a_gif() -> None:
    # A polyglot: a GIF with a whole PNG after it. Only the leading bytes decide the format,
    # and no accepted reader takes a GIF's.
    data = encode_image(_photo(), "GIF") + encode_image(_photo(), "PNG")
    with _raises("image: GIF is not accepted; send a PNG, JPEG or WebP image"):
        decode_image(data, size=SIZE, channels=3)


def test_a_png_carrying_a_gif_decodes_as_the_png() -> None:
    # Bytes after a PNG's end are never read, whatever they are.
    png = encode_image(_photo(), "PNG")
    served = decode_image(png + encode_image(_photo(), "GIF"), size=SIZE, channels=3)
    np.testing.assert_array_equal(served, decode_image(png, size=SIZE, channels=3))


def test_multi_picture_jpegs_decode_their_first_picture() -> None:
    # Many phone and camera photos: Pillow's JPEG reader names them "MPO".
    buffer = io.BytesIO()
    first, second = Image.fromarray(_photo(61, 97)), Image.fromarray(_photo(30, 40))
    first.save(buffer, format="MPO", save_all=True, append_images=[second])
    data = buffer.getvalue()
    with Image.open(io.BytesIO(data), formats=["JPEG"]) as opened:
        assert opened.format == "MPO"
    served = decode_image(data, size=SIZE, channels=3)
    np.testing.assert_array_equal(served, training_decode(data, SIZE, 3, "file"))
    single = decode_image(encode_image(_photo(61, 97), "JPEG"), size=SIZE, channels=3)
    np.testing.assert_array_equal(served, single)


def test_too_many_pixels_from_the_header() -> None:
    # 50 megapixels claimed by a 70-byte file: refused from the header, nothing decoded.
    with _raises("image: 10000x5000 is 50000000 pixels, over the limit of 40000000"):
        decode_image(_png_claiming(10_000, 5_000), size=SIZE, channels=3)


def test_far_too_many_pixels_from_the_header() -> None:
    # 10 gigapixels: past even Pillow's own hard limit, still reported as our error.
    with _raises("image: too many pixels; the limit is 40000000 (width × height)"):
        decode_image(_png_claiming(100_000, 100_000), size=SIZE, channels=3)


def test_too_many_pixels_in_a_real_image() -> None:
    limits = ImageLimits(max_pixels=1000)
    with _raises("image: 80x48 is 3840 pixels, over the limit of 1000"):
        decode_image(encode_image(_photo(), "JPEG"), size=SIZE, channels=3, limits=limits)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated(fmt: str) -> None:
    # Noise compresses badly, so the cut lands in the pixel data, past a complete header.
    noise = np.random.default_rng(0).integers(0, 256, size=(128, 128, 3), dtype=np.uint8)
    data = encode_image(noise, fmt)
    with _raises("image: truncated or corrupt; send the complete file"):
        decode_image(data[: len(data) // 2], size=SIZE, channels=3)


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="MAX_IMAGE_PIXELS"):
        ImageLimits(max_pixels=10**12)
    with pytest.raises(ValueError, match="positive"):
        ImageLimits(max_bytes=0)
    with pytest.raises(ValueError, match="at least one"):
        ImageLimits(formats=frozenset())
    with pytest.raises(ValueError, match=re.escape("formats ['MPO'] name no reader")):
        ImageLimits(formats=frozenset({"JPEG", "MPO"}))


def test_bad_geometry_is_a_setting_error() -> None:
    data = encode_image(_photo(), "PNG")
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        decode_image(data, size=SIZE, channels=4)
    with pytest.raises(ValueError, match="size must be positive"):
        decode_image(data, size=(0, 8), channels=3)


def test_codecs_import_neither_torch_nor_ray_nor_grpc() -> None:
    code = (
        "import raysight.codec.oip, raysight.codec.image, sys; "
        "print([m for m in ('torch', 'ray', 'grpc') if m in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("data", "limits", "reason"),
    [
        (b"", ImageLimits(), "empty_image"),
        (b"x" * 100, ImageLimits(max_bytes=10), "image_too_large"),
        (b"not an image at all", ImageLimits(), "not_an_image"),
        (encode_image(_photo(), "GIF"), ImageLimits(), "image_format"),
    ],
)
def test_errors_carry_a_metrics_reason(data: bytes, limits: ImageLimits, reason: str) -> None:
    with pytest.raises(InputError) as error:
        decode_image(data, size=(8, 8), channels=1, limits=limits)
    assert error.value.reason == reason
