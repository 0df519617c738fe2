"""A latency target under overload, through a real server: the requests taken are answered
near the target and the rest are refused at once, where without a target every request
waits behind a queue that grows with the overload.

The model is an untrained ResNet-18 at 32x32 (slow enough on 2 cores that an asyncio client
beside it can offer three times its rate); Serve's own queue limits are left at raysight's
defaults, so the refusals with the target on are the batcher's.

    RAYSIGHT_RELIABILITY_OUT=target.json .venv/bin/pytest tests/integration/test_latency_target.py
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from raysight.serve import runner
from raysight.serve.settings import ServeSettings
from tests.conftest import RayCluster, free_port
from tests.integration.load import Tally, closed_loop, infer_body, open_loop
from tests.integration.serving import stop_serve, untrained_checkpoint

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SHAPE = (3, 32, 32)
BODY = infer_body("resnet18-untrained", SHAPE)
TARGET_S = 0.25
DEADLINE_S = 15.0  # long enough that, without a target, the queue's waits are measured
SECONDS = 4.0


class Server:
    """One deployment whose settings the test changes in place."""

    def __init__(self, checkpoint: Path) -> None:
        self.checkpoint = checkpoint
        self.port, self.http_port = free_port(), free_port()
        self.target = f"127.0.0.1:{self.port}"

    def deploy(self, latency_target_s: float) -> None:
        settings = ServeSettings(
            checkpoint=str(self.checkpoint), max_batch_size=8, latency_target_s=latency_target_s
        )
        config = runner.serve_config(settings, grpc_port=self.port, http_port=self.http_port)
        runner.deploy(config)


@pytest.fixture(scope="module")
def server(ray_cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    served = Server(untrained_checkpoint(tmp_path_factory.mktemp("slow"), "resnet18", SHAPE))
    try:
        yield served
    finally:
        stop_serve(ray_cluster.dashboard_url)


def _overload(server: Server) -> tuple[float, Tally]:
    """Warm up (the batcher learns the cost of a pass), measure the sustained rate, then
    offer three times that."""
    asyncio.run(closed_loop(server.target, BODY, 4, 3, DEADLINE_S))
    sustained = asyncio.run(closed_loop(server.target, BODY, 8, 3, DEADLINE_S))
    assert sustained > 0
    return sustained, asyncio.run(
        open_loop(server.target, BODY, 3 * sustained, SECONDS, DEADLINE_S)
    )


def test_a_latency_target_refuses_the_excess_at_once_and_answers_the_rest_in_time(
    server: Server,
) -> None:
    server.deploy(latency_target_s=TARGET_S)
    sustained, held = _overload(server)
    server.deploy(latency_target_s=0.0)  # the same replica, settings changed in place
    _, queued = _overload(server)
    figures = {
        "sustained": round(sustained, 1),
        "with target": dict(held.codes),
        "without": dict(queued.codes),
        "p99 OK with target": round(held.p99("OK"), 3),
        "p99 OK without": round(queued.p99("OK"), 3),
    }
    if out := os.environ.get("RAYSIGHT_RELIABILITY_OUT"):  # the figures of docs/reliability.md
        Path(out).write_text(json.dumps(figures, indent=2))
    assert set(held.codes) <= {"OK", "RESOURCE_EXHAUSTED"}, figures
    assert held.codes["RESOURCE_EXHAUSTED"] > 0, figures
    assert "over the latency target of 250 ms" in held.details["RESOURCE_EXHAUSTED"], figures
    # Refused, not queued: a refusal comes back well inside the target.
    assert held.p99("RESOURCE_EXHAUSTED") < TARGET_S, figures
    # The excess goes, the rest is served near the sustained rate and near the target (a
    # bound loose enough for a shared 2-core machine) ...
    assert held.codes["OK"] >= 0.5 * sustained * SECONDS, figures
    assert held.p99("OK") < 4 * TARGET_S, figures
    # ... where without a target the same load waits behind the queue.
    assert queued.p99("OK") > 2 * held.p99("OK"), figures
