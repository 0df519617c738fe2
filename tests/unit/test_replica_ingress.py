"""When a replica answers OIP and the image API itself, and how it admits requests."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any
from unittest.mock import Mock

import pytest

from raysight.serve import boundary, grpc_services
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
