"""KServe V2 REST inference bodies <-> the Open Inference Protocol's gRPC messages.

A REST request becomes the `ModelInferRequest` a gRPC client would send, every input as raw
contents, and the `ModelInferResponse` becomes the REST answer; so REST and gRPC share one
path for checks, limits, batching and errors, and only the bodies differ.

Tensors travel as JSON (`"data"`: the values, a flat or nested list in row-major order) or
by Triton's binary tensor data extension: with the request header
`Inference-Header-Content-Length: N`, the first N bytes of the body are the JSON header and
the rest are the tensors' raw bytes, one after another in input order, each input naming
its length in `"parameters": {"binary_data_size": n}`. Answers do the same for the outputs
asked for with `"binary_data": true` (per output) or `"binary_data_output": true` (request
parameter, for every output). Raw bytes are the gRPC raw contents: little-endian numbers,
BYTES as 4-byte little-endian lengths each followed by that many bytes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from raysight._proto.inference import grpc_service_pb2 as pb
from raysight.codec import oip
from raysight.codec.bytes_tensor import encode_bytes_tensor
from raysight.codec.datatypes import to_numpy_dtype
from raysight.errors import InputError

HEADER_LENGTH = "Inference-Header-Content-Length"
"""The HTTP header giving the JSON header's length when binary tensor data follows it."""
BINARY_SIZE = "binary_data_size"
BINARY_OUTPUT = "binary_data"
BINARY_OUTPUTS = "binary_data_output"

# The JSON number kinds (numpy dtype.kind of the parsed list) each tensor kind accepts:
# Triton's JSON parser takes integers for integer tensors and true/false for BOOL only.
_ACCEPTED_KINDS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}
_KIND_NAMES = {"b": "booleans", "i": "integers", "u": "integers", "f": "numbers"}
# JSON parameter values as InferParameter fields: a JSON integer is int64_param, as
# tritonclient sends a classification count over gRPC.
_PARAMETER_KINDS = {
    bool: "bool_param",
    int: "int64_param",
    float: "double_param",
    str: "string_param",
}
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class InferRequest:
    """A REST inference request, translated.

    Attributes:
        message: The gRPC request, every input in raw_input_contents.
        binary: Whether an output, by name, goes back as binary data rather than JSON.
    """

    message: pb.ModelInferRequest
    binary: Callable[[str], bool]


def decode_infer_request(
    body: bytes, header_length: str | None, model_name: str, model_version: str
) -> InferRequest:
    """Translate a REST inference request for the model the URL names.

    Args:
        body: The HTTP body: JSON, or JSON then binary tensor data.
        header_length: The Inference-Header-Content-Length header, or None without one.
        model_name, model_version: From the URL; "" for the version serves the current one.

    Raises:
        InputError: If the body is not the protocol's: JSON that does not parse or is not
            an object, a header length that is not a count or exceeds the body, an input
            without data or with both data and binary_data_size, values that do not fit
            the datatype or shape, binary sizes that do not add up to the binary bytes.
    """
    header, binary = _split(body, header_length)
    document = _parse(header)
    message = pb.ModelInferRequest(model_name=model_name, model_version=model_version)
    message.id = _typed(document, "id", str, "")
    inputs = _typed(document, "inputs", list, None)
    if not inputs:
        raise InputError('"inputs": missing or empty; send at least one tensor', "bad_json")
    offset = 0
    for i, tensor in enumerate(inputs):
        offset = _add_input(message, i, tensor, binary, offset)
    if offset != len(binary):
        raise InputError(
            f"binary data: {len(binary) - offset} bytes left after the last input's "
            f"{BINARY_SIZE}; the sizes must add up to the {len(binary)} bytes after the header",
            "bad_binary",
        )
    parameters = dict(_typed(document, "parameters", dict, {}))
    every = parameters.pop(BINARY_OUTPUTS, False)
    if not isinstance(every, bool):
        raise InputError(f'"parameters": {BINARY_OUTPUTS} must be true or false', "bad_json")
    _set_parameters(message.parameters, parameters, '"parameters"')
    choices: dict[str, bool] = {}
    for i, output in enumerate(_typed(document, "outputs", list, [])):
        name, choice = _add_output(message, i, output)
        choices[name] = every if choice is None else choice
    return InferRequest(message, lambda name: choices.get(name, every))


def encode_infer_response(
    response: pb.ModelInferResponse, binary: Callable[[str], bool]
) -> tuple[bytes, int | None]:
    """The REST answer to an inference request.

    Args:
        response: The gRPC answer, outputs in raw_output_contents.
        binary: Whether an output, by name, goes back as binary data.

    Returns:
        The body, and the JSON header's length when binary data follows it (the value of
        the answer's Inference-Header-Content-Length), else None.
    """
    arrays = oip.decode_outputs(response)  # by name; BYTES as object arrays of bytes
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for i, tensor in enumerate(response.outputs):
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if binary(tensor.name):
            chunks.append(response.raw_output_contents[i])
            entry["parameters"] = {BINARY_SIZE: len(chunks[-1])}
        else:
            entry["data"] = _json_values(arrays[tensor.name])
        outputs.append(entry)
    document: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
    }
    if response.id:
        document["id"] = response.id
    document["outputs"] = outputs
    header = json.dumps(document, separators=(",", ":")).encode()
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    # (JSON header, binary data) by the Inference-Header-Content-Length header.
    if header_length is None:
        return body, b""
    try:
        length = int(header_length)
    except ValueError:
        length = -1
    if length < 0:
        raise InputError(
            f"{HEADER_LENGTH}: {header_length!r} is not a byte count; give the JSON header's "
            "length in bytes",
            "bad_binary",
        )
    if length > len(body):
        raise InputError(
            f"{HEADER_LENGTH}: {length} bytes of JSON header, but the body has {len(body)}",
            "bad_binary",
        )
    return body[:length], body[length:]


