"""A generic Triton image-classification client, unchanged, against raysight on real MNIST.

Such a client (Triton ships one as its image-client example) learns everything from the
server: it requires one input and one output, reads the input's datatype, dims and layout
from ModelMetadata and ModelConfig, converts each image file to that form with no scaling,
and asks for the top classes through the classification extension, reading back
"score:index:label" strings. raysight passes with the documented one-output,
UINT8-advertised settings; the test drives that flow over gRPC (sync, async, streaming)
and over KServe V2 REST (sync, async), where metadata and config arrive as JSON.
"""

from __future__ import annotations

import base64
import queue
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.model_config_pb2 as mc
import tritonclient.http as triton_http
from PIL import Image
from tritonclient.utils import triton_to_np_dtype

from raysight.data import load_arrays
from raysight.engine import Engine
from raysight.serve import runner
from raysight.serve.settings import ServeSettings
from tests.conftest import MNIST_DIR, RayCluster, free_port
from tests.integration.serving import fitted_checkpoint, png, stop_serve

pytestmark = [pytest.mark.integration, pytest.mark.slow]

IMAGES = 40  # real MNIST test digits, as PNG files
# The settings that present one output and raw pixels, as README's serving section documents.
GENERIC_CLIENT_SETTINGS = {"outputs": "probabilities", "input_datatype": "UINT8", "rest": True}


@dataclass(frozen=True)
class ModelView:
    """What a generic client reads from the server before it sends anything."""

    name: str
    input_name: str
    output_name: str
    datatype: str
    channels: int
    height: int
    width: int
    nchw: bool
    max_batch_size: int


@dataclass(frozen=True)
class Targets:
    grpc: str
    http: str


@dataclass(frozen=True)
class Digits:
    files: list[Path]
    labels: np.ndarray  # (N,) true classes
    predicted: np.ndarray  # (N,) the in-process model's top-1


@pytest.fixture(scope="module")
def served(
    ray_cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Targets, Digits]]:
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"real MNIST not found at {MNIST_DIR} (../shared is absent)")
    mnist_dir = MNIST_DIR
    root = tmp_path_factory.mktemp("mnist-client")
    checkpoint = fitted_checkpoint(
        root / "ckpt", "mnist", mnist_dir, seed=0, epochs=1, samples=6000
    )
    test = load_arrays("mnist", str(mnist_dir), "test")
    files = []
    for i in range(IMAGES):
        files.append(root / f"{i:02d}.png")
        files[-1].write_bytes(png(test.images[i, 0]))  # (28, 28) grey
    predicted = Engine.from_directory(checkpoint).classify_pixels(test.images[:IMAGES]).argmax(1)
    port, http_port = free_port(), free_port()
    settings = ServeSettings.from_dict({"checkpoint": str(checkpoint), **GENERIC_CLIENT_SETTINGS})
    try:
        runner.deploy(runner.serve_config(settings, grpc_port=port, http_port=http_port))
        yield (
            Targets(f"127.0.0.1:{port}", f"127.0.0.1:{http_port}"),
            Digits(files, test.labels[:IMAGES], predicted),
        )
    finally:
        stop_serve(ray_cluster.dashboard_url)


def _view(client: triton.InferenceServerClient, name: str) -> ModelView:
    """The checks a generic image client makes, and what it takes from the answers."""
    metadata = client.get_model_metadata(name)
    config = client.get_model_config(name).config
    assert len(metadata.inputs) == 1, "expecting 1 input"
    assert len(metadata.outputs) == 1, "expecting 1 output"
    assert len(config.input) == 1
    (tensor,), (output,) = metadata.inputs, metadata.outputs
    assert output.datatype == "FP32"
    batched = config.max_batch_size > 0
    assert sum(d > 1 for d in output.shape[1 if batched else 0 :]) <= 1, "output is a vector"
    dims = list(tensor.shape[1 if batched else 0 :])
    assert len(dims) == 3
    layout = config.input[0].format
    assert layout in (mc.ModelInput.FORMAT_NCHW, mc.ModelInput.FORMAT_NHWC)
    nchw = layout == mc.ModelInput.FORMAT_NCHW
    channels, height, width = dims if nchw else (dims[2], dims[0], dims[1])
    return ModelView(
        metadata.name, tensor.name, output.name, tensor.datatype,
        channels, height, width, nchw, config.max_batch_size,
    )  # fmt: skip


