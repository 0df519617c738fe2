"""Decode an image folder once, in parallel Ray tasks, so every epoch feeds from memory.

Decoding and resizing a photo costs more than a small model's training step on it: a run
that decodes every image again each epoch spends most of its wall time there. When the
decoded splits fit, they are decoded once and stored like the in-memory datasets.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import ray

from raysight.data import ArrayDataset
from raysight.data import imagefolder as imagefolder_data
from raysight.errors import DataError

logger = logging.getLogger(__name__)

# Images per decode task: enough to amortise a task's overhead, small enough that the
# tasks spread over every core of a small folder.
_CHUNK = 256
# The share of the cluster's object store the decoded splits may take under "auto": the
# store also holds Ray Train's and Ray Data's objects, and the decode's chunks briefly
# coexist with the joined arrays.
_STORE_SHARE = 0.25


def decoded_bytes(rows: int, shape: tuple[int, int, int]) -> int:
    """Bytes of `rows` decoded images of (C, H, W) uint8."""
    channels, height, width = shape
    return rows * channels * height * width


def fits_in_memory(total_bytes: int) -> bool:
    """Whether `total_bytes` of decoded images fit the connected cluster's budget."""
    store = float(ray.cluster_resources().get("object_store_memory", 0.0))
    return total_bytes <= store * _STORE_SHARE


def gather(pending: list[ray.ObjectRef]) -> list[Any]:
    """`ray.get` of tasks that read files: a task's DataError comes back as itself, naming
    the file, not wrapped in Ray's traceback."""
    try:
        return ray.get(pending)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, DataError):
            raise DataError(str(exc.cause)) from None
        raise


@ray.remote(num_cpus=1)
def _decode_chunk(paths: Sequence[str], size: tuple[int, int], channels: int) -> np.ndarray:
    # Returns (len(paths), C, H, W) uint8.
    return imagefolder_data.decode_files(paths, size, channels)


def decode_index(
    index: imagefolder_data.ImageFolderIndex, shape: tuple[int, int, int], name: str, role: str
) -> ArrayDataset:
    """Decode every image of an index with Ray tasks across the cluster, in index order.

    Args:
        index: The split's files and labels.
        shape: (C, H, W) of every decoded image.
        name: Dataset name to record.
        role: What the split is for, in the log line: "training", "validation", "test".

    Returns:
        The split in memory: (N, C, H, W) uint8 images and (N,) labels.

    Raises:
        DataError: If a file cannot be read or decoded; the message names it.
    """
    channels, height, width = shape
    start = time.perf_counter()
    chunks = [
        _decode_chunk.remote(index.paths[i : i + _CHUNK], (height, width), channels)
        for i in range(0, len(index.paths), _CHUNK)
    ]
    images = np.concatenate(gather(chunks))  # (N, C, H, W)
    logger.info(
        "%s images (%s/%s): decoded %d images once (%.0f MB) in %.1fs",
        role,
        index.root,
        index.split,
        len(images),
        images.nbytes / 1e6,
        time.perf_counter() - start,
    )
    return ArrayDataset(
        name=name,
        images=images,
        labels=np.asarray(index.labels, dtype=np.int64),
        class_names=index.class_names,
    )
