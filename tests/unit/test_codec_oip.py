"""OIP tensors <-> numpy: round trips for every datatype, tritonclient golden messages, errors."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as tritonclient
from tritonclient.grpc import _utils as triton_utils
from tritonclient.grpc import service_pb2 as triton

from raysight._proto.inference import grpc_service_pb2 as pb
from raysight.codec.datatypes import DATATYPES
from raysight.codec.oip import (
    InputSpec,
    decode_inputs,
    decode_outputs,
    encode_inputs,
    encode_outputs,
    from_numpy_dtype,
    to_numpy_dtype,
)
from raysight.errors import InputError

ALL = sorted(DATATYPES)
TYPED = [d for d in ALL if d != "FP16"]  # FP16 has no typed contents field


def _sample(datatype: str, shape: tuple[int, ...] = (2, 3, 4)) -> np.ndarray:
    """Values that reach both ends of the datatype's range."""
    dtype = DATATYPES[datatype]
    count = int(np.prod(shape))
    if dtype.kind == "b":
        values = np.arange(count) % 3 == 0
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = np.array([info.min, info.max, *range(count - 2)], dtype=dtype)
    else:
        values = np.linspace(-1e4, 1e4, count).astype(dtype)
        values[:3] = [np.finfo(dtype).min, np.finfo(dtype).max, np.nan]
    return values.astype(dtype).reshape(shape)


def _request(inputs: Mapping[str, np.ndarray], *, raw: bool = True) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    encode_inputs(request, inputs, raw=raw)
    return request


def _triton_request(inputs: Mapping[str, np.ndarray]) -> triton.ModelInferRequest:
    """The request tritonclient's InferenceServerClient.infer sends for these arrays."""
    infer_inputs = []
    for name, array in inputs.items():
        infer_input = tritonclient.InferInput(
            name, list(array.shape), from_numpy_dtype(array.dtype)
        )
        infer_inputs.append(infer_input.set_data_from_numpy(array))
    return triton_utils._get_inference_request(
        model_name="m",
        inputs=infer_inputs,
        model_version="",
        request_id="",
        outputs=None,
        sequence_id=0,
        sequence_start=False,
        sequence_end=False,
        priority=0,
        timeout=None,
        parameters=None,
    )


def _raises(match: str) -> Any:
    return pytest.raises(InputError, match=re.escape(match))


# --- the datatype table ------------------------------------------------------------------


def test_datatype_table_matches_tritonclient() -> None:
    from tritonclient.utils import np_to_triton_dtype, triton_to_np_dtype

    assert set(DATATYPES) == {
        "BOOL",
        "UINT8",
        "UINT16",
        "UINT32",
        "UINT64",
        "INT8",
        "INT16",
        "INT32",
        "INT64",
        "FP16",
        "FP32",
        "FP64",
    }
    for datatype, dtype in DATATYPES.items():
        assert np.dtype(triton_to_np_dtype(datatype)) == dtype
        assert np_to_triton_dtype(dtype) == datatype
        assert from_numpy_dtype(dtype) == datatype
        assert to_numpy_dtype(datatype, "x") == dtype


def test_from_numpy_dtype_ignores_byte_order_and_refuses_the_rest() -> None:
    assert from_numpy_dtype(np.dtype(">f4")) == "FP32"
    assert from_numpy_dtype(np.dtype(">i8")) == "INT64"
    with pytest.raises(ValueError, match="complex64"):
        from_numpy_dtype(np.dtype(np.complex64))
    with pytest.raises(ValueError, match="has no OIP datatype"):
        from_numpy_dtype(np.dtype(object))


@pytest.mark.parametrize("datatype", ["FP8", "BF16", "BYTES", "fp32", ""])
def test_unknown_datatype(datatype: str) -> None:
    with _raises(f'inputs[0] "x": datatype "{datatype}" is not supported; use one of BOOL'):
        to_numpy_dtype(datatype, 'inputs[0] "x"')


# --- round trips -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("datatype", "raw"),
    [(d, True) for d in ALL] + [(d, False) for d in TYPED],
    ids=[f"{d}-raw" for d in ALL] + [f"{d}-typed" for d in TYPED],
)
def test_input_round_trip(datatype: str, raw: bool) -> None:
    array = _sample(datatype)
    wire = _request({"x": array}, raw=raw).SerializeToString()
    request = pb.ModelInferRequest.FromString(wire)
    assert request.inputs[0].datatype == datatype
    assert list(request.inputs[0].shape) == [2, 3, 4]
    assert bool(request.raw_input_contents) == raw
    decoded = decode_inputs(request, max_batch_size=2)
    assert list(decoded) == ["x"]
    assert decoded["x"].dtype == array.dtype
    np.testing.assert_array_equal(decoded["x"], array)


