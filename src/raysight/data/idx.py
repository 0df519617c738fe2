"""MNIST-style IDX files (MNIST, Fashion-MNIST), gzipped or not, from a local or remote folder."""

from __future__ import annotations

import gzip
import logging
import math
import struct
import zlib

import numpy as np

from raysight import storage
from raysight.data.base import ArrayDataset, check_split
from raysight.errors import DataError

logger = logging.getLogger(__name__)

# Magic numbers: two zero bytes, a type code (0x08 = unsigned byte), then the number of dims.
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801

CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "mnist": tuple(str(d) for d in range(10)),
    "fashion-mnist": (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
}

_PREFIX = {"train": "train", "test": "t10k"}


def parse_idx(data: bytes, magic: int, source: str) -> np.ndarray:
    """Parse an uncompressed IDX file of unsigned bytes.

    Args:
        data: The whole file.
        magic: The expected magic number (`IMAGES_MAGIC` or `LABELS_MAGIC`).
        source: The file's path, for messages.

    Returns:
        A uint8 array shaped as the header's dimensions, e.g. (N, 28, 28) or (N,).

    Raises:
        DataError: On a wrong magic number or a payload whose size disagrees with the header.
    """
    ndim = magic & 0xFF
    header_len = 4 + 4 * ndim  # magic, then one big-endian uint32 per dimension
    if len(data) >= 4:
        (found,) = struct.unpack_from(">I", data, 0)
        if found != magic:
            raise DataError(f"{source}: magic number 0x{found:08x}, expected 0x{magic:08x}")
    if len(data) < header_len:
        raise DataError(f"{source}: {len(data)} bytes is shorter than its {header_len}-byte header")
    dims = struct.unpack_from(f">{ndim}I", data, 4)
    expected = math.prod(dims)
    actual = len(data) - header_len
    if actual != expected:
        raise DataError(
            f"{source}: header dims {dims} need {expected} bytes of data, file has {actual}"
            + (" (truncated)" if actual < expected else "")
        )
    # frombuffer views the immutable bytes; copy once so callers get a writable array.
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(dims).copy()


def _read_maybe_gzipped(path: str) -> bytes:
    raw = storage.read_bytes(path)
    if not path.endswith(".gz"):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot decompress gzip data ({exc})") from exc


def _find(root: str, stem: str, present: set[str], dataset: str) -> str:
    # Prefer the uncompressed file when both exist: it skips a decompression.
    names = (stem, f"{stem}.gz")
    for file_name in names:
        if file_name in present:
            return storage.join(root, file_name)
    found = storage.find_below(root, lambda entries: any(n in entries for n in names))
    if found is not None:
        raise DataError(
            f"{root}: no {stem}[.gz] here, but {found} holds it: "
            f"set the data directory (--data-dir) to {found}"
        )
    raise DataError(
        f"{root}: neither {stem} nor {stem}.gz found; "
        f"`raysight data download {dataset} --to {root}` fetches them"
    )


def load_idx(root: str, split: str, name: str = "mnist") -> ArrayDataset:
    """Load one split of an IDX dataset from a folder.

    Args:
        root: Folder (local path or URI) holding `train-images-idx3-ubyte[.gz]` and friends.
        split: "train" or "test" (the files prefixed "t10k").
        name: "mnist" or "fashion-mnist"; selects the class names.

    Returns:
        (N, 1, H, W) uint8 images and their labels.

    Raises:
        DataError: If a file is missing, corrupt, truncated or inconsistent with its partner.
    """
    if name not in CLASS_NAMES:
        raise DataError(f"{name}: not an IDX dataset; expected one of {list(CLASS_NAMES)}")
    check_split(split, name)
    class_names = CLASS_NAMES[name]
    present = {entry.rsplit("/", 1)[-1] for entry, is_dir in storage.list_dir(root) if not is_dir}
    prefix = _PREFIX[split]
    images_path = _find(root, f"{prefix}-images-idx3-ubyte", present, name)
    labels_path = _find(root, f"{prefix}-labels-idx1-ubyte", present, name)

    images = parse_idx(_read_maybe_gzipped(images_path), IMAGES_MAGIC, images_path)
    labels = parse_idx(_read_maybe_gzipped(labels_path), LABELS_MAGIC, labels_path)
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels"
        )
    if len(labels) and labels.max() >= len(class_names):
        raise DataError(f"{labels_path}: label {labels.max()} >= {len(class_names)} classes")
    logger.info("loaded %s %s: %d images from %s", name, split, len(labels), root)
    return ArrayDataset(
        name=name,
        images=images[:, None],  # (N, H, W) -> (N, 1, H, W); still C-contiguous
        labels=labels.astype(np.int64),
        class_names=class_names,
    )
