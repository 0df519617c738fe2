"""CIFAR-10 python batches: layout, shapes, and refusal of unsafe pickles."""

from __future__ import annotations

import io
import os
import pickle
import re
import struct
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from raysight.data import load_arrays
from raysight.data.cifar import load_cifar10
from raysight.errors import DataError

LABEL_NAMES = [
    b"airplane", b"automobile", b"bird", b"cat", b"deer",
    b"dog", b"frog", b"horse", b"ship", b"truck",
]  # fmt: skip


class _Python2StylePickler(pickle._Pickler):  # type: ignore[misc]
    """Writes bytes the way Python 2 wrote its str, as the original CIFAR batches were.

    Python 3 at protocol 2 would instead encode bytes through `_codecs.encode`, a global the
    reader rightly refuses; the real files never contain it.
    """

    dispatch: ClassVar[dict[type, Any]] = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def _py2_pickle(obj: object) -> bytes:
    buffer = io.BytesIO()
    _Python2StylePickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def _batch(n: int, seed: int) -> tuple[dict[bytes, object], np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, size=n)]
    batch = {b"batch_label": b"fixture", b"labels": labels, b"data": data,
             b"filenames": [f"img_{i}.png".encode() for i in range(n)]}  # fmt: skip
    return batch, data, labels


def _write_cifar(folder: Path) -> dict[str, tuple[np.ndarray, list[int]]]:
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for seed, name in enumerate(names):
        batch, data, labels = _batch(2 + seed, seed)
        (folder / name).write_bytes(_py2_pickle(batch))
        written[name] = (data, labels)
    meta = {b"label_names": LABEL_NAMES, b"num_cases_per_batch": 10000, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(_py2_pickle(meta))
    return written


def test_fixture_pickles_look_like_the_originals(tmp_path: Path) -> None:
    _write_cifar(tmp_path)
    raw = (tmp_path / "data_batch_1").read_bytes()
    assert raw.startswith(b"\x80\x02")  # protocol 2
    assert b"_codecs" not in raw
    # numpy 2 names the module numpy._core; the originals say numpy.core. Both must load.
    assert b"multiarray\n_reconstruct\n" in raw


@pytest.mark.parametrize("nested", [False, True])
def test_reads_train_and_test(tmp_path: Path, nested: bool) -> None:
    folder = tmp_path / "cifar-10-batches-py" if nested else tmp_path
    written = _write_cifar(folder)

    train = load_cifar10(str(tmp_path), "train")
    test = load_cifar10(str(tmp_path), "test")
    assert train.images.shape == (2 + 3 + 4 + 5 + 6, 3, 32, 32)
    assert test.images.shape == (7, 3, 32, 32)
    assert train.class_names[1] == "automobile"
    assert train.images.dtype == np.uint8
    assert train.labels.dtype == np.int64
    # Row layout is 1024 red, 1024 green, 1024 blue, each row-major 32x32.
    first_data, first_labels = written["data_batch_1"]
    np.testing.assert_array_equal(train.images[0, 1, 0, :], first_data[0, 1024 : 1024 + 32])
    np.testing.assert_array_equal(train.labels[:2], first_labels)
    test_data, test_labels = written["test_batch"]
    np.testing.assert_array_equal(test.images.reshape(7, -1), test_data)
    np.testing.assert_array_equal(test.labels, test_labels)


def test_accepts_numpy_1_module_name(tmp_path: Path) -> None:
    written = _write_cifar(tmp_path)
    path = tmp_path / "test_batch"
    raw = path.read_bytes()
    # GLOBAL opcodes are newline-terminated text, so the module name can be swapped in place.
    path.write_bytes(raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in path.read_bytes()
    np.testing.assert_array_equal(
        load_cifar10(str(tmp_path), "test").images.reshape(7, -1), written["test_batch"][0]
    )


def test_registry_dispatches_to_cifar(tmp_path: Path) -> None:
    _write_cifar(tmp_path)
    assert load_arrays("cifar10", str(tmp_path), "test").name == "cifar10"


class _RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running(tmp_path: Path) -> None:
    _write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    payload = {b"data": _RunsShell(marker), b"labels": []}
    raw = _py2_pickle(payload)
    assert b"\nsystem\n" in raw  # a plain pickle.load would run the shell command
    (tmp_path / "data_batch_3").write_bytes(raw)
    with pytest.raises(DataError, match=r"data_batch_3.*refusing.*system"):
        load_cifar10(str(tmp_path), "train")
    assert not marker.exists()


def test_plain_python3_protocol_2_pickle_is_refused(tmp_path: Path) -> None:
    # Documents a sharp edge: such a file needs _codecs.encode, which is not allowed.
    _write_cifar(tmp_path)
    batch, _, _ = _batch(2, 0)
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match=r"test_batch.*_codecs\.encode"):
        load_cifar10(str(tmp_path), "test")


def test_python3_protocol_4_pickle_loads(tmp_path: Path) -> None:
    _write_cifar(tmp_path)
    batch, data, _ = _batch(2, 0)
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch, protocol=4))
    np.testing.assert_array_equal(load_cifar10(str(tmp_path), "test").images.reshape(2, -1), data)


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}, r"\(2, 3000\)"),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "uint8"),
        ({b"data": np.zeros(3072, np.uint8), b"labels": [0]}, "uint8"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "2 images but 1 labels"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "labels outside"),
        ({b"labels": [0]}, "b'data'"),
        ([1, 2, 3], "expected a dict"),
    ],
)
def test_bad_batch_is_named(tmp_path: Path, batch: object, message: str) -> None:
    _write_cifar(tmp_path)
    (tmp_path / "test_batch").write_bytes(_py2_pickle(batch))
    with pytest.raises(DataError, match=rf"test_batch.*{message}"):
        load_cifar10(str(tmp_path), "test")


def test_truncated_pickle_is_named(tmp_path: Path) -> None:
    _write_cifar(tmp_path)
    path = tmp_path / "data_batch_2"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="data_batch_2"):
        load_cifar10(str(tmp_path), "train")


def test_missing_batch_is_named(tmp_path: Path) -> None:
    _write_cifar(tmp_path)
    (tmp_path / "data_batch_5").unlink()
    with pytest.raises(DataError, match="data_batch_5"):
        load_cifar10(str(tmp_path), "train")


def test_bad_meta_is_named(tmp_path: Path) -> None:
    _write_cifar(tmp_path)
    (tmp_path / "batches.meta").write_bytes(_py2_pickle({b"label_names": LABEL_NAMES[:9]}))
    with pytest.raises(DataError, match=r"batches\.meta"):
        load_cifar10(str(tmp_path), "test")


def test_batches_two_levels_down_are_pointed_at(tmp_path: Path) -> None:
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    _write_cifar(folder)
    with pytest.raises(DataError) as caught:
        load_cifar10(str(tmp_path), "train")
    message = str(caught.value)
    assert message.startswith(f"{tmp_path}: no CIFAR-10 batches")
    assert message.endswith(
        f"found them in {folder}: set the data directory (--data-dir) to {folder}"
    )


def test_an_unextracted_archive_is_named(tmp_path: Path) -> None:
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with pytest.raises(
        DataError, match=re.escape(f"extract the archive first: tar -xzf {archive} -C {tmp_path}")
    ):
        load_cifar10(str(tmp_path), "test")


def test_an_image_folder_is_told_to_use_imagefolder(tmp_path: Path) -> None:
    (tmp_path / "train" / "cat").mkdir(parents=True)
    with pytest.raises(
        DataError, match=r"train looks like an image folder: use --dataset imagefolder$"
    ):
        load_cifar10(str(tmp_path), "train")
