"""The function every Ray Train worker runs: build, resume, train, evaluate, checkpoint, report.

Rank 0 alone writes checkpoints and publishes metrics; every rank calls `ray.train.report`
the same number of times, as Ray Train requires.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from raysight.allocator import retain_freed_memory
from raysight.checkpoint import (
    Manifest,
    Preprocessing,
    TrainState,
    load_checkpoint,
    save_checkpoint,
)
from raysight.cluster import staging_dir
from raysight.config import TrainConfig
from raysight.errors import RaysightError
from raysight.logs import setup_logging
from raysight.models import build_model
from raysight.train.epoch import EpochStats, EpochTimes, log_epoch, report_metrics
from raysight.train.feeds import ArrayFeed, Feed, RayDataFeed
from raysight.train.finetune import FrozenBackbone, ParentWeights, start_from_parent
from raysight.train.metrics import TrainMetrics
from raysight.train.progress import ProgressPoster
from raysight.train.schedule import lr_at
from raysight.train.step import EpochSums, Preparation, Stepper, build_optimizer

logger = logging.getLogger(__name__)


class TrainingDivergedError(RaysightError):
    """A loss stopped being a finite number; retrying from a checkpoint would not help."""


@dataclass(frozen=True)
class WorkerPlan:
    """What the driver resolved once and every worker needs (pickled to each worker)."""

    config: dict[str, Any]  # TrainConfig.to_dict()
    run_name: str
    threads: int  # torch intra-op threads per worker
    model_kwargs: dict[str, Any]  # resolved, so every rank builds the same architecture
    input_shape: tuple[int, int, int]  # (C, H, W)
    preprocessing: Preprocessing
    prep: Preparation
    class_names: tuple[str, ...]
    class_frequencies: tuple[float, ...] | None  # training rows per class / all rows
    # In-memory splits: (images ref, labels ref) in Ray's object store. None for Ray Data
    # datasets, which Ray Train hands to each worker as shards instead.
    arrays: dict[str, tuple[ray.ObjectRef, ray.ObjectRef]] | None
    rows: dict[str, int] = field(default_factory=dict)  # split -> rows, for Ray Data step counts
    log_json: bool = False  # the driver's choice, so worker lines read like its own
    log_level: int = logging.INFO  # the driver's threshold (-q, -v), applied in every worker
    progress: Any = None  # ActorHandle[ProgressBoard] when the driver draws a bar, else None
    parent: ParentWeights | None = None  # init_from's weights, put in the object store once


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point; `loop_config` is {"plan": WorkerPlan}."""
    plan: WorkerPlan = loop_config["plan"]
    setup_logging(plan.log_level, json_lines=plan.log_json)
    retain_freed_memory()
    cfg = TrainConfig.from_dict(plan.config)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(plan.threads)
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank

    model = build_model(cfg.model, **plan.model_kwargs).to(device)
    if plan.parent is not None:  # before _resume, which loads a restarted run's own weights
        start_from_parent(model, plan.parent, freeze=cfg.freeze_backbone)
    if plan.prep.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = build_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum)
    start_epoch, best = _resume(model, optimizer)
    if start_epoch:
        logger.info("resuming from the checkpoint of epoch %d", start_epoch)

    ddp: nn.Module = FrozenBackbone(model) if cfg.freeze_backbone else model
    if world > 1:
        ddp = DistributedDataParallel(ddp, device_ids=[device] if device.type == "cuda" else None)
    stepper = Stepper(
        ddp,
        optimizer,
        device,
        plan.prep,
        label_smoothing=cfg.label_smoothing,
        seed=cfg.seed * 1000 + rank,
    )
    per_worker_batch = cfg.batch_size // world
    train_feed, val_feed = _feeds(plan, rank, world, per_worker_batch, cfg.seed)
    steps = train_feed.steps_per_epoch()
    total_steps = steps * cfg.epochs
    lr_for_step = partial(
        lr_at,
        total_steps=total_steps,
        peak=cfg.lr,
        schedule=cfg.schedule,
        warmup=cfg.warmup_fraction,
    )
    metrics = TrainMetrics(plan.run_name, cfg.model) if rank == 0 else None
    poster = (
        ProgressPoster(
            plan.progress,
            epochs=cfg.epochs,
            steps=steps,
            samples_per_step=per_worker_batch * world,
            start_epoch=start_epoch,
        )
        if plan.progress is not None and rank == 0
        else None
    )
    run_start = time.perf_counter()

    for epoch in range(start_epoch, cfg.epochs):
        epoch_start = time.perf_counter()
        train_sums = stepper.train_epoch(
            train_feed.epoch(epoch),
            lr_for_step,
            epoch * steps,
            on_step=poster.for_epoch(epoch) if poster is not None else None,
        )
        val_sums = stepper.evaluate(model, val_feed.epoch(epoch))
        stats = _global_stats(epoch + 1, train_sums, val_sums, device)
        check_losses_finite(stats, cfg.lr)
        best = max(best, stats.val_accuracy)
        if rank != 0:
            elapsed = time.perf_counter() - epoch_start
            times = EpochTimes.of(stats, checkpoint=0.0, report=0.0, wall=elapsed)
            ray.train.report(report_metrics(stats, times, start_epoch))
            continue
        assert metrics is not None
        times = _save_and_report(
            epoch_start,
            plan=plan,
            cfg=cfg,
            model=model,
            optimizer=optimizer,
            stats=stats,
            best=best,
            start_epoch=start_epoch,
        )
        metrics.record(stats, times)
        elapsed = time.perf_counter() - run_start
        log_epoch(stats, times, cfg.epochs, elapsed / (epoch + 1 - start_epoch))
    if metrics is not None:
        metrics.close()


