"""Training-step speed on CPU: channels_last, bf16 autocast and torch.compile against the
plain fp32 step, for the registry models at the sizes they are trained at.

Each variant runs the device-side step of training (raysight.train.step.Stepper: normalise,
augment, forward, loss, backward, optimizer) on random uint8 batches. Rounds are interleaved
(every variant once per round) so drift in the machine's speed hits all alike; a variant's
figure is its median images/s over the rounds. torch.compile's first steps compile, so every
variant is warmed up before its timed steps.

    python bench/cpu_speed.py [--rounds 5] [--steps 6] [--threads 2] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raysight.models import build_model
from raysight.train.step import Preparation, Stepper, build_optimizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import machine_facts, median, number, ratio, table, write_section

_REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Case:
    """A registry model at the input it is trained on."""

    label: str
    model: str
    shape: tuple[int, int, int]  # (C, H, W)
    kwargs: dict[str, Any]
    batch: int


CASES: tuple[Case, ...] = (
    Case("convnet, MNIST 28x28", "convnet", (1, 28, 28), {}, 128),
    Case("resnet9 width 16, CIFAR 32x32", "resnet9", (3, 32, 32), {"width": 16}, 128),
    Case("resnet9 width 16, photos 64x64", "resnet9", (3, 64, 64), {"width": 16}, 64),
    Case("catsdogs (same padding), photos 64x64", "catsdogs", (3, 64, 64), {"padding": "same"}, 64),
    # Small batches: a step of the full-width models takes seconds here, bf16 ten times more.
    Case("resnet9, CIFAR 32x32", "resnet9", (3, 32, 32), {}, 32),
    Case("resnet18, CIFAR 32x32", "resnet18", (3, 32, 32), {}, 16),
)
VARIANTS: tuple[str, ...] = ("fp32", "channels_last", "bf16", "compile")


class _Bf16(nn.Module):
    """Runs the wrapped model under CPU bf16 autocast (convs and matmuls in bf16), as the
    GPU path's Stepper does on CUDA; the loss stays fp32."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.model(x)


def _stepper(case: Case, variant: str) -> Callable[[], None]:
    """One training step of `case` under `variant`, ready to call repeatedly."""
    torch.manual_seed(0)
    c, h, w = case.shape
    model: nn.Module = build_model(
        case.model, in_channels=c, num_classes=10, image_size=(h, w), **case.kwargs
    )
    channels_last = variant == "channels_last"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = build_optimizer(model, "adamw", 1e-3, 5e-4, 0.9)
    wrapped: nn.Module = model
    if variant == "compile":
        wrapped = torch.compile(model)  # type: ignore[assignment]
    elif variant == "bf16":
        wrapped = _Bf16(model)
    prep = Preparation((0.5,) * c, (0.25,) * c, crop_padding=2, flip=c == 3,
                       channels_last=channels_last)  # fmt: skip
    stepper = Stepper(wrapped, optimizer, torch.device("cpu"), prep)
    images = torch.randint(0, 256, (case.batch, *case.shape), dtype=torch.uint8)
    labels = torch.randint(0, 10, (case.batch,))

    def step() -> None:
        stepper.train_batch(images, labels, 1e-3)

    return step


def _rate(step: Callable[[], None], steps: int, batch: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per variant a round")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, default=_REPO / "docs" / "benchmarks.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for case in CASES:
        steppers = {v: _stepper(case, v) for v in VARIANTS}
        for step in steppers.values():  # warm-up: allocator, oneDNN kernels, compilation
            for _ in range(2):
                step()
        rates: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for _ in range(args.rounds):
            for variant, step in steppers.items():
                rates[variant].append(_rate(step, args.steps, case.batch))
        medians = {v: median(r) for v, r in rates.items()}
        base = medians["fp32"]
        rows.append(
            [case.label, number(base)]
            + [f"{number(medians[v])} ({ratio(medians[v], base)})" for v in VARIANTS[1:]]
        )
        print(case.label, {v: round(m) for v, m in medians.items()}, flush=True)
    facts = machine_facts(_REPO)
    command = (
        f"python bench/cpu_speed.py --rounds {args.rounds} --steps {args.steps} "
        f"--threads {args.threads}"
    )
    section = "\n\n".join(
        [
            "## Training on CPU: channels_last, bf16 autocast, torch.compile",
            f"Command: `{command}` ({facts['date']}, commit {facts['raysight commit']}, "
            f"{facts['CPU']}, torch {facts['torch']}). Training images/s of the whole step "
            "(normalise, augment, forward, backward, AdamW), one process, median of "
            f"{args.rounds} interleaved rounds; ratios against fp32 in the same run.",
            table(["model, input", "fp32", *VARIANTS[1:]], rows),
        ]
    )
    write_section(args.out, "cpu_speed", section, "bench/cpu_speed.py")


if __name__ == "__main__":
    main()