@pytest.mark.parametrize("datatype", ALL)
def test_output_round_trip(datatype: str) -> None:
    array = _sample(datatype, (3, 5))
    response = pb.ModelInferResponse()
    encode_outputs(response, {"y": array, "z": array[:1]})
    decoded = decode_outputs(pb.ModelInferResponse.FromString(response.SerializeToString()))
    assert list(decoded) == ["y", "z"]
    np.testing.assert_array_equal(decoded["y"], array)
    np.testing.assert_array_equal(decoded["z"], array[:1])


def test_typed_outputs_decode() -> None:
    # Another server may answer with typed contents; the client side reads those too.
    response = pb.ModelInferResponse(
        outputs=[
            pb.ModelInferResponse.InferOutputTensor(
                name="p",
                datatype="FP64",
                shape=[1, 2],
                contents=pb.InferTensorContents(fp64_contents=[0.25, 0.75]),
            )
        ]
    )
    np.testing.assert_array_equal(decode_outputs(response)["p"], [[0.25, 0.75]])


def test_bytes_are_little_endian_and_row_major() -> None:
    big_endian = np.array([[1, 2], [3, 4]], dtype=">u2")
    transposed = np.arange(6, dtype=np.int32).reshape(3, 2).T  # not C-contiguous
    request = _request({"a": big_endian, "b": transposed})
    assert request.raw_input_contents[0] == b"\x01\x00\x02\x00\x03\x00\x04\x00"
    decoded = decode_inputs(request, max_batch_size=4)
    np.testing.assert_array_equal(decoded["a"], big_endian)
    np.testing.assert_array_equal(decoded["b"], transposed)
    assert decoded["a"].dtype.isnative


def test_inputs_keep_request_order() -> None:
    arrays = {"b": np.zeros((1, 2), np.float32), "a": np.ones((1, 3), np.int64)}
    assert list(decode_inputs(_request(arrays), max_batch_size=1)) == ["b", "a"]


# --- golden messages from tritonclient ---------------------------------------------------


@pytest.mark.parametrize("datatype", ALL)
def test_tritonclient_request_decodes(datatype: str) -> None:
    array = _sample(datatype, (4, 1, 3, 3))
    wire = _triton_request({"images": array}).SerializeToString()
    decoded = decode_inputs(pb.ModelInferRequest.FromString(wire), max_batch_size=4)
    np.testing.assert_array_equal(decoded["images"], array)


def test_tritonclient_typed_request_decodes() -> None:
    # Built with tritonclient's own classes, the way a hand-written client would.
    request = triton.ModelInferRequest(
        model_name="m",
        inputs=[
            triton.ModelInferRequest.InferInputTensor(
                name="pixels",
                datatype="UINT8",
                shape=[1, 4],
                contents=triton.InferTensorContents(uint_contents=[0, 1, 128, 255]),
            ),
            triton.ModelInferRequest.InferInputTensor(
                name="mask",
                datatype="BOOL",
                shape=[1, 2],
                contents=triton.InferTensorContents(bool_contents=[True, False]),
            ),
            triton.ModelInferRequest.InferInputTensor(
                name="offset",
                datatype="INT16",
                shape=[1],
                contents=triton.InferTensorContents(int_contents=[-32768]),
            ),
        ],
    )
    decoded = decode_inputs(
        pb.ModelInferRequest.FromString(request.SerializeToString()), max_batch_size=1
    )
    assert decoded["pixels"].dtype == np.uint8
    np.testing.assert_array_equal(decoded["pixels"], [[0, 1, 128, 255]])
    np.testing.assert_array_equal(decoded["mask"], [[True, False]])
    assert decoded["offset"].dtype == np.int16
    assert decoded["offset"][0] == -32768


@pytest.mark.parametrize("datatype", ALL)
def test_tritonclient_reads_our_response(datatype: str) -> None:
    array = _sample(datatype, (2, 10))
    response = pb.ModelInferResponse(model_name="m", id="r1")
    encode_outputs(response, {"logits": array, "extra": array[:, :1]}, requested=["logits"])
    result = tritonclient.InferResult(
        triton.ModelInferResponse.FromString(response.SerializeToString())
    )
    assert result.get_output("logits").datatype == datatype
    assert result.get_output("extra") is None
    np.testing.assert_array_equal(result.as_numpy("logits"), array)


