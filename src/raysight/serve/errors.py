"""The one table from domain errors to gRPC status codes.

Overload is RESOURCE_EXHAUSTED, from three places: Serve's queue limit
(max_queued_requests, in both ingress modes, before a replica runs code), the replica's own
gate on the direct path (serve/replica_ingress.py), and the batcher, which refuses a request
that would be answered after the latency target (OverloadedError, in this table).

Under Ray Serve an exception escaping a replica reaches the client as INTERNAL with a
traceback in the details, file paths included. Every RPC method therefore catches at its
boundary and sets the code itself; anything unexpected becomes INTERNAL with a generic
message while the traceback stays in the replica's log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc

from raysight.errors import CheckpointError, InputError, RaysightError
from raysight.serve.batch_policy import OverloadedError

logger = logging.getLogger(__name__)


class ModelNotFoundError(RaysightError, LookupError):
    """The request names a model or version this server does not serve."""


class NotReadyError(RaysightError):
    """The model is not loaded (yet, or any more)."""


_TABLE: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (InputError, grpc.StatusCode.INVALID_ARGUMENT),
    (ModelNotFoundError, grpc.StatusCode.NOT_FOUND),
    (NotReadyError, grpc.StatusCode.UNAVAILABLE),
    (CheckpointError, grpc.StatusCode.UNAVAILABLE),
    (OverloadedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
)

INTERNAL_MESSAGE = "internal error; the server log has the details"


@dataclass(frozen=True)
class Status:
    """A gRPC status as the client will see it."""

    code: grpc.StatusCode
    details: str

    @property
    def label(self) -> str:
        """The code's name, for metrics labels (OK, INVALID_ARGUMENT, ...)."""
        return self.code.name


OK = Status(grpc.StatusCode.OK, "")


def status_for(error: BaseException, method: str) -> Status:
    """Map an exception to the status sent to the client, logging what is unexpected."""
    for kind, code in _TABLE:
        if isinstance(error, kind):
            return Status(code, str(error))
    logger.error("%s failed", method, exc_info=error)
    return Status(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
