"""Small requests beside large images: does a 40-megapixel decode stall the replica?

One `raysight serve` (default settings); in each round, small Classify requests (a PNG at
the model's size) from `--concurrency` closed-loop callers, alone, then with
`--large-callers` more callers sending 40-megapixel PNGs back to back (the largest image the
default settings accept). A replica that decoded on its event loop would hold every small
request for the length of each large decode; the decode runs in a worker thread instead
(serve/offload.py). Rounds alternate the two cells; medians over rounds.

    python bench/large_images.py --checkpoint runs/pets-resnet9 --out docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import loadgen
import numpy as np
import report
from PIL import Image
from servers import context, raysight_serve

from raysight._proto.raysight.v1 import image_service_pb2 as image_pb

REPO = Path(__file__).resolve().parents[1]
SECTION = "large_images"


def large_png() -> bytes:
    """8000 x 5000 pixels, the default max_image_pixels: noise in 8-pixel blocks keeps the
    file under the default 10 MiB while decoding still costs all 40 megapixels (a JPEG this
    large would decode at 1/8 scale in draft mode and cost little)."""
    blocks = np.random.default_rng(0).integers(0, 256, size=(625, 1000, 3), dtype=np.uint8)
    image = Image.fromarray(blocks).resize((8000, 5000), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


async def _large_caller(target: str, body: bytes, until: float, times: list[float]) -> None:
    async with grpc.aio.insecure_channel(
        target, options=[("grpc.max_send_message_length", loadgen.MAX_MESSAGE_BYTES)]
    ) as channel:
        classify = channel.unary_unary(loadgen.CLASSIFY)
        while time.perf_counter() < until:
            started = time.perf_counter()
            await classify(body, timeout=60)
            times.append(time.perf_counter() - started)


async def _mixed(
    target: str, small: loadgen.Workload, large: bytes, args: argparse.Namespace
) -> tuple[loadgen.CellResult, list[float]]:
    times: list[float] = []
    until = time.perf_counter() + args.warmup + args.duration
    callers = [_large_caller(target, large, until, times) for _ in range(args.large_callers)]
    cell = loadgen.run_cell(
        target,
        small,
        concurrency=args.concurrency,
        duration_s=args.duration,
        warmup_s=args.warmup,
    )
    result, *_ = await asyncio.gather(cell, *callers)
    return result, times


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--concurrency", type=int, default=8, help="small-request callers")
    parser.add_argument("--large-callers", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--work-dir", default="runs/bench")
    parser.add_argument("--out", default="docs/benchmarks.md")
    return parser.parse_args()


def _row(name: str, cells: list[loadgen.CellResult]) -> list[Any]:
    return [
        name,
        report.number(report.median(c.requests_per_s for c in cells)),
        report.milliseconds(report.median(c.p50_ms for c in cells)),
        report.milliseconds(report.median(c.p99_ms for c in cells)),
        sum(sum(c.errors.values()) for c in cells),
    ]


def main() -> int:
    args = _arguments()
    checkpoint = Path(args.checkpoint).resolve()
    model = loadgen.ModelFacts.from_checkpoint(checkpoint)
    ctx = context(REPO, checkpoint, Path(args.work_dir).resolve(), threads=1, device="cpu")
    command = report.command_line()
    facts = report.machine_facts(REPO)
    small = loadgen.build_workload("classify-png", model)
    large = large_png()
    large_body = image_pb.ClassifyRequest(image=large, top_k=1).SerializeToString()
    alone: list[loadgen.CellResult] = []
    mixed: list[loadgen.CellResult] = []
    large_times: list[float] = []
    with raysight_serve.start(ctx, "large-images", None) as server:
        for round_ in range(args.rounds):
            alone.append(
                asyncio.run(
                    loadgen.run_cell(
                        server.target,
                        small,
                        concurrency=args.concurrency,
                        duration_s=args.duration,
                        warmup_s=args.warmup,
                    )
                )
            )
            cell, times = asyncio.run(_mixed(server.target, small, large_body, args))
            mixed.append(cell)
            large_times += times
            print(
                f"round {round_ + 1}: alone {alone[-1].requests_per_s:.0f} req/s p99 "
                f"{alone[-1].p99_ms:.1f} ms; mixed {cell.requests_per_s:.0f} req/s p99 "
                f"{cell.p99_ms:.1f} ms, {len(times)} large answered",
                flush=True,
            )
        server_command = server.command
    ms = np.asarray(large_times) * 1000
    large_line = (
        f"{len(ms)} large requests answered, p50 {np.median(ms):,.0f} ms each"
        if len(ms)
        else "no large request was answered"
    )
    section = "\n".join(
        [
            "## Serving: small requests beside 40-megapixel images",
            "",
            "```bash",
            command,
            "```",
            "",
            f"One `raysight serve` with its defaults; `classify-png` from {args.concurrency} "
            f"closed-loop callers, alone and with {args.large_callers} more caller(s) sending "
            f"an 8000x5000 PNG ({len(large) / 2**20:.1f} MiB) back to back; {args.rounds} "
            f"rounds alternating the two, each {args.warmup:g} s of warm-up then "
            f"{args.duration:g} s measured; medians. Mixed in: {large_line}.",
            "",
            report.facts_table(facts),
            "",
            report.table(
                ["small requests", "req/s", "p50 ms", "p99 ms", "non-OK"],
                [_row("alone", alone), _row("beside large images", mixed)],
            ),
            "",
            f"Server: `{server_command}`",
        ]
    )
    report.write_section(Path(args.out), SECTION, section, "bench/large_images.py")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
