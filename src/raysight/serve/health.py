"""grpc.health.v1 for the deployment: one status for every service it implements."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from grpc_health.v1 import health_pb2

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
