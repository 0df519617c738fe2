"""The one in-memory dataset type every reader returns."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from raysight.errors import DataError

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "test")


def check_split(split: str, dataset: str) -> None:
    """Reject a split name that a fixed-split dataset does not have.

    Args:
        split: The requested split.
        dataset: The dataset name, for the message.

    Raises:
        DataError: If `split` is not one of `SPLITS`.
    """
    if split not in SPLITS:
        raise DataError(f"{dataset}: unknown split {split!r}; expected one of {list(SPLITS)}")


def class_frequencies(labels: np.ndarray | Sequence[int], num_classes: int) -> tuple[float, ...]:
    """The fraction of samples in each class, from the labels alone (no pixels are read).

    Args:
        labels: (N,) class indices in [0, num_classes), e.g. `ArrayDataset.labels` or
            `ImageFolderIndex.labels`.
        num_classes: K; a class without samples gets 0.0.

    Returns:
        K fractions in class order, summing to 1.

    Raises:
        DataError: If there are no labels or one is outside [0, num_classes).
    """
    classes = np.asarray(labels, dtype=np.int64)  # (N,)
    if classes.size == 0:
        raise DataError("cannot count class frequencies of an empty split")
    if classes.min() < 0 or classes.max() >= num_classes:
        raise DataError(
            f"labels span [{classes.min()}, {classes.max()}] but there are {num_classes} classes"
        )
    counts = np.bincount(classes, minlength=num_classes)  # (K,)
    return tuple(float(c) for c in counts / classes.size)


# eq=False: the generated __eq__ would compare arrays element-wise and fail on `bool(...)`,
# and the generated __hash__ would try to hash arrays. Identity semantics are what we want.
@dataclass(frozen=True, eq=False)
class ArrayDataset:
    """A whole split in memory.

    Attributes:
        name: Dataset name, e.g. "mnist".
        images: (N, C, H, W) uint8, C-contiguous.
        labels: (N,) int64, values in [0, len(class_names)).
        class_names: One name per label index.
    """

    name: str
    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
            raise DataError(f"{self.name}: images must be a uint8 array of shape (N, C, H, W)")
        if not images.flags.c_contiguous:
            raise DataError(f"{self.name}: images must be C-contiguous")
        if not isinstance(labels, np.ndarray) or labels.dtype != np.int64 or labels.ndim != 1:
            raise DataError(f"{self.name}: labels must be an int64 array of shape (N,)")
        if len(images) != len(labels):
            raise DataError(f"{self.name}: {len(images)} images but {len(labels)} labels")
        if not self.class_names or len(set(self.class_names)) != len(self.class_names):
            raise DataError(f"{self.name}: class names must be non-empty and unique")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(self.class_names)):
            raise DataError(
                f"{self.name}: labels span [{labels.min()}, {labels.max()}] but there are "
                f"{len(self.class_names)} classes"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        # The default repr would print pixel arrays into logs.
        return (
            f"ArrayDataset(name={self.name!r}, n={len(self)}, image_shape={self.image_shape}, "
            f"classes={len(self.class_names)})"
        )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """The (C, H, W) shape of one image."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def subset(self, indices: np.ndarray) -> ArrayDataset:
        """Return the rows at `indices` (integer positions or a boolean mask), as copies.

        Args:
            indices: (K,) integer positions, or an (N,) boolean mask.

        Returns:
            A new dataset with the same name and class names.
        """
        # Advanced indexing copies, so the result is C-contiguous and independent of self.
        return ArrayDataset(
            name=self.name,
            images=self.images[indices],
            labels=self.labels[indices],
            class_names=self.class_names,
        )
