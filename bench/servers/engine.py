"""raysight's engine alone, in process, no transport: the compute limit.

Times `ServedModel.run` (the replica's forward: logits and probabilities of a normalised
FP32 batch) and `Engine.classify_pixels` (raw UINT8 pixels, normalised on the device) at
each batch size, after a warm-up, and prints one JSON line per measurement.

    python bench/servers/engine.py --checkpoint runs/digits --batches 1,8,32 --duration 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from raysight.allocator import retain_freed_memory
from raysight.engine import Engine
from raysight.serve.model import ServedModel, load_served_model


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(
    forward: Callable[[], Any], batch: int, device: torch.device, duration_s: float
) -> tuple[float, float]:
    """Run `forward` (one batch of `batch` images) repeatedly for about `duration_s` after
    a warm-up; (images/s, median milliseconds per batch)."""
    for _ in range(3):  # warm-up: allocator, kernels, caches
        forward()
    _synchronize(device)
    times = []
    deadline = time.perf_counter() + duration_s
    while time.perf_counter() < deadline or len(times) < 3:
        started = time.perf_counter()
        forward()
        _synchronize(device)  # forward returns numpy, so this is a formality on CUDA too
        times.append(time.perf_counter() - started)
    return batch * len(times) / sum(times), 1000 * float(np.median(times))


@contextlib.contextmanager
def precision(device: torch.device, dtype: str) -> Iterator[None]:
    """fp32 as the server runs; bf16 through autocast (BatchNorm stays fp32)."""
    if dtype == "fp32":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        yield


def measure(
    model: ServedModel, batches: list[int], duration_s: float, dtype: str = "fp32"
) -> list[dict[str, Any]]:
    """images/s of the normalised-FP32 path and of the raw-pixel path at each batch size."""
    engine: Engine = model.engine
    rows = []
    for batch in batches:
        pixels = np.random.default_rng(0).integers(
            0, 256, size=(batch, *model.input_shape), dtype=np.uint8
        )
        inputs = engine.normalize(pixels)  # (B, C, H, W) float32
        paths: dict[str, Callable[[], Any]] = {
            "fp32-inputs": lambda inputs=inputs: model.run(inputs),
            "uint8-pixels": lambda pixels=pixels: engine.classify_pixels(pixels),
        }
        for path, forward in paths.items():
            with precision(engine.device, dtype):
                rate, ms = images_per_second(forward, batch, engine.device, duration_s)
            rows.append(
                {
                    "path": path,
                    "batch": batch,
                    "dtype": dtype,
                    "device": str(engine.device),
                    "images_per_s": rate,
                    "ms_per_batch": ms,
                }
            )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per measurement")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    retain_freed_memory()  # as a serving replica does: passes reuse memory
    model = load_served_model(args.checkpoint, "", args.device)
    batches = [int(b) for b in args.batches.split(",")]
    for row in measure(model, batches, args.duration, args.dtype):
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
