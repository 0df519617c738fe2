"""The embedded scikit-learn digits and their fixed split."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits as sklearn_load_digits

from raysight.data import load_arrays
from raysight.data.digits import load_digits
from raysight.errors import DataError

TOTAL = 1797
N_TEST = round(TOTAL * 0.2)  # 359


def _rows(images: np.ndarray) -> list[bytes]:
    return sorted(img.tobytes() for img in images)


def test_splits_have_the_documented_sizes_and_format() -> None:
    train, test = load_digits("train"), load_digits("test")
    assert train.images.shape == (TOTAL - N_TEST, 1, 8, 8)
    assert test.images.shape == (N_TEST, 1, 8, 8)
    for ds in (train, test):
        assert ds.name == "digits"
        assert ds.images.dtype == np.uint8
        assert ds.labels.dtype == np.int64
        assert ds.class_names == tuple("0123456789")
        assert set(ds.labels.tolist()) == set(range(10))  # every digit in each split


def test_splits_partition_the_scaled_source_images() -> None:
    source = sklearn_load_digits()
    expected = np.round(source.images * 255 / 16).astype(np.uint8)[:, None]
    train, test = load_digits("train"), load_digits("test")
    both = np.concatenate([train.images, test.images])
    assert _rows(both) == _rows(expected)
    assert both.max() == 255
    assert both.min() == 0
    # Every image keeps its own label.
    labels_of: dict[bytes, set[int]] = {}
    for img, label in zip(expected, source.target, strict=True):
        labels_of.setdefault(img.tobytes(), set()).add(int(label))
    for ds in (train, test):
        assert all(
            int(label) in labels_of[img.tobytes()]
            for img, label in zip(ds.images, ds.labels, strict=True)
        )


def test_split_is_deterministic() -> None:
    first, second = load_digits("test"), load_digits("test")
    np.testing.assert_array_equal(first.images, second.images)
    np.testing.assert_array_equal(first.labels, second.labels)


def test_registry_loads_digits_without_a_root() -> None:
    ds = load_arrays("digits", None, "test")
    assert len(ds) == N_TEST


def test_unknown_split_is_rejected() -> None:
    with pytest.raises(DataError, match="validation"):
        load_digits("validation")
