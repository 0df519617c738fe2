"""The driver's checks that run before any Ray Train worker starts."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from raysight.checkpoint import Preprocessing
from raysight.config import Augment, TrainConfig
from raysight.errors import ConfigError, DataError
from raysight.train import data_prep, trainer
from raysight.train.step import Preparation
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


def _prepared(shape: tuple[int, int, int]) -> trainer.PreparedData:
    channels = shape[0]
    return trainer.PreparedData(
        input_shape=shape,
        class_names=("a", "b"),
        class_frequencies=(0.5, 0.5),
        preprocessing=Preprocessing(mean=(0.5,) * channels, std=(0.25,) * channels),
        arrays=None,
        indexes=None,
        rows={},
    )


# The augmentation fields of a Preparation with nothing on, and the two larger presets.
OFF = {
    "crop_padding": 0,
    "flip": False,
    "crop_area": 1.0,
    "zoom": 0.0,
    "rotation": 0.0,
    "jitter": 0.0,
}
PHOTO = {**OFF, "flip": True, "crop_area": 0.35, "jitter": 0.2}
BOOK = {**OFF, "flip": True, "zoom": 0.2, "rotation": 0.1}


@pytest.mark.parametrize(
    ("dataset", "shape", "augment", "expected"),
    [
        # auto: translation for digits, translation and flips for photos of any size.
        ("digits", (1, 8, 8), "auto", {**OFF, "crop_padding": 1}),
        ("mnist", (1, 28, 28), "auto", {**OFF, "crop_padding": 2}),
        ("cifar10", (3, 32, 32), "auto", {**OFF, "crop_padding": 4, "flip": True}),
        ("imagefolder", (3, 32, 32), "auto", {**OFF, "crop_padding": 4, "flip": True}),
        ("imagefolder", (3, 64, 64), "auto", {**OFF, "crop_padding": 8, "flip": True}),
        ("imagefolder", (3, 24, 180), "auto", {**OFF, "crop_padding": 3, "flip": True}),
        # Explicit choices whatever the data.
        ("imagefolder", (3, 180, 180), "book", BOOK),
        ("cifar10", (3, 32, 32), "photo", PHOTO),
        ("cifar10", (3, 32, 32), "none", OFF),
        ("imagefolder", (3, 64, 64), "crop", {**OFF, "crop_padding": 8}),
    ],
)
def test_preparation_resolves_the_augmentation_preset(
    dataset: str,
    shape: tuple[int, int, int],
    augment: Augment,
    expected: dict[str, Any],
) -> None:
    cfg = TrainConfig(dataset=dataset, augment=augment)
    prep = trainer.preparation(cfg, _prepared(shape))
    assert {name: getattr(prep, name) for name in expected} == expected
    assert prep.mean == (0.5,) * shape[0]
    assert prep.channels_last is True  # on CPU too: faster there as well (bench/cpu_speed.py)


def test_crop_padding_applies_to_the_crop_presets_only() -> None:
    def prep(augment: Augment) -> Preparation:
        cfg = TrainConfig(dataset="imagefolder", augment=augment, crop_padding=3)
        return trainer.preparation(cfg, _prepared((3, 64, 64)))

    assert prep("crop_flip").crop_padding == 3
    assert prep("photo").crop_padding == 0
    assert prep("book").crop_padding == 0
