"""Overload: offered load at 5x what one replica sustains, for a minute.

The excess must be refused quickly with RESOURCE_EXHAUSTED (clients back off), what is
accepted must finish within its deadline, and the replica's memory must stay bounded.
The model is an untrained ResNet-18 at 32x32, slow enough on 2 cores that an asyncio client
on the same machine can offer five times its rate.

    RAYSIGHT_RELIABILITY_OUT=overload.json .venv/bin/pytest tests/integration/test_overload.py
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from ray.util.state import list_actors

from raysight.serve import runner
from raysight.serve.settings import ServeSettings
from tests.conftest import RayCluster, free_port
from tests.integration.load import closed_loop, infer_body, open_loop
from tests.integration.serving import stop_serve, untrained_checkpoint

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SECONDS = float(os.environ.get("RAYSIGHT_OVERLOAD_S", "60"))
DEADLINE_S = 2.0  # each request's gRPC deadline
OVERLOAD = 5.0  # offered rate / sustained rate
SHAPE = (3, 32, 32)
BODY = infer_body("resnet18-untrained", SHAPE)


@pytest.fixture(scope="module")
def target(ray_cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    checkpoint = untrained_checkpoint(tmp_path_factory.mktemp("slow"), "resnet18", SHAPE)
    settings = ServeSettings(checkpoint=str(checkpoint), max_batch_size=8)
    port = free_port()
    config = runner.serve_config(
        settings,
        grpc_port=port,
        http_port=free_port(),
        max_ongoing_requests=8,
        max_queued_requests=8,
    )
    try:
        runner.deploy(config)
        yield f"127.0.0.1:{port}"
    finally:
        stop_serve(ray_cluster.dashboard_url)


def _replica_pid() -> int:
    (actor,) = [
        a
        for a in list_actors(filters=[("state", "=", "ALIVE")])
        if "InferenceServer" in a.class_name
    ]
    return int(actor.pid)


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def test_five_times_the_sustained_rate_is_refused_quickly_and_memory_stays_bounded(
    target: str,
) -> None:
    asyncio.run(closed_loop(target, BODY, 8, 3, DEADLINE_S))  # warm-up: allocations, the fit
    sustained = asyncio.run(closed_loop(target, BODY, 16, 5, DEADLINE_S))
    assert sustained > 0
    pid = _replica_pid()
    rss = [_rss_mib(pid)]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.5):
            rss.append(_rss_mib(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        tally = asyncio.run(open_loop(target, BODY, OVERLOAD * sustained, SECONDS, DEADLINE_S))
    finally:
        stop.set()
        sampler.join()
    codes = tally.codes
    figures = {
        "sustained_requests_per_s": round(sustained, 1),
        "offered_requests_per_s": round(OVERLOAD * sustained, 1),
        "seconds": SECONDS,
        "codes": dict(codes.most_common()),
        "p99_s": {code: round(tally.p99(code), 3) for code in codes},
        "replica_rss_mib": {"before": round(rss[0]), "peak": round(max(rss))},
        "replica_pid_unchanged": _replica_pid() == pid,
    }
    if out := os.environ.get("RAYSIGHT_RELIABILITY_OUT"):  # the figures of docs/reliability.md
        Path(out).write_text(json.dumps(figures, indent=2))
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"}, figures
    assert codes["RESOURCE_EXHAUSTED"] > 0, figures
    # The service keeps answering near its sustained rate while it refuses the rest.
    assert codes["OK"] >= 0.5 * sustained * SECONDS, figures
    assert codes["DEADLINE_EXCEEDED"] <= 0.05 * sum(codes.values()), figures
    assert tally.p99("RESOURCE_EXHAUSTED") < 0.5, figures  # refused, not queued
    assert max(rss) - rss[0] < 256, figures  # MiB: the queue is bounded, so is the memory
    assert figures["replica_pid_unchanged"], figures
