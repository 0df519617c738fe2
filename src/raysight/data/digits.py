"""The embedded default dataset: scikit-learn's 1,797 real 8x8 handwritten digits (offline)."""

from __future__ import annotations

import logging

import numpy as np

from raysight.data.base import ArrayDataset, check_split

logger = logging.getLogger(__name__)

_TEST_FRACTION = 0.2
_SPLIT_SEED = 0  # fixed so "train" and "test" never overlap across runs or machines
_MAX_PIXEL = 16  # the source images hold ink counts 0..16 per 4x4 block
CLASS_NAMES: tuple[str, ...] = tuple(str(d) for d in range(10))


def load_digits(split: str) -> ArrayDataset:
    """Load one split of the scikit-learn digits as 8x8 grey images.

    There is no official split: a permutation with a fixed seed puts the last 20 % (rounded)
    in "test" and the rest in "train".

    Args:
        split: "train" or "test".

    Returns:
        (N, 1, 8, 8) uint8 images scaled to 0..255, with labels 0..9.

    Raises:
        DataError: If `split` is unknown.
    """
    check_split(split, "digits")
    # Imported here: scikit-learn takes about a second to import and only this reader needs it.
    from sklearn.datasets import load_digits as sklearn_load_digits

    bunch = sklearn_load_digits()
    pixels = np.asarray(bunch.images, dtype=np.float64)  # (1797, 8, 8) in 0..16
    images = np.rint(pixels * 255.0 / _MAX_PIXEL).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    labels = np.asarray(bunch.target, dtype=np.int64)

    order = np.random.default_rng(_SPLIT_SEED).permutation(len(labels))
    n_test = round(len(labels) * _TEST_FRACTION)
    chosen = order[len(order) - n_test :] if split == "test" else order[: len(order) - n_test]
    logger.debug("digits %s: %d of %d images", split, len(chosen), len(labels))
    return ArrayDataset(
        name="digits",
        images=np.ascontiguousarray(images[chosen]),
        labels=labels[chosen],
        class_names=CLASS_NAMES,
    )
