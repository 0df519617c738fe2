"""Dataset readers behind one interface: uint8 NCHW images, int64 labels, class names.

The readers are imported when a split is loaded, not with the package: serving imports
`raysight.data.transforms` (the normalisation the model was trained with) and nothing that
reads datasets.
"""

from __future__ import annotations

import logging

from raysight.data.base import ArrayDataset, class_frequencies
from raysight.errors import DataError

__all__ = [
    "DATASETS",
    "NATURAL_IMAGES",
    "ArrayDataset",
    "class_frequencies",
    "load_arrays",
]

logger = logging.getLogger(__name__)

DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion-mnist", "cifar10", "imagefolder")
# Datasets where a left-right mirror is still a valid image of the same class (not digits).
NATURAL_IMAGES: frozenset[str] = frozenset({"cifar10", "imagefolder"})


def load_arrays(
    name: str,
    root: str | None,
    split: str,
    *,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
) -> ArrayDataset:
    """Load a whole split of a registered dataset into memory.

    Args:
        name: One of `DATASETS`.
        root: Folder (local path or URI) of the files; ignored by "digits", required otherwise.
        split: "train" or "test" (for "imagefolder", any subfolder of `root`).
        image_size: Output (H, W); required by "imagefolder", ignored by the others.
        channels: 1 or 3; required by "imagefolder", ignored by the others.

    Returns:
        The split's images, labels and class names.

    Raises:
        DataError: If `name` is unknown, a required argument is missing, or the data is bad.
    """
    if name not in DATASETS:
        raise DataError(f"{name}: unknown dataset; known datasets: {', '.join(DATASETS)}")
    if name == "digits":
        from raysight.data.digits import load_digits

        return load_digits(split)
    if root is None:
        raise DataError(f"{name}: a data root (folder or URI) is required")
    if name in ("mnist", "fashion-mnist"):
        from raysight.data.idx import load_idx

        return load_idx(root, split, name)
    if name == "cifar10":
        from raysight.data.cifar import load_cifar10

        return load_cifar10(root, split)
    if image_size is None or channels is None:
        raise DataError(f"{name}: image_size and channels are required")
    from raysight.data import imagefolder

    index = imagefolder.scan(root, split)
    return imagefolder.load_arrays(index, image_size, channels, name=name)
