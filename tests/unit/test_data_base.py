"""ArrayDataset: validation, shape helpers and subsetting."""

from __future__ import annotations

import numpy as np
import pytest

from raysight.data import ArrayDataset
from raysight.errors import DataError

CLASSES = ("a", "b", "c")


def _dataset(n: int = 6, **overrides: object) -> ArrayDataset:
    fields: dict[str, object] = {
        "name": "toy",
        "images": np.arange(n * 2 * 3 * 4, dtype=np.uint8).reshape(n, 2, 3, 4),
        "labels": np.arange(n, dtype=np.int64) % len(CLASSES),
        "class_names": CLASSES,
    }
    fields.update(overrides)
    return ArrayDataset(**fields)  # type: ignore[arg-type]


def test_valid_dataset_reports_length_and_shape() -> None:
    ds = _dataset()
    assert len(ds) == 6
    assert ds.image_shape == (2, 3, 4)
    assert all(isinstance(v, int) for v in ds.image_shape)
    assert "n=6" in repr(ds)


def test_subset_copies_the_selected_rows() -> None:
    ds = _dataset()
    sub = ds.subset(np.array([4, 1]))
    assert len(sub) == 2
    np.testing.assert_array_equal(sub.images, ds.images[[4, 1]])
    np.testing.assert_array_equal(sub.labels, [1, 1])
    assert sub.class_names == CLASSES
    assert sub.images.flags.c_contiguous
    sub.images[0] = 0  # a copy: the source is untouched
    assert ds.images[4].any()


def test_empty_dataset_is_allowed() -> None:
    ds = _dataset(0)
    assert len(ds) == 0
    assert ds.image_shape == (2, 3, 4)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"images": np.zeros((6, 2, 3, 4), dtype=np.float32)}, "uint8"),
        ({"images": np.zeros((6, 3, 4), dtype=np.uint8)}, "uint8"),
        ({"images": np.zeros((6, 4, 3, 2), dtype=np.uint8).transpose(0, 3, 2, 1)}, "contiguous"),
        ({"labels": np.zeros(6, dtype=np.int32)}, "int64"),
        ({"labels": np.zeros((6, 1), dtype=np.int64)}, "int64"),
        ({"labels": np.zeros(5, dtype=np.int64)}, "6 images but 5 labels"),
        ({"labels": np.full(6, 3, dtype=np.int64)}, "3 classes"),
        ({"labels": np.full(6, -1, dtype=np.int64)}, "3 classes"),
        ({"class_names": ()}, "class names"),
        ({"class_names": ("a", "a", "b")}, "class names"),
    ],
)
def test_invalid_dataset_is_rejected(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(DataError, match=message):
        _dataset(**overrides)


def test_dataset_is_immutable_and_hashable_by_identity() -> None:
    ds = _dataset()
    with pytest.raises(AttributeError):
        ds.name = "other"  # type: ignore[misc]
    assert ds != _dataset()  # identity, not an element-wise array comparison
    assert {ds: 1}[ds] == 1
