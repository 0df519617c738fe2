"""The error boundary of every RPC: count it, time it, and turn exceptions into statuses.

Under Ray Serve an exception escaping a replica reaches the client as INTERNAL with a
traceback, so every RPC method of the deployment answers through this boundary instead:
a domain error becomes its status (serve/errors.py) and the client sees the code set here.
A request dropped because its caller went away (a passed gRPC deadline, a cancel) is
counted too, as DEADLINE_EXCEEDED or CANCELLED, before the cancellation goes on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc

from raysight.errors import InputError
from raysight.serve import streams
from raysight.serve.errors import OK, Status, status_for
from raysight.serve.metrics import ServingMetrics
from raysight.serve.model import ServedModel
from raysight.serve.statistics import Statistics

_INFERENCE_METHODS = ("ModelInfer", "ModelStreamInfer")  # what ModelStatistics counts
_DEADLINE = Status(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
_CANCELLED = Status(grpc.StatusCode.CANCELLED, "cancelled by the client")


class Boundary:
    """Counts RPCs of one replica by model, method and code, and sets their statuses.

    Args:
        metrics: The replica's metrics.
        stats: The replica's Triton-style statistics.
        model: The model served now (None while loading), for the labels.
    """

    def __init__(
        self,
        metrics: ServingMetrics,
        stats: Statistics,
        model: Callable[[], ServedModel | None],
    ) -> None:
        self._metrics = metrics
        self._stats = stats
        self._model = model

    @contextmanager
    def unary(self, method: str, grpc_context: Any) -> Iterator[None]:
        """Around a unary RPC's body. On an exception the `with` body's return is skipped,
        so the caller's next line returns an empty message and the client sees the status
        set here."""
        started = time.perf_counter()
        try:
            yield
        except asyncio.CancelledError:
            self.count(method, _dropped_status(grpc_context), started)
            raise
        except Exception as exc:
            status = status_for(exc, method)
            self.count(method, status, started, exc)
            set_status(grpc_context, status)
            return
        self.count(method, OK, started)

    async def stream(
        self,
        method: str,
        requests: AsyncIterator[Any],
        answer: Callable[[Any], Awaitable[Any]],
        failed: Callable[[Any, Status], Any],
    ) -> AsyncIterator[Any]:
        """Around a bidirectional stream: requests are read as they arrive and answered as
        each completes (serve/streams.py); each is counted on its own, and a failure
        becomes an in-band error instead of ending the stream."""

        async def guarded(request: Any) -> Any:
            started = time.perf_counter()
            try:
                response = await answer(request)
            except Exception as exc:
                status = status_for(exc, method)
                self.count(method, status, started, exc)
                return failed(request, status)
            self.count(method, OK, started)
            return response

        async for response in streams.pipelined(requests, guarded):
            yield response

    def count(
        self, method: str, status: Status, started: float, error: Exception | None = None
    ) -> None:
        """Record one answered (or refused, or dropped) RPC."""
        model = self._model()
        tags = {
            "model": model.name if model else "",
            "version": model.version if model else "",
            "method": method,
            "code": status.label,
        }
        elapsed = time.perf_counter() - started
        self._metrics.requests.inc(tags=tags)
        self._metrics.latency.observe(elapsed, tags=tags)
        if isinstance(error, InputError):
            self._metrics.rejected.inc(tags={"model": tags["model"], "reason": error.reason})
        if method in _INFERENCE_METHODS:
            self._stats.record_request(status is OK, elapsed)


def set_status(grpc_context: Any, status: Status) -> None:
    """Set the status a unary RPC ends with (Serve's context or grpc.aio's)."""
    if grpc_context is not None:
        grpc_context.set_code(status.code)
        grpc_context.set_details(status.details)


_DEADLINE_SLACK_S = 0.1
"""A client's timer cancels its call at its deadline, and that cancel can reach the server
before the server's own timer fires (the server's deadline is later by the request's time
in transit): a cancel this close to the deadline is the deadline's."""


def _dropped_status(grpc_context: Any) -> Status:
    """Why a request was cancelled: its deadline passed, or its caller hung up."""
    remaining = getattr(grpc_context, "time_remaining", None)
    left = remaining() if callable(remaining) else None
    return _DEADLINE if left is not None and left <= _DEADLINE_SLACK_S else _CANCELLED
