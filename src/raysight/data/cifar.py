"""CIFAR-10 "python version" batches, unpickled with an allow-list of globals."""

from __future__ import annotations

import io
import logging
import pickle
from typing import Any

import numpy as np

from raysight import storage
from raysight.data.base import ArrayDataset, check_split
from raysight.errors import DataError

logger = logging.getLogger(__name__)

SUBFOLDER = "cifar-10-batches-py"  # the name inside the official tarball
TRAIN_BATCHES: tuple[str, ...] = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES: tuple[str, ...] = ("test_batch",)
META = "batches.meta"
_IMAGE_SHAPE = (3, 32, 32)  # rows of 3072 bytes: all red, then green, then blue, row-major
_ROW_BYTES = 3 * 32 * 32
_NUM_CLASSES = 10

# The batches were pickled by numpy 1.x (module numpy.core); numpy 2.x writes numpy._core.
# Both names map to the same function, taken from a live array so no deprecated module is
# imported. Anything else, os.system included, is refused before it can be called.
_RECONSTRUCT = np.empty(0).__reduce__()[0]
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals a numpy array needs."""

    def __init__(self, data: bytes, source: str) -> None:
        # encoding="bytes": the batches come from Python 2, whose str keys become bytes here.
        super().__init__(io.BytesIO(data), encoding="bytes")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(
                f"{self._source}: refusing to unpickle {module}.{name}; "
                "a CIFAR batch may only contain numpy arrays and plain Python values"
            ) from None


def _unpickle(path: str) -> dict[bytes, Any]:
    try:
        obj = _RestrictedUnpickler(storage.read_bytes(path), path).load()
    except DataError:
        raise
    except Exception as exc:
        # A malformed stream can fail in many ways (UnpicklingError, EOFError, TypeError...).
        raise DataError(f"{path}: not a readable pickle ({exc})") from exc
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict, found {type(obj).__name__}")
    return obj


def _read_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    data, labels = batch.get(b"data"), batch.get(b"labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise DataError(f"{path}: b'data' must be a uint8 array of shape (N, {_ROW_BYTES})")
    if data.shape[1] != _ROW_BYTES:
        raise DataError(f"{path}: b'data' has shape {data.shape}, expected (N, {_ROW_BYTES})")
    if not isinstance(labels, list) or not all(isinstance(x, int) for x in labels):
        raise DataError(f"{path}: b'labels' must be a list of ints")
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} labels")
    label_array = np.asarray(labels, dtype=np.int64)
    if len(label_array) and (label_array.min() < 0 or label_array.max() >= _NUM_CLASSES):
        raise DataError(f"{path}: labels outside 0..{_NUM_CLASSES - 1}")
    return data.reshape(-1, *_IMAGE_SHAPE), label_array


def _read_class_names(path: str) -> tuple[str, ...]:
    names = _unpickle(path).get(b"label_names")
    if (
        not isinstance(names, list)
        or len(names) != _NUM_CLASSES
        or not all(isinstance(n, bytes) for n in names)
    ):
        raise DataError(f"{path}: b'label_names' must be a list of {_NUM_CLASSES} byte strings")
    return tuple(n.decode("utf-8") for n in names)


def _batch_folder(root: str) -> str:
    """`root` or its `cifar-10-batches-py/`, whichever holds the batches."""
    entries = {storage.name_of(entry): is_dir for entry, is_dir in storage.list_dir(root)}
    if entries.get(SUBFOLDER):
        return storage.join(root, SUBFOLDER)
    if META in entries:
        return root
    raise DataError(_no_batches(root, entries))


def _no_batches(root: str, entries: dict[str, bool]) -> str:
    """Why `root` holds no batches, and where they are if that can be seen from here."""
    message = (
        f"{root}: no CIFAR-10 batches ({META}, data_batch_1..5, test_batch) here or in {SUBFOLDER}/"
    )
    found = storage.find_below(root, lambda below: META in below)
    if found is not None:
        return f"{message}; found them in {found}: set the data directory (--data-dir) to {found}"
    archives = [name for name, is_dir in entries.items() if not is_dir and name.endswith(".tar.gz")]
    if archives:
        archive = storage.join(root, archives[0])
        return f"{message}; extract the archive first: tar -xzf {archive} -C {root}"
    if entries.get("train"):
        train = storage.join(root, "train")
        return f"{message}; {train} looks like an image folder: use --dataset imagefolder"
    return message


def _batches(split: str) -> tuple[str, ...]:
    return TRAIN_BATCHES if split == "train" else TEST_BATCHES


def load_cifar10(root: str, split: str) -> ArrayDataset:
    """Load one split of CIFAR-10 from its python batches.

    Args:
        root: Folder (local path or URI) holding the batches, directly or in
            `cifar-10-batches-py/`.
        split: "train" (`data_batch_1`..`data_batch_5`) or "test" (`test_batch`).

    Returns:
        (N, 3, 32, 32) uint8 images with labels 0..9 and the names from `batches.meta`.

    Raises:
        DataError: If a file is missing, is not a safe pickle, or has the wrong shape.
    """
    check_split(split, "cifar10")
    folder = _batch_folder(root)
    class_names = _read_class_names(storage.join(folder, META))
    parts = [_read_batch(storage.join(folder, name)) for name in _batches(split)]
    images = np.concatenate([p[0] for p in parts])  # (N, 3, 32, 32), a fresh contiguous copy
    labels = np.concatenate([p[1] for p in parts])
    logger.info("loaded cifar10 %s: %d images from %s", split, len(labels), folder)
    return ArrayDataset(name="cifar10", images=images, labels=labels, class_names=class_names)
