"""An open-loop gRPC load generator: requests arrive at an offered rate, answered or not.

A closed loop (bench/loadgen.py) slows down with the server and so never overloads it; real
clients do not wait for each other. Here arrivals are a Poisson process at `rate` requests/s,
each sent on its own task whatever is still in flight, and each latency counts from the
request's scheduled time, not from when the client got round to sending it, so a client
that falls behind shows up in the latencies instead of hiding them.

    python bench/openloop.py --target 127.0.0.1:9000 --checkpoint runs/digits \\
        --workload oip-uint8-1 --rates 100,200 --duration 4

Goodput is the OK answers completed inside the measured window, over its length; the
latencies and the non-OK counts are of the requests scheduled in it, whose answers the run
waits for (each call has a deadline, `timeout_s`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from loadgen import (
    CHANNEL_OPTIONS,
    WORKLOADS,
    CellResult,
    ModelFacts,
    Workload,
    _code,
    _cpu_seconds,
    build_workload,
)

MAX_IN_FLIGHT = 20_000
"""A bound on the client's own tasks; arrivals beyond it are counted as CLIENT_BEHIND."""


@dataclass
class _Tally:
    """What one window saw: requests scheduled in [opens, closes) count, and OK answers
    completed in it make the goodput, whenever they were scheduled."""

    opens: float
    closes: float
    arrived: int = 0
    answered: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    warmup_errors: Counter[str] = field(default_factory=Counter)

    def counts(self, at: float) -> bool:
        return bool(self.opens <= at < self.closes)  # numpy floats give numpy bools

    def arrive(self, scheduled: float) -> None:
        self.arrived += int(self.counts(scheduled))

    def fail(self, scheduled: float, code: str) -> None:
        (self.errors if self.counts(scheduled) else self.warmup_errors)[code] += 1

    def answer(self, scheduled: float, ended: float) -> None:
        self.answered += int(self.counts(ended))
        if self.counts(scheduled):
            self.latencies.append(ended - scheduled)


async def _offer(
    calls: list[Any], workload: Workload, tally: _Tally, gaps: np.ndarray, timeout_s: float
) -> None:
    """Send one request at each scheduled time until the window closes, then wait for the
    answers."""

    async def one(call: Any, scheduled: float) -> None:
        try:
            await call(workload.requests[0], timeout=timeout_s)
        except (TimeoutError, grpc.aio.AioRpcError) as exc:
            tally.fail(scheduled, _code(exc))
            return
        tally.answer(scheduled, time.perf_counter())

    tasks: set[asyncio.Task[None]] = set()
    scheduled, k = time.perf_counter(), 0
    while scheduled < tally.closes:
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tally.arrive(scheduled)
        if len(tasks) >= MAX_IN_FLIGHT:
            tally.fail(scheduled, "CLIENT_BEHIND")
        else:
            task = asyncio.create_task(one(calls[k % len(calls)], scheduled))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        k += 1
        scheduled += gaps[k % len(gaps)]
    if tasks:
        await asyncio.wait(tasks, timeout=timeout_s + 5)


async def run_open_cell(
    target: str,
    workload: Workload,
    *,
    rate: float,
    duration_s: float = 5.0,
    warmup_s: float = 1.0,
    channels: int = 4,
    timeout_s: float = 10.0,
    seed: int = 0,
) -> CellResult:
    """Offer `rate` requests/s of a unary `workload` to `target` and measure one window.

    Returns:
        A CellResult whose `concurrency` is 0, `offered_per_s` the rate and `arrived` the
        requests scheduled in the window; requests/s is the goodput, latencies are of OK
        answers from their scheduled times.
    """
    if workload.kind != "unary" or rate <= 0:
        raise ValueError("an open loop offers unary requests at a positive rate")
    opened = [grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) for _ in range(channels)]
    try:
        await asyncio.gather(*(asyncio.wait_for(c.channel_ready(), 30) for c in opened))
        calls = [c.unary_unary(workload.method) for c in opened]
        gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=1_000_000)
        cpu_before = _cpu_seconds()
        start = time.perf_counter()
        tally = _Tally(start + warmup_s, start + warmup_s + duration_s)
        await _offer(calls, workload, tally, gaps, timeout_s)
        client_cpu = (_cpu_seconds() - cpu_before) / (time.perf_counter() - start)
    finally:
        await asyncio.gather(*(c.close() for c in opened))
    ms = np.asarray(tally.latencies) * 1000.0
    p50, p90, p99 = np.percentile(ms, [50, 90, 99]) if len(ms) else (np.nan,) * 3
    return CellResult(
        workload=workload.name,
        concurrency=0,
        channels=channels,
        stream_depth=1,
        seconds=duration_s,
        requests=tally.answered,
        images=tally.answered * workload.images,
        p50_ms=float(p50),
        p90_ms=float(p90),
        p99_ms=float(p99),
        errors=dict(tally.errors),
        warmup_errors=dict(tally.warmup_errors),
        client_cpu=client_cpu,
        offered_per_s=rate,
        arrived=tally.arrived,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="HOST:PORT")
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory (its manifest)")
    unary = [name for name in WORKLOADS if "stream" not in name]
    parser.add_argument("--workload", choices=unary, default="oip-uint8-1")
    parser.add_argument("--rates", default="100,200", help="comma-separated requests/s")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    parser.add_argument("--timeout", type=float, default=10.0, help="deadline of each call")
    args = parser.parse_args()
    workload = build_workload(args.workload, ModelFacts.from_checkpoint(args.checkpoint))
    for rate in (float(r) for r in args.rates.split(",")):
        result = asyncio.run(
            run_open_cell(
                args.target,
                workload,
                rate=rate,
                duration_s=args.duration,
                warmup_s=args.warmup,
                timeout_s=args.timeout,
            )
        )
        print(json.dumps(result.to_dict()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
