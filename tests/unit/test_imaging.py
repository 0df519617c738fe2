"""Image preparation shared by training and serving: the resize-and-crop geometry."""

from __future__ import annotations

from PIL import Image

from raysight import imaging


def test_every_size_crops_inside_the_image() -> None:
    # out * (side / out) can round past the side (30 * (31 / 30) > 31): the crop box must
    # still start at 0, or Pillow refuses it and a valid image reads as corrupt.
    for side in range(1, 100):
        image = Image.new("L", (side + 18, side))  # (W, H): the height is the shorter side
        for out in range(1, 40):
            assert imaging.to_pixels(image, (out, out), 1).shape == (1, out, out)
