"""When a replica answers OIP and the image API itself, and how it admits requests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any
from unittest.mock import Mock

import grpc
import pytest

from raysight.serve import boundary, grpc_services, replica_ingress
from raysight.serve.errors import INTERNAL_MESSAGE
from raysight.serve.replica_ingress import Gate
from raysight.serve.settings import SAME_LOOP_ENV


def test_the_gate_admits_up_to_its_limit_and_frees_places() -> None:
    limit = [2]
    gate = Gate(lambda: limit[0])
    assert gate.enter() and gate.enter()
    assert not gate.enter()  # the third waits for nobody: refused
    gate.leave()
    assert gate.enter()
    limit[0] = 5  # a config update applies to the next arrival
    assert gate.enter() and gate.in_flight == 3


def test_an_unbounded_gate_admits_everything() -> None:
    gate = Gate(lambda: None)
    assert all(gate.enter() for _ in range(1000))


def _replica(autoscaling: Any = None) -> Any:
    return SimpleNamespace(_deployment_config=SimpleNamespace(autoscaling_config=autoscaling))


@pytest.mark.parametrize(
    ("context", "same_loop", "expected"),
    [
        (_replica(), "0", True),
        (None, "0", False),  # the classic proxy's process: it routes to the replicas
        (_replica(), None, False),  # user code on its own loop: the batcher's loop differs
        (_replica(), "1", False),
        (_replica({"min_replicas": 1}), "0", False),  # Serve's autoscaler must see the load
    ],
)
def test_a_replica_answers_itself_only_where_serve_loses_nothing(
    monkeypatch: pytest.MonkeyPatch, context: Any, same_loop: str | None, expected: bool
) -> None:
    monkeypatch.setattr(grpc_services, "_replica_context", lambda: context)
    if same_loop is None:
        monkeypatch.delenv(SAME_LOOP_ENV, raising=False)
    else:
        monkeypatch.setenv(SAME_LOOP_ENV, same_loop)
    assert grpc_services.answered_in_replica() is expected


class _Server:
    def __init__(self) -> None:
        self.passthrough: set[str] = set()
        self.handlers: list[Any] = []

    def add_passthrough_service(self, name: str) -> None:
        self.passthrough.add(name)

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.handlers.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        self.handlers.append(service)


@pytest.mark.parametrize("in_replica", [True, False])
def test_services_are_marked_passthrough_only_when_answered_in_the_replica(
    monkeypatch: pytest.MonkeyPatch, in_replica: bool
) -> None:
    monkeypatch.setattr(grpc_services, "answered_in_replica", lambda: in_replica)
    server = _Server()
    grpc_services.add_inference_to_server(Mock(), server)  # Serve passes a placeholder
    grpc_services.add_images_to_server(Mock(), server)
    expected = set(grpc_services.SERVICE_NAMES) if in_replica else set()
    assert server.passthrough == expected
    assert server.handlers  # registered either way


class _Context:
    def __init__(self, remaining: float | None) -> None:
        self.remaining = remaining

    def time_remaining(self) -> float | None:
        return self.remaining


@pytest.mark.parametrize(
    ("remaining", "code"),
    [
        (None, "CANCELLED"),
        (5.0, "CANCELLED"),
        (0.01, "DEADLINE_EXCEEDED"),
        (-1.0, "DEADLINE_EXCEEDED"),
    ],
)
def test_a_cancel_at_the_deadline_counts_as_the_deadlines(
    remaining: float | None, code: str
) -> None:
    assert boundary._dropped_status(_Context(remaining)).label == code


class _AbortError(Exception):
    """What grpc.aio's context.abort raises, here with the status it was given."""


class _AbortingContext:
    def __init__(self) -> None:
        self.status: tuple[grpc.StatusCode, str] | None = None

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.status = (code, details)
        raise _AbortError(details)


class _Deployment:
    """Stands in for the InferenceServer: its boundary only counts."""

    def __init__(self) -> None:
        self.counted: list[tuple[str, str]] = []
        self.boundary = SimpleNamespace(
            count=lambda method, status, started: self.counted.append((method, status.label))
        )


@pytest.fixture
def deployment(monkeypatch: pytest.MonkeyPatch) -> _Deployment:
    live = _Deployment()
    monkeypatch.setattr(replica_ingress, "_deployment", lambda: live)
    monkeypatch.setattr(replica_ingress, "deployment_limit", lambda: 1)
    monkeypatch.setattr(replica_ingress, "GATE", Gate(lambda: 1))
    return live


def test_a_full_replica_refuses_with_resource_exhausted_and_counts_it(
    deployment: _Deployment,
) -> None:
    async def main() -> None:
        started = asyncio.Event()
        release = asyncio.Event()

        async def slow(_: Any) -> str:
            started.set()
            await release.wait()
            return "answer"

        first = asyncio.create_task(replica_ingress._unary("ModelInfer", _AbortingContext(), slow))
        await started.wait()
        context = _AbortingContext()
        with pytest.raises(_AbortError):
            await replica_ingress._unary("ModelInfer", context, slow)
        assert context.status is not None
        assert context.status[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "retry" in context.status[1]
        release.set()
        assert await first == "answer"
        assert replica_ingress.GATE.in_flight == 0

    asyncio.run(main())
    assert deployment.counted == [("ModelInfer", "RESOURCE_EXHAUSTED")]


def test_an_unexpected_error_is_internal_without_details_and_frees_its_place(
    deployment: _Deployment,
) -> None:
    async def broken(_: Any) -> str:
        raise RuntimeError("/secret/path in a traceback")

    context = _AbortingContext()
    with pytest.raises(_AbortError):
        asyncio.run(replica_ingress._unary("ModelInfer", context, broken))
    assert context.status == (grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
    assert replica_ingress.GATE.in_flight == 0


def test_a_stream_holds_one_place_until_it_ends(deployment: _Deployment) -> None:
    async def answers(_: Any) -> AsyncIterator[int]:
        for n in range(3):
            assert replica_ingress.GATE.in_flight == 1
            yield n

    async def main() -> list[int]:
        stream = replica_ingress._stream("ModelStreamInfer", _AbortingContext(), answers)
        return [n async for n in stream]

    assert asyncio.run(main()) == [0, 1, 2]
    assert replica_ingress.GATE.in_flight == 0


def test_nothing_is_answered_while_the_deployment_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replica_ingress, "_deployment", lambda: None)
    context = _AbortingContext()

    async def never(_: Any) -> str:
        raise AssertionError("called without a deployment")

    with pytest.raises(_AbortError):
        asyncio.run(replica_ingress._unary("ModelInfer", context, never))
    assert context.status is not None and context.status[0] == grpc.StatusCode.UNAVAILABLE
