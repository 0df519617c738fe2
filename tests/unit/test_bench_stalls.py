"""The closed-loop load generator's stall count: gaps in which no answer came back, from a
list of times and from a real grpc.aio server on loopback that goes silent once."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import grpc
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import loadgen

from tests.raw_infer_server import raw_infer_server

SILENCE_S = 0.2
WORKLOAD = loadgen.Workload("oip-fp32-1", loadgen.MODEL_INFER, "unary", 1, (b"",))


def test_only_gaps_over_the_threshold_count() -> None:
    ends = [0.020, 0.000, 0.001, 0.005, 0.006]  # unordered: answers land out of order
    count, total = loadgen.stall_gaps(ends, over_s=0.003)
    assert count == 2  # 1 -> 5 ms and 6 -> 20 ms
    assert total == pytest.approx(0.018)


def test_no_answers_no_stalls() -> None:
    assert loadgen.stall_gaps([]) == (0, 0.0)


def test_a_server_silent_for_a_while_shows_as_one_long_stall() -> None:
    async def main() -> loadgen.CellResult:
        answered = 0

        async def infer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            nonlocal answered
            answered += 1
            if answered == 200:
                await asyncio.sleep(SILENCE_S)
            return b""

        async with raw_infer_server(infer) as target:
            return await loadgen.run_cell(
                target,
                WORKLOAD,
                concurrency=1,
                channels=1,
                duration_s=None,
                requests=400,
                warmup_requests=0,
            )

    result = asyncio.run(asyncio.wait_for(main(), timeout=60))
    assert result.requests == 400
    assert result.stalls is not None and result.stalled_s is not None
    assert result.stalls >= 1
    assert result.stalled_s >= SILENCE_S
