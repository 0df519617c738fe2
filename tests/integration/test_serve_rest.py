"""KServe V2 REST on Serve's HTTP port, end to end: tritonclient.http (an independent client)
for metadata, config, JSON and binary inference and classification; plain HTTP for JSON
bodies and each refusal; Serve's own routes beside it; and the setting that turns it off."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from raysight.data import load_arrays
from raysight.engine import Engine
from raysight.serve import runner
from raysight.serve.settings import ServeSettings
from tests.conftest import RayCluster, free_port
from tests.integration.serving import digits_checkpoint, stop_serve

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "convnet-digits"


class Served:
    """The application under test, its ports and its model."""

    def __init__(self, port: int, http_port: int, settings: ServeSettings) -> None:
        self.port, self.http_port, self.settings = port, http_port, settings
        self.engine = Engine.from_directory(settings.checkpoint)
        self.version = self.engine.manifest.weights_sha256[:12]
        self.url = f"http://127.0.0.1:{http_port}"

    def apply(self, **settings: Any) -> None:
        """Apply changed settings through the Serve config, as a RayService update does."""
        changed = ServeSettings.from_dict({**self.settings.to_dict(), **settings})
        runner.deploy(runner.serve_config(changed, grpc_port=self.port, http_port=self.http_port))

    def triton(self) -> triton.InferenceServerClient:
        return triton.InferenceServerClient(url=f"127.0.0.1:{self.http_port}")

    def http(
        self, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) of a GET, or of a POST when `body` is given."""
        request = urllib.request.Request(self.url + path, data=body, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                return reply.status, dict(reply.headers), reply.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()


@pytest.fixture(scope="module")
def served(ray_cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    checkpoint = digits_checkpoint(tmp_path_factory.mktemp("rest") / "seed0", seed=0)
    settings = ServeSettings(checkpoint=str(checkpoint), max_batch_size=16, rest=True)
    port, http_port = free_port(), free_port()
    try:
        runner.deploy(runner.serve_config(settings, grpc_port=port, http_port=http_port))
        yield Served(port, http_port, settings)
    finally:
        stop_serve(ray_cluster.dashboard_url)


def _images(n: int) -> tuple[np.ndarray, np.ndarray]:
    split = load_arrays("digits", None, "test")
    return split.images[:n], split.labels[:n]


def test_health_and_metadata_match_grpc(served: Served) -> None:
    client = served.triton()
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert client.is_model_ready(MODEL, served.version)
    assert not client.is_model_ready("no-such-model")
    # KServe's REST client reads the answer from the body as well as the status.
    for path, body in (("/v2/health/live", {"live": True}), ("/v2/health/ready", {"ready": True})):
        status, _, raw = served.http(path)
        assert (status, json.loads(raw)) == (200, body)
    grpc_client = triton_grpc.InferenceServerClient(url=f"127.0.0.1:{served.port}")
    grpc_server = grpc_client.get_server_metadata()
    server = client.get_server_metadata()
    assert server["name"] == grpc_server.name == "raysight"
    assert server["extensions"] == list(grpc_server.extensions)
    metadata = client.get_model_metadata(MODEL)
    grpc_metadata = grpc_client.get_model_metadata(MODEL)
    assert metadata["name"] == MODEL
    assert metadata["versions"] == [served.version]
    assert metadata["platform"] == grpc_metadata.platform
    assert metadata["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert [(o["name"], o["shape"]) for o in metadata["outputs"]] == [
        (o.name, list(o.shape)) for o in grpc_metadata.outputs
    ]


def test_model_config_is_tritons_json(served: Served) -> None:
    config = served.triton().get_model_config(MODEL)
    assert config["name"] == MODEL
    assert config["max_batch_size"] == 16
    assert config["input"][0]["dims"] == [1, 8, 8]
    assert config["input"][0]["data_type"] == "TYPE_FP32"
    assert [o["name"] for o in config["output"]] == ["logits", "probabilities"]
    stats = served.triton().get_inference_statistics(MODEL)
    assert stats["model_stats"][0]["name"] == MODEL


@pytest.mark.parametrize("binary", [True, False])
def test_infer_matches_the_in_process_model(served: Served, binary: bool) -> None:
    images, labels = _images(12)
    normalised = served.engine.normalize(images)  # (12, 1, 8, 8) float32
    expected = served.engine.logits(normalised)
    tensor = triton.InferInput("images", list(normalised.shape), "FP32")
    tensor.set_data_from_numpy(normalised, binary_data=binary)
    outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("logits",)]
    result = served.triton().infer(MODEL, [tensor], outputs=outputs, request_id="r1")
    np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-5, atol=1e-5)
    assert result.get_response()["id"] == "r1"
    pixels = triton.InferInput("images", list(images.shape), "UINT8")
    pixels.set_data_from_numpy(images, binary_data=binary)
    uint8 = served.triton().infer(MODEL, [pixels]).as_numpy("logits")
    assert (uint8.argmax(1) == labels).mean() >= 0.75


