"""The open-loop load generator's accounting, against a real grpc.aio server on loopback:
arrivals are the seeded schedule's, whatever the server does; every request scheduled in
the window ends as an OK latency or a counted code."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import grpc
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import loadgen
import openloop

from tests.raw_infer_server import RawInfer, raw_infer_server

RATE, WARMUP_S, DURATION_S = 300.0, 0.2, 1.0
T = TypeVar("T")


def _scheduled_in_window(seed: int) -> int:
    """How many arrivals the seeded schedule puts in the window (times from the start)."""
    gaps = np.random.default_rng(seed).exponential(1.0 / RATE, size=10_000)
    times = np.cumsum(gaps[1:])
    return int(((times >= WARMUP_S) & (times < WARMUP_S + DURATION_S)).sum())


def _every_third_refused() -> RawInfer:
    answered = 0

    async def infer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        nonlocal answered
        answered += 1
        if answered % 3 == 0:  # every third request refused
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "full")
        return b""

    return infer


WORKLOAD = loadgen.Workload("oip-fp32-1", loadgen.MODEL_INFER, "unary", 1, (b"",))


async def _with_server(work: Callable[[str], Awaitable[T]]) -> T:
    async with raw_infer_server(_every_third_refused()) as target:
        return await work(target)


@pytest.mark.parametrize("seed", [0, 1])
def test_arrivals_follow_the_seeded_schedule(seed: int) -> None:
    async def cell(target: str) -> loadgen.CellResult:
        return await openloop.run_open_cell(
            target,
            WORKLOAD,
            rate=RATE,
            duration_s=DURATION_S,
            warmup_s=WARMUP_S,
            channels=2,
            seed=seed,
        )

    result = asyncio.run(_with_server(cell))
    assert result.arrived == _scheduled_in_window(seed)
    assert set(result.errors) == {"RESOURCE_EXHAUSTED"}
    assert not np.isnan(result.p99_ms)  # OK answers were timed
    assert result.offered_per_s == RATE and result.concurrency == 0


def test_every_request_scheduled_in_the_window_is_counted_once() -> None:
    """Each ends as one OK latency or one counted code, and a third are refused."""

    async def offer(target: str) -> openloop._Tally:
        async with grpc.aio.insecure_channel(target) as channel:
            call = channel.unary_unary(WORKLOAD.method)
            now = time.perf_counter()
            tally = openloop._Tally(now + WARMUP_S, now + WARMUP_S + DURATION_S)
            gaps = np.random.default_rng(0).exponential(1.0 / RATE, size=10_000)
            await openloop._offer([call], WORKLOAD, tally, gaps, timeout_s=5.0)
            return tally

    tally = asyncio.run(_with_server(offer))
    refused = tally.errors["RESOURCE_EXHAUSTED"]
    assert tally.arrived > 0
    assert len(tally.latencies) + refused == tally.arrived
    assert abs(refused - tally.arrived / 3) <= 2  # the server refuses every third it sees