def check_losses_finite(stats: EpochStats, lr: float) -> None:
    """Stop a run whose training or validation loss is NaN or infinite.

    Its weights have diverged, and a checkpoint could not record the loss: manifests hold
    finite numbers only. Every rank sees the same reduced losses, so all stop together.

    Raises:
        TrainingDivergedError: naming the loss, the epoch and what to change.
    """
    for split, loss in (("training", stats.train_loss), ("validation", stats.val_loss)):
        if not math.isfinite(loss):
            raise TrainingDivergedError(
                f"{split} loss became {loss} in epoch {stats.epoch}; "
                f"lower lr (now {lr}) or raise warmup_fraction"
            )


def _feeds(plan: WorkerPlan, rank: int, world: int, batch: int, seed: int) -> tuple[Feed, Feed]:
    if plan.arrays is not None:
        train_x, train_y = ray.get(list(plan.arrays["train"]))
        val_x, val_y = ray.get(list(plan.arrays["val"]))
        return (
            ArrayFeed(
                train_x, train_y, rank=rank, world=world, batch_size=batch, train=True, seed=seed
            ),
            ArrayFeed(val_x, val_y, rank=rank, world=world, batch_size=batch, train=False),
        )
    # Ray Data's equal split gives each rank floor(rows / world) rows.
    train_steps = (plan.rows["train"] // world) // batch
    val_steps = -(-(plan.rows["val"] // world) // batch)
    return (
        RayDataFeed(
            ray.train.get_dataset_shard("train"),
            batch_size=batch,
            train=True,
            steps=train_steps,
            seed=seed,
        ),
        RayDataFeed(
            ray.train.get_dataset_shard("val"), batch_size=batch, train=False, steps=val_steps
        ),
    )


def _resume(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, float]:
    """Load the latest checkpoint Ray Train hands back after a failure, if any.

    Returns (epochs already completed, best validation accuracy so far).
    """
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0, 0.0
    with checkpoint.as_directory() as directory:
        loaded = load_checkpoint(directory, with_train_state=True)
    model.load_state_dict(loaded.state_dict)
    if loaded.train_state is None:
        return loaded.manifest.epoch, 0.0
    optimizer.load_state_dict(loaded.train_state.optimizer)
    return loaded.train_state.epoch, float(loaded.train_state.extra.get("best_val_accuracy", 0.0))


def _global_stats(epoch: int, train: EpochSums, val: EpochSums, device: torch.device) -> EpochStats:
    """Sum the per-rank totals and take the slowest rank's times (one collective of each)."""
    totals = torch.tensor(
        [train.loss, train.correct, train.samples, val.loss, val.correct, val.samples],
        dtype=torch.float64,
        device=device,
    )
    seconds = torch.tensor(
        [train.seconds, train.wait_seconds, val.seconds, val.wait_seconds],
        dtype=torch.float64,
        device=device,
    )
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals)
        # The slowest rank sets the pace; and since DDP steps in lockstep, a rank starved of
        # data holds every rank up, so the longest wait is the one the run pays.
        dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
    t_loss, t_correct, t_n, v_loss, v_correct, v_n = totals.tolist()
    t_seconds, t_wait, v_seconds, v_wait = seconds.tolist()
    return EpochStats(
        epoch=epoch,
        train_loss=t_loss / max(t_n, 1),
        train_accuracy=t_correct / max(t_n, 1),
        val_loss=v_loss / max(v_n, 1),
        val_accuracy=v_correct / max(v_n, 1),
        samples=int(t_n),
        seconds=t_seconds,
        train_wait_seconds=t_wait,
        val_seconds=v_seconds,
        val_wait_seconds=v_wait,
    )


def _save_and_report(
    epoch_start: float,
    *,
    plan: WorkerPlan,
    cfg: TrainConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    stats: EpochStats,
    best: float,
    start_epoch: int,
) -> EpochTimes:
    """Rank 0's end of an epoch: write the checkpoint and report it with the metrics.

    Args:
        epoch_start: `time.perf_counter()` when the epoch began.
        plan: the run's resolved settings (model arguments, preprocessing, classes).
        cfg: the training config, recorded in the manifest.
        model: the unwrapped model, whose weights are saved.
        optimizer: its state is saved for resuming.
        stats: the epoch's global metrics.
        best: the best validation accuracy so far, saved for resuming.
        start_epoch: the epoch this attempt resumed from (0: a fresh run).

    Returns:
        Where the epoch's wall time went, up to the end of the report.
    """
    with staging_dir("raysight-ckpt-") as tmp:
        saving = time.perf_counter()
        path = _save(
            Path(tmp) / "checkpoint",
            plan=plan,
            cfg=cfg,
            model=model,
            optimizer=optimizer,
            stats=stats,
            best=best,
        )
        saved = time.perf_counter()
        # A report cannot carry its own duration: the times it carries stop where it starts.
        times = EpochTimes.of(
            stats, checkpoint=saved - saving, report=0.0, wall=saved - epoch_start
        )
        checkpoint = ray.train.Checkpoint.from_directory(path)
        ray.train.report(report_metrics(stats, times, start_epoch), checkpoint=checkpoint)
        reported = time.perf_counter()
    done = time.perf_counter()  # removing the temporary folder lands in "other"
    return dataclasses.replace(times, report=reported - saved, wall=done - epoch_start)


def _save(
    directory: Path,
    *,
    plan: WorkerPlan,
    cfg: TrainConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    stats: EpochStats,
    best: float,
) -> Path:
    manifest = Manifest.new(
        model=cfg.model,
        model_kwargs=plan.model_kwargs,
        input_shape=plan.input_shape,
        preprocessing=plan.preprocessing,
        class_names=plan.class_names,
        class_frequencies=plan.class_frequencies,
        dataset=cfg.dataset,
        metrics={
            "val_accuracy": stats.val_accuracy,
            "val_loss": stats.val_loss,
            "train_accuracy": stats.train_accuracy,
            "train_loss": stats.train_loss,
        },
        train_config=plan.config,
        parent=plan.parent.record if plan.parent is not None else None,
        epoch=stats.epoch,
    )
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    train_state = TrainState(
        optimizer=optimizer.state_dict(),
        scheduler=None,  # the schedule is a pure function of the step: nothing to save
        epoch=stats.epoch,
        extra={"best_val_accuracy": best},
    )
    # DEBUG: a line per epoch about a temporary folder is noise beside the epoch line.
    return save_checkpoint(
        directory,
        state_dict=state,
        manifest=manifest,
        train_state=train_state,
        log_level=logging.DEBUG,
    )
