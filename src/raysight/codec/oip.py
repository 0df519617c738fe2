"""Open Inference Protocol tensors <-> numpy arrays.

Symmetric pairs: `decode_inputs` / `encode_inputs` for requests, `encode_outputs` /
`decode_outputs` for responses. A tensor travels either as raw bytes (little-endian,
row-major, one `raw_*_contents` entry per tensor in tensor order) or as typed protobuf values
in its `contents`; one message uses one way for all its tensors. Every malformed message
raises `InputError` with a message that names the tensor.

The functions only read and write message fields, so they take any generated copy of the
protocol's messages, ours or another client library's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from raysight.codec.bytes_tensor import decode_bytes_tensor, encode_bytes_tensor
from raysight.codec.datatypes import (
    CONTENTS_DTYPES,
    CONTENTS_FIELDS,
    from_numpy_dtype,
    to_numpy_dtype,
)
from raysight.errors import InputError

if TYPE_CHECKING:
    from raysight._proto.inference.grpc_service_pb2 import (
        InferTensorContents,
        ModelInferRequest,
        ModelInferResponse,
    )

    _Tensor = ModelInferRequest.InferInputTensor | ModelInferResponse.InferOutputTensor

logger = logging.getLogger(__name__)

_ALL_CONTENTS = (*CONTENTS_DTYPES, "bytes_contents")
BYTES = "BYTES"
"""Variable-length strings: classification results out; in, only as an input that an
`InputSpec` takes as one encoded item a row (an encoded image)."""


@dataclass(frozen=True)
class InputSpec:
    """What one input of a model must be, checked from the request's tensor headers before
    any of its data is read, so a request that cannot fit costs no decoding.

    Attributes:
        shape: The shape after the batch dimension, e.g. (C, H, W).
        datatypes: Each accepted OIP datatype and what it means, for messages, e.g.
            {"FP32": "normalised", "UINT8": "pixels"}.
        encoded: Datatypes accepted instead as one opaque item a row, shape [B] or [B, 1]
            (BYTES only), and what an item is, e.g. {"BYTES": "encoded images"}.
    """

    shape: tuple[int, ...]
    datatypes: Mapping[str, str]
    encoded: Mapping[str, str] = field(default_factory=dict)


def _where(kind: str, index: int, name: str) -> str:
    # How messages name a tensor: 'inputs[0] "images"'.
    return f'{kind}[{index}] "{name}"'


def _raw_per_tensor(
    tensors: Sequence[_Tensor], raw: Sequence[bytes], kind: str, raw_field: str
) -> list[bytes | None]:
    # The raw bytes of each tensor, or None for each when the message uses typed contents.
    if not raw:
        return [None] * len(tensors)
    for i, tensor in enumerate(tensors):
        if tensor.HasField("contents"):
            raise InputError(
                f"{_where(kind, i, tensor.name)}: sets contents while the message also has "
                f"{raw_field}; send every tensor one way, raw or typed"
            )
    if len(raw) != len(tensors):
        raise InputError(
            f"{raw_field}: {len(raw)} entries for {len(tensors)} {kind}; "
            f"send one entry per tensor, in the order of {kind}"
        )
    return list(raw)


def _check_headers(tensors: Sequence[_Tensor], kind: str) -> list[tuple[int, ...]]:
    # Names present and unique, dimensions non-negative. Returns each tensor's shape.
    seen: set[str] = set()
    shapes = []
    for i, tensor in enumerate(tensors):
        where = _where(kind, i, tensor.name)
        if not tensor.name:
            raise InputError(f"{kind}[{i}]: name is empty; name every tensor")
        if tensor.name in seen:
            raise InputError(f"{where}: name appears twice; send each tensor once")
        seen.add(tensor.name)
        shape = tuple(int(d) for d in tensor.shape)
        if any(d < 0 for d in shape):
            raise InputError(f"{where}: shape {list(shape)} has a negative dimension")
        shapes.append(shape)
    return shapes


def _check_batches(
    tensors: Sequence[_Tensor], shapes: Sequence[tuple[int, ...]], max_batch_size: int
) -> None:
    # The first dimension of every input is the batch: 1..max_batch_size, the same for all.
    for i, (tensor, shape) in enumerate(zip(tensors, shapes, strict=True)):
        where = _where("inputs", i, tensor.name)
        if not shape:
            raise InputError(f"{where}: shape [] has no batch dimension; the first is the batch")
        if shape[0] == 0:
            raise InputError(f"{where}: batch size is 0; send at least one item")
        if shape[0] > max_batch_size:
            raise InputError(
                f"{where}: batch size {shape[0]} exceeds the maximum of {max_batch_size}; "
                "split the request",
                reason="batch_too_large",
            )
        if shape[0] != shapes[0][0]:
            raise InputError(
                f"{where}: batch size {shape[0]} differs from {shapes[0][0]} of inputs[0]"
            )


def _check_specs(
    tensors: Sequence[_Tensor], shapes: Sequence[tuple[int, ...]], specs: Mapping[str, InputSpec]
) -> None:
    # Names, datatypes and shapes against the model's, from the headers alone.
    names = [tensor.name for tensor in tensors]
    if sorted(names) != sorted(specs):
        wanted = ", ".join(f'"{name}"' for name in specs)
        count = "one input" if len(specs) == 1 else f"{len(specs)} inputs"
        raise InputError(
            f"inputs: expected {count} named {wanted}, got {sorted(names)}",
            reason="bad_input_name",
        )
    for tensor, shape in zip(tensors, shapes, strict=True):
        spec = specs[tensor.name]
        if tensor.datatype in spec.encoded:
            if shape[1:] not in ((), (1,)):
                raise InputError(
                    f'inputs "{tensor.name}": {tensor.datatype} carries one item a row '
                    f"({spec.encoded[tensor.datatype]}): shape [-1] or [-1, 1], "
                    f"got {list(shape)}",
                    reason="bad_shape",
                )
            continue
        if tensor.datatype not in spec.datatypes:
            accepted = " or ".join(f"{d} ({meaning})" for d, meaning in spec.datatypes.items())
            accepted += "".join(
                f", or {d} ({meaning}, shape [-1])" for d, meaning in spec.encoded.items()
            )
            raise InputError(
                f'inputs "{tensor.name}": datatype must be {accepted}, got {tensor.datatype}',
                reason="bad_datatype",
            )
        if shape[1:] != spec.shape:
            dims = ", ".join(str(d) for d in (-1, *spec.shape))
            raise InputError(
                f'inputs "{tensor.name}": shape must be [{dims}], got {list(shape)}',
                reason="bad_shape",
            )


def _from_raw(
    where: str, datatype: str, dtype: np.dtype[Any], shape: tuple[int, ...], raw: bytes
) -> np.ndarray:
    # The length is checked before the bytes are viewed, so a lying shape never reads past
    # the buffer nor allocates anything.
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise InputError(
            f"{where}: shape {list(shape)} needs {expected} bytes of {datatype}, got {len(raw)}"
        )
    array = np.frombuffer(raw, dtype=dtype).reshape(shape)  # read-only view, no copy
    if dtype.kind == "b" and array.view(np.uint8).max(initial=0) > 1:
        raise InputError(f"{where}: BOOL bytes must be 0 or 1")
    return array.astype(dtype.newbyteorder("="), copy=False)  # a no-op on little-endian hosts


def _check_range(where: str, datatype: str, dtype: np.dtype[Any], values: np.ndarray) -> None:
    # Typed values of 8- and 16-bit integers travel as 32-bit ones: 300 is valid on the wire
    # but not a UINT8.
    if dtype.kind not in "iu" or values.size == 0:
        return
    info = np.iinfo(dtype)
    bad = values[(values < info.min) | (values > info.max)]
    if bad.size:
        raise InputError(
            f"{where}: value {bad[0]} is out of range for {datatype} ({info.min}..{info.max})"
        )


def _from_contents(
    where: str,
    tensor: _Tensor,
    dtype: np.dtype[Any],
    shape: tuple[int, ...],
    raw_field: str,
) -> np.ndarray:
    datatype = tensor.datatype
    field = CONTENTS_FIELDS[datatype]
    if field is None:
        raise InputError(f"{where}: {datatype} has no typed contents field; send it in {raw_field}")
    if not tensor.HasField("contents"):
        raise InputError(f"{where}: no data; set contents.{field} or send {raw_field}")
    others = [f for f in _ALL_CONTENTS if f != field and len(getattr(tensor.contents, f))]
    if others:
        raise InputError(
            f"{where}: a {datatype} tensor carries its values in {field}, not {others[0]}"
        )
    values = getattr(tensor.contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise InputError(
            f"{where}: shape {list(shape)} needs {count} values in contents.{field}, "
            f"got {len(values)}"
        )
    wide = np.fromiter(values, dtype=CONTENTS_DTYPES[field], count=count)
    _check_range(where, datatype, dtype, wide)
    return wide.astype(dtype.newbyteorder("=")).reshape(shape)


def _decode_tensors(
    tensors: Sequence[_Tensor],
    shapes: Sequence[tuple[int, ...]],
    raw: Sequence[bytes | None],
    kind: str,
    raw_field: str,
    *,
    strings: bool = False,
) -> dict[str, np.ndarray]:
    # strings: BYTES tensors are read too, as object arrays of bytes (outputs, and inputs a
    # spec has accepted as encoded items).
    arrays = {}
    for i, (tensor, shape, data) in enumerate(zip(tensors, shapes, raw, strict=True)):
        where = _where(kind, i, tensor.name)
        if strings and tensor.datatype == BYTES:
            arrays[tensor.name] = _strings(where, tensor, shape, data)
            continue
        dtype = to_numpy_dtype(tensor.datatype, where)
        if data is None:
            arrays[tensor.name] = _from_contents(where, tensor, dtype, shape, raw_field)
        else:
            arrays[tensor.name] = _from_raw(where, tensor.datatype, dtype, shape, data)
    return arrays


def _strings(where: str, tensor: _Tensor, shape: tuple[int, ...], raw: bytes | None) -> np.ndarray:
    # A BYTES tensor from raw contents or from contents.bytes_contents: (shape) of bytes.
    if raw is not None:
        return decode_bytes_tensor(raw, shape, where)
    values = list(tensor.contents.bytes_contents)
    if len(values) != math.prod(shape):
        raise InputError(
            f"{where}: shape {list(shape)} needs {math.prod(shape)} values in "
            f"contents.bytes_contents, got {len(values)}"
        )
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array.reshape(shape)


def decode_inputs(
    request: ModelInferRequest,
    *,
    max_batch_size: int,
    specs: Mapping[str, InputSpec] | None = None,
) -> dict[str, np.ndarray]:
    """Read the input tensors of an inference request.

    Every check that the headers allow comes before any tensor's data is read: names,
    batch sizes and, given `specs`, the model's inputs, datatypes and shapes; then the byte
    length or value count of each tensor against its shape.

    Args:
        request: The request; its inputs use raw_input_contents or typed contents, not both.
        max_batch_size: The largest batch (first dimension) an input may have, >= 1.
        specs: The model's inputs by name; None accepts any names, datatypes and shapes.

    Returns:
        Arrays by input name, in request order, each with its datatype's dtype in native byte
        order and the shape the request gives. Arrays read from raw contents are read-only
        views of the request's bytes. An input `specs` takes as encoded items is a (B,)
        object array of `bytes`.

    Raises:
        InputError: If the request is malformed: no inputs, an empty or repeated name, an
            unknown datatype, a negative dimension, a batch of 0, over `max_batch_size` or
            different between inputs, raw and typed contents mixed, a raw entry per input
            missing, a byte length or value count that does not match the shape, a typed
            value out of range for its datatype, inputs other than `specs` describes, or
            encoded items whose framing does not match the shape.
        ValueError: If `max_batch_size` is below 1.
    """
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
    tensors = request.inputs
    if not tensors:
        raise InputError("inputs: the request has no inputs; send at least one tensor")
    raw = _raw_per_tensor(tensors, request.raw_input_contents, "inputs", "raw_input_contents")
    shapes = _check_headers(tensors, "inputs")
    _check_batches(tensors, shapes, max_batch_size)
    if specs is None:
        return _decode_tensors(tensors, shapes, raw, "inputs", "raw_input_contents")
    _check_specs(tensors, shapes, specs)  # a BYTES input past this is one the spec encodes
    arrays = _decode_tensors(tensors, shapes, raw, "inputs", "raw_input_contents", strings=True)
    return {
        name: array.reshape(-1) if array.dtype == object else array  # (B,) or (B, 1) -> (B,)
        for name, array in arrays.items()
    }


def decode_outputs(response: ModelInferResponse) -> dict[str, np.ndarray]:
    """Read the output tensors of an inference response (the pair of `encode_outputs`).

    Args:
        response: The response; raw_output_contents or typed contents, not both.

    Returns:
        Arrays by output name, in response order, in native byte order; a BYTES tensor is an
        object array of `bytes`.

    Raises:
        InputError: If the response is malformed, as for `decode_inputs` (no batch checks).
    """
    tensors = response.outputs
    raw = _raw_per_tensor(tensors, response.raw_output_contents, "outputs", "raw_output_contents")
    shapes = _check_headers(tensors, "outputs")
    return _decode_tensors(tensors, shapes, raw, "outputs", "raw_output_contents", strings=True)


def _to_bytes(array: np.ndarray) -> bytes:
    # Little-endian, row-major, whatever the host and the array's memory layout.
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes(order="C")


def _to_raw(array: np.ndarray) -> tuple[str, bytes]:
    # An output's datatype and raw contents; an object array of bytes is a BYTES tensor.
    if array.dtype == object:
        return BYTES, encode_bytes_tensor(array)
    return from_numpy_dtype(array.dtype), _to_bytes(array)


def encode_outputs(
    response: ModelInferResponse,
    outputs: Mapping[str, np.ndarray],
    *,
    requested: Sequence[str] | None = None,
) -> None:
    """Write output tensors into an inference response as raw contents.

    Appends to `response.outputs` (name, datatype, shape) and to
    `response.raw_output_contents`, so pass a response without outputs yet.

    Args:
        response: The response to fill.
        outputs: Every output the model produced, by name; an object array of `bytes` is
            a BYTES tensor.
        requested: The names the request asked for, in the order to return them; None or
            empty means every output, in the order of `outputs`.

    Raises:
        InputError: If a requested name is not an output; the message lists the outputs.
        ValueError: If an array's dtype has no OIP datatype.
    """
    names = list(dict.fromkeys(requested)) if requested else list(outputs)
    for i, name in enumerate(names):
        if name not in outputs:
            raise InputError(
                f'outputs[{i}] "{name}": no such output; available: {", ".join(outputs)}'
            )
    for name in names:
        array = np.asarray(outputs[name])
        datatype, raw = _to_raw(array)
        response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        response.raw_output_contents.append(raw)


def _set_contents(
    contents: InferTensorContents, where: str, datatype: str, array: np.ndarray
) -> None:
    field = CONTENTS_FIELDS[datatype]
    if field is None:
        raise InputError(f"{where}: {datatype} has no typed contents field; encode it raw")
    contents.SetInParent()  # present even when the tensor has no elements
    getattr(contents, field).extend(array.ravel().tolist())


def encode_inputs(
    request: ModelInferRequest, inputs: Mapping[str, np.ndarray], *, raw: bool = True
) -> None:
    """Write input tensors into an inference request (the pair of `decode_inputs`).

    Appends to `request.inputs` and, when raw, to `request.raw_input_contents`, so pass a
    request without inputs yet.

    Args:
        request: The request to fill.
        inputs: Arrays by input name, in the order to send them.
        raw: True for raw_input_contents (compact, fast), False for typed contents.

    Raises:
        InputError: If `raw` is False and an input is FP16, which has no typed field.
        ValueError: If an array's dtype has no OIP datatype.
    """
    for i, (name, value) in enumerate(inputs.items()):
        array = np.asarray(value)
        datatype = from_numpy_dtype(array.dtype)
        tensor = request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        if raw:
            request.raw_input_contents.append(_to_bytes(array))
        else:
            _set_contents(tensor.contents, _where("inputs", i, name), datatype, array)
