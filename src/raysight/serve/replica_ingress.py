"""OIP and the image API answered on the replica's own gRPC server, beside Serve's request path.

In the HAProxy ingress mode each replica runs the gRPC server that HAProxy forwards to, and
Serve registers every service there as a router into its own request path: per request it
builds request metadata, takes a slot, sets a request context, records its metrics and
hands the call to the user-code event loop. Profiled on 2 cores, that path took about as
much CPU per request on the replica's main loop as the forward pass did (docs/benchmarks.md). A
passthrough service is answered by its handlers directly; the servicers here call the
deployment's own methods, so the batcher, the error boundary and raysight's metrics are
the same on both paths.

What Serve's path gave is kept: requests are admitted against the deployment's own limits
(`max_ongoing_requests` + `max_queued_requests`; beyond them RESOURCE_EXHAUSTED, as Serve
answers), a replica that is shutting down finishes the RPCs it holds (Serve stops this
server gracefully after HAProxy has let go of the replica), and a request whose gRPC
deadline passes while it is queued is dropped before compute (grpc.aio cancels it).
`serve/grpc_services.py` decides when this path applies.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import grpc
from ray import serve

from raysight._proto.inference import grpc_service_pb2 as pb
from raysight._proto.inference import grpc_service_pb2_grpc as pb_grpc
from raysight._proto.raysight.v1 import image_service_pb2 as image_pb
from raysight._proto.raysight.v1 import image_service_pb2_grpc as image_grpc
from raysight.serve.errors import INTERNAL_MESSAGE, Status

logger = logging.getLogger(__name__)

T = TypeVar("T")
if TYPE_CHECKING:
    Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
else:
    Context = grpc.aio.ServicerContext
Call: TypeAlias = Callable[[Any], Awaitable[T]]
"""A call of one deployment method, given the deployment."""


class Gate:
    """Admission by requests in flight on this replica's own server (a stream is one).

    Args:
        limit: The most requests in flight, read at each arrival so that a config update
            applies at once; None admits everything.
    """

    def __init__(self, limit: Callable[[], int | None]) -> None:
        self._limit = limit
        self.in_flight = 0

    def enter(self) -> bool:
        """Take a place, or say there is none."""
        limit = self._limit()
        if limit is not None and self.in_flight >= limit:
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        self.in_flight -= 1


def deployment_limit() -> int | None:
    """`max_ongoing_requests` + `max_queued_requests` of this replica's deployment, as its
    last config update set them; None when the queue is unbounded (max_queued_requests
    -1, Serve's default)."""
    config = serve.get_replica_context()._deployment_config
    if config.max_queued_requests < 0:
        return None
    return int(config.max_ongoing_requests + config.max_queued_requests)


GATE = Gate(deployment_limit)
"""One per replica process: both services count against the deployment's limits."""


def _deployment() -> Any:
    """The deployment instance this replica runs (None until its constructor has run)."""
    return serve.get_replica_context().servable_object


def _refusal(limit: int | None) -> Status:
    return Status(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"server at capacity ({limit} requests in flight on this replica); retry with backoff",
    )


_LOADING = "model is loading; retry shortly"


async def _admit(method: str, context: Context) -> Any:
    """The deployment, with a place at the gate taken for this RPC (the caller leaves it).

    Aborts the RPC with UNAVAILABLE while the deployment is not constructed yet, and with
    RESOURCE_EXHAUSTED (counted) when the replica holds its limit of requests.
    """
    deployment = _deployment()
    if deployment is None:
        await context.abort(grpc.StatusCode.UNAVAILABLE, _LOADING)
    if not GATE.enter():
        refusal = _refusal(deployment_limit())
        deployment.boundary.count(method, refusal, time.perf_counter())
        await context.abort(refusal.code, refusal.details)
    return deployment


async def _unary(method: str, context: Context, call: Call[T]) -> T:
    deployment = await _admit(method, context)
    try:
        return await call(deployment)
    except Exception:  # the deployment's boundary answers its own; anything else ends here
        logger.exception("%s failed", method)
        await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
        raise  # abort raises; this line is never reached
    finally:
        GATE.leave()


async def _stream(
    method: str, context: Context, call: Callable[[Any], AsyncIterator[T]]
) -> AsyncIterator[T]:
    deployment = await _admit(method, context)
    try:
        async for response in call(deployment):
            yield response
    finally:
        GATE.leave()


class ReplicaInference(pb_grpc.GRPCInferenceServiceServicer):
    """The Open Inference Protocol, answered by the deployment in this process."""

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context) -> Any:  # noqa: N802
        return await _unary("ServerLive", context, lambda d: d.ServerLive(request))

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Context) -> Any:  # noqa: N802
        return await _unary("ServerReady", context, lambda d: d.ServerReady(request))

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context) -> Any:  # noqa: N802
        return await _unary("ModelReady", context, lambda d: d.ModelReady(request, context))

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Context) -> Any:  # noqa: N802
        return await _unary("ServerMetadata", context, lambda d: d.ServerMetadata(request))

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Context) -> Any:  # noqa: N802
        return await _unary("ModelMetadata", context, lambda d: d.ModelMetadata(request, context))

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Context) -> Any:  # noqa: N802
        return await _unary("ModelInfer", context, lambda d: d.ModelInfer(request, context))

    async def ModelStreamInfer(  # noqa: N802
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Context
    ) -> AsyncIterator[Any]:
        answers = _stream(
            "ModelStreamInfer", context, lambda d: d.ModelStreamInfer(request_iterator)
        )
        async for response in answers:
            yield response

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Context) -> Any:  # noqa: N802
        return await _unary("ModelConfig", context, lambda d: d.ModelConfig(request, context))

    async def ModelStatistics(  # noqa: N802
        self, request: pb.ModelStatisticsRequest, context: Context
    ) -> Any:
        return await _unary(
            "ModelStatistics", context, lambda d: d.ModelStatistics(request, context)
        )

    async def RepositoryIndex(  # noqa: N802
        self, request: pb.RepositoryIndexRequest, context: Context
    ) -> Any:
        return await _unary("RepositoryIndex", context, lambda d: d.RepositoryIndex(request))


class ReplicaImages(image_grpc.ImageServiceServicer):
    """The image API, answered by the deployment in this process."""

    async def Classify(self, request: image_pb.ClassifyRequest, context: Context) -> Any:  # noqa: N802
        return await _unary("Classify", context, lambda d: d.Classify(request, context))

    async def ClassifyStream(  # noqa: N802
        self, request_iterator: AsyncIterator[image_pb.ClassifyRequest], context: Context
    ) -> AsyncIterator[Any]:
        answers = _stream("ClassifyStream", context, lambda d: d.ClassifyStream(request_iterator))
        async for response in answers:
            yield response
