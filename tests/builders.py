"""Builders of small, valid dataset files, shared by the reader tests and the S3 test."""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """An IDX file: big-endian magic, one big-endian size per dimension, then uint8 data."""
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def encode_image(pixels: np.ndarray, fmt: str) -> bytes:
    """(H, W, 3) or (H, W) uint8 pixels as an encoded PNG/JPEG/... file."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def write_cifar10(folder: Path, labels: dict[str, list[int]]) -> Path:
    """CIFAR-10 python batches in `folder`: for each batch name ("data_batch_1".."5",
    "test_batch") the given labels with black images, and a `batches.meta` naming the classes.

    Pickled at protocol 4, which writes bytes natively (protocol 2 would go through
    `_codecs.encode`, which the reader refuses) and arrays in band (protocol 5 may not).
    """
    folder.mkdir(parents=True, exist_ok=True)
    for name, batch_labels in labels.items():
        data = np.zeros((len(batch_labels), 3 * 32 * 32), dtype=np.uint8)  # (N, 3072)
        batch = {b"data": data, b"labels": batch_labels}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=4))
    meta = {b"label_names": [f"class{k}".encode() for k in range(10)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=4))
    return folder
