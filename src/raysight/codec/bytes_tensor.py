"""BYTES tensors <-> raw contents: the Open Inference Protocol's variable-length strings.

On the wire each element is a 4-byte little-endian length followed by that many bytes, the
elements in row-major order; this is what Triton sends and what tritonclient's
`deserialize_bytes_tensor` reads. A BYTES array in numpy is an object array of `bytes`.
"""

from __future__ import annotations

import struct

import numpy as np

from raysight.errors import InputError

_LENGTH = struct.Struct("<I")


def encode_bytes_tensor(array: np.ndarray) -> bytes:
    """Serialise an object array of `bytes` (any shape) into raw contents.

    Raises:
        ValueError: If an element is not `bytes`.
    """
    parts: list[bytes] = []
    for item in array.ravel(order="C"):
        if not isinstance(item, bytes):
            raise ValueError(f"a BYTES element must be bytes, got {type(item).__name__}")
        parts += (_LENGTH.pack(len(item)), item)
    return b"".join(parts)


def decode_bytes_tensor(raw: bytes, shape: tuple[int, ...], where: str) -> np.ndarray:
    """Read raw BYTES contents into an object array of `bytes` of the given shape.

    Args:
        raw: The tensor's raw contents.
        shape: The shape the tensor declares.
        where: The tensor, for messages, e.g. 'outputs[0] "probabilities"'.

    Raises:
        InputError: If an element runs past the end, or the element count is not the shape's.
    """
    items: list[bytes] = []
    offset = 0
    count = int(np.prod(shape))
    while offset < len(raw):
        if len(items) == count:  # more elements than the shape holds: stop reading them
            raise InputError(f"{where}: shape {list(shape)} needs {count} BYTES elements, got more")
        if offset + _LENGTH.size > len(raw):
            raise InputError(f"{where}: BYTES contents end inside an element's length")
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += _LENGTH.size
        if offset + length > len(raw):
            raise InputError(f"{where}: a BYTES element of {length} bytes runs past the end")
        items.append(bytes(raw[offset : offset + length]))
        offset += length
    if len(items) != count:
        raise InputError(
            f"{where}: shape {list(shape)} needs {count} BYTES elements, got {len(items)}"
        )
    array = np.empty(count, dtype=object)
    array[:] = items
    return array.reshape(shape)
