"""The driver's checks that run before any Ray Train worker starts."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from raysight.config import TrainConfig
from raysight.errors import ConfigError, DataError
from raysight.train import data_prep, trainer
from tests.builders import encode_image


def test_a_model_too_big_for_the_images_fails_on_the_driver(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reached: list[str] = []

    def record(name: str) -> Any:
        return lambda *args, **kwargs: reached.append(name)

    monkeypatch.setattr(trainer, "_even_share_of_cpus", record("cluster"))
    monkeypatch.setattr(trainer, "TorchTrainer", record("workers"))
    # convnet's three valid 3x3 convolutions and two poolings need 18x18; digits are 8x8.
    with pytest.raises(ConfigError, match=r"image_size \(8, 8\) is too small for convnet"):
        trainer.train(TrainConfig(dataset="digits", model="convnet"))
    assert reached == []  # refused before the cluster or any worker was asked for anything


def _folder(root: Path, classes: dict[str, tuple[str, ...]]) -> Path:
    """ROOT/<split>/<class>/0.png, one 20x30 PNG per class folder."""
    pixels = np.zeros((20, 30, 3), dtype=np.uint8)  # (H, W, 3)
    for split, names in classes.items():
        for name in names:
            (root / split / name).mkdir(parents=True)
            (root / split / name / "0.png").write_bytes(encode_image(pixels, "PNG"))
    return root


def test_a_missing_image_size_names_the_flag_the_key_and_the_first_image(tmp_path: Path) -> None:
    root = _folder(tmp_path, {"train": ("cat", "dog"), "test": ("cat", "dog")})
    with pytest.raises(ConfigError) as caught:
        data_prep.prepare_data(TrainConfig(dataset="imagefolder", data_dir=str(root)))
    assert str(caught.value) == (
        "imagefolder needs an image size: pass --image-size H W (e.g. --image-size 128 128) "
        "or set image_size: [128, 128] in the config; "
        f"the first image, {root}/train/cat/0.png, is 20x30 (H x W)"
    )


@pytest.mark.parametrize("dataset", ["imagefolder", "mnist", "cifar10"])
def test_a_missing_data_dir_names_the_flag_and_the_key(dataset: str) -> None:
    with pytest.raises(ConfigError) as caught:
        data_prep.prepare_data(TrainConfig(dataset=dataset, image_size=(8, 8)))
    assert str(caught.value).startswith(
        f"{dataset} needs a data directory: pass --data-dir DIR or set data_dir: DIR in the config"
    )


def test_a_missing_test_split_stops_before_training(tmp_path: Path) -> None:
    root = _folder(tmp_path, {"train": ("cat", "dog")})
    cfg = TrainConfig(dataset="imagefolder", data_dir=str(root), image_size=(8, 8))
    with pytest.raises(DataError, match=re.escape(f"add {root}/test/<class>/ images")):
        data_prep.prepare_data(cfg)


def test_test_classes_must_match_train_classes(tmp_path: Path) -> None:
    root = _folder(tmp_path, {"train": ("cat", "dog"), "test": ("cat",)})
    cfg = TrainConfig(dataset="imagefolder", data_dir=str(root), image_size=(8, 8))
    with pytest.raises(DataError, match=r"test classes \['cat'\] differ from train classes"):
        data_prep.prepare_data(cfg)


def _rows(root: Path, **splits: int) -> Path:
    """ROOT/<split>/{cat,dog}/i.png with `n` 8x8 PNGs per class in each named split."""
    pixels = np.zeros((8, 8, 3), dtype=np.uint8)
    for split, n in splits.items():
        for name in ("cat", "dog"):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                (root / split / name / f"{i}.png").write_bytes(encode_image(pixels, "PNG"))
    return root


@pytest.mark.parametrize(
    ("splits", "rows", "final"),
    [
        # The book's layout without a test folder: validation picks, and gives the figure.
        ({"train": 5, "validation": 3}, {"train": 10, "val": 6}, "validation"),
        ({"train": 5, "val": 2, "test": 4}, {"train": 10, "val": 4}, "test"),
        ({"train": 5, "test": 4}, {"train": 9, "val": 1}, "test"),  # 10% of 10 held out
    ],
)
def test_a_validation_folder_replaces_the_hold_out_and_the_final_split_follows_the_layout(
    tmp_path: Path, splits: dict[str, int], rows: dict[str, int], final: str
) -> None:
    root = _rows(tmp_path, **splits)
    cfg = TrainConfig(dataset="imagefolder", data_dir=str(root), image_size=(8, 8))
    prepared = data_prep.prepare_data(cfg)
    assert prepared.rows == rows
    assert prepared.final_split == final


def test_two_validation_folders_are_refused(tmp_path: Path) -> None:
    root = _rows(tmp_path, train=1, validation=1, val=1)
    cfg = TrainConfig(dataset="imagefolder", data_dir=str(root), image_size=(8, 8))
    with pytest.raises(DataError, match="both validation/ and val/; keep one validation folder"):
        data_prep.prepare_data(cfg)


def test_validation_classes_must_match_train_classes(tmp_path: Path) -> None:
    root = _folder(tmp_path, {"train": ("cat", "dog"), "validation": ("cat", "cow")})
    cfg = TrainConfig(dataset="imagefolder", data_dir=str(root), image_size=(8, 8))
    with pytest.raises(DataError, match=r"validation classes \['cat', 'cow'\] differ"):
        data_prep.prepare_data(cfg)


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("ftp://host/runs/x", r"output: ftp://host/runs/x: cannot open this location"),
        ("taken", r"output: .*taken: exists and is not a checkpoint directory"),
    ],
)
def test_an_output_the_checkpoint_cannot_go_to_is_refused_before_training(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, output: str, message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken").write_text("a file, not a checkpoint")
    reached: list[str] = []
    monkeypatch.setattr(trainer, "prepare_data", lambda cfg: reached.append("data"))
    with pytest.raises(ConfigError, match=message):
        trainer.prepare(TrainConfig(dataset="digits", output=output))
    assert reached == []  # refused before the data was even read
