"""KServe V2 REST (Triton's HTTP API) on Serve's HTTP port, when the `rest` setting is on.

Each route answers through the deployment method a gRPC client reaches, with a stand-in
that records the status the method sets; so REST shares gRPC's checks, limits, batching,
error table and metrics (under the gRPC method's name), and only the bodies differ
(codec/rest.py, codec/proto_json.py). Routes:

    GET  /v2                                     server metadata
    GET  /v2/health/live, /v2/health/ready       200, or 400 when not ready
    GET  /v2/models/{name}[/versions/{v}]        model metadata
    GET  .../ready                               200, 400 when not ready, 404 unknown model
    GET  .../config, .../stats                   Triton's model configuration, statistics
    POST .../infer                               inference: JSON or binary tensors

Readiness answers 200 or 400 as Triton does (the spec: 200 true, 4xx false). Errors answer
{"error": message} with the status Triton gives the gRPC code (HttpCodeFromError).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import grpc
from google.protobuf.message import Message
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from raysight._proto.inference import grpc_service_pb2 as pb
from raysight.codec import rest
from raysight.codec.proto_json import message_to_json
from raysight.errors import RaysightError
from raysight.serve.errors import Status, status_for
from raysight.serve.offload import INLINE_BYTES
from raysight.serve.settings import DEFAULT_MAX_MESSAGE_BYTES, MESSAGE_SIZE_ENV, ServeSettings

REST_OFF = (
    "KServe V2 REST is off on this server; turn it on with the serving setting rest: true "
    "(raysight serve --rest, Helm serve.settings.rest), or use gRPC"
)
_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.UNAVAILABLE: 503,
    # Triton answers a full queue with UNAVAILABLE, so 503; Serve's HTTP ingress answers its
    # own overload (max_queued_requests) with 503 too. A client retries either after a pause.
    grpc.StatusCode.RESOURCE_EXHAUSTED: 503,
}
_MODEL = re.compile(
    r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?"
    r"(?:/(?P<action>ready|config|stats|infer))?"
)


class Server(Protocol):
    """The deployment's OIP methods that REST answers through (serve/app.py)."""

    async def ServerReady(self, request: pb.ServerReadyRequest) -> pb.ServerReadyResponse: ...  # noqa: N802

    async def ServerMetadata(  # noqa: N802
        self, request: pb.ServerMetadataRequest
    ) -> pb.ServerMetadataResponse: ...

    async def ModelReady(  # noqa: N802
        self, request: pb.ModelReadyRequest, grpc_context: Any = None
    ) -> pb.ModelReadyResponse: ...

    async def ModelMetadata(  # noqa: N802
        self, request: pb.ModelMetadataRequest, grpc_context: Any = None
    ) -> pb.ModelMetadataResponse: ...

    async def ModelConfig(  # noqa: N802
        self, request: pb.ModelConfigRequest, grpc_context: Any = None
    ) -> pb.ModelConfigResponse: ...

    async def ModelStatistics(  # noqa: N802
        self, request: pb.ModelStatisticsRequest, grpc_context: Any = None
    ) -> pb.ModelStatisticsResponse: ...

    async def ModelInfer(  # noqa: N802
        self, request: pb.ModelInferRequest, grpc_context: Any = None
    ) -> pb.ModelInferResponse: ...


class _Recorder:
    """Stands in for a gRPC context: keeps the status a method sets, OK if none."""

    def __init__(self) -> None:
        self.status = Status(grpc.StatusCode.OK, "")

    def set_code(self, code: grpc.StatusCode) -> None:
        self.status = Status(code, self.status.details)

    def set_details(self, details: str) -> None:
        self.status = Status(self.status.code, details)


class BodyTooLargeError(RaysightError):
    """The request body is over the server's cap; answered 413 before it is parsed."""


class _MethodError(RaysightError):
    """A route asked for with the wrong HTTP method."""

    def __init__(self, method: str, allowed: str) -> None:
        super().__init__(f"{method} is not allowed here; use {allowed}")
        self.allowed = allowed


async def handle(request: Request, server: Server, settings: ServeSettings | None) -> Response:
    """Answer one HTTP request: the error boundary of REST.

    Args:
        request: The request Serve routed to the deployment.
        server: The deployment.
        settings: The replica's; with `rest` off (or none yet) every request gets 404
            saying how to turn it on.
    """
    if settings is None or not settings.rest:
        return _error(404, REST_OFF)
    try:
        return await _route(request, server)
    except BodyTooLargeError as exc:
        return _error(413, str(exc))
    except _MethodError as exc:
        return JSONResponse({"error": str(exc)}, status_code=405, headers={"Allow": exc.allowed})
    except Exception as exc:  # codec errors are InputError (400); the rest, 500 and a log
        return _status_error(status_for(exc, f"REST {request.method} {request.url.path}"))


