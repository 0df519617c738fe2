"""Batched transforms: statistics, normalisation, random crop and flip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raysight.data import transforms
from raysight.data.transforms import channel_stats, normalize, random_crop, random_flip
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
