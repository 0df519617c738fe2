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
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from ray.util.state import list_actors

from raysight._proto.inference import grpc_service_pb2 as pb
from raysight.serve import runner
from raysight.serve.settings import ServeSettings
from tests.conftest import RayCluster, free_port
from tests.integration.serving import stop_serve, untrained_checkpoint

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SECONDS = float(os.environ.get("RAYSIGHT_OVERLOAD_S", "60"))
DEADLINE_S = 2.0  # each request's gRPC deadline
OVERLOAD = 5.0  # offered rate / sustained rate
SHAPE = (3, 32, 32)
INFER = "/inference.GRPCInferenceService/ModelInfer"


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
    runner.deploy(config)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stop_serve(ray_cluster.dashboard_url)


def _request() -> bytes:
    image = np.random.default_rng(0).random((1, *SHAPE), dtype=np.float32)
    request = pb.ModelInferRequest(model_name="resnet18-untrained")
    request.inputs.add(name="images", datatype="FP32", shape=[1, *SHAPE])
    request.raw_input_contents.append(image.tobytes())
    return request.SerializeToString()


class Tally:
    """Codes and latencies of the answers, by code."""

    def __init__(self) -> None:
        self.latencies: dict[str, list[float]] = {}

    def add(self, code: str, seconds: float) -> None:
        self.latencies.setdefault(code, []).append(seconds)

    @property
    def codes(self) -> Counter[str]:
        return Counter({code: len(times) for code, times in self.latencies.items()})

    def p99(self, code: str) -> float:
        return float(np.percentile(self.latencies[code], 99))


async def _call(stub: grpc.aio.UnaryUnaryMultiCallable, body: bytes, tally: Tally) -> None:
    started = time.perf_counter()
    try:
        await stub(body, timeout=DEADLINE_S)
        code = "OK"
    except grpc.aio.AioRpcError as exc:
        code = exc.code().name
    tally.add(code, time.perf_counter() - started)


async def _closed_loop(target: str, callers: int, seconds: float) -> float:
    """Requests/s the service answers OK with `callers` always waiting on it."""
    body, tally = _request(), Tally()
    async with grpc.aio.insecure_channel(target) as channel:
        stub = channel.unary_unary(INFER)
        end = time.perf_counter() + seconds

        async def caller() -> None:
            while time.perf_counter() < end:
                await _call(stub, body, tally)

        await asyncio.gather(*(caller() for _ in range(callers)))
    return tally.codes["OK"] / seconds


async def _open_loop(target: str, rate: float, seconds: float) -> Tally:
    """Send `rate` requests a second for `seconds`, whatever the answers, and wait for all."""
    body, tally = _request(), Tally()
    async with grpc.aio.insecure_channel(target) as channel:
        stub = channel.unary_unary(INFER)
        tasks: list[asyncio.Task[None]] = []
        start = time.perf_counter()
        for n in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, start + n / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(_call(stub, body, tally)))
        await asyncio.gather(*tasks)
    return tally


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
    asyncio.run(_closed_loop(target, 8, 3))  # warm-up: allocations, the batcher's fit
    sustained = asyncio.run(_closed_loop(target, 16, 5))
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
        tally = asyncio.run(_open_loop(target, OVERLOAD * sustained, SECONDS))
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
