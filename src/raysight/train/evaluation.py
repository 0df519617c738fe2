"""Scoring a checkpoint on the cluster: the split in shards, one Ray task per worker.

The final pass of a run and `raysight evaluate` take as long as a validation pass, not as
long as one driver process (a CPU one, even on a GPU cluster) takes over the whole split.
Each task builds the checkpoint's engine on its device, counts its shard, and the counts
add up to the same figures a single pass gives.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass

import numpy as np
import ray
import torch

from raysight.checkpoint import LoadedCheckpoint, Manifest
from raysight.data import ArrayDataset, load_arrays
from raysight.data.imagefolder import ImageFolderIndex, scan
from raysight.engine import Engine
from raysight.errors import ConfigError
from raysight.evaluate import (
    Evaluation,
    Tally,
    array_batches,
    check_classes,
    file_batches,
    tally,
)
from raysight.train.decoded import gather

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Placement:
    """Where the shards run: how many tasks, each with what."""

    workers: int
    cpus: float  # per task; its whole cores are its torch threads
    gpu: bool


def even_placement(workers: int, gpu: bool) -> Placement:
    """`workers` tasks sharing the connected cluster's CPUs evenly (each at least one)."""
    total = int(ray.cluster_resources().get("CPU", 1))
    return Placement(workers=workers, cpus=float(max(1, total // workers)), gpu=gpu)


def labelled_split(
    dataset: str, data_dir: str | None, split: str, manifest: Manifest
) -> ArrayDataset | ImageFolderIndex:
    """A named split to score a checkpoint on: an image folder's files (each task decodes
    its shard) or, for the other datasets, the split in memory.

    Raises:
        ConfigError: An image folder without a data directory.
        DataError: The split is missing or its classes are not the checkpoint's.
    """
    if dataset != "imagefolder":
        arrays = load_arrays(dataset, data_dir, split)
        check_classes(arrays.class_names, manifest, f"{dataset} {split}")
        return arrays
    if data_dir is None:
        raise ConfigError("imagefolder needs a data directory: pass --data-dir DIR")
    index = scan(data_dir, split)
    check_classes(index.class_names, manifest, f"{data_dir}/{split}")
    return index


def _engine(checkpoint: LoadedCheckpoint, placement: Placement) -> Engine:
    torch.set_num_threads(max(1, int(placement.cpus)))
    return Engine(checkpoint, "cuda" if placement.gpu else "cpu")


def _score_rows(
    checkpoint: LoadedCheckpoint,
    images: np.ndarray,
    labels: np.ndarray,
    rows: slice,
    placement: Placement,
) -> Tally:
    # images (N, C, H, W) uint8 and labels (N,) map the object store; a task reads its rows.
    return tally(_engine(checkpoint, placement), array_batches(images[rows], labels[rows]))


def _score_files(
    checkpoint: LoadedCheckpoint,
    paths: tuple[str, ...],
    labels: tuple[int, ...],
    placement: Placement,
) -> Tally:
    shape = checkpoint.manifest.input_shape
    return tally(_engine(checkpoint, placement), file_batches(paths, labels, shape))


def evaluate_on_workers(
    checkpoint: LoadedCheckpoint, split: ArrayDataset | ImageFolderIndex, placement: Placement
) -> Evaluation:
    """Score `checkpoint` on a split in `placement.workers` shards, in parallel Ray tasks.

    Args:
        checkpoint: The loaded checkpoint; stored once, every task maps it.
        split: Images in memory, or an image folder's files (each task decodes its own).
        placement: Tasks and their resources.

    Returns:
        The whole split's accuracy, loss and confusion matrix.

    Raises:
        DataError: A file of the split cannot be read or decoded; the message names it.
    """
    start = time.perf_counter()
    options = {"num_cpus": placement.cpus, "num_gpus": 1 if placement.gpu else 0}
    stored = ray.put(checkpoint)
    n = len(split.labels)
    bounds = np.linspace(0, n, placement.workers + 1).astype(int)  # contiguous shards
    shards = [slice(int(a), int(b)) for a, b in itertools.pairwise(bounds) if b > a]
    if isinstance(split, ArrayDataset):
        images, labels = ray.put(split.images), ray.put(split.labels)
        by_rows = ray.remote(_score_rows).options(**options)
        pending = [by_rows.remote(stored, images, labels, rows, placement) for rows in shards]
    else:
        by_files = ray.remote(_score_files).options(**options)
        pending = [
            by_files.remote(stored, split.paths[rows], split.labels[rows], placement)
            for rows in shards
        ]
    tallies: list[Tally] = gather(pending)
    total = sum(tallies[1:], tallies[0])
    logger.debug(
        "scored %d images in %d shards in %.1fs", n, len(shards), time.perf_counter() - start
    )
    return total.result(checkpoint.manifest.class_names)
