"""Batched transforms: statistics, normalisation, crops, flips, zoom, rotation, colour."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from raysight.data import transforms
from raysight.data.transforms import (
    channel_stats,
    color_jitter,
    normalize,
    random_affine,
    random_crop,
    random_flip,
    random_resized_crop,
    standardize,
    to_unit,
)
from raysight.errors import DataError


def _images(n: int = 8, c: int = 3, h: int = 5, w: int = 7, seed: int = 0) -> torch.Tensor:
    # Values 1..255 so that a 0 in an output can only come from padding.
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(1, 256, size=(n, c, h, w), dtype=np.uint8))


def test_channel_stats_match_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    images = _images(n=50, c=3, h=4, w=4).numpy()
    # A chunk smaller than the array, so the accumulation over chunks is exercised.
    monkeypatch.setattr(transforms, "_STATS_CHUNK_ELEMENTS", 3 * 16 * 7)
    mean, std = channel_stats(images)
    scaled = images.astype(np.float64) / 255
    np.testing.assert_allclose(mean, scaled.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, scaled.std(axis=(0, 2, 3)), rtol=1e-10)
    assert all(isinstance(v, float) for v in (*mean, *std))


def test_channel_stats_of_constant_images() -> None:
    mean, std = channel_stats(np.full((3, 1, 2, 2), 51, dtype=np.uint8))
    assert mean == pytest.approx((0.2,))
    assert std == (0.0,)


def test_channel_stats_rejects_bad_input() -> None:
    with pytest.raises(DataError):
        channel_stats(np.zeros((0, 1, 2, 2), dtype=np.uint8))
    with pytest.raises(DataError):
        channel_stats(np.zeros((2, 1, 2, 2), dtype=np.float32))


def test_normalize_matches_numpy() -> None:
    x = _images(n=4, c=3)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.25, 0.5)
    out = normalize(x, mean, std)
    expected = (x.numpy() / 255.0 - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    assert out.dtype == torch.float32
    assert out.shape == x.shape
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_normalize_rejects_wrong_channel_count_and_dtype() -> None:
    with pytest.raises(ValueError, match="channels"):
        normalize(_images(c=3), (0.5,), (0.5,))
    with pytest.raises(ValueError, match="uint8"):
        normalize(_images().float(), (0.5,) * 3, (0.5,) * 3)


def _shift(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Reference: move a (C, H, W) image down by dy and right by dx, filling with zeros."""
    _, h, w = image.shape
    out = torch.zeros_like(image)
    src_rows = slice(max(0, -dy), min(h, h - dy))
    dst_rows = slice(max(0, dy), min(h, h + dy))
    src_cols = slice(max(0, -dx), min(w, w - dx))
    dst_cols = slice(max(0, dx), min(w, w + dx))
    out[:, dst_rows, dst_cols] = image[:, src_rows, src_cols]
    return out


def _find_shift(inp: torch.Tensor, out: torch.Tensor, padding: int) -> tuple[int, int] | None:
    for dy in range(-padding, padding + 1):
        for dx in range(-padding, padding + 1):
            if torch.equal(_shift(inp, dy, dx), out):
                return dy, dx
    return None


