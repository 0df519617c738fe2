"""Inference speed on CPU: the registry models' forward pass with NCHW weights against
channels-last (NHWC) weights, the layout the engine serves with.

Each model gets random weights at the input it is served at; both layouts run the same NCHW
inputs under `torch.inference_mode`, at batches of 1, 8 and 32 images. Rounds are
interleaved (both layouts once per batch per round), each figure is the median over the
rounds of the median pass time in a round, and the largest difference between the two
layouts' logits is reported with it.

    python bench/engine_layout.py [--rounds 3] [--seconds 0.5] [--threads 1] [--out FILE]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from raysight.allocator import retain_freed_memory
from raysight.models import build_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import machine_facts, median, milliseconds, number, ratio, table, write_section

_REPO = Path(__file__).resolve().parents[1]
BATCHES = (1, 8, 32)


@dataclass(frozen=True)
class Case:
    """A registry model at the input it is served at."""

    label: str
    model: str
    shape: tuple[int, int, int]  # (C, H, W)
    batches: tuple[int, ...] = BATCHES


CASES: tuple[Case, ...] = (
    Case("convnet, MNIST 28x28", "convnet", (1, 28, 28)),
    Case("resnet9, CIFAR 32x32", "resnet9", (3, 32, 32)),
    Case("resnet18, CIFAR 32x32", "resnet18", (3, 32, 32)),
    # 32 photos of 180x180 take seconds a pass here.
    Case("catsdogs, photos 180x180", "catsdogs", (3, 180, 180), (1, 8)),
)


def _pass_ms(model: nn.Module, inputs: torch.Tensor, seconds: float) -> float:
    """Median milliseconds of one forward pass, over about `seconds` (at least 3 passes)."""
    times = []
    deadline = time.perf_counter() + seconds
    with torch.inference_mode():
        while time.perf_counter() < deadline or len(times) < 3:
            start = time.perf_counter()
            model(inputs)
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def _measure(case: Case, rounds: int, seconds: float) -> list[list[str]]:
    torch.manual_seed(0)
    c, h, w = case.shape
    nchw = build_model(case.model, in_channels=c, num_classes=10, image_size=(h, w)).eval()
    nhwc = copy.deepcopy(nchw).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    rows = []
    for batch in case.batches:
        inputs = torch.randn(batch, *case.shape)
        with torch.inference_mode():
            for model in (nchw, nhwc):  # warm-up: allocator, oneDNN kernels
                model(inputs)
            diff = float((nchw(inputs) - nhwc(inputs)).abs().max())
        times: dict[str, list[float]] = {"nchw": [], "nhwc": []}
        for _ in range(rounds):
            times["nchw"].append(_pass_ms(nchw, inputs, seconds))
            times["nhwc"].append(_pass_ms(nhwc, inputs, seconds))
        before, after = median(times["nchw"]), median(times["nhwc"])
        rows.append(
            [
                case.label,
                str(batch),
                milliseconds(before),
                milliseconds(after),
                number(batch * 1000 / after),
                ratio(before, after),
                f"{diff:.1e}",
            ]
        )
        print(case.label, batch, round(before, 3), round(after, 3), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=0.5, help="per layout, batch, round")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, default=_REPO / "docs" / "benchmarks.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    retain_freed_memory()  # as a serving replica does: passes reuse memory
    rows = [row for case in CASES for row in _measure(case, args.rounds, args.seconds)]
    facts = machine_facts(_REPO)
    command = (
        f"python bench/engine_layout.py --rounds {args.rounds} --seconds {args.seconds:g} "
        f"--threads {args.threads}"
    )
    section = "\n\n".join(
        [
            "## Serving on CPU: channels-last weights",
            f"Command: `{command}` ({facts['date']}, commit {facts['raysight commit']}, "
            f"{facts['CPU']}, torch {facts['torch']}). One forward pass of NCHW inputs, "
            f"{args.threads} torch thread{'s' if args.threads > 1 else ''}, random weights, "
            f"median of {args.rounds} interleaved rounds, with the serving replica's malloc "
            "settings (`raysight.allocator`). The engine serves with channels-last weights.",
            table(
                [
                    "model, input",
                    "batch",
                    "NCHW ms",
                    "channels-last ms",
                    "channels-last images/s",
                    "speed-up",
                    "largest logit difference",
                ],
                rows,
            ),
        ]
    )
    write_section(args.out, "engine_layout", section, "bench/engine_layout.py")


if __name__ == "__main__":
    main()
