"""KServe V2 REST routes over a stand-in deployment: each route reaches the gRPC method, the
method's status becomes Triton's HTTP status with {"error": ...}, the body cap holds, and
with the setting off every request gets 404 saying how to turn it on."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
import numpy as np
import pytest
from starlette.requests import Request
from starlette.responses import Response

from raysight._proto.inference import grpc_service_pb2 as pb
from raysight.codec import oip
from raysight.serve import rest
from raysight.serve.errors import INTERNAL_MESSAGE
from raysight.serve.settings import MESSAGE_SIZE_ENV, ServeSettings

ON = ServeSettings(checkpoint="/c", rest=True)


class FakeServer:
    """Serves model "m" version "v1"; ModelInfer answers logits = 2 x the input, or the
    status `fail` names, as the deployment's error boundary would set it."""

    def __init__(self, ready: bool = True, fail: grpc.StatusCode | None = None) -> None:
        self.ready, self.fail = ready, fail

    async def ServerReady(self, request: Any) -> pb.ServerReadyResponse:  # noqa: N802
        return pb.ServerReadyResponse(ready=self.ready)

    async def ServerMetadata(self, request: Any) -> pb.ServerMetadataResponse:  # noqa: N802
        return pb.ServerMetadataResponse(name="raysight", version="1", extensions=["x"])

    def _known(self, name: str, context: Any) -> bool:
        if not self.ready:
            context.set_code(grpc.StatusCode.UNAVAILABLE)
            context.set_details("model is loading")
            return False
        if name != "m":
            context.set_code(grpc.StatusCode.NOT_FOUND)
            context.set_details(f"unknown model {name!r}")
            return False
        return True

    async def ModelReady(self, request: Any, grpc_context: Any = None) -> pb.ModelReadyResponse:  # noqa: N802
        return pb.ModelReadyResponse(ready=self._known(request.name, grpc_context))

    async def ModelMetadata(self, request: Any, grpc_context: Any = None) -> Any:  # noqa: N802
        self._known(request.name, grpc_context)
        return pb.ModelMetadataResponse(name="m", versions=["v1"], platform="pytorch")

    async def ModelConfig(self, request: Any, grpc_context: Any = None) -> Any:  # noqa: N802
        raise RuntimeError("a bug, with /secret/path in it")

    async def ModelStatistics(self, request: Any, grpc_context: Any = None) -> Any:  # noqa: N802
        self._known(request.name, grpc_context)
        return pb.ModelStatisticsResponse()

    async def ModelInfer(self, request: Any, grpc_context: Any = None) -> Any:  # noqa: N802
        if self.fail is not None:
            grpc_context.set_code(self.fail)
            grpc_context.set_details("refused")
            return pb.ModelInferResponse()
        images = oip.decode_inputs(request, max_batch_size=8)["images"]
        response = pb.ModelInferResponse(model_name="m", model_version="v1", id=request.id)
        oip.encode_outputs(response, {"logits": images * 2})
        return response


def _call(
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    server: Any = None,
    settings: ServeSettings | None = ON,
) -> Response:
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    request = Request(scope, receive)
    return asyncio.run(rest.handle(request, server or FakeServer(), settings))


def _json(response: Response) -> Any:
    return json.loads(bytes(response.body))


def _infer_body(**extra: Any) -> bytes:
    tensor = {"name": "images", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.5]}
    return json.dumps({"id": "r", "inputs": [tensor], **extra}).encode()


@pytest.mark.parametrize("settings", [ServeSettings(checkpoint="/c"), None])
def test_rest_off_answers_404_naming_the_setting(settings: ServeSettings | None) -> None:
    response = _call("GET", "/v2", settings=settings)
    assert response.status_code == 404
    assert "rest: true" in _json(response)["error"]


