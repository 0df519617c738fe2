"""Class frequencies: counted from the labels of the split actually trained on, for every
dataset kind, and carried from the driver through the worker plan into the manifest."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from raysight.checkpoint import Preprocessing, read_manifest
from raysight.config import TrainConfig
from raysight.data import class_frequencies, load_arrays
from raysight.errors import DataError
from raysight.models import build_model, resolve_kwargs
from raysight.train import data_prep, loop, trainer
from raysight.train.epoch import EpochStats
from raysight.train.step import Preparation, build_optimizer
from tests.builders import encode_image, idx_bytes, write_cifar10


def _bincount_fractions(labels: np.ndarray | tuple[int, ...], classes: int) -> tuple[float, ...]:
    """The expected frequencies, computed the plain way."""
    counts = np.bincount(np.asarray(labels), minlength=classes)
    return tuple(float(c) / len(labels) for c in counts)


# --- the count ------------------------------------------------------------------------


def test_fractions_of_known_labels() -> None:
    # 8 labels over 4 classes; class 2 never occurs and still gets its 0.0.
    assert class_frequencies(np.array([0, 0, 0, 1, 3, 3, 0, 1]), 4) == (0.5, 0.25, 0.0, 0.25)
    assert class_frequencies((1, 1), 2) == (0.0, 1.0)  # an image folder's tuple of labels


def test_fractions_sum_to_one_on_an_awkward_count() -> None:
    labels = np.random.default_rng(0).integers(0, 7, size=997)
    frequencies = class_frequencies(labels, 7)
    assert len(frequencies) == 7
    assert abs(sum(frequencies) - 1.0) < 1e-12


@pytest.mark.parametrize(
    ("labels", "words"),
    [
        (np.array([], dtype=np.int64), "empty split"),
        (np.array([0, 3]), "span [0, 3] but there are 3 classes"),
        (np.array([-1, 0]), "span [-1, 0]"),
    ],
    ids=["empty", "too-high", "negative"],
)
def test_labels_that_cannot_be_counted_are_refused(labels: np.ndarray, words: str) -> None:
    with pytest.raises(DataError) as caught:
        class_frequencies(labels, 3)
    assert words in str(caught.value)


# --- every dataset kind, on the training split after the hold-out ---------------------


def _check_train_split(prepared: data_prep.PreparedData, full_split_rows: int) -> None:
    """The frequencies are those of the rows trained on, not of the whole split."""
    if prepared.arrays is not None:
        train_labels: Any = prepared.arrays["train"].labels
    else:
        assert prepared.indexes is not None
        train_labels = prepared.indexes["train"].labels
    assert len(train_labels) == prepared.rows["train"] < full_split_rows
    classes = len(prepared.class_names)
    assert prepared.class_frequencies == pytest.approx(
        _bincount_fractions(train_labels, classes), abs=1e-15
    )


def test_digits_count_the_training_rows_left_after_validation() -> None:
    prepared = data_prep.prepare_data(TrainConfig(dataset="digits", val_fraction=0.25))
    _check_train_split(prepared, full_split_rows=1438)  # 1,797 digits less the 20 % test
    assert len(prepared.class_frequencies) == 10
    assert all(0.05 < f < 0.15 for f in prepared.class_frequencies)  # digits are balanced


def test_limit_train_counts_only_the_rows_kept() -> None:
    prepared = data_prep.prepare_data(TrainConfig(dataset="digits", limit_train=40, val_fraction=0))
    expected = _bincount_fractions(load_arrays("digits", None, "train").labels[:40], 10)
    assert prepared.class_frequencies == pytest.approx(expected, abs=1e-15)


def _write_mnist(folder: Path, train_labels: np.ndarray) -> Path:
    """IDX train and test files with blank 28x28 images and the given training labels."""
    folder.mkdir()
    for prefix, labels in (("train", train_labels), ("t10k", np.arange(10))):
        images = np.zeros((len(labels), 28, 28), dtype=np.uint8)
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(idx_bytes(images, 0x803))
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(labels, 0x801))
    return folder


def test_mnist_without_hold_out_counts_every_training_label(tmp_path: Path) -> None:
    labels = np.array([7] * 6 + [1] * 3 + [0])  # 10 images: 60 % sevens, 30 % ones, 10 % zeros
    root = _write_mnist(tmp_path / "mnist", labels)
    cfg = TrainConfig(dataset="mnist", data_dir=str(root), val_fraction=0)
    frequencies = data_prep.prepare_data(cfg).class_frequencies
    assert frequencies == pytest.approx((0.1, 0.3, 0, 0, 0, 0, 0, 0.6, 0, 0), abs=1e-15)


def test_mnist_with_hold_out_counts_the_training_rows(tmp_path: Path) -> None:
    labels = np.random.default_rng(1).integers(0, 10, size=50)
    root = _write_mnist(tmp_path / "mnist", labels)
    cfg = TrainConfig(dataset="mnist", data_dir=str(root), val_fraction=0.2)
    _check_train_split(data_prep.prepare_data(cfg), full_split_rows=50)


def test_cifar10_counts_the_training_batches(tmp_path: Path) -> None:
    batches = {f"data_batch_{i}": [i, i, 0] for i in range(1, 6)}  # 15 images: 5 of class 0
    root = write_cifar10(tmp_path / "cifar", {**batches, "test_batch": [0, 1]})
    cfg = TrainConfig(dataset="cifar10", data_dir=str(root), val_fraction=0)
    prepared = data_prep.prepare_data(cfg)
    assert prepared.class_names[:2] == ("class0", "class1")
    third, fifteenth = 1 / 3, 2 / 15  # class 0 in every batch, classes 1..5 twice each
    expected = (third, *[fifteenth] * 5, 0, 0, 0, 0)
    assert prepared.class_frequencies == pytest.approx(expected, abs=1e-15)
    held_out = data_prep.prepare_data(dataclasses.replace(cfg, val_fraction=0.2))
    _check_train_split(held_out, full_split_rows=15)


def _image_folder(root: Path, counts: dict[str, int]) -> Path:
    """ROOT/train/<class>/<i>.png with `counts` images per class, one of each in test/."""
    pixels = np.zeros((6, 6, 3), dtype=np.uint8)  # (H, W, 3)
    for name, count in counts.items():
        for split, n in (("train", count), ("test", 1)):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                (root / split / name / f"{i}.png").write_bytes(encode_image(pixels, "PNG"))
    return root


def test_image_folder_counts_its_index_without_hold_out(tmp_path: Path) -> None:
    root = _image_folder(tmp_path, {"cat": 6, "dog": 2})
    cfg = TrainConfig(dataset="imagefolder", data_dir=str(root), image_size=(4, 4), val_fraction=0)
    prepared = data_prep.prepare_data(cfg)
    assert prepared.class_names == ("cat", "dog")
    assert prepared.class_frequencies == (0.75, 0.25)


def test_image_folder_counts_the_rows_left_after_validation(tmp_path: Path) -> None:
    root = _image_folder(tmp_path, {"bird": 9, "cat": 5, "dog": 2})
    cfg = TrainConfig(
        dataset="imagefolder", data_dir=str(root), image_size=(4, 4), val_fraction=0.25
    )
    _check_train_split(data_prep.prepare_data(cfg), full_split_rows=16)


# --- from the driver to the manifest --------------------------------------------------


class _PlanBuiltError(Exception):
    """Raised by the stand-in TorchTrainer: the plan is built, no worker is needed."""


def test_train_puts_the_frequencies_in_the_worker_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    plans: list[loop.WorkerPlan] = []

    def capture(*args: Any, train_loop_config: dict[str, Any], **kwargs: Any) -> None:
        plans.append(train_loop_config["plan"])
        raise _PlanBuiltError

    monkeypatch.setattr(trainer, "TorchTrainer", capture)
    monkeypatch.setattr(trainer, "_even_share_of_cpus", lambda *a, **k: 1.0)
    monkeypatch.setattr(trainer, "_put_arrays", lambda arrays: None)
    monkeypatch.setenv(trainer._POLL_ENV, "0.25")  # train() sets it when unset; keep it local
    cfg = TrainConfig(dataset="digits", model="convnet", model_args={"padding": "same"})
    prepared = trainer.prepare(cfg)
    with pytest.raises(_PlanBuiltError):
        trainer.train(cfg, prepared)
    assert plans[0].class_frequencies == prepared.data.class_frequencies


def test_the_workers_checkpoint_records_the_plans_frequencies(tmp_path: Path) -> None:
    kwargs = resolve_kwargs(
        "convnet", in_channels=1, num_classes=2, image_size=(8, 8), padding="same"
    )
    model = build_model("convnet", **kwargs)
    cfg = TrainConfig(dataset="digits", model="convnet")
    plan = loop.WorkerPlan(
        config=cfg.to_dict(),
        run_name="frequencies",
        threads=1,
        model_kwargs=kwargs,
        input_shape=(1, 8, 8),
        preprocessing=Preprocessing(mean=(0.5,), std=(0.25,)),
        prep=Preparation((0.5,), (0.25,), crop_padding=0, flip=False, channels_last=False),
        class_names=("no", "yes"),
        class_frequencies=(0.625, 0.375),
        arrays=None,
    )
    stats = EpochStats(
        epoch=1,
        train_loss=0.5,
        train_accuracy=0.8,
        val_loss=0.6,
        val_accuracy=0.75,
        samples=8,
        seconds=1.0,
        train_wait_seconds=0.0,
        val_seconds=0.1,
        val_wait_seconds=0.0,
    )
    path = loop._save(
        tmp_path / "checkpoint",
        plan=plan,
        cfg=cfg,
        model=model,
        optimizer=build_optimizer(model, "adamw", 1e-3, 0.0, 0.9),
        stats=stats,
        best=0.75,
    )
    assert read_manifest(path).class_frequencies == (0.625, 0.375)