def _parse(header: bytes) -> dict[str, Any]:
    try:
        document = json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"the body is not valid JSON: {exc}", "bad_json") from None
    if not isinstance(document, dict):
        raise InputError(
            f"the body is a JSON {type(document).__name__}; send an object with inputs",
            "bad_json",
        )
    return document


def _typed(document: Mapping[str, Any], key: str, kind: type, default: Any) -> Any:
    # document[key] if it is a `kind`, `default` if absent; an error naming the key otherwise.
    value = document.get(key, default)
    if value is not default and (not isinstance(value, kind) or isinstance(value, bool)):
        want = {str: "a string", list: "a list", dict: "an object", int: "an integer"}[kind]
        raise InputError(f'"{key}": must be {want}, got {json.dumps(value)[:40]}', "bad_json")
    return value


def _add_input(
    message: pb.ModelInferRequest, i: int, tensor: Any, binary: bytes, offset: int
) -> int:
    # Appends inputs[i] to the message, its bytes from its JSON data or from `binary` at
    # `offset`. Returns the offset of the next input's binary data.
    if not isinstance(tensor, dict):
        raise InputError(f"inputs[{i}]: must be an object with name, shape, datatype, data")
    name = _typed(tensor, "name", str, "")
    where = f'inputs[{i}] "{name}"'
    datatype = _typed(tensor, "datatype", str, "")
    shape = _typed(tensor, "shape", list, [])
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise InputError(f"{where}: shape {json.dumps(shape)[:80]} must list counts, >= 0")
    parameters = dict(_typed(tensor, "parameters", dict, {}))
    size = parameters.pop(BINARY_SIZE, None)
    if size is not None and "data" in tensor:
        raise InputError(f"{where}: has both data and {BINARY_SIZE}; send one of them")
    if size is None:
        if "data" not in tensor:
            raise InputError(f"{where}: no data; send data, or {BINARY_SIZE} with binary data")
        raw = _json_tensor(where, datatype, shape, tensor["data"])
    else:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InputError(f"{where}: {BINARY_SIZE} must be a byte count, got {size!r}")
        if offset + size > len(binary):
            raise InputError(
                f"{where}: {BINARY_SIZE} {size} runs past the binary data "
                f"({len(binary) - offset} bytes left)",
                "bad_binary",
            )
        raw = binary[offset : offset + size]
        offset += size
    added = message.inputs.add(name=name, datatype=datatype, shape=shape)
    _set_parameters(added.parameters, parameters, f"{where} parameters")
    message.raw_input_contents.append(raw)
    return offset


def _json_tensor(where: str, datatype: str, shape: list[int], data: Any) -> bytes:
    # A tensor's JSON values as raw contents, checked against its datatype and shape.
    count = math.prod(shape)
    if datatype == oip.BYTES:
        try:
            strings = np.asarray(data, dtype=object).ravel()
        except ValueError:  # ragged
            strings = np.asarray([], dtype=object)
        if strings.size != count or not all(isinstance(s, str) for s in strings):
            raise InputError(f"{where}: shape {shape} needs {count} strings in data")
        return encode_bytes_tensor(np.array([s.encode() for s in strings], dtype=object))
    dtype = to_numpy_dtype(datatype, where)
    try:
        values = np.asarray(data)
    except (ValueError, OverflowError):
        values = np.asarray([], dtype=object)  # ragged or out of range: reported below
    if values.dtype.kind not in _ACCEPTED_KINDS[dtype.kind]:
        raise InputError(
            f"{where}: data must be a list (flat or nested, row-major) of "
            f"{_KIND_NAMES[dtype.kind]} for {datatype}"
        )
    if values.size != count:
        raise InputError(f"{where}: shape {shape} needs {count} values in data, got {values.size}")
    if dtype.kind in "iu" and values.size:
        info = np.iinfo(dtype)
        if values.min() < info.min or values.max() > info.max:
            raise InputError(
                f"{where}: values out of range for {datatype} ({info.min}..{info.max})"
            )
    return values.astype(dtype).tobytes()  # dtype is little-endian (codec/datatypes.py)


def _add_output(message: pb.ModelInferRequest, i: int, output: Any) -> tuple[str, bool | None]:
    # Appends outputs[i] to the message. Returns its name and its binary_data choice, if any.
    if not isinstance(output, dict):
        raise InputError(f"outputs[{i}]: must be an object with a name")
    name = _typed(output, "name", str, "")
    parameters = dict(_typed(output, "parameters", dict, {}))
    choice = parameters.pop(BINARY_OUTPUT, None)
    if choice is not None and not isinstance(choice, bool):
        raise InputError(f'outputs[{i}] "{name}": {BINARY_OUTPUT} must be true or false')
    added = message.outputs.add(name=name)
    _set_parameters(added.parameters, parameters, f'outputs[{i}] "{name}" parameters')
    return name, choice


def _set_parameters(target: Any, parameters: Mapping[str, Any], where: str) -> None:
    # JSON parameters as InferParameter values (see _PARAMETER_KINDS).
    for key, value in parameters.items():
        kind = _PARAMETER_KINDS.get(type(value))
        if kind is None or (kind == "int64_param" and not _INT64_MIN <= value <= _INT64_MAX):
            raise InputError(f"{where}: {key} must be a boolean, number or string")
        setattr(target[key], kind, value)


def _json_values(array: np.ndarray) -> list[Any]:
    # An output's values, flat in row-major order; BYTES as UTF-8 strings (classification).
    flat = array.ravel()
    if array.dtype == object:
        return [item.decode() for item in flat]
    return flat.tolist()
