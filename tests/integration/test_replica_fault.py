"""Faults: the serving replica's process is killed (SIGKILL) under load.

Clients must see only answers that are right or UNAVAILABLE (retryable), and service must
come back by itself (Serve starts a new replica); the time from the kill to the first answer
after it is the recovery time.

    RAYSIGHT_RELIABILITY_OUT=fault.json .venv/bin/pytest tests/integration/test_replica_fault.py
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from ray.util.state import list_actors

from raysight._proto.inference import grpc_service_pb2 as pb
from raysight._proto.inference import grpc_service_pb2_grpc as pb_grpc
from raysight.codec import oip
from raysight.data import load_arrays
from raysight.engine import Engine
from raysight.serve import runner
from raysight.serve.settings import ServeSettings
from tests.conftest import RayCluster, free_port
from tests.integration.serving import digits_checkpoint, stop_serve

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CALLERS = 4
BEFORE_S = 3.0  # load before the kill
AFTER_LIMIT_S = 90.0  # the most the test waits for service to come back
AFTER_S = 3.0  # load kept on once it is back


@pytest.fixture(scope="module")
def served(
    ray_cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    checkpoint = digits_checkpoint(tmp_path_factory.mktemp("fault"), seed=0)
    settings = ServeSettings(checkpoint=str(checkpoint))
    port = free_port()
    try:
        runner.deploy(runner.serve_config(settings, grpc_port=port, http_port=free_port()))
        yield f"127.0.0.1:{port}", checkpoint
    finally:
        stop_serve(ray_cluster.dashboard_url)


def _replica_pid() -> int:
    (actor,) = [
        a
        for a in list_actors(filters=[("state", "=", "ALIVE")])
        if "InferenceServer" in a.class_name
    ]
    return int(actor.pid)


class Load:
    """Closed-loop callers sending one request and checking every answer's logits."""

    def __init__(self, target: str, request: pb.ModelInferRequest, expected: np.ndarray) -> None:
        self._target, self._request, self._expected = target, request, expected
        self.events: list[tuple[float, str]] = []  # (time, code or WRONG)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._caller) for _ in range(CALLERS)]

    def _caller(self) -> None:
        with grpc.insecure_channel(self._target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            while not self._stop.is_set():
                try:
                    response = stub.ModelInfer(self._request, timeout=10)
                    logits = oip.decode_outputs(response)["logits"]
                    ok = np.allclose(logits, self._expected, rtol=1e-4, atol=1e-4)
                    code = "OK" if ok else "WRONG"
                except grpc.RpcError as exc:
                    code = exc.code().name
                    time.sleep(0.05)  # a client backs off before retrying
                self.events.append((time.monotonic(), code))

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


def test_a_killed_replica_costs_only_unavailable_and_service_comes_back(
    served: tuple[str, Path],
) -> None:
    target, checkpoint = served
    engine = Engine.from_directory(checkpoint)
    images = load_arrays("digits", None, "test").images[:4]
    normalised = engine.normalize(images)  # (4, 1, 8, 8) float32
    request = pb.ModelInferRequest(model_name=engine.manifest.model + "-digits")
    request.inputs.add(name="images", datatype="FP32", shape=list(normalised.shape))
    request.raw_input_contents.append(normalised.tobytes())
    expected = engine.logits(normalised)
    victim = _replica_pid()
    with Load(target, request, expected) as load:
        time.sleep(BEFORE_S)
        killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        deadline = killed + AFTER_LIMIT_S
        back = None
        while back is None and time.monotonic() < deadline:
            time.sleep(0.2)
            failures = [t for t, code in load.events if t > killed and code != "OK"]
            after = max(failures, default=killed)
            answered = [t for t, code in load.events if t > after and code == "OK"]
            if failures and answered:
                back = answered[0]
        time.sleep(AFTER_S)
    before = Counter(code for t, code in load.events if t <= killed)
    during = Counter(code for t, code in load.events if t > killed)
    figures = {
        "callers": CALLERS,
        "before_kill": dict(before),
        "after_kill": dict(during.most_common()),
        "recovery_s": None if back is None else round(back - killed, 2),
        "new_replica": _replica_pid() != victim,
    }
    if out := os.environ.get("RAYSIGHT_RELIABILITY_OUT"):  # the figures of docs/reliability.md
        Path(out).write_text(json.dumps(figures, indent=2))
    assert set(before) == {"OK"}, figures
    assert "WRONG" not in during, figures
    assert set(during) <= {"OK", "UNAVAILABLE"}, figures
    assert back is not None, figures
    assert figures["new_replica"], figures