def _view_http(client: triton_http.InferenceServerClient, name: str) -> ModelView:
    """The same checks on REST's JSON, where the layout is the enum's name."""
    metadata = client.get_model_metadata(name)
    config = client.get_model_config(name)
    assert len(metadata["inputs"]) == 1 and len(metadata["outputs"]) == 1
    assert len(config["input"]) == 1
    (tensor,), (output,) = metadata["inputs"], metadata["outputs"]
    assert output["datatype"] == "FP32"
    batched = config["max_batch_size"] > 0
    dims = list(tensor["shape"][1 if batched else 0 :])
    layout = mc.ModelInput.Format.Value(config["input"][0]["format"])
    nchw = layout == mc.ModelInput.FORMAT_NCHW
    channels, height, width = dims if nchw else (dims[2], dims[0], dims[1])
    return ModelView(
        metadata["name"], tensor["name"], output["name"], tensor["datatype"],
        channels, height, width, nchw, config["max_batch_size"],
    )  # fmt: skip


def _pixels(file: Path, view: ModelView) -> np.ndarray:
    """A file as the client prepares it: grey or RGB, resized to the model's size, in the
    advertised datatype, no scaling; (C, H, W) or (H, W, C) by the advertised layout."""
    with Image.open(file) as image:
        picture = image.convert("L" if view.channels == 1 else "RGB")
        resized = np.array(picture.resize((view.width, view.height), Image.BILINEAR))
    if resized.ndim == 2:
        resized = resized[:, :, None]
    typed = resized.astype(triton_to_np_dtype(view.datatype))
    return np.transpose(typed, (2, 0, 1)) if view.nchw else typed


def _request(view: ModelView, batch: np.ndarray, classes: int) -> tuple[list, list]:
    inputs = [triton.InferInput(view.input_name, list(batch.shape), view.datatype)]
    inputs[0].set_data_from_numpy(batch)
    return inputs, [triton.InferRequestedOutput(view.output_name, class_count=classes)]


def _top_classes(result: Any, view: ModelView) -> list[list[tuple[float, int]]]:
    """Each row's "score:index:label" strings, as (score, index), best first."""
    rows = []
    for row in result.as_numpy(view.output_name):
        parts = [
            (entry.decode() if isinstance(entry, bytes) else entry).split(":") for entry in row
        ]
        rows.append([(float(score), int(index)) for score, index, _ in parts])
    return rows


def _check(rows: list[list[tuple[float, int]]], digits: Digits, indices: list[int]) -> None:
    tops = np.array([row[0][1] for row in rows])
    np.testing.assert_array_equal(tops, digits.predicted[indices])  # the model's own answers
    for row in rows:
        scores = [score for score, _ in row]
        assert scores == sorted(scores, reverse=True) and 0.0 <= scores[-1] <= scores[0] <= 1.0


def _batches(view: ModelView) -> list[list[int]]:
    size = min(8, view.max_batch_size)
    return [list(range(i, min(i + size, IMAGES))) for i in range(0, IMAGES, size)]


