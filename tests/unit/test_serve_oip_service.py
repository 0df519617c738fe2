"""The OIP answers per serving setting: metadata and config list exactly the served outputs
and the advertised input form, requests name only served outputs, and classification
results rank as the image API's Classify does."""

from __future__ import annotations

import base64
import io
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as tritonclient
from PIL import Image
from tritonclient.utils import deserialize_bytes_tensor

from raysight._proto.inference import grpc_service_pb2 as pb
from raysight._proto.inference import model_config_pb2 as mc
from raysight._proto.raysight.v1 import image_service_pb2 as image_pb
from raysight.errors import InputError
from raysight.serve import images, oip_service
from raysight.serve.settings import ServeSettings

LABELS = ("zero", "one", "two", "three")
PROBABILITIES = np.array([[0.1, 0.3, 0.3, 0.3], [0.7, 0.1, 0.15, 0.05]], dtype=np.float32)


def _model() -> Any:
    # What the answers read of a ServedModel, without loading a checkpoint.
    engine = SimpleNamespace(class_names=LABELS)
    return SimpleNamespace(
        name="m", version="v1", engine=engine, input_shape=(1, 8, 8), num_classes=len(LABELS)
    )


def _settings(**values: Any) -> ServeSettings:
    return ServeSettings(checkpoint="/c", **values)


def test_server_metadata_lists_only_implemented_extensions() -> None:
    extensions = list(oip_service.server_metadata().extensions)
    assert extensions == ["classification", "model_configuration", "statistics"]


@pytest.mark.parametrize(
    ("settings", "datatype", "outputs"),
    [
        ({}, "FP32", ["logits", "probabilities"]),
        ({"outputs": "probabilities", "input_datatype": "UINT8"}, "UINT8", ["probabilities"]),
        ({"outputs": "logits"}, "FP32", ["logits"]),
    ],
)
def test_metadata_and_config_per_setting(settings: dict, datatype: str, outputs: list[str]) -> None:
    model, served = _model(), _settings(**settings)
    metadata = oip_service.model_metadata(model, served)
    assert [(i.name, i.datatype, list(i.shape)) for i in metadata.inputs] == [
        ("images", datatype, [-1, 1, 8, 8])
    ]
    assert [(o.name, o.datatype, list(o.shape)) for o in metadata.outputs] == [
        (name, "FP32", [-1, 4]) for name in outputs
    ]
    config = oip_service.model_config(model, served).config
    (image,) = config.input
    assert mc.DataType.Name(image.data_type) == f"TYPE_{datatype}"
    assert image.format == mc.ModelInput.FORMAT_NCHW
    assert list(image.dims) == [1, 8, 8]
    assert [(o.name, list(o.dims), o.label_filename) for o in config.output] == [
        (name, [4], oip_service.LABEL_FILENAME) for name in outputs
    ]


def test_config_reports_the_batching_the_replica_does() -> None:
    """Triton's dynamic-batching fields: the preferred size gathered towards (none when
    off) and the most a batch waits."""
    config = oip_service.model_config(_model(), _settings(preferred_batch_size=6)).config
    assert list(config.dynamic_batching.preferred_batch_size) == [6]
    assert config.dynamic_batching.max_queue_delay_microseconds == 5000
    off = oip_service.model_config(_model(), _settings(preferred_batch_size=0)).config
    assert list(off.dynamic_batching.preferred_batch_size) == []


def _request(*outputs: tritonclient.InferRequestedOutput) -> pb.ModelInferRequest:
    # Requested outputs as tritonclient writes them, read into our messages.
    request = pb.ModelInferRequest(model_name="m")
    for output in outputs:
        request.outputs.add().MergeFromString(output._get_tensor().SerializeToString())
    return request


def test_no_named_output_gets_every_served_one() -> None:
    wanted = oip_service.requested_outputs(_request(), _model(), _settings(outputs="probabilities"))
    assert wanted == {"probabilities": 0}


def test_an_unserved_output_is_refused_by_name() -> None:
    request = _request(tritonclient.InferRequestedOutput("logits"))
    with pytest.raises(
        InputError, match='outputs\\[0\\] "logits": no such output; this model serves probabilities'
    ):
        oip_service.requested_outputs(request, _model(), _settings(outputs="probabilities"))


def test_a_bad_class_count_is_refused_before_the_pass() -> None:
    request = _request(tritonclient.InferRequestedOutput("probabilities", class_count=5))
    with pytest.raises(InputError, match="asks for 5 classes; the model has 4"):
        oip_service.requested_outputs(request, _model(), _settings())


