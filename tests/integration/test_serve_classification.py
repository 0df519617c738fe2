"""Generic Triton clients against a real Serve: the classification extension, served
outputs and the advertised input form, read from metadata as such a client does."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from raysight.data import load_arrays
from raysight.engine import Engine
from raysight.serve import runner
from raysight.serve.model import softmax
from raysight.serve.settings import ServeSettings
from tests.conftest import RayCluster, free_port
from tests.integration.serving import digits_checkpoint, stop_serve

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "convnet-digits"


class Served:
    """The application under test; `apply` redeploys it with other settings."""

    def __init__(self, checkpoint: Path) -> None:
        self.port, self.http_port = free_port(), free_port()
        self.checkpoint = checkpoint
        self.engine = Engine.from_directory(checkpoint)

    def apply(self, **settings: object) -> None:
        values = {"checkpoint": str(self.checkpoint), "max_batch_size": 16, **settings}
        config = runner.serve_config(
            ServeSettings.from_dict(values), grpc_port=self.port, http_port=self.http_port
        )
        runner.deploy(config)

    def client(self) -> triton.InferenceServerClient:
        return triton.InferenceServerClient(url=f"127.0.0.1:{self.port}")


@pytest.fixture(scope="module")
def served(ray_cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = Served(digits_checkpoint(tmp_path_factory.mktemp("classify") / "ckpt", seed=0))
    try:
        served.apply()
        yield served
    finally:
        stop_serve(ray_cluster.dashboard_url)


def _digits(n: int) -> tuple[np.ndarray, np.ndarray]:
    split = load_arrays("digits", None, "test")
    return split.images[:n], split.labels[:n]  # (n, 1, 8, 8) uint8, (n,)


def _classify(
    client: triton.InferenceServerClient, pixels: np.ndarray, datatype: str, k: int
) -> np.ndarray:
    tensor = triton.InferInput("images", list(pixels.shape), datatype)
    tensor.set_data_from_numpy(pixels)
    output = triton.InferRequestedOutput("probabilities", class_count=k)
    # tritonclient leaves a class_count of 0 out; set it as another client would send it.
    output._get_tensor().parameters["classification"].int64_param = k
    result = client.infer(MODEL, [tensor], outputs=[output])
    return result.as_numpy("probabilities")  # (B, k) of b"score:index:label"


def test_server_metadata_advertises_classification(served: Served) -> None:
    extensions = served.client().get_server_metadata().extensions
    assert "classification" in extensions
    assert "model_repository" not in extensions


@pytest.mark.parametrize("rows", [1, 7])
def test_top_3_strings_for_real_digits(served: Served, rows: int) -> None:
    pixels, labels = _digits(rows)
    strings = _classify(served.client(), pixels, "UINT8", k=3)
    assert strings.shape == (rows, 3)
    expected = softmax(served.engine.classify_pixels(pixels))  # (rows, K) probabilities
    for row in range(rows):
        parts = [s.decode().split(":") for s in strings[row]]
        scores = [float(score) for score, _, _ in parts]
        assert scores == sorted(scores, reverse=True)
        top_index, top_label = int(parts[0][1]), parts[0][2]
        assert top_index == int(expected[row].argmax())
        assert top_label == served.engine.class_names[top_index]
        assert scores[0] == pytest.approx(float(expected[row].max()), abs=1e-5)
    top = [int(s.decode().split(":")[1]) for s in strings[:, 0]]
    assert np.mean(np.array(top) == labels) >= 0.7


@pytest.mark.parametrize("k", [0, -1, 11])
def test_bad_class_count_is_invalid_argument(served: Served, k: int) -> None:
    pixels, _ = _digits(1)
    with pytest.raises(InferenceServerException) as caught:
        _classify(served.client(), pixels, "UINT8", k=k)
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "classification" in caught.value.message()


def test_one_output_and_uint8_advertised(served: Served) -> None:
    served.apply(outputs="probabilities", input_datatype="UINT8")
    client = served.client()
    metadata = client.get_model_metadata(MODEL)
    assert [(i.name, i.datatype) for i in metadata.inputs] == [("images", "UINT8")]
    assert [o.name for o in metadata.outputs] == ["probabilities"]
    config = client.get_model_config(MODEL).config
    assert [o.name for o in config.output] == ["probabilities"]
    assert config.input[0].format == triton.model_config_pb2.ModelInput.FORMAT_NCHW

    # A generic client: send what the metadata says, ask for the first output it lists.
    (spec,) = metadata.inputs
    pixels, labels = _digits(8)
    tensor = triton.InferInput(spec.name, list(pixels.shape), spec.datatype)
    tensor.set_data_from_numpy(pixels)
    output = triton.InferRequestedOutput(metadata.outputs[0].name, class_count=1)
    result = client.infer(MODEL, [tensor], outputs=[output]).as_numpy(output.name())
    top = [s.decode().split(":") for s in result[:, 0]]
    assert [label for _, _, label in top] == [
        served.engine.class_names[i] for i in served.engine.classify_pixels(pixels).argmax(1)
    ]
    assert np.mean([int(index) for _, index, _ in top] == labels) >= 0.7

    with pytest.raises(InferenceServerException) as caught:
        client.infer(MODEL, [tensor], outputs=[triton.InferRequestedOutput("logits")])
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert '"logits": no such output' in caught.value.message()
