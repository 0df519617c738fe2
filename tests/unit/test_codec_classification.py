"""Triton's classification extension: ranking, the "score:index:label" strings, the BYTES
wire format (read back with tritonclient's own deserializer) and the class-count parameter."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as tritonclient
from tritonclient.utils import deserialize_bytes_tensor

from raysight._proto.inference import grpc_service_pb2 as pb
from raysight.codec.bytes_tensor import decode_bytes_tensor, encode_bytes_tensor
from raysight.codec.classification import class_count, classification_tensor, top_classes
from raysight.codec.oip import decode_outputs, encode_outputs
from raysight.errors import InputError

LABELS = ("cat", "dog", "bird", "fish")
SCORES = np.array(
    [[0.1, 0.7, 0.15, 0.05], [0.25, 0.25, 0.4, 0.1]], dtype=np.float32
)  # (B=2, K=4); row 1 ties classes 0 and 1


def test_top_classes_best_first_ties_lower_index_first() -> None:
    np.testing.assert_array_equal(top_classes(SCORES, 3), [[1, 2, 0], [2, 0, 1]])


def test_classification_strings_as_triton_prints_them() -> None:
    strings = classification_tensor(SCORES, 2, LABELS)
    assert strings.shape == (2, 2)
    assert strings.tolist() == [
        [b"0.700000:1:dog", b"0.150000:2:bird"],
        [b"0.400000:2:bird", b"0.250000:0:cat"],
    ]


def test_logit_scores_keep_their_sign() -> None:
    strings = classification_tensor(np.array([[-1.5, 2.25]], dtype=np.float32), 2, LABELS[:2])
    assert strings.tolist() == [[b"2.250000:1:dog", b"-1.500000:0:cat"]]


def test_bytes_tensor_round_trip_through_tritonclient() -> None:
    strings = classification_tensor(SCORES, 3, LABELS)
    raw = encode_bytes_tensor(strings)
    np.testing.assert_array_equal(deserialize_bytes_tensor(raw).reshape(2, 3), strings)
    np.testing.assert_array_equal(decode_bytes_tensor(raw, (2, 3), "t"), strings)


def test_bytes_tensor_empty_and_odd_elements() -> None:
    items = np.array([b"", b"\x00\xff", "é".encode()], dtype=object)
    raw = encode_bytes_tensor(items)
    assert raw[:4] == b"\x00\x00\x00\x00"  # a 4-byte little-endian length, then the bytes
    assert deserialize_bytes_tensor(raw).tolist() == items.tolist()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x05\x00", "inside an element's length"),
        (b"\x05\x00\x00\x00abc", "runs past the end"),
        (b"\x01\x00\x00\x00a", "needs 2 BYTES elements, got 1"),
    ],
)
def test_bad_bytes_contents_are_named(raw: bytes, message: str) -> None:
    with pytest.raises(InputError, match=message):
        decode_bytes_tensor(raw, (2,), 'outputs[0] "p"')


def test_encode_refuses_non_bytes_elements() -> None:
    with pytest.raises(ValueError, match="must be bytes, got str"):
        encode_bytes_tensor(np.array(["text"], dtype=object))


def test_bytes_output_through_the_response_codec() -> None:
    strings = classification_tensor(SCORES, 2, LABELS)
    response = pb.ModelInferResponse()
    encode_outputs(response, {"probabilities": strings, "logits": SCORES})
    wire = pb.ModelInferResponse.FromString(response.SerializeToString())
    assert [(o.name, o.datatype, list(o.shape)) for o in wire.outputs] == [
        ("probabilities", "BYTES", [2, 2]),
        ("logits", "FP32", [2, 4]),
    ]
    decoded = decode_outputs(wire)
    np.testing.assert_array_equal(decoded["probabilities"], strings)
    np.testing.assert_array_equal(decoded["logits"], SCORES)


def test_typed_bytes_contents_decode() -> None:
    response = pb.ModelInferResponse()
    tensor = response.outputs.add(name="p", datatype="BYTES", shape=[1, 2])
    tensor.contents.bytes_contents.extend([b"a", b"b"])
    assert decode_outputs(response)["p"].tolist() == [[b"a", b"b"]]


def _requested(**parameter: object) -> pb.ModelInferRequest.InferRequestedOutputTensor:
    output = pb.ModelInferRequest.InferRequestedOutputTensor(name="probabilities")
    for kind, value in parameter.items():
        setattr(output.parameters["classification"], kind, value)
    return output


def test_class_count_from_tritonclient() -> None:
    theirs = tritonclient.InferRequestedOutput("probabilities", class_count=3)._get_tensor()
    ours = pb.ModelInferRequest.InferRequestedOutputTensor.FromString(theirs.SerializeToString())
    assert class_count(ours, "o", num_classes=10) == 3
    assert class_count(_requested(), "o", num_classes=10) == 0  # no parameter: the tensor


@pytest.mark.parametrize(
    ("parameter", "message"),
    [
        ({"int64_param": 0}, "asks for 0 classes; the model has 4, so use 1 to 4"),
        ({"int64_param": -2}, "asks for -2 classes"),
        ({"int64_param": 5}, "asks for 5 classes; the model has 4"),
        ({"string_param": "3"}, "must be an integer .* got string_param"),
        ({"double_param": 3.0}, "must be an integer .* got double_param"),
    ],
)
def test_bad_class_counts_are_refused(parameter: dict, message: str) -> None:
    with pytest.raises(InputError, match=message) as caught:
        class_count(_requested(**parameter), 'outputs[0] "probabilities"', num_classes=4)
    assert str(caught.value).startswith('outputs[0] "probabilities"')
    assert caught.value.reason == "bad_class_count"


def test_unsigned_class_count_is_accepted() -> None:
    assert class_count(_requested(uint64_param=2), "o", num_classes=4) == 2
