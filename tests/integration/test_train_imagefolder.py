"""Image-folder training: decoded once into memory, or streamed by Ray Data every epoch, to
2 DDP workers."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raysight.checkpoint import verify_checkpoint
from raysight.config import TrainConfig
from raysight.data.imagefolder import scan, to_ray_dataset
from raysight.errors import DataError
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
        image_cache="stream",
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


def _config(root: Path, tmp_path: Path, **changes: object) -> TrainConfig:
    values: dict[str, object] = {
        "dataset": "imagefolder",
        "data_dir": str(root),
        "image_size": (32, 32),
        "model": "resnet9",
        "model_args": {"width": 8},
        "epochs": 4,
        "batch_size": 16,
        "lr": 2e-3,
        "workers": 2,
        "max_failures": 0,
        "output": str(tmp_path / "ckpt"),
        "storage_path": str(tmp_path / "storage"),
    }
    return TrainConfig.from_dict({**values, **changes})


def test_the_book_s_layout_decodes_once_and_scores_on_validation(
    ray_cluster: RayCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """train/ + validation/ without test/: the validation folder picks the best checkpoint
    and gives the final figure, labelled so; the images are decoded once, not every epoch."""
    root = _make_folder(tmp_path / "pets", {"train": 40, "validation": 10})
    caplog.set_level("INFO", logger="raysight")
    outcome = train(_config(root, tmp_path))
    assert outcome.final_split == "validation"
    assert outcome.final_label == "validation"
    assert outcome.test.samples == 20  # the whole validation folder
    assert outcome.test.accuracy >= 0.9
    manifest = verify_checkpoint(outcome.checkpoint)
    assert "test_accuracy" not in manifest.metrics
    assert manifest.metrics["val_accuracy"] == pytest.approx(outcome.test.accuracy, abs=1e-6)
    decodes = [r.getMessage() for r in caplog.records if "decoded" in r.getMessage()]
    # One line per split, each naming every image: train (80) and validation (20), once.
    assert [line.split(": decoded ")[1].split(" images")[0] for line in decodes] == ["80", "20"]


def test_a_broken_file_is_named_before_training_when_decoding_once(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    root = _make_folder(tmp_path / "pets", {"train": 8, "test": 2})
    broken = root / "train" / "warm" / "003.jpg"
    broken.write_bytes(broken.read_bytes()[:40])
    with pytest.raises(DataError, match=f"^{broken}: "):
        train(_config(root, tmp_path, image_cache="memory"))
    assert not (tmp_path / "ckpt").exists()


def test_a_streamed_training_split_is_reshuffled_every_epoch(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    """Each execution (epoch) of the training stream reads the whole set in a fresh order."""
    folder = tmp_path / "shades" / "train" / "grey"
    folder.mkdir(parents=True)
    for shade in range(60):  # image i is a solid grey of value 4 * i: its own identity
        buffer = io.BytesIO()
        Image.fromarray(np.full((8, 8), 4 * shade, dtype=np.uint8)).save(buffer, format="PNG")
        (folder / f"{shade:02d}.png").write_bytes(buffer.getvalue())
    stream = to_ray_dataset(scan(str(tmp_path / "shades"), "train"), (8, 8), 1, shuffle_seed=3)
    orders = [[int(row["image"][0, 0, 0]) // 4 for row in stream.iter_rows()] for _ in range(3)]
    assert all(sorted(order) == list(range(60)) for order in orders)
    assert len({tuple(order) for order in orders}) == 3
    assert orders[0] != list(range(60))
