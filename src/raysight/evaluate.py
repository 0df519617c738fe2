"""Accuracy, loss and confusion matrix of a checkpoint on a labelled split."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from raysight.checkpoint import Manifest
from raysight.data import imagefolder, load_arrays
from raysight.engine import Engine
from raysight.errors import ConfigError, DataError


@dataclass(frozen=True)
class Evaluation:
    """Results on one split."""

    accuracy: float
    loss: float  # mean cross-entropy
    samples: int
    confusion: np.ndarray  # (K, K) int64: rows are true classes, columns predictions
    class_names: tuple[str, ...]

    def per_class_accuracy(self) -> np.ndarray:
        """(K,) recall of each class; NaN for a class absent from the split."""
        totals = self.confusion.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.diag(self.confusion) / totals


@dataclass(frozen=True)
class Tally:
    """Unnormalised counts of a pass over (part of) a split; tallies of shards add up.

    Attributes:
        confusion: (K, K) int64: rows are true classes, columns predictions.
        loss_sum: Summed cross-entropy over the samples counted.
    """

    confusion: np.ndarray
    loss_sum: float

    def __add__(self, other: Tally) -> Tally:
        return Tally(self.confusion + other.confusion, self.loss_sum + other.loss_sum)

    def result(self, class_names: tuple[str, ...]) -> Evaluation:
        """Accuracy and mean loss over every sample counted."""
        samples = int(self.confusion.sum())
        return Evaluation(
            accuracy=float(np.trace(self.confusion)) / max(samples, 1),
            loss=self.loss_sum / max(samples, 1),
            samples=samples,
            confusion=self.confusion,
            class_names=class_names,
        )


def tally(engine: Engine, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> Tally:
    """Run `engine` over (images (B, C, H, W) uint8, labels (B,) int) batches and count."""
    k = len(engine.class_names)
    confusion = np.zeros((k, k), dtype=np.int64)
    loss_sum = 0.0
    for images, labels in batches:
        logits = engine.classify_pixels(images).astype(np.float64)  # (B, K)
        # log-softmax with the max subtracted, so large logits cannot overflow exp.
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        loss_sum -= float(log_probs[np.arange(len(labels)), labels].sum())
        np.add.at(confusion, (labels, logits.argmax(axis=1)), 1)
    return Tally(confusion, loss_sum)


def evaluate(engine: Engine, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> Evaluation:
    """Run `engine` over (images (B, C, H, W) uint8, labels (B,) int) batches, here."""
    return tally(engine, batches).result(engine.class_names)


def array_batches(
    images: np.ndarray, labels: np.ndarray, batch_size: int = 512
) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    """Slice an in-memory split into evaluation batches."""
    for start in range(0, len(labels), batch_size):
        yield images[start : start + batch_size], labels[start : start + batch_size]


def dataset_batches(
    dataset: str, data_dir: str | None, split: str, manifest: Manifest, batch_size: int = 512
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Evaluation batches of a named split, shaped as the checkpoint expects.

    Image folders are decoded a batch at a time, so a large test folder never sits in memory
    whole; the other datasets are small enough to load at once.
    """
    channels, height, width = manifest.input_shape
    if dataset != "imagefolder":
        split_data = load_arrays(dataset, data_dir, split)
        check_classes(split_data.class_names, manifest, f"{dataset} {split}")
        yield from array_batches(split_data.images, split_data.labels, batch_size)
        return
    if data_dir is None:
        raise ConfigError("imagefolder needs a data directory: pass --data-dir DIR")
    index = imagefolder.scan(data_dir, split)
    check_classes(index.class_names, manifest, f"{data_dir}/{split}")
    yield from file_batches(index.paths, index.labels, (channels, height, width), batch_size)


def file_batches(
    paths: Sequence[str],
    labels: Sequence[int],
    shape: tuple[int, int, int],
    batch_size: int = 512,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Evaluation batches of image files, decoded a batch at a time to (C, H, W) `shape`."""
    channels, height, width = shape
    for start in range(0, len(paths), batch_size):
        images = imagefolder.decode_files(
            paths[start : start + batch_size], (height, width), channels
        )
        yield images, np.asarray(labels[start : start + batch_size], dtype=np.int64)


def check_classes(found: tuple[str, ...], manifest: Manifest, where: str) -> None:
    """Refuse a split whose classes are not the checkpoint's, in the same order.

    Raises:
        DataError: naming both lists.
    """
    if tuple(found) != tuple(manifest.class_names):
        raise DataError(
            f"{where}: classes {list(found)} differ from the checkpoint's "
            f"{list(manifest.class_names)}"
        )
