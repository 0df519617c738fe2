"""grpc.health.v1 for the deployment: one status for every service it implements.

Two places answer it. In the HAProxy ingress mode each replica runs the gRPC server, and
`IngressHealth` answers there, beside Serve rather than through it: a Watch stream lasts as
long as its client, and routed through Serve it would hold one of the replica's
`max_ongoing_requests` slots and count as load for autoscaling all that time. It reads the
replica's readiness from a flag the deployment sets in the same process. Under the classic
proxy, which runs in another process, health is routed to the deployment's own Check and
Watch, as any other method.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from raysight.serve.grpc_services import SERVICE_NAMES

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN

WATCH_PERIOD_S = 1.0
"""How often Watch looks at the status; a change reaches the client within this."""


def status(service: str, ready: bool) -> int | None:
    """The status of `service` ("" is the server as a whole); None for a service not served.

    Args:
        service: The fully qualified service name a client asks about.
        ready: Whether a model is loaded.
    """
    if service and service not in SERVICE_NAMES:
        return None
    return _SERVING if ready else _NOT_SERVING


async def watch(
    service: str, ready: Callable[[], bool], period_s: float = WATCH_PERIOD_S
) -> AsyncIterator[health_pb2.HealthCheckResponse]:
    """The status now, then again whenever it changes, until the caller stops iterating.

    An unknown service is SERVICE_UNKNOWN here, not an error: the health protocol lets a
    watched service appear later.
    """
    last = None
    while True:
        current = status(service, ready())
        current = _UNKNOWN if current is None else current
        if current != last:
            yield health_pb2.HealthCheckResponse(status=current)
            last = current
        await asyncio.sleep(period_s)


_READY = threading.Event()  # set while this process's replica has a model loaded


def mark_ready(ready: bool) -> None:
    """Record whether this process's replica serves a model (read by `IngressHealth`)."""
    if ready:
        _READY.set()
    else:
        _READY.clear()


class IngressHealth(health_pb2_grpc.HealthServicer):
    """grpc.health.v1 on a replica's own ingress server, outside Serve's request slots."""

    async def Check(  # noqa: N802
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthCheckResponse:
        current = status(request.service, _READY.is_set())
        if current is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=current)

    async def Watch(  # noqa: N802
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        async for response in watch(request.service, _READY.is_set):
            yield response