# --- malformed requests ------------------------------------------------------------------


def test_raw_byte_length_must_match_shape() -> None:
    request = pb.ModelInferRequest(
        inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name="images", datatype="UINT8", shape=[2, 1, 28, 28]
            )
        ],
        raw_input_contents=[bytes(100)],
    )
    with _raises('inputs[0] "images": shape [2, 1, 28, 28] needs 1568 bytes of UINT8, got 100'):
        decode_inputs(request, max_batch_size=8)


def test_raw_byte_length_counts_the_item_size() -> None:
    request = _request({"x": np.zeros((2, 3), np.float32)})
    request.inputs[0].shape[:] = [2, 4]
    with _raises('inputs[0] "x": shape [2, 4] needs 32 bytes of FP32, got 24'):
        decode_inputs(request, max_batch_size=8)


def test_a_huge_claimed_shape_is_refused_without_allocating() -> None:
    request = _request({"x": np.zeros((1, 2), np.float64)})
    request.inputs[0].shape[:] = [1, 2**40, 2**20]
    with _raises("needs 9223372036854775808 bytes of FP64, got 16"):
        decode_inputs(request, max_batch_size=1)


def test_raw_and_typed_contents_do_not_mix() -> None:
    request = _request({"a": np.zeros((1, 2), np.float32)})
    tensor = request.inputs.add(name="b", datatype="FP32", shape=[1])
    tensor.contents.fp32_contents.append(1.0)
    with _raises('inputs[1] "b": sets contents while the message also has raw_input_contents'):
        decode_inputs(request, max_batch_size=1)


def test_one_raw_entry_per_input() -> None:
    request = _request({"a": np.zeros((1, 2), np.float32), "b": np.zeros((1, 2), np.float32)})
    del request.raw_input_contents[1]
    with _raises("raw_input_contents: 1 entries for 2 inputs; send one entry per tensor"):
        decode_inputs(request, max_batch_size=1)


def test_typed_value_count_must_match_shape() -> None:
    request = _request({"x": np.zeros((2, 3), np.float32)}, raw=False)
    request.inputs[0].contents.fp32_contents.append(1.0)
    with _raises('inputs[0] "x": shape [2, 3] needs 6 values in contents.fp32_contents, got 7'):
        decode_inputs(request, max_batch_size=2)


def test_typed_values_in_the_wrong_field() -> None:
    request = pb.ModelInferRequest(
        inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name="x",
                datatype="FP32",
                shape=[1, 2],
                contents=pb.InferTensorContents(int_contents=[1, 2]),
            )
        ]
    )
    with _raises("a FP32 tensor carries its values in fp32_contents, not int_contents"):
        decode_inputs(request, max_batch_size=1)


def test_an_input_without_data() -> None:
    request = pb.ModelInferRequest(
        inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="INT32", shape=[1])]
    )
    with _raises('inputs[0] "x": no data; set contents.int_contents or send raw_input_contents'):
        decode_inputs(request, max_batch_size=1)


@pytest.mark.parametrize(
    ("datatype", "field", "value", "bounds"),
    [
        ("UINT8", "uint_contents", 300, "0..255"),
        ("UINT16", "uint_contents", 70000, "0..65535"),
        ("INT8", "int_contents", -129, "-128..127"),
        ("INT16", "int_contents", 40000, "-32768..32767"),
    ],
)
def test_typed_value_out_of_range(datatype: str, field: str, value: int, bounds: str) -> None:
    contents = pb.InferTensorContents()
    getattr(contents, field).extend([1, value])
    request = pb.ModelInferRequest(
        inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name="x", datatype=datatype, shape=[1, 2], contents=contents
            )
        ]
    )
    with _raises(f'inputs[0] "x": value {value} is out of range for {datatype} ({bounds})'):
        decode_inputs(request, max_batch_size=1)


def test_fp16_has_no_typed_contents() -> None:
    with _raises('inputs[0] "h": FP16 has no typed contents field; encode it raw'):
        _request({"h": np.zeros((1, 2), np.float16)}, raw=False)
    request = pb.ModelInferRequest(
        inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name="h",
                datatype="FP16",
                shape=[1],
                contents=pb.InferTensorContents(fp32_contents=[1.0]),
            )
        ]
    )
    with _raises('inputs[0] "h": FP16 has no typed contents field; send it in raw_input_contents'):
        decode_inputs(request, max_batch_size=1)


