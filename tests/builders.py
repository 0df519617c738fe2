"""Builders of small, valid dataset files, shared by the reader tests and the S3 test."""

from __future__ import annotations

import io
import struct

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
