"""The Open Inference Protocol's numeric datatypes: one table, and numpy dtypes both ways."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import numpy as np

from raysight.errors import InputError

# The one datatype table: OIP datatype -> (little-endian numpy dtype, the InferTensorContents
# field that carries its typed values). FP16 has no typed field, so it travels raw only.
# BYTES (variable-length strings) is not a numeric tensor: see codec/bytes_tensor.py.
_TABLE: Mapping[str, tuple[str, str | None]] = {
    "BOOL": ("|b1", "bool_contents"),
    "UINT8": ("|u1", "uint_contents"),
    "UINT16": ("<u2", "uint_contents"),
    "UINT32": ("<u4", "uint_contents"),
    "UINT64": ("<u8", "uint64_contents"),
    "INT8": ("|i1", "int_contents"),
    "INT16": ("<i2", "int_contents"),
    "INT32": ("<i4", "int_contents"),
    "INT64": ("<i8", "int64_contents"),
    "FP16": ("<f2", None),
    "FP32": ("<f4", "fp32_contents"),
    "FP64": ("<f8", "fp64_contents"),
}

DATATYPES: Mapping[str, np.dtype[Any]] = MappingProxyType(
    {name: np.dtype(code) for name, (code, _) in _TABLE.items()}
)
CONTENTS_FIELDS: Mapping[str, str | None] = {name: field for name, (_, field) in _TABLE.items()}
# (kind, itemsize) -> datatype: matches a dtype whatever its byte order.
_BY_KIND: Mapping[tuple[str, int], str] = {
    (dtype.kind, dtype.itemsize): name for name, dtype in DATATYPES.items()
}
# The protobuf type of each InferTensorContents field. Small integer types travel widened
# (UINT8 in uint32 values), so decoding checks that every value fits the datatype.
CONTENTS_DTYPES: Mapping[str, np.dtype[Any]] = {
    "bool_contents": np.dtype("|b1"),
    "int_contents": np.dtype("<i4"),
    "int64_contents": np.dtype("<i8"),
    "uint_contents": np.dtype("<u4"),
    "uint64_contents": np.dtype("<u8"),
    "fp32_contents": np.dtype("<f4"),
    "fp64_contents": np.dtype("<f8"),
}


def to_numpy_dtype(datatype: str, field: str) -> np.dtype[Any]:
    """The numpy dtype of an OIP datatype.

    Args:
        datatype: An OIP datatype string, e.g. "FP32".
        field: The tensor the datatype belongs to, for messages, e.g. 'inputs[0] "images"'.

    Returns:
        The little-endian numpy dtype.

    Raises:
        InputError: If the datatype is unknown or not numeric (BYTES).
    """
    dtype = DATATYPES.get(datatype)
    if dtype is None:
        raise InputError(
            f'{field}: datatype "{datatype}" is not supported; use one of {", ".join(DATATYPES)}'
        )
    return dtype


def from_numpy_dtype(dtype: np.dtype[Any]) -> str:
    """The OIP datatype of a numpy dtype, whatever its byte order.

    Args:
        dtype: A boolean, integer or floating point dtype.

    Returns:
        The OIP datatype string, e.g. "FP32".

    Raises:
        ValueError: If no OIP datatype matches (complex, string, object and other dtypes).
    """
    dtype = np.dtype(dtype)
    name = _BY_KIND.get((dtype.kind, dtype.itemsize))
    if name is None:
        raise ValueError(
            f"numpy dtype {dtype} has no OIP datatype; use one of {', '.join(DATATYPES)}"
        )
    return name
