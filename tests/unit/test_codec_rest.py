"""KServe V2 REST bodies <-> OIP messages: JSON tensors flat or nested, Triton's binary
tensor data framing both ways, Triton's JSON for protocol messages, and a refusal naming
the problem for every malformed body."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from tritonclient.utils import deserialize_bytes_tensor

from raysight._proto.inference import grpc_service_pb2 as pb
from raysight._proto.inference import model_config_pb2 as mc
from raysight.codec import oip, rest
from raysight.codec.proto_json import message_to_json
from raysight.errors import InputError

IMAGES = np.arange(2 * 1 * 2 * 2, dtype=np.float32).reshape(2, 1, 2, 2) / 10


def _decode(document: dict[str, Any], binary: bytes = b"") -> rest.InferRequest:
    header = json.dumps(document).encode()
    length = str(len(header)) if binary else None
    return rest.decode_infer_request(header + binary, length, "m", "")


def _images(message: pb.ModelInferRequest) -> np.ndarray:
    return oip.decode_inputs(message, max_batch_size=8)["images"]


@pytest.mark.parametrize("data", [IMAGES.tolist(), IMAGES.ravel().tolist()])
def test_json_data_nested_or_flat_becomes_raw_contents(data: list) -> None:
    document = {
        "id": "r1",
        "inputs": [{"name": "images", "shape": [2, 1, 2, 2], "datatype": "FP32", "data": data}],
    }
    request = _decode(document)
    assert request.message.model_name == "m"
    assert request.message.id == "r1"
    np.testing.assert_array_equal(_images(request.message), IMAGES)
    assert not request.binary("logits")


def test_binary_inputs_are_sliced_in_order_after_the_header() -> None:
    pixels = np.arange(8, dtype=np.uint8).reshape(2, 1, 2, 2)
    tensors = [
        {"name": "images", "shape": [2, 1, 2, 2], "datatype": "FP32"},
        {"name": "pixels", "shape": [2, 1, 2, 2], "datatype": "UINT8"},
    ]
    tensors[0]["parameters"] = {"binary_data_size": IMAGES.nbytes}
    tensors[1]["parameters"] = {"binary_data_size": pixels.nbytes}
    request = _decode({"inputs": tensors}, IMAGES.tobytes() + pixels.tobytes())
    arrays = oip.decode_inputs(request.message, max_batch_size=8)
    np.testing.assert_array_equal(arrays["images"], IMAGES)
    np.testing.assert_array_equal(arrays["pixels"], pixels)
    assert "binary_data_size" not in request.message.inputs[0].parameters


def test_outputs_choose_binary_and_pass_classification_as_int64() -> None:
    document = {
        "inputs": [{"name": "images", "shape": [1], "datatype": "FP32", "data": [0.5]}],
        "outputs": [
            {"name": "logits", "parameters": {"binary_data": False}},
            {"name": "probabilities", "parameters": {"classification": 2}},
        ],
        "parameters": {"binary_data_output": True, "priority": 1},
    }
    request = _decode(document)
    outputs = request.message.outputs
    assert [o.name for o in outputs] == ["logits", "probabilities"]
    assert outputs[1].parameters["classification"].int64_param == 2
    assert "binary_data" not in outputs[0].parameters
    assert "binary_data_output" not in request.message.parameters
    assert request.message.parameters["priority"].int64_param == 1
    assert not request.binary("logits")
    assert request.binary("probabilities")  # the request's default


def _response() -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name="m", model_version="v1", id="r1")
    labels = np.array([[b"0.700000:0:zero"], [b"0.300000:1:one"]], dtype=object)
    oip.encode_outputs(response, {"logits": IMAGES.reshape(2, 4), "probabilities": labels})
    return response


def test_json_response_is_flat_row_major_with_strings_for_bytes() -> None:
    body, length = rest.encode_infer_response(_response(), lambda name: False)
    assert length is None
    document = json.loads(body)
    assert document["model_name"] == "m"
    assert document["model_version"] == "v1"
    assert document["id"] == "r1"
    logits, labels = document["outputs"]
    assert (logits["name"], logits["datatype"], logits["shape"]) == ("logits", "FP32", [2, 4])
    np.testing.assert_allclose(logits["data"], IMAGES.ravel())
    assert labels["datatype"] == "BYTES"
    assert labels["data"] == ["0.700000:0:zero", "0.300000:1:one"]


def test_binary_response_puts_raw_bytes_after_the_header() -> None:
    body, length = rest.encode_infer_response(_response(), lambda name: True)
    assert length is not None
    header = json.loads(body[:length])
    sizes = [o["parameters"]["binary_data_size"] for o in header["outputs"]]
    assert all("data" not in o for o in header["outputs"])
    raw = body[length:]
    assert len(raw) == sum(sizes)
    logits = np.frombuffer(raw[: sizes[0]], dtype="<f4").reshape(2, 4)
    np.testing.assert_array_equal(logits, IMAGES.reshape(2, 4))
    labels = deserialize_bytes_tensor(raw[sizes[0] :])  # tritonclient's own reader
    assert list(labels) == [b"0.700000:0:zero", b"0.300000:1:one"]


def test_protocol_messages_read_as_triton_json() -> None:
    config = mc.ModelConfig(
        name="m",
        max_batch_size=16,
        input=[mc.ModelInput(name="images", data_type=mc.TYPE_FP32, dims=[1, 8, 8])],
        dynamic_batching=mc.ModelDynamicBatching(max_queue_delay_microseconds=5000),
    )
    document = message_to_json(config)
    assert document["max_batch_size"] == 16
    assert document["input"][0]["dims"] == [1, 8, 8]  # numbers, not protobuf's strings
    assert document["input"][0]["data_type"] == "TYPE_FP32"
    assert document["dynamic_batching"]["max_queue_delay_microseconds"] == 5000
    assert document["output"] == []  # every field printed, as Triton does
    metadata = pb.ModelMetadataResponse(
        name="m", inputs=[pb.ModelMetadataResponse.TensorMetadata(name="x", shape=[-1, 4])]
    )
    assert message_to_json(metadata)["inputs"][0]["shape"] == [-1, 4]


GOOD = {"name": "images", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}


@pytest.mark.parametrize(
    ("body", "length", "message"),
    [
        (b"{not json", None, "the body is not valid JSON"),
        (b"\xff\xfe", None, "the body is not valid JSON"),
        (b"[1, 2]", None, "the body is a JSON list"),
        (b"{}", None, '"inputs": missing or empty'),
        (b'{"inputs": {}}', None, '"inputs": must be a list'),
        (b'{"inputs": [1]}', None, "inputs[0]: must be an object"),
        (json.dumps({"inputs": [GOOD]}).encode(), "99", "99 bytes of JSON header, but the body"),
        (json.dumps({"inputs": [GOOD]}).encode(), "ten", "'ten' is not a byte count"),
        (json.dumps({"inputs": [GOOD]}).encode(), "-1", "'-1' is not a byte count"),
    ],
)
def test_malformed_bodies_are_refused(body: bytes, length: str | None, message: str) -> None:
    with pytest.raises(InputError) as caught:
        rest.decode_infer_request(body, length, "m", "")
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        ({**GOOD, "data": [1.0]}, "shape [1, 2] needs 2 values in data, got 1"),
        ({**GOOD, "data": [[1.0], [2.0, 3.0]]}, "data must be a list"),
        ({**GOOD, "data": ["a", "b"]}, "of numbers for FP32"),
        ({**GOOD, "datatype": "UINT8", "data": [1, 300]}, "out of range for UINT8"),
        ({**GOOD, "datatype": "INT32", "data": [1.5, 2]}, "of integers for INT32"),
        ({**GOOD, "datatype": "BOOL", "data": [1, 0]}, "of booleans for BOOL"),
        ({**GOOD, "datatype": "FP99"}, 'datatype "FP99" is not supported'),
        ({**GOOD, "datatype": "BYTES", "data": ["a"]}, "needs 2 strings in data"),
        ({**GOOD, "shape": [1, -2]}, "must list counts"),
        ({k: v for k, v in GOOD.items() if k != "data"}, "no data; send data, or"),
        ({**GOOD, "parameters": {"binary_data_size": 8}}, "has both data and binary_data_size"),
        ({**GOOD, "parameters": {"x": [1]}}, "x must be a boolean, number or string"),
        ({**GOOD, "parameters": {"x": 2**70}}, "x must be a boolean, number or string"),
    ],
)
def test_bad_tensors_are_refused_naming_the_tensor(tensor: dict, message: str) -> None:
    with pytest.raises(InputError, match=r"inputs\[0\]") as caught:
        _decode({"inputs": [tensor]})
    assert message in str(caught.value)


def test_binary_sizes_must_add_up() -> None:
    tensor = {"name": "images", "shape": [1, 2], "datatype": "FP32"}
    with pytest.raises(InputError, match="runs past the binary data"):
        _decode({"inputs": [{**tensor, "parameters": {"binary_data_size": 16}}]}, b"\0" * 8)
    with pytest.raises(InputError, match="8 bytes left after the last input"):
        _decode({"inputs": [{**tensor, "parameters": {"binary_data_size": 8}}]}, b"\0" * 16)
    with pytest.raises(InputError, match="binary_data_size must be a byte count"):
        _decode({"inputs": [{**tensor, "parameters": {"binary_data_size": "8"}}]}, b"\0" * 8)


def test_bad_output_choices_are_refused() -> None:
    with pytest.raises(InputError, match="binary_data must be true or false"):
        _decode({"inputs": [GOOD], "outputs": [{"name": "l", "parameters": {"binary_data": 1}}]})
    with pytest.raises(InputError, match="binary_data_output must be true or false"):
        _decode({"inputs": [GOOD], "parameters": {"binary_data_output": "yes"}})
    with pytest.raises(InputError, match="outputs\\[0\\]: must be an object"):
        _decode({"inputs": [GOOD], "outputs": ["logits"]})