async def _route(request: Request, server: Server) -> Response:
    path = request.url.path.rstrip("/")
    answer = _SERVER_ROUTES.get(path)
    if answer is not None:
        _allow(request.method, "GET")
        return await answer(server)
    match = _MODEL.fullmatch(path)
    if match is None:
        return _error(404, f"no route {path!r}; KServe V2 routes start /v2/health or /v2/models")
    name, version, action = match["name"], match["version"] or "", match["action"]
    _allow(request.method, "POST" if action == "infer" else "GET")
    if action == "infer":
        return await _infer(request, server, name, version)
    return await _MODEL_ROUTES[action or "metadata"](server, name, version)


async def _server_metadata(server: Server) -> Response:
    return JSONResponse(message_to_json(await server.ServerMetadata(pb.ServerMetadataRequest())))


# The status code is the answer (200 true, 4xx false), which Triton's clients read; the
# body repeats it as KServe's servers write it, {"live": true}, which KServe's REST client
# parses and fails without.
async def _live(server: Server) -> Response:
    return JSONResponse({"live": True})


async def _ready(server: Server) -> Response:
    if (await server.ServerReady(pb.ServerReadyRequest())).ready:
        return JSONResponse({"ready": True})
    return _error(400, "not ready: no model loaded")


async def _model_ready(server: Server, name: str, version: str) -> Response:
    recorder = _Recorder()
    await server.ModelReady(pb.ModelReadyRequest(name=name, version=version), recorder)
    if recorder.status.code == grpc.StatusCode.OK:
        return JSONResponse({"name": name, "ready": True})
    if recorder.status.code == grpc.StatusCode.NOT_FOUND:
        return _status_error(recorder.status)
    return _error(400, f"not ready: {recorder.status.details}")


async def _model_metadata(server: Server, name: str, version: str) -> Response:
    recorder = _Recorder()
    request = pb.ModelMetadataRequest(name=name, version=version)
    metadata = await server.ModelMetadata(request, recorder)
    return _answer(recorder.status, metadata)


async def _model_config(server: Server, name: str, version: str) -> Response:
    recorder = _Recorder()
    request = pb.ModelConfigRequest(name=name, version=version)
    config = (await server.ModelConfig(request, recorder)).config
    return _answer(recorder.status, config)


async def _model_stats(server: Server, name: str, version: str) -> Response:
    recorder = _Recorder()
    request = pb.ModelStatisticsRequest(name=name, version=version)
    statistics = await server.ModelStatistics(request, recorder)
    return _answer(recorder.status, statistics)


_SERVER_ROUTES: dict[str, Callable[[Server], Awaitable[Response]]] = {
    "/v2": _server_metadata,
    "/v2/health/live": _live,
    "/v2/health/ready": _ready,
}
_MODEL_ROUTES: dict[str, Callable[[Server, str, str], Awaitable[Response]]] = {
    "metadata": _model_metadata,
    "ready": _model_ready,
    "config": _model_config,
    "stats": _model_stats,
}


async def _infer(request: Request, server: Server, name: str, version: str) -> Response:
    # The cap the Serve config gives the replicas' gRPC servers (--max-message-bytes): one
    # limit for a request, whichever protocol carries it.
    limit = int(os.environ.get(MESSAGE_SIZE_ENV, DEFAULT_MAX_MESSAGE_BYTES))
    body = await _read_body(request, limit)
    header_length = request.headers.get(rest.HEADER_LENGTH)
    args = (body, header_length, name, version)
    # A large JSON body takes milliseconds to parse: off the event loop, like large gRPC
    # payloads (serve/offload.py); binary data is only sliced.
    if len(body) > INLINE_BYTES and header_length is None:
        translated = await asyncio.to_thread(rest.decode_infer_request, *args)
    else:
        translated = rest.decode_infer_request(*args)
    recorder = _Recorder()
    response = await server.ModelInfer(translated.message, recorder)
    if recorder.status.code != grpc.StatusCode.OK:
        return _status_error(recorder.status)
    content, json_length = rest.encode_infer_response(response, translated.binary)
    if json_length is None:
        return Response(content, media_type="application/json")
    return Response(
        content,
        media_type="application/octet-stream",
        headers={rest.HEADER_LENGTH: str(json_length)},
    )


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused once it passes `limit` bytes: by its declared length before any is
    read, else as it streams in."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLargeError(f"the body is {declared} bytes; this server takes at most {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLargeError(f"the body is over {limit} bytes, the most this server takes")
        chunks.append(chunk)
    return b"".join(chunks)


def _allow(method: str, allowed: str) -> None:
    if method != allowed:
        raise _MethodError(method, allowed)


def _answer(status: Status, message: Message | None) -> Response:
    # The message as JSON, or the error the method's status says.
    if status.code != grpc.StatusCode.OK or message is None:
        return _status_error(status)
    return JSONResponse(message_to_json(message))


def _status_error(status: Status) -> Response:
    # INTERNAL's details are already generic (serve/errors.py): no traceback ever leaves.
    return _error(_HTTP_STATUS.get(status.code, 500), status.details)


def _error(code: int, message: str) -> Response:
    return JSONResponse({"error": message}, status_code=code)
