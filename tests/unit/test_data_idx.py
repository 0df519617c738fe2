"""IDX (MNIST-style) reader: generated files, every corruption case, and the real MNIST."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pytest

from raysight.data import load_arrays
from raysight.data.idx import IMAGES_MAGIC, LABELS_MAGIC, load_idx
from raysight.data.transforms import channel_stats
from raysight.errors import DataError
from tests.builders import idx_bytes

REAL_MNIST = Path(__file__).resolve().parents[2].parent / "shared/datasets/mnist"


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def _write_split(
    root: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool = True
) -> tuple[Path, Path]:
    ext = ".gz" if gz else ""
    return (
        _write(root / f"{prefix}-images-idx3-ubyte{ext}", idx_bytes(images, IMAGES_MAGIC)),
        _write(root / f"{prefix}-labels-idx1-ubyte{ext}", idx_bytes(labels, LABELS_MAGIC)),
    )


def _sample(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 5, 4), dtype=np.uint8)  # not square on purpose
    return images, np.arange(n) % 10


@pytest.mark.parametrize("gz", [True, False])
def test_reads_both_splits(tmp_path: Path, gz: bool) -> None:
    train_images, train_labels = _sample(7, seed=1)
    test_images, test_labels = _sample(3, seed=2)
    _write_split(tmp_path, "train", train_images, train_labels, gz=gz)
    _write_split(tmp_path, "t10k", test_images, test_labels, gz=gz)

    train = load_idx(str(tmp_path), "train")
    test = load_idx(str(tmp_path), "test")
    assert train.images.shape == (7, 1, 5, 4)
    np.testing.assert_array_equal(train.images[:, 0], train_images)
    np.testing.assert_array_equal(train.labels, train_labels)
    assert train.labels.dtype == np.int64
    assert train.images.flags.writeable
    np.testing.assert_array_equal(test.images[:, 0], test_images)
    assert train.class_names == tuple("0123456789")


def test_fashion_class_names_and_registry(tmp_path: Path) -> None:
    _write_split(tmp_path, "train", *_sample(4))
    ds = load_arrays("fashion-mnist", str(tmp_path), "train")
    assert ds.name == "fashion-mnist"
    assert ds.class_names[0] == "T-shirt/top"
    assert ds.class_names[9] == "Ankle boot"
    assert len(ds.class_names) == 10


def test_prefers_the_uncompressed_file_when_both_exist(tmp_path: Path) -> None:
    images, labels = _sample(4)
    _write_split(tmp_path, "train", images, labels, gz=False)
    # A broken .gz beside the good plain file must not be touched.
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"junk")
    np.testing.assert_array_equal(load_idx(str(tmp_path), "train").images[:, 0], images)


def test_missing_files_name_the_expected_files(tmp_path: Path) -> None:
    _write_split(tmp_path, "train", *_sample(4))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte nor t10k-images-idx3-ubyte\.gz"):
        load_idx(str(tmp_path), "test")


@pytest.mark.parametrize("nested", ["mnist", "MNIST/raw"])
def test_files_one_or_two_levels_down_are_pointed_at(tmp_path: Path, nested: str) -> None:
    folder = tmp_path / nested
    folder.mkdir(parents=True)
    _write_split(folder, "train", *_sample(3))
    with pytest.raises(DataError) as caught:
        load_idx(str(tmp_path), "train")
    assert str(caught.value) == (
        f"{tmp_path}: no train-images-idx3-ubyte[.gz] here, but {folder} holds it: "
        f"set the data directory (--data-dir) to {folder}"
    )


def test_no_files_anywhere_suggests_the_download(tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match=re.escape(f"raysight data download fashion-mnist --to {tmp_path}")
    ):
        load_idx(str(tmp_path), "train", "fashion-mnist")


def test_missing_root_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="absent"):
        load_idx(str(tmp_path / "absent"), "train")


def test_truncated_images_file(tmp_path: Path) -> None:
    images_path, _ = _write_split(tmp_path, "train", *_sample(4))
    data = gzip.decompress(images_path.read_bytes())
    images_path.write_bytes(gzip.compress(data[:-7]))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz.*80 bytes.*73"):
        load_idx(str(tmp_path), "train")


def test_file_shorter_than_its_header(tmp_path: Path) -> None:
    _write_split(tmp_path, "train", *_sample(4))
    _write(tmp_path / "train-labels-idx1-ubyte.gz", b"\x00\x00\x08")
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz.*header"):
        load_idx(str(tmp_path), "train")


def test_wrong_magic(tmp_path: Path) -> None:
    images, labels = _sample(4)
    _write_split(tmp_path, "train", images, labels)
    # A labels file where the images file belongs.
    _write(tmp_path / "train-images-idx3-ubyte.gz", idx_bytes(labels, LABELS_MAGIC))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz.*0x00000801"):
        load_idx(str(tmp_path), "train")


def test_count_mismatch_names_both_files(tmp_path: Path) -> None:
    images, labels = _sample(4)
    _write_split(tmp_path, "train", images, labels[:3])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz.*train-labels-idx1-ubyte"):
        load_idx(str(tmp_path), "train")


def test_label_out_of_range(tmp_path: Path) -> None:
    images, _ = _sample(2)
    _write_split(tmp_path, "train", images, np.array([3, 10]))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz.*label 10"):
        load_idx(str(tmp_path), "train")


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda gz: b"this is not gzip" + gz, id="not-gzip"),
        pytest.param(lambda gz: gz[: len(gz) // 2], id="cut-short"),
        pytest.param(lambda gz: gz[:20] + bytes(b ^ 0xFF for b in gz[20:40]) + gz[40:], id="bits"),
    ],
)
def test_corrupt_gzip(tmp_path: Path, corrupt: object) -> None:
    images_path, _ = _write_split(tmp_path, "train", *_sample(50))
    images_path.write_bytes(corrupt(images_path.read_bytes()))  # type: ignore[operator]
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz"):
        load_idx(str(tmp_path), "train")


def test_unknown_name_and_split(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="kmnist"):
        load_idx(str(tmp_path), "train", name="kmnist")
    with pytest.raises(DataError, match="val"):
        load_idx(str(tmp_path), "val")


@pytest.mark.slow
@pytest.mark.skipif(not REAL_MNIST.is_dir(), reason=f"real MNIST not present at {REAL_MNIST}")
def test_real_mnist() -> None:
    train = load_idx(str(REAL_MNIST), "train")
    test = load_idx(str(REAL_MNIST), "test")
    assert train.images.shape == (60000, 1, 28, 28)
    assert test.images.shape == (10000, 1, 28, 28)
    # The published per-class counts of both splits.
    assert np.bincount(train.labels).tolist() == [
        5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949,
    ]  # fmt: skip
    assert np.bincount(test.labels).tolist() == [
        980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009,
    ]  # fmt: skip
    assert set(test.labels.tolist()) == set(range(10))
    # The widely quoted normalisation constants of MNIST.
    mean, std = channel_stats(train.images)
    assert mean[0] == pytest.approx(0.1307, abs=1e-4)
    assert std[0] == pytest.approx(0.3081, abs=1e-4)
