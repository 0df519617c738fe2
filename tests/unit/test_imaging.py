"""Image preparation shared by training and serving: the crop geometry, reduced JPEG decodes."""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageOps

from raysight import imaging


def test_every_size_crops_inside_the_image() -> None:
    # out * (side / out) can round past the side (30 * (31 / 30) > 31): the crop box must
    # still start at 0, or Pillow refuses it and a valid image reads as corrupt.
    for side in range(1, 100):
        image = Image.new("L", (side + 18, side))  # (W, H): the height is the shorter side
        for out in range(1, 40):
            assert imaging.to_pixels(image, (out, out), 1).shape == (1, out, out)


def _jpeg(width: int, height: int, orientation: int = 1) -> bytes:
    """A grey-gradient JPEG stored `width` x `height`, with an EXIF orientation tag."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.linear_gradient("L").resize((width, height)).save(buffer, format="JPEG", exif=exif)
    return buffer.getvalue()


def _prepared(data: bytes, size: tuple[int, int]) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    imaging.prepare_decode(image, size)
    image.load()
    return image


def test_a_large_jpeg_decodes_at_a_reduced_scale() -> None:
    # 4000x3000 for 32x32: an eighth (500x375) still covers 32 in both axes.
    image = _prepared(_jpeg(4000, 3000), (32, 32))
    assert image.size == (500, 375)


@pytest.mark.parametrize("stored", [(640, 480), (480, 640), (1000, 130), (300, 300)])
@pytest.mark.parametrize("orientation", [1, 6, 8])  # 6 and 8 swap width and height
@pytest.mark.parametrize("size", [(32, 32), (24, 32), (64, 8), (8, 64)])
def test_a_reduced_decode_still_covers_the_target(
    stored: tuple[int, int], orientation: int, size: tuple[int, int]
) -> None:
    # to_pixels resizes so the upright image just covers (H, W); the decoded image must be at
    # least that large, so that step only ever shrinks.
    image = _prepared(_jpeg(*stored, orientation), size)
    upright = ImageOps.exif_transpose(image)
    out_h, out_w = size
    assert upright.width >= out_w and upright.height >= out_h
    assert image.width < stored[0]  # every case here is at least twice the target: reduced


def test_other_formats_and_small_jpegs_decode_in_full() -> None:
    buffer = io.BytesIO()
    Image.linear_gradient("L").resize((1200, 900)).save(buffer, format="PNG")
    assert _prepared(buffer.getvalue(), (32, 32)).size == (1200, 900)  # no reduced PNG decode
    assert _prepared(_jpeg(61, 40), (32, 32)).size == (61, 40)  # under twice the target
