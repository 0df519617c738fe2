"""Training throughput: a plain PyTorch loop against Ray Train at 1 and 2 workers.

Same model, data, batch size and device-side step (raysight.train.step.Stepper) in every
runner; only what Ray adds differs. Rounds are interleaved (plain, ray-1, ray-2, plain, ...)
so drift in the machine's speed hits every runner alike, and each runner's median over the
rounds is reported. Throughput is the last epoch's training samples per second (the first
epoch carries warm-up), not counting evaluation.

    python bench/train_throughput.py [--data-dir ../shared/datasets/mnist] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import ray
import torch

from raysight.allocator import retain_freed_memory
from raysight.cluster import connected
from raysight.config import TrainConfig
from raysight.models import build_model
from raysight.train.feeds import ArrayFeed
from raysight.train.schedule import lr_at
from raysight.train.step import Stepper, build_optimizer
from raysight.train.trainer import preparation, prepare, train

_SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared/datasets/mnist"


def plain_loop(cfg: TrainConfig, threads: int) -> float:
    """Single process, no Ray, no DDP: the baseline samples/s of the last epoch."""
    retain_freed_memory()  # as every Ray Train worker does, so that only Ray differs
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    prepared = prepare(cfg)
    data = prepared.data
    assert data.arrays is not None
    train_set = data.arrays["train"]
    model = build_model(cfg.model, **prepared.model_kwargs)
    optimizer = build_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum)
    stepper = Stepper(model, optimizer, torch.device("cpu"), preparation(cfg, data), seed=cfg.seed)
    feed = ArrayFeed(
        train_set.images,
        train_set.labels,
        rank=0,
        world=1,
        batch_size=cfg.batch_size,
        train=True,
        seed=cfg.seed,
    )
    steps = feed.steps_per_epoch()
    rate = 0.0
    for epoch in range(cfg.epochs):
        sums = stepper.train_epoch(
            feed.epoch(epoch),
            lambda s: lr_at(s, steps * cfg.epochs, cfg.lr, cfg.schedule, cfg.warmup_fraction),
            epoch * steps,
        )
        rate = sums.samples / sums.seconds
    return rate


def ray_train(cfg: TrainConfig, workers: int, out: Path) -> float:
    """The real `raysight train` path; samples/s of the last epoch as rank 0 reported it."""
    outcome = train(
        cfg.replace(
            workers=workers, output=str(out / f"ray{workers}"), storage_path=str(out / "storage")
        )
    )
    return float(outcome.last_report["samples_per_second"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(_SHARED_MNIST))
    parser.add_argument("--model", default="convnet")
    # About 4 s per epoch here: long enough that a second of noise does not decide a round.
    parser.add_argument("--samples", type=int, default=30000, help="training images used")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if not Path(args.data_dir).exists():
        print(f"no MNIST at {args.data_dir}: pass --data-dir (raysight data download mnist)")
        return 2
    cfg = TrainConfig(
        dataset="mnist",
        data_dir=args.data_dir,
        model=args.model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        limit_train=args.samples,
        val_fraction=0.05,
        max_failures=0,
        keep_checkpoints=1,
    )
    cpus = os.cpu_count() or 1
    results: dict[str, list[float]] = {"plain": [], "ray-1": [], "ray-2": []}
    with connected(num_cpus=cpus), tempfile.TemporaryDirectory(prefix="raysight-bench-") as tmp:
        for round_ in range(args.rounds):
            # The plain loop gets every core, as the single Ray worker does.
            results["plain"].append(plain_loop(cfg, threads=cpus))
            results["ray-1"].append(ray_train(cfg, 1, Path(tmp)))
            results["ray-2"].append(ray_train(cfg, 2, Path(tmp)))
            print(
                f"round {round_ + 1}: " + "  ".join(f"{k} {v[-1]:.0f}" for k, v in results.items()),
                flush=True,
            )
    base = statistics.median(results["plain"])
    print(
        f"\n{args.model} on {args.samples} MNIST images, batch {args.batch_size}, "
        f"{cpus} CPUs, {args.rounds} interleaved rounds, median of last-epoch samples/s"
    )
    print(f"{'runner':8s} {'samples/s':>10s} {'vs plain':>9s}")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"{name:8s} {median:10.0f} {median / base:8.2f}x")
    for name in ("ray-1", "ray-2"):
        ratios = [r / p for r, p in zip(results[name], results["plain"], strict=True)]
        print(f"{name} / plain by round: " + ", ".join(f"{x:.2f}" for x in ratios))
    print(
        f"\n{time.strftime('%Y-%m-%d')} torch {torch.__version__} ray {ray.__version__} "
        f"python {sys.version.split()[0]}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
