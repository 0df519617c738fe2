"""Load for the overload tests: closed and open loops of one ModelInfer body over a real
gRPC channel, with every answer's code, details and latency kept."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import grpc
import numpy as np

from raysight._proto.inference import grpc_service_pb2 as pb

INFER = "/inference.GRPCInferenceService/ModelInfer"


def infer_body(model_name: str, shape: tuple[int, int, int]) -> bytes:
    """One serialised ModelInferRequest of one FP32 image of `shape`."""
    image = np.random.default_rng(0).random((1, *shape), dtype=np.float32)
    request = pb.ModelInferRequest(model_name=model_name)
    request.inputs.add(name="images", datatype="FP32", shape=[1, *shape])
    request.raw_input_contents.append(image.tobytes())
    return request.SerializeToString()


class Tally:
    """Codes, latencies and one example of the details of each code."""

    def __init__(self) -> None:
        self.latencies: dict[str, list[float]] = {}
        self.details: dict[str, str] = {}

    def add(self, code: str, seconds: float, details: str = "") -> None:
        self.latencies.setdefault(code, []).append(seconds)
        self.details.setdefault(code, details)

    @property
    def codes(self) -> Counter[str]:
        return Counter({code: len(times) for code, times in self.latencies.items()})

    def p99(self, code: str) -> float:
        return float(np.percentile(self.latencies[code], 99))


async def _call(
    stub: grpc.aio.UnaryUnaryMultiCallable, body: bytes, tally: Tally, deadline_s: float
) -> None:
    started = time.perf_counter()
    try:
        await stub(body, timeout=deadline_s)
    except grpc.aio.AioRpcError as exc:
        tally.add(exc.code().name, time.perf_counter() - started, exc.details() or "")
        return
    tally.add("OK", time.perf_counter() - started)


async def closed_loop(
    target: str, body: bytes, callers: int, seconds: float, deadline_s: float
) -> float:
    """Requests/s the service answers OK with `callers` always waiting on it."""
    tally = Tally()
    async with grpc.aio.insecure_channel(target) as channel:
        stub = channel.unary_unary(INFER)
        end = time.perf_counter() + seconds

        async def caller() -> None:
            while time.perf_counter() < end:
                await _call(stub, body, tally, deadline_s)

        await asyncio.gather(*(caller() for _ in range(callers)))
    return tally.codes["OK"] / seconds


async def open_loop(
    target: str, body: bytes, rate: float, seconds: float, deadline_s: float
) -> Tally:
    """Send `rate` requests a second for `seconds`, whatever the answers, and wait for all."""
    tally = Tally()
    async with grpc.aio.insecure_channel(target) as channel:
        stub = channel.unary_unary(INFER)
        tasks: list[asyncio.Task[None]] = []
        start = time.perf_counter()
        for n in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, start + n / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(_call(stub, body, tally, deadline_s)))
        await asyncio.gather(*tasks)
    return tally
