"""Image-folder training: Ray Data streams decoded JPEG/PNG files to 2 DDP workers."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raysight.checkpoint import verify_checkpoint
from raysight.config import TrainConfig
from raysight.train.trainer import train
from tests.conftest import RayCluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Two classes a small net separates in a few steps, but only by looking at the pixels:
# warm (red-dominant) and cool (blue-dominant) noisy images of random sizes.
CLASSES = {"cool": (40, 60, 200), "warm": (210, 70, 40)}


def _image(rng: np.random.Generator, colour: tuple[int, int, int], fmt: str) -> bytes:
    height, width = rng.integers(24, 48, size=2)
    noise = rng.normal(0, 35, size=(height, width, 3))
    pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def _make_folder(root: Path, per_class: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    for split, count in per_class.items():
        for name, colour in CLASSES.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                fmt, ext = ("JPEG", "jpg") if i % 2 else ("PNG", "png")
                (folder / f"{i:03d}.{ext}").write_bytes(_image(rng, colour, fmt))
    return root


def test_resnet_trains_on_a_streamed_image_folder(ray_cluster: RayCluster, tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "pets", {"train": 48, "test": 12})
    cfg = TrainConfig(
        dataset="imagefolder",
        data_dir=str(root),
        image_size=(32, 32),
        channels=3,
        model="resnet9",
        model_args={"width": 8},
        epochs=4,
        batch_size=16,
        lr=2e-3,
        workers=2,
        max_failures=0,
        val_fraction=0.25,
        output=str(tmp_path / "ckpt"),
        storage_path=str(tmp_path / "storage"),
    )
    outcome = train(cfg)

    manifest = verify_checkpoint(outcome.checkpoint)
    assert manifest.class_names == ("cool", "warm")
    assert manifest.input_shape == (3, 32, 32)
    assert manifest.model == "resnet9"
    # Mean/std were measured on the decoded images: red channel brighter than blue's mean.
    assert 0.3 < manifest.preprocessing.mean[0] < 0.7
    assert outcome.test.samples == 24
    assert outcome.test.accuracy >= 0.9