def test_raw_bool_bytes_are_0_or_1() -> None:
    request = _request({"mask": np.array([[True, False]])})
    request.raw_input_contents[0] = b"\x01\x02"
    with _raises('inputs[0] "mask": BOOL bytes must be 0 or 1'):
        decode_inputs(request, max_batch_size=1)


def test_unknown_datatype_in_a_request() -> None:
    request = _request({"x": np.zeros((1, 2), np.float32)})
    request.inputs[0].datatype = "FLOAT"
    with _raises('inputs[0] "x": datatype "FLOAT" is not supported'):
        decode_inputs(request, max_batch_size=1)


def test_batch_over_the_maximum() -> None:
    request = _request({"images": np.zeros((9, 1, 2, 2), np.uint8)})
    with _raises('inputs[0] "images": batch size 9 exceeds the maximum of 8'):
        decode_inputs(request, max_batch_size=8)


def test_batch_of_zero() -> None:
    request = _request({"images": np.zeros((0, 1, 2, 2), np.uint8)})
    with _raises('inputs[0] "images": batch size is 0'):
        decode_inputs(request, max_batch_size=8)


def test_scalar_has_no_batch_dimension() -> None:
    request = _request({"x": np.float32(1.0).reshape(())})
    with _raises('inputs[0] "x": shape [] has no batch dimension'):
        decode_inputs(request, max_batch_size=8)


def test_batch_sizes_must_agree() -> None:
    request = _request({"a": np.zeros((2, 1), np.uint8), "b": np.zeros((3, 1), np.uint8)})
    with _raises('inputs[1] "b": batch size 3 differs from 2 of inputs[0]'):
        decode_inputs(request, max_batch_size=8)


def test_negative_dimension() -> None:
    request = _request({"x": np.zeros((1, 2), np.float32)})
    request.inputs[0].shape[:] = [1, -1]
    with _raises('inputs[0] "x": shape [1, -1] has a negative dimension'):
        decode_inputs(request, max_batch_size=1)


def test_duplicate_input_names() -> None:
    request = _request({"x": np.zeros((1, 2), np.float32)})
    request.inputs.append(request.inputs[0])
    request.raw_input_contents.append(request.raw_input_contents[0])
    with _raises('inputs[1] "x": name appears twice'):
        decode_inputs(request, max_batch_size=1)


def test_empty_name_and_no_inputs() -> None:
    with _raises("inputs: the request has no inputs"):
        decode_inputs(pb.ModelInferRequest(model_name="m"), max_batch_size=1)
    with _raises("inputs[0]: name is empty"):
        decode_inputs(_request({"": np.zeros((1,), np.uint8)}), max_batch_size=1)


def test_max_batch_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_batch_size must be at least 1"):
        decode_inputs(_request({"x": np.zeros((1,), np.uint8)}), max_batch_size=0)


# --- requested outputs -------------------------------------------------------------------


def test_requested_outputs_in_requested_order() -> None:
    outputs = {"logits": np.zeros((1, 3), np.float32), "probs": np.ones((1, 3), np.float32)}
    response = pb.ModelInferResponse()
    encode_outputs(response, outputs, requested=["probs", "logits", "probs"])
    assert [o.name for o in response.outputs] == ["probs", "logits"]
    assert len(response.raw_output_contents) == 2
    everything = pb.ModelInferResponse()
    encode_outputs(everything, outputs, requested=[])
    assert [o.name for o in everything.outputs] == ["logits", "probs"]


def test_unknown_requested_output() -> None:
    outputs = {"logits": np.zeros((1, 3), np.float32), "probs": np.ones((1, 3), np.float32)}
    response = pb.ModelInferResponse()
    with _raises('outputs[1] "scores": no such output; available: logits, probs'):
        encode_outputs(response, outputs, requested=["probs", "scores"])
    assert not response.outputs  # nothing half-written


# --- the model's inputs, checked from the headers -------------------------------------------

SPECS = {"images": InputSpec((1, 8, 8), {"FP32": "normalised", "UINT8": "pixels"})}


def _header_only(shape: list[int], datatype: str = "FP32", name: str = "images") -> Any:
    """A request whose tensor declares `shape` and carries no data at all."""
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name=name, datatype=datatype, shape=shape)
    return request


