"""The one table from domain errors to gRPC status codes.

Overload never reaches this table: when a deployment's queue is full (max_queued_requests)
Serve itself answers RESOURCE_EXHAUSTED, in both ingress modes, before a replica runs code.

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