def test_random_crop_padding_zero_is_identity() -> None:
    x = _images()
    assert torch.equal(random_crop(x, 0), x)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_random_crop_outputs_are_zero_filled_shifts(dtype: torch.dtype) -> None:
    x = _images(n=64, h=6, w=9).to(dtype)
    padding = 2
    out = random_crop(x, padding, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert out.dtype == dtype
    shifts = [_find_shift(x[i], out[i], padding) for i in range(len(x))]
    assert None not in shifts  # every output is its own input, shifted within the padding
    assert len(set(shifts)) > 10  # and the shifts differ from sample to sample


def test_random_crop_is_reproducible_with_a_generator() -> None:
    x = _images(n=16)
    first = random_crop(x, 3, generator=torch.Generator().manual_seed(7))
    second = random_crop(x, 3, generator=torch.Generator().manual_seed(7))
    assert torch.equal(first, second)


def test_random_crop_rejects_negative_padding() -> None:
    with pytest.raises(ValueError, match="padding"):
        random_crop(_images(), -1)


@pytest.mark.parametrize("n", [1, 9, 32])
def test_random_flip_mirrors_exactly_half(n: int) -> None:
    x = _images(n=n)
    out = random_flip(x, generator=torch.Generator().manual_seed(1))
    flipped = [bool(torch.equal(out[i], x[i].flip(-1))) for i in range(n)]
    kept = [bool(torch.equal(out[i], x[i])) for i in range(n)]
    # Every sample is either untouched or mirrored left-right (the images are asymmetric)...
    assert all(f != k for f, k in zip(flipped, kept, strict=True))
    # ...and exactly floor(n / 2) are mirrored.
    assert sum(flipped) == n // 2


def test_random_flip_choice_depends_on_the_generator() -> None:
    x = _images(n=32)
    a = random_flip(x, generator=torch.Generator().manual_seed(1))
    b = random_flip(x, generator=torch.Generator().manual_seed(1))
    c = random_flip(x, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _floats(n: int = 8, c: int = 3, h: int = 16, w: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand((n, c, h, w), generator=_seeded(seed))


def test_to_unit_then_standardize_is_normalize() -> None:
    x = _images(n=4, c=3)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.25, 0.5)
    assert torch.equal(standardize(to_unit(x), mean, std), normalize(x, mean, std))
    assert to_unit(x).max() <= 1.0


# Each random float transform at a setting that changes every image, for the shared checks.
RANDOM_FLOAT_TRANSFORMS: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {
    "affine": lambda x, g: random_affine(x, zoom=0.2, rotation=0.1, generator=g),
    "resized_crop": lambda x, g: random_resized_crop(x, (0.35, 1.0), generator=g),
    "jitter": lambda x, g: color_jitter(x, 0.2, 0.2, 0.2, generator=g),
}


@pytest.mark.parametrize("name", RANDOM_FLOAT_TRANSFORMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_float_transforms_keep_shape_dtype_and_device(name: str, dtype: torch.dtype) -> None:
    x = _floats(h=12, w=20).to(dtype)
    before = x.clone()
    out = RANDOM_FLOAT_TRANSFORMS[name](x, _seeded(0))
    assert out.shape == x.shape
    assert out.dtype == dtype
    assert out.device == x.device
    assert torch.equal(x, before)  # the input is left as it was


@pytest.mark.parametrize("name", RANDOM_FLOAT_TRANSFORMS)
def test_float_transforms_repeat_with_a_seed_and_vary_per_image(name: str) -> None:
    transform = RANDOM_FLOAT_TRANSFORMS[name]
    # One image repeated: any difference inside a batch comes from per-image parameters.
    x = _floats(n=1).expand(16, -1, -1, -1).contiguous()
    first, again, other = (transform(x, _seeded(seed)) for seed in (5, 5, 6))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    distinct = {tuple(image.flatten()[:64].tolist()) for image in first}
    assert len(distinct) == len(x)


@pytest.mark.parametrize(("h", "w"), [(5, 7), (16, 16), (1, 3)])
def test_affine_grid_matches_torch(h: int, w: int) -> None:
    theta = torch.randn((4, 2, 3), generator=_seeded(0), dtype=torch.float64)
    expected = torch.nn.functional.affine_grid(theta, [4, 1, h, w], align_corners=False)
    torch.testing.assert_close(transforms._affine_grid(theta, h, w), expected)


def test_random_affine_without_zoom_or_rotation_is_the_input() -> None:
    x = _floats()
    assert random_affine(x, zoom=0.0, rotation=0.0) is x


def test_random_affine_at_a_tiny_zoom_is_the_identity() -> None:
    x = _floats(h=12, w=20)
    out = random_affine(x, zoom=1e-6, generator=_seeded(0))
    torch.testing.assert_close(out, x, atol=1e-4, rtol=0)


def _bar(h: int, w: int) -> torch.Tensor:
    """(1, 1, H, W): a horizontal bar through the centre, 3 px thick and half the width long."""
    image = torch.zeros(1, 1, h, w)
    image[0, 0, h // 2 - 1 : h // 2 + 2, w // 4 : w - w // 4] = 1.0
    return image


def _orientation(images: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) -> (B,) angle of each image's principal axis in degrees, from moments."""
    _, _, h, w = images.shape
    rows = torch.arange(h, dtype=images.dtype)[:, None]  # (H, 1), downwards
    cols = torch.arange(w, dtype=images.dtype)[None, :]  # (1, W)
    mass = images[:, 0].sum(dim=(1, 2))  # (B,)
    cy = (images[:, 0] * rows).sum(dim=(1, 2)) / mass
    cx = (images[:, 0] * cols).sum(dim=(1, 2)) / mass
    dy = rows - cy[:, None, None]  # (B, H, 1)
    dx = cols - cx[:, None, None]  # (B, 1, W)
    mu20 = (images[:, 0] * dx**2).sum(dim=(1, 2))
    mu02 = (images[:, 0] * dy**2).sum(dim=(1, 2))
    mu11 = (images[:, 0] * dx * dy).sum(dim=(1, 2))
    return torch.rad2deg(0.5 * torch.atan2(2 * mu11, mu20 - mu02))


@pytest.mark.parametrize(("h", "w"), [(65, 65), (49, 81)])
def test_random_rotation_turns_a_bar_by_up_to_the_fraction_of_a_turn(h: int, w: int) -> None:
    bars = _bar(h, w).expand(64, -1, -1, -1)
    turned = random_affine(bars, rotation=0.1, generator=_seeded(0))
    angles = _orientation(turned)
    # 0.1 of a turn is 36 degrees either way; 64 uniform draws reach past 25 each side.
    assert angles.abs().max() <= 36.5
    assert angles.max() > 25
    assert angles.min() < -25
    # Rotating keeps the bar's length: on a non-square image a shear would stretch it.
    lengths = (turned[:, 0] > 0.5).sum(dim=(1, 2)).float()
    original = float((bars[0, 0] > 0.5).sum())
    assert torch.allclose(lengths, torch.full_like(lengths, original), rtol=0.15)


def test_random_zoom_scales_a_disc_within_the_range() -> None:
    h = w = 65
    rows, cols = torch.meshgrid(torch.arange(h) - h // 2, torch.arange(w) - w // 2, indexing="ij")
    disc = ((rows**2 + cols**2) <= 15**2).float()[None, None].expand(64, -1, -1, -1)
    zoomed = random_affine(disc, zoom=0.2, generator=_seeded(0))
    # Zoom factor s in [0.8, 1.2] samples the input at s times the distance from the centre,
    # so the disc's area becomes area / s**2.
    ratio = zoomed.sum(dim=(1, 2, 3)) / disc[0].sum()
    assert ratio.min() >= 1 / 1.2**2 - 0.03
    assert ratio.max() <= 1 / 0.8**2 + 0.03
    assert ratio.max() - ratio.min() > 0.5  # zooms in and out, not one fixed scale


@pytest.mark.parametrize(("zoom", "rotation"), [(-0.1, 0.0), (1.0, 0.0), (0.0, -0.1), (0.0, 0.6)])
def test_random_affine_rejects_out_of_range_settings(zoom: float, rotation: float) -> None:
    with pytest.raises(ValueError, match="zoom" if zoom != 0.0 else "rotation"):
        random_affine(_floats(), zoom=zoom, rotation=rotation)


def _ramps(n: int, side: int) -> torch.Tensor:
    """(N, 2, side, side): channel 0 is 1 + the column index, channel 1 is 1 + the row index."""
    index = torch.arange(1, side + 1, dtype=torch.float64)
    cols = index[None, :].expand(side, side)
    rows = index[:, None].expand(side, side)
    return torch.stack([cols, rows])[None].expand(n, -1, -1, -1)


def test_random_resized_crop_boxes_have_the_asked_area_and_aspect() -> None:
    side = 48
    out = random_resized_crop(_ramps(256, side), (0.35, 1.0), generator=_seeded(0))
    # A box resized to the whole image turns the ramps into ramps whose slope is the box's
    # side as a share of the image's (bilinear sampling of a linear ramp is exact).
    box_w = (out[:, 0, :, 2:-1] - out[:, 0, :, 1:-2]).mean(dim=(1, 2))  # (N,)
    box_h = (out[:, 1, 2:-1, :] - out[:, 1, 1:-2, :]).mean(dim=(1, 2))  # (N,)
    area, aspect = box_w * box_h, box_w / box_h
    assert area.min() >= 0.35 - 1e-6
    assert area.max() <= 1.0 + 1e-6
    assert aspect.min() >= 3 / 4 - 1e-6
    assert aspect.max() <= 4 / 3 + 1e-6
    assert area.min() < 0.45  # the whole range is used, not one scale
    # Every box lies inside the image: no sample reaches beyond the edge pixels, and none
    # is darkened by the zeros outside.
    assert out.min() >= 1.0
    assert out.max() <= side
    # and the boxes sit at different places.
    assert len({round(float(v), 3) for v in out[:, 0, 0, 0]}) > 200


def test_random_resized_crop_of_the_whole_area_is_the_identity() -> None:
    x = _floats(h=24, w=24)
    out = random_resized_crop(x, (1.0, 1.0), generator=_seeded(0))
    torch.testing.assert_close(out, x, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("scale", "ratio"),
    [((0.0, 1.0), (0.75, 1.33)), ((0.5, 1.5), (0.75, 1.33)), ((0.5, 1.0), (2.0, 1.0))],
)
def test_random_resized_crop_rejects_bad_ranges(
    scale: tuple[float, float], ratio: tuple[float, float]
) -> None:
    with pytest.raises(ValueError, match="scale" if scale[0] == 0.0 or scale[1] > 1 else "ratio"):
        random_resized_crop(_floats(), scale, ratio)


def test_color_jitter_at_zero_strength_is_the_input() -> None:
    x = _floats()
    assert color_jitter(x) is x


def test_brightness_scales_each_image_by_its_own_factor() -> None:
    x = _floats(n=32) * 0.8  # below 1 / 1.2, so no pixel is clipped
    out = color_jitter(x, brightness=0.2, generator=_seeded(0))
    factors = out / x  # (N, C, H, W), one value per image
    per_image = factors.flatten(1)
    torch.testing.assert_close(per_image.min(1).values, per_image.max(1).values)
    assert per_image.min() >= 0.8 - 1e-6
    assert per_image.max() <= 1.2 + 1e-6
    assert per_image[:, 0].std() > 0.05


def test_contrast_and_saturation_keep_grey_and_flat_images() -> None:
    grey = _floats(n=8, c=1).expand(-1, 3, -1, -1)  # R = G = B
    saturated = color_jitter(grey, saturation=0.5, generator=_seeded(0))
    torch.testing.assert_close(saturated, grey)
    flat = torch.full((8, 3, 4, 4), 0.3)
    torch.testing.assert_close(color_jitter(flat, contrast=0.5, generator=_seeded(0)), flat)


def test_color_jitter_stays_in_range_and_on_one_channel() -> None:
    out = color_jitter(_floats(c=3), 1.0, 1.0, 1.0, generator=_seeded(0))
    assert out.min() >= 0.0
    assert out.max() <= 1.0
    grey = _floats(c=1)
    # A grey image has no saturation: only brightness and contrast change it.
    assert torch.equal(color_jitter(grey, saturation=0.5, generator=_seeded(0)), grey)


@pytest.mark.parametrize("name", ["brightness", "contrast", "saturation"])
@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_color_jitter_rejects_out_of_range_strengths(name: str, value: float) -> None:
    with pytest.raises(ValueError, match=name):
        color_jitter(_floats(), **{name: value})