def test_classification_extension(served: Served) -> None:
    images, _ = _images(3)
    tensor = triton.InferInput("images", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images)
    wanted = triton.InferRequestedOutput("probabilities", class_count=3)
    result = served.triton().infer(MODEL, [tensor], outputs=[wanted])
    strings = result.as_numpy("probabilities")  # (3, 3) of b"score:index:label"
    assert strings.shape == (3, 3)
    expected = served.engine.classify_pixels(images).argmax(1)
    assert [int(row[0].split(b":")[1]) for row in strings] == list(expected)


def _json_infer(shape: list[int], data: list[Any], name: str = MODEL) -> bytes:
    document = {
        "inputs": [{"name": "images", "shape": shape, "datatype": "FP32", "data": data}],
        "outputs": [{"name": "probabilities", "parameters": {"classification": 2}}],
    }
    return json.dumps(document).encode()


def test_plain_json_bodies_and_refusals(served: Served) -> None:
    images, _ = _images(1)
    nested = served.engine.normalize(images).tolist()  # [1][1][8][8]
    status, headers, body = served.http(
        f"/v2/models/{MODEL}/infer", _json_infer([1, 1, 8, 8], nested)
    )
    assert status == 200
    assert headers["content-type"] == "application/json"
    (output,) = json.loads(body)["outputs"]
    assert (output["datatype"], output["shape"]) == ("BYTES", [1, 2])
    assert all(isinstance(s, str) and s.count(":") == 2 for s in output["data"])

    refusals = {
        "bad JSON": (f"/v2/models/{MODEL}/infer", b"{not json", 400, "not valid JSON"),
        "unknown model": ("/v2/models/nope/infer", _json_infer([1, 1, 8, 8], nested), 404, "nope"),
        "wrong shape": (
            f"/v2/models/{MODEL}/infer",
            _json_infer([1, 1, 4, 16], np.zeros(64).tolist()),
            400,
            "shape must be [-1, 1, 8, 8]",
        ),
        "unknown version": (f"/v2/models/{MODEL}/versions/0/ready", None, 404, "version"),
    }
    for case, (path, request, code, words) in refusals.items():
        status, _, body = served.http(path, request)
        assert status == code, case
        assert words in json.loads(body)["error"], case
        assert b"Traceback" not in body, case
    status, _, body = served.http(
        f"/v2/models/{MODEL}/infer", b"{}", {"Inference-Header-Content-Length": "99"}
    )
    assert status == 400
    assert "99 bytes of JSON header" in json.loads(body)["error"]


def test_serves_own_routes_keep_working(served: Served) -> None:
    assert served.http("/-/healthz")[0] == 200
    status, _, body = served.http("/-/routes")
    assert status == 200
    assert json.loads(body) == {"/": "raysight"}


def test_rest_off_answers_404_naming_the_setting(served: Served) -> None:
    served.apply(rest=False)
    try:
        status, _, body = served.http("/v2/health/ready")
        assert status == 404
        assert "rest: true" in json.loads(body)["error"]
        with pytest.raises(InferenceServerException):
            served.triton().get_model_metadata(MODEL)
    finally:
        served.apply(rest=True)
    assert served.triton().is_server_ready()
