"""Serving throughput and latency of the two Ray Serve ingress modes, interleaved.

Each round starts a fresh local Ray cluster per mode in a subprocess (the mode is fixed when
Serve's controller starts), deploys the checkpoint, and drives it with an asyncio gRPC
client: `--concurrency` callers sending ModelInfer (one UINT8 image each) for `--seconds`
after a warm-up. Reported: median over rounds of requests/s, and p50/p99 latency.

    python bench/serve_throughput.py --checkpoint runs/digits [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

MODES = ("proxy", "haproxy")


async def _load(target: str, image: np.ndarray, concurrency: int, seconds: float) -> dict:
    import grpc

    from raysight._proto.inference import grpc_service_pb2 as pb
    from raysight._proto.inference import grpc_service_pb2_grpc as pb_grpc
    from raysight.codec import oip

    request = pb.ModelInferRequest()
    oip.encode_inputs(request, {"images": image[None]})
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(20):  # warm-up: connections, replica code paths
            await stub.ModelInfer(request)
        deadline = time.perf_counter() + seconds

        async def caller() -> None:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                await stub.ModelInfer(request, timeout=30)
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "rps": len(ordered) / elapsed,
        "p50_ms": 1000 * ordered[len(ordered) // 2],
        "p99_ms": 1000 * ordered[int(len(ordered) * 0.99)],
    }


def run_one(mode: str, checkpoint: str, concurrency: int, seconds: float) -> dict:
    """In a fresh process: start Ray in `mode`, deploy, measure, shut down."""
    if mode == "haproxy":
        os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
    from raysight.cluster import connected
    from raysight.engine import Engine
    from raysight.serve import runner
    from raysight.serve.settings import ServeSettings

    port = 9200
    with connected(dashboard_port=8289):
        settings = ServeSettings(checkpoint=checkpoint)
        runner.deploy(runner.serve_config(settings, grpc_port=port, http_port=8290))
        shape = Engine.from_directory(checkpoint).manifest.input_shape
        image = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
        return asyncio.run(_load(f"127.0.0.1:{port}", image, concurrency, seconds))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="runs/digits")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    checkpoint = str(Path(args.checkpoint).resolve())
    if args.one:
        print(json.dumps(run_one(args.one, checkpoint, args.concurrency, args.seconds)))
        return 0
    if not Path(checkpoint, "manifest.json").exists():
        print(f"no checkpoint at {checkpoint}: run `make run` (or pass --checkpoint)")
        return 2
    results: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for round_ in range(args.rounds):
        for mode in MODES:
            child = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--one",
                    mode,
                    "--checkpoint",
                    checkpoint,
                    "--concurrency",
                    str(args.concurrency),
                    "--seconds",
                    str(args.seconds),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            results[mode].append(json.loads(child.stdout.strip().splitlines()[-1]))
            last = results[mode][-1]
            print(
                f"round {round_ + 1} {mode:8s} {last['rps']:7.0f} req/s  "
                f"p50 {last['p50_ms']:6.1f} ms  p99 {last['p99_ms']:6.1f} ms",
                flush=True,
            )
    print(
        f"\nModelInfer, 1 image per request, {args.concurrency} concurrent callers, "
        f"{args.seconds:.0f} s per run, {args.rounds} interleaved rounds (medians)"
    )
    print(f"{'ingress':8s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s}")
    base = statistics.median(r["rps"] for r in results["proxy"])
    for mode, runs in results.items():
        rps = statistics.median(r["rps"] for r in runs)
        p50 = statistics.median(r["p50_ms"] for r in runs)
        p99 = statistics.median(r["p99_ms"] for r in runs)
        print(f"{mode:8s} {rps:8.0f} {p50:8.1f} {p99:8.1f}   {rps / base:.2f}x proxy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