@pytest.mark.parametrize(
    ("request_", "message", "reason"),
    [
        # Huge declared dimensions: refused by shape, nothing allocated or read.
        (_header_only([1, 100_000, 100_000, 100_000]), "shape must be [-1, 1, 8, 8]", "bad_shape"),
        (_header_only([2, 3, 8, 8]), "got [2, 3, 8, 8]", "bad_shape"),
        (_header_only([1, 1, 8, 8], "FP64"), "FP32 (normalised) or UINT8 (pixels)", "bad_datatype"),
        (_header_only([1, 1, 8, 8], "NOPE"), "got NOPE", "bad_datatype"),
        (_header_only([1, 1, 8, 8], name="x"), 'one input named "images"', "bad_input_name"),
    ],
)
def test_the_models_inputs_are_checked_before_any_data(
    request_: pb.ModelInferRequest, message: str, reason: str
) -> None:
    with pytest.raises(InputError) as error:
        decode_inputs(request_, max_batch_size=32, specs=SPECS)
    assert message in str(error.value) and error.value.reason == reason
    # Without the model's inputs, the same request fails only on its (missing) data.
    with pytest.raises(InputError, match=r"no data|datatype"):
        decode_inputs(request_, max_batch_size=32)


def test_inputs_that_fit_the_spec_decode_as_before() -> None:
    pixels = np.arange(128, dtype=np.uint8).reshape(2, 1, 8, 8)
    for raw in (True, False):
        decoded = decode_inputs(
            _request({"images": pixels}, raw=raw), max_batch_size=32, specs=SPECS
        )
        np.testing.assert_array_equal(decoded["images"], pixels)


# --- an input a spec takes as one encoded item a row -----------------------------------------

ENCODED = {
    "images": InputSpec(
        (1, 8, 8), {"FP32": "normalised", "UINT8": "pixels"}, {"BYTES": "encoded images"}
    )
}
ITEMS = [b"\x89PNG\r\n\x1a\n first", b"", b"\xff\xd8\xff third"]


def test_encoded_items_decode_as_tritonclient_and_typed_clients_send_them() -> None:
    files = np.array(ITEMS, dtype=object)
    infer_input = tritonclient.InferInput("images", [3], "BYTES").set_data_from_numpy(files)
    from_triton = triton_utils._get_inference_request(
        model_name="m", inputs=[infer_input], model_version="", request_id="", outputs=None,
        sequence_id=0, sequence_start=False, sequence_end=False, priority=0, timeout=None,
        parameters=None,
    )  # fmt: skip
    typed = pb.ModelInferRequest(model_name="m")
    typed.inputs.add(name="images", datatype="BYTES", shape=[3, 1]).contents.bytes_contents.extend(
        ITEMS
    )
    for request in (from_triton, typed):
        decoded = decode_inputs(request, max_batch_size=32, specs=ENCODED)["images"]
        assert decoded.shape == (3,) and list(decoded) == ITEMS
    # The tensor forms still decode beside them.
    pixels = np.zeros((2, 1, 8, 8), np.uint8)
    np.testing.assert_array_equal(
        decode_inputs(_request({"images": pixels}), max_batch_size=32, specs=ENCODED)["images"],
        pixels,
    )


@pytest.mark.parametrize(
    ("shape", "datatype", "specs", "message", "reason"),
    [
        ([2, 2], "BYTES", ENCODED, "(encoded images): shape [-1] or [-1, 1]", "bad_shape"),
        ([2], "BYTES", SPECS, "FP32 (normalised) or UINT8 (pixels), got BYTES", "bad_datatype"),
        ([2, 1, 8, 8], "INT32", ENCODED, "or BYTES (encoded images, shape [-1])", "bad_datatype"),
        ([40], "BYTES", ENCODED, "batch size 40 exceeds the maximum of 32", "batch_too_large"),
    ],
)  # fmt: skip
def test_encoded_items_are_checked_from_the_headers(
    shape: list[int], datatype: str, specs: Any, message: str, reason: str
) -> None:
    with pytest.raises(InputError) as error:
        decode_inputs(_header_only(shape, datatype), max_batch_size=32, specs=specs)
    assert message in str(error.value) and error.value.reason == reason


def test_encoded_framing_that_disagrees_with_the_shape_is_refused() -> None:
    framed = b"".join(len(item).to_bytes(4, "little") + item for item in ITEMS)
    for shape, message in (([2], "needs 2 BYTES elements, got more"), ([4], "got 3")):
        request = _header_only(shape, "BYTES")
        request.raw_input_contents.append(framed)
        with _raises(message):
            decode_inputs(request, max_batch_size=32, specs=ENCODED)
    request = _header_only([1], "BYTES")
    request.raw_input_contents.append(b"\x10\x00\x00\x00short")
    with _raises("a BYTES element of 16 bytes runs past the end"):
        decode_inputs(request, max_batch_size=32, specs=ENCODED)