def test_server_routes() -> None:
    assert _json(_call("GET", "/v2")) == {"name": "raysight", "version": "1", "extensions": ["x"]}
    # 200 is the answer; the body repeats it for KServe's REST client, which parses it.
    assert _json(_call("GET", "/v2/health/live")) == {"live": True}
    assert _json(_call("GET", "/v2/health/ready")) == {"ready": True}
    not_ready = _call("GET", "/v2/health/ready", server=FakeServer(ready=False))
    assert not_ready.status_code == 400
    assert "not ready" in _json(not_ready)["error"]


def test_model_routes_and_their_errors() -> None:
    assert _json(_call("GET", "/v2/models/m"))["versions"] == ["v1"]
    assert _json(_call("GET", "/v2/models/m/versions/v1/stats")) == {"model_stats": []}
    assert _json(_call("GET", "/v2/models/m/ready")) == {"name": "m", "ready": True}
    assert _call("GET", "/v2/models/other/ready").status_code == 404
    assert _call("GET", "/v2/models/m/ready", server=FakeServer(ready=False)).status_code == 400
    missing = _call("GET", "/v2/models/other")
    assert (missing.status_code, _json(missing)) == (404, {"error": "unknown model 'other'"})
    loading = _call("GET", "/v2/models/m", server=FakeServer(ready=False))
    assert loading.status_code == 503


def test_unexpected_errors_are_500_with_a_generic_message() -> None:
    response = _call("GET", "/v2/models/m/config")
    assert (response.status_code, _json(response)) == (500, {"error": INTERNAL_MESSAGE})


def test_unknown_routes_and_methods() -> None:
    response = _call("GET", "/v3/anything")
    assert response.status_code == 404
    assert "/v3/anything" in _json(response)["error"]
    wrong = _call("GET", "/v2/models/m/infer")
    assert (wrong.status_code, wrong.headers["allow"]) == (405, "POST")
    assert _call("POST", "/v2/health/live").status_code == 405


def test_infer_json_and_binary_answers() -> None:
    response = _call("POST", "/v2/models/m/infer", _infer_body())
    assert response.headers["content-type"] == "application/json"
    document = _json(response)
    assert document["id"] == "r"
    assert document["outputs"] == [
        {"name": "logits", "datatype": "FP32", "shape": [1, 2], "data": [2.0, 5.0]}
    ]
    binary = _call(
        "POST", "/v2/models/m/infer", _infer_body(parameters={"binary_data_output": True})
    )
    length = int(binary.headers[rest.rest.HEADER_LENGTH])
    header = json.loads(bytes(binary.body)[:length])
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 8}
    values = np.frombuffer(bytes(binary.body)[length:], dtype="<f4")
    np.testing.assert_array_equal(values, [2.0, 5.0])


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, 400),
        (grpc.StatusCode.NOT_FOUND, 404),
        (grpc.StatusCode.UNAVAILABLE, 503),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 503),
        (grpc.StatusCode.INTERNAL, 500),
    ],
)
def test_infer_statuses_map_as_triton_does(code: grpc.StatusCode, status: int) -> None:
    response = _call("POST", "/v2/models/m/infer", _infer_body(), server=FakeServer(fail=code))
    assert (response.status_code, _json(response)) == (status, {"error": "refused"})


def test_malformed_bodies_are_400_naming_the_problem() -> None:
    response = _call("POST", "/v2/models/m/infer", b"{oops")
    assert response.status_code == 400
    assert "not valid JSON" in _json(response)["error"]
    short = _call(
        "POST", "/v2/models/m/infer", b"{}", headers={"Inference-Header-Content-Length": "50"}
    )
    assert short.status_code == 400
    assert "50 bytes of JSON header, but the body has 2" in _json(short)["error"]


def test_bodies_over_the_cap_are_413(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MESSAGE_SIZE_ENV, "16")
    body = _infer_body()
    declared = _call("POST", "/v2/models/m/infer", body, {"Content-Length": str(len(body))})
    assert declared.status_code == 413
    assert "at most 16" in _json(declared)["error"]
    streamed = _call("POST", "/v2/models/m/infer", body)  # no Content-Length
    assert streamed.status_code == 413
