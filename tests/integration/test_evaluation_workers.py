"""Scoring a checkpoint in shards on Ray tasks gives the figures of one pass in-process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from raysight.checkpoint import load_checkpoint
from raysight.data import load_arrays
from raysight.data.imagefolder import scan
from raysight.engine import Engine
from raysight.errors import DataError
from raysight.evaluate import array_batches, evaluate
from raysight.train.evaluation import Placement, evaluate_on_workers
from tests.conftest import RayCluster
from tests.integration.serving import digits_checkpoint, png

pytestmark = [pytest.mark.integration]

PLACEMENT = Placement(workers=3, cpus=0.5, gpu=False)  # three shards on two cores


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return digits_checkpoint(tmp_path_factory.mktemp("digits") / "ckpt", seed=0, epochs=2)


def test_shards_in_memory_add_up_to_one_pass(ray_cluster: RayCluster, checkpoint: Path) -> None:
    loaded = load_checkpoint(checkpoint)
    split = load_arrays("digits", None, "test")
    here = evaluate(Engine(loaded), array_batches(split.images, split.labels))
    remote = evaluate_on_workers(loaded, split, PLACEMENT)
    assert remote.samples == len(split) == here.samples
    np.testing.assert_array_equal(remote.confusion, here.confusion)
    assert remote.loss == pytest.approx(here.loss, rel=1e-5)
    assert remote.class_names == here.class_names


def _digit_folder(root: Path, count: int) -> Path:
    split = load_arrays("digits", None, "test")
    for i in range(count):
        folder = root / "test" / split.class_names[split.labels[i]]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:04d}.png").write_bytes(png(split.images[i, 0]))
    return root


def test_shards_of_files_are_decoded_where_they_are_scored(
    ray_cluster: RayCluster, checkpoint: Path, tmp_path: Path
) -> None:
    root = _digit_folder(tmp_path, 90)
    loaded = load_checkpoint(checkpoint)
    index = scan(str(root), "test")
    # The folder's class names are the digits present: compare counts on the same files.
    in_memory = load_arrays("imagefolder", str(root), "test", image_size=(8, 8), channels=1)
    here = evaluate(Engine(loaded), array_batches(in_memory.images, in_memory.labels))
    remote = evaluate_on_workers(loaded, index, PLACEMENT)
    assert remote.samples == 90
    np.testing.assert_array_equal(remote.confusion, here.confusion)


def test_a_broken_file_is_named(ray_cluster: RayCluster, checkpoint: Path, tmp_path: Path) -> None:
    root = _digit_folder(tmp_path, 12)
    broken = sorted((root / "test").rglob("*.png"))[5]
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DataError, match=f"^{broken}: "):
        evaluate_on_workers(load_checkpoint(checkpoint), scan(str(root), "test"), PLACEMENT)