def _assert_answers(rows: list[list[tuple[float, int]]], digits: Digits) -> None:
    _check(rows, digits, list(range(IMAGES)))
    accuracy = np.mean(np.array([row[0][1] for row in rows]) == digits.labels)
    assert accuracy >= 0.9, accuracy


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_generic_image_client_classifies_real_digits_over_rest(
    served: tuple[Targets, Digits], mode: str
) -> None:
    targets, digits = served
    client = triton_http.InferenceServerClient(url=targets.http, concurrency=4)
    view = _view_http(client, "convnet-mnist")
    assert (view.datatype, view.channels, view.height, view.width) == ("UINT8", 1, 28, 28)
    pending = []
    for indices in _batches(view):
        batch = np.stack([_pixels(digits.files[i], view) for i in indices])  # (B, C, H, W)
        inputs = [triton_http.InferInput(view.input_name, list(batch.shape), view.datatype)]
        inputs[0].set_data_from_numpy(batch)
        outputs = [triton_http.InferRequestedOutput(view.output_name, class_count=3)]
        if mode == "sync":
            pending.append(client.infer(view.name, inputs, outputs=outputs))
        else:
            pending.append(client.async_infer(view.name, inputs, outputs=outputs))
    results = [p if mode == "sync" else p.get_result() for p in pending]
    _assert_answers([row for r in results for row in _top_classes(r, view)], digits)
    client.close()


@pytest.mark.parametrize("mode", ["sync", "async", "streaming"])
def test_a_generic_image_client_classifies_real_digits(
    served: tuple[Targets, Digits], mode: str
) -> None:
    targets, digits = served
    client = triton.InferenceServerClient(url=targets.grpc)
    view = _view(client, "convnet-mnist")
    assert (view.datatype, view.channels, view.height, view.width) == ("UINT8", 1, 28, 28)
    batches = _batches(view)
    done: queue.Queue[tuple[triton.InferResult | None, Exception | None]] = queue.Queue()
    results: dict[str, triton.InferResult] = {}

    def completed(result: triton.InferResult | None, error: Exception | None) -> None:
        done.put((result, error))

    if mode == "streaming":
        client.start_stream(partial(completed))
    for number, indices in enumerate(batches):
        batch = np.stack([_pixels(digits.files[i], view) for i in indices])  # (B, C, H, W)
        inputs, outputs = _request(view, batch, classes=3)
        if mode == "sync":
            results[str(number)] = client.infer(view.name, inputs, outputs=outputs)
        elif mode == "async":
            client.async_infer(
                view.name, inputs, completed, request_id=str(number), outputs=outputs
            )
        else:
            client.async_stream_infer(view.name, inputs, request_id=str(number), outputs=outputs)
    while len(results) < len(batches):
        result, error = done.get(timeout=60)
        assert error is None, error
        assert result is not None
        results[result.get_response().id] = result
    if mode == "streaming":
        client.stop_stream()
    _assert_answers(
        [row for n in range(len(batches)) for row in _top_classes(results[str(n)], view)], digits
    )


@pytest.mark.parametrize("transport", ["grpc", "rest", "rest-json"])
def test_image_files_sent_as_bytes_are_classified_as_the_model_does(
    served: tuple[Targets, Digits], transport: str
) -> None:
    # A client with encoded files and no preprocessing of its own (OpenVINO Model Server's
    # and Triton's BYTES image inputs): shape [B], one PNG file a row, in the one input; in
    # REST's JSON, where a file can only be text, as base64.
    targets, digits = served
    view = _view(triton.InferenceServerClient(targets.grpc), "convnet-mnist")
    module: Any = triton if transport == "grpc" else triton_http
    client = module.InferenceServerClient(targets.grpc if transport == "grpc" else targets.http)
    rows = []
    for indices in _batches(view):
        files = [digits.files[i].read_bytes() for i in indices]
        inputs = [module.InferInput(view.input_name, [len(indices)], "BYTES")]
        if transport == "rest-json":
            text = [base64.b64encode(f).decode() for f in files]
            inputs[0].set_data_from_numpy(np.array(text, dtype=object), binary_data=False)
        else:
            inputs[0].set_data_from_numpy(np.array(files, dtype=object))
        outputs = [module.InferRequestedOutput(view.output_name, class_count=3)]
        rows += _top_classes(client.infer(view.name, inputs, outputs=outputs), view)
    _assert_answers(rows, digits)
    client.close()