def test_classification_and_tensor_outputs_in_request_order() -> None:
    model = _model()
    request = _request(
        tritonclient.InferRequestedOutput("probabilities", class_count=2),
        tritonclient.InferRequestedOutput("logits"),
    )
    wanted = oip_service.requested_outputs(request, model, _settings())
    logits = np.log(PROBABILITIES)
    response = oip_service.infer_response(
        request, model, wanted, {"logits": logits, "probabilities": PROBABILITIES}
    )
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("probabilities", "BYTES", [2, 2]),
        ("logits", "FP32", [2, 4]),
    ]
    strings = deserialize_bytes_tensor(response.raw_output_contents[0]).reshape(2, 2)
    assert strings.tolist() == [
        [b"0.300000:1:one", b"0.300000:2:two"],  # a three-way tie: lower index first
        [b"0.700000:0:zero", b"0.150000:2:two"],
    ]


def test_classify_ranks_as_the_classification_extension() -> None:
    model, settings = _model(), _settings()
    request = image_pb.ClassifyRequest(top_k=3)
    answer = images.classify_response(request, model, settings, PROBABILITIES[0])
    wanted = {"probabilities": 3}
    response = oip_service.infer_response(
        pb.ModelInferRequest(), model, wanted, {"probabilities": PROBABILITIES[:1]}
    )
    strings = deserialize_bytes_tensor(response.raw_output_contents[0])
    triton = [s.decode().split(":") for s in strings]
    assert [(p.class_index, p.label) for p in answer.predictions] == [
        (int(index), label) for _, index, label in triton
    ]
    assert [f"{p.score:f}" for p in answer.predictions] == [score for score, _, _ in triton]


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _pixel_model() -> Any:
    # A model whose normalisation is visible: pixels / 255, (B, 1, 8, 8) float32.
    model = _model()
    model.engine.normalize = lambda pixels: pixels.astype(np.float32) / 255
    return model


def _bytes_request(files: list[bytes]) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="images", datatype="BYTES", shape=[len(files)])
    request.raw_input_contents.append(
        b"".join(len(data).to_bytes(4, "little") + data for data in files)
    )
    return request


def test_encoded_images_are_prepared_as_the_image_api_prepares_each() -> None:
    model, settings = _pixel_model(), _settings()
    rng = np.random.default_rng(0)
    # One at the model's size, one grey 16x16 to be resized, one RGB to be made grey.
    files = [
        _png(rng.integers(0, 256, (8, 8), dtype=np.uint8)),
        _png(rng.integers(0, 256, (16, 16), dtype=np.uint8)),
        _png(rng.integers(0, 256, (12, 8, 3), dtype=np.uint8)),
    ]
    batch = oip_service.model_inputs(_bytes_request(files), model, settings)
    assert batch.shape == (3, 1, 8, 8) and batch.dtype == np.float32
    for row, data in zip(batch, files, strict=True):
        alone = images.model_inputs(image_pb.ClassifyRequest(image=data), model, settings)
        np.testing.assert_array_equal(row, alone[0])


def test_a_bad_image_among_many_is_named_by_its_position() -> None:
    model, settings = _pixel_model(), _settings()
    good = _png(np.zeros((8, 8), np.uint8))
    with pytest.raises(InputError) as error:
        oip_service.model_inputs(_bytes_request([good, b"not an image"]), model, settings)
    assert str(error.value).startswith('inputs "images" item 1: image: not a ')
    assert error.value.reason == "not_an_image"
    with pytest.raises(InputError, match="item 0: image: empty") as error:
        oip_service.model_inputs(_bytes_request([b"", good]), model, settings)


def test_base64_text_of_an_image_is_read_as_the_image() -> None:
    # JSON can carry a file only as text: KServe's REST examples send base64, and some
    # tools wrap it in lines.
    model, settings = _pixel_model(), _settings()
    file = _png(np.arange(64, dtype=np.uint8).reshape(8, 8))
    text = base64.b64encode(file)
    wrapped = b"\n".join(text[i : i + 20] for i in range(0, len(text), 20))
    batch = oip_service.model_inputs(_bytes_request([file, text, wrapped]), model, settings)
    np.testing.assert_array_equal(batch[1], batch[0])
    np.testing.assert_array_equal(batch[2], batch[0])
    # Base64 of something that is no image is still no image, and says so.
    with pytest.raises(InputError, match="item 0: image: not a ") as error:
        oip_service.model_inputs(_bytes_request([base64.b64encode(b"hello")]), model, settings)
    assert error.value.reason == "not_an_image"
