"""The driver side of training: prepare data once, start Ray Train, keep the best checkpoint.

Runs wherever `ray.init` connects: a laptop (`raysight train`), or a cluster's head through
`ray job submit` / a KubeRay RayJob (`services/train_job.py`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, WorkerGroupError
from ray.train.torch import TorchTrainer

from raysight.checkpoint import (
    Manifest,
    check_destination,
    load_checkpoint,
    publish_checkpoint,
)
from raysight.config import TrainConfig
from raysight.data import NATURAL_IMAGES, ArrayDataset
from raysight.errors import CheckpointError, ConfigError, RaysightError
from raysight.evaluate import Evaluation
from raysight.models import build_model, resolve_kwargs
from raysight.train.augment import RECIPES, resolve_preset
from raysight.train.data_prep import (
    PreparedData,
    decode_once,
    final_split,
    prepare_data,
    ray_datasets,
)
from raysight.train.evaluation import Placement, evaluate_on_workers
from raysight.train.finetune import Parent, check_parent, share_parent
from raysight.train.loop import WorkerPlan, train_loop_per_worker
from raysight.train.progress import ProgressBoard, show_progress
from raysight.train.step import Preparation

logger = logging.getLogger(__name__)

# Ray Train's controller takes each report off a one-slot queue only when it polls the
# workers, every 2 s by default, and rank 0's next report waits until then. With short
# epochs that wait dominated: 12 epochs on digits took 19 s at 2 s and 2.4 s at 0.25 s.
# Polling four times a second cost no measurable throughput (docs/benchmarks.md). A value
# already in the environment wins.
_POLL_ENV, _POLL_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25"


@dataclass(frozen=True)
class TrainOutcome:
    """What a finished run left behind."""

    checkpoint: str  # the best checkpoint, with test metrics: a local directory or a URI
    manifest: Manifest
    test: Evaluation  # the best checkpoint on `final_split`
    last_report: dict[str, Any]  # rank 0's final report (resumed_from_epoch > 0 after a restart)
    run_path: str  # Ray Train's storage folder for this run
    final_split: str = "test"  # "test", or the validation folder of a folder without one

    @property
    def final_label(self) -> str:
        """How the final figure is named: "test", or "validation" without a test split."""
        return "test" if self.final_split == "test" else "validation"


@dataclass(frozen=True)
class PreparedRun:
    """What `prepare` checked and resolved before a cluster is needed."""

    data: PreparedData
    model_kwargs: dict[str, Any]  # resolved, so every rank builds the same architecture
    parent: Parent | None = None  # the checkpoint init_from names, checked against the run


def prepare(cfg: TrainConfig) -> PreparedRun:
    """Check and resolve a run on the driver, before any Ray cluster is started or joined:
    where the checkpoint goes, the data's layout, the image size, whether the model
    takes that input, and whether the init_from checkpoint fits the model.

    Raises:
        ConfigError, DataError: naming what is wrong and the fix.
    """
    _check_output(cfg.output)
    data = prepare_data(cfg)
    model_kwargs = resolve_kwargs(
        cfg.model,
        in_channels=data.input_shape[0],
        num_classes=len(data.class_names),
        image_size=data.input_shape[1:],
        **cfg.model_args,
    )
    # Built once here, without weights, so that a model that cannot take this input fails
    # now with a ConfigError instead of in every worker.
    build_model(cfg.model, **model_kwargs, device="meta")
    if cfg.init_from is None:
        return PreparedRun(data, model_kwargs)
    parent = check_parent(cfg.init_from, cfg.model, model_kwargs, data.class_names)
    # The parent's features were learnt on inputs normalised with its mean/std: keep them.
    data = dataclasses.replace(data, preprocessing=parent.manifest.preprocessing)
    return PreparedRun(data, model_kwargs, parent)


def train(cfg: TrainConfig, prepared: PreparedRun | None = None) -> TrainOutcome:
    """Train on the connected Ray cluster and write the best checkpoint to `cfg.output`.

    Args:
        cfg: the run's configuration.
        prepared: `prepare(cfg)`, when the caller checked the run before connecting.

    Raises:
        ConfigError, DataError: bad settings or data, before any worker starts.
        RaysightError: a worker stopped on a raysight error (TrainingDivergedError, a
            DataError met while streaming) more than `cfg.max_failures` times.
        ray.train.TrainingFailedError: the workers failed otherwise, as often.
    """
    run_name = cfg.run_name or f"{cfg.model}-{cfg.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    prepared = prepared or prepare(cfg)
    data, model_kwargs = decode_once(cfg, prepared.data), prepared.model_kwargs
    parent = (
        share_parent(prepared.parent, freeze_backbone=cfg.freeze_backbone)
        if prepared.parent is not None
        else None
    )
    cpus = cfg.cpus_per_worker or _even_share_of_cpus(
        cfg.workers, streaming=data.indexes is not None
    )
    # On a terminal the driver draws a progress bar from rank 0's posts; elsewhere (a job's
    # log, CI) the per-epoch lines are the whole record, as JSON.
    on_terminal = sys.stderr.isatty()
    level = logging.getLogger("raysight").getEffectiveLevel()  # -q: no bar either
    show_bar = on_terminal and level <= logging.INFO
    board = ProgressBoard.remote() if show_bar else None  # type: ignore[attr-defined]
    plan = WorkerPlan(
        config=cfg.to_dict(),
        run_name=run_name,
        threads=max(1, int(cpus)),
        model_kwargs=model_kwargs,
        input_shape=data.input_shape,
        preprocessing=data.preprocessing,
        prep=preparation(cfg, data),
        class_names=data.class_names,
        class_frequencies=data.class_frequencies,
        arrays=_put_arrays(data.arrays) if data.arrays is not None else None,
        rows=data.rows,
        log_json=not on_terminal,
        log_level=level,
        progress=board,
        parent=parent,
    )
    storage = cfg.storage_path or str(Path("runs/ray").resolve())
    os.environ.setdefault(_POLL_ENV, _POLL_S)  # read by TorchTrainer.fit, passed to the controller
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"plan": plan},
        scaling_config=ScalingConfig(
            num_workers=cfg.workers,
            use_gpu=cfg.gpu,
            resources_per_worker={"CPU": cpus, **({"GPU": 1} if cfg.gpu else {})},
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.keep_checkpoints,
                checkpoint_score_attribute="val_accuracy",
                checkpoint_score_order="max",
            ),
        ),
        datasets=ray_datasets(data, cfg.seed),
    )
    logger.info(
        "training %s on %s: %d worker(s) x %g CPU%s, %d epochs, run %s",
        cfg.model,
        cfg.dataset,
        cfg.workers,
        cpus,
        " + 1 GPU" if cfg.gpu else "",
        cfg.epochs,
        run_name,
    )
    try:
        with show_progress(board) if board is not None else contextlib.nullcontext():
            result = trainer.fit()
    except WorkerGroupError as exc:
        # A worker's own raysight error (divergence, bad data met while streaming) names
        # the problem; Ray's wrapper around it is a traceback per rank.
        failure = _raysight_failure(exc)
        if failure is None:
            raise
        raise failure from exc
    finally:
        if board is not None:
            ray.kill(board)
    best = _best_checkpoint(result)
    with best.as_directory() as directory:
        loaded = load_checkpoint(directory)
    split = data.final_split
    placement = Placement(workers=cfg.workers, cpus=cpus, gpu=cfg.gpu)
    test = evaluate_on_workers(loaded, final_split(cfg, data, loaded.manifest), placement)
    logger.info(
        "best checkpoint: epoch %d, val_acc %.4f; %s accuracy %.4f on %d images",
        loaded.manifest.epoch,
        loaded.manifest.metrics["val_accuracy"],
        split,
        test.accuracy,
        test.samples,
    )
    metrics = dict(loaded.manifest.metrics)
    if split == "test":
        metrics.update(test_accuracy=test.accuracy, test_loss=test.loss)
    # Without a test split the final pass re-measures the validation images, which the
    # manifest's val_* already hold: no figure is recorded under a name it has not earned.
    final = dataclasses.replace(loaded.manifest, metrics=metrics)
    location = publish_checkpoint(cfg.output, state_dict=loaded.state_dict, manifest=final)
    return TrainOutcome(
        location, final, test, dict(result.metrics or {}), str(result.path), final_split=split
    )


def _check_output(output: str) -> None:
    """Refuse an output the final checkpoint cannot be written to now, not after training."""
    try:
        check_destination(output)
    except CheckpointError as exc:
        raise ConfigError(f"output: {exc}") from exc


def preparation(cfg: TrainConfig, data: PreparedData) -> Preparation:
    """Resolve augmentation ("auto") and placement choices into the device-side recipe."""
    height = data.input_shape[1]
    natural = cfg.dataset in NATURAL_IMAGES
    recipe = RECIPES[resolve_preset(cfg.augment, natural=natural)]
    # Default translation: an eighth of the side for photos (4 px on CIFAR's 32), a
    # fourteenth for centred digits (2 px on MNIST's 28, 1 on the 8x8 digits); 4 px on MNIST
    # costs about 0.2 points of test accuracy after 5 epochs (measured: 99.10% vs 99.35%).
    padding = cfg.crop_padding or max(1, round(height / (8 if natural else 14)))
    return Preparation(
        mean=data.preprocessing.mean,
        std=data.preprocessing.std,
        crop_padding=padding if recipe.translate else 0,
        flip=recipe.flip,
        # Faster on GPUs (tensor cores), and on CPU too for every registry model measured:
        # oneDNN's convolutions run NHWC natively (docs/benchmarks.md, bench/cpu_speed.py).
        channels_last=True,
        crop_area=recipe.crop_area,
        zoom=recipe.zoom,
        rotation=recipe.rotation,
        jitter=recipe.jitter,
    )


def _put_arrays(arrays: dict[str, ArrayDataset]) -> dict[str, tuple[ray.ObjectRef, ray.ObjectRef]]:
    """Store each split once; workers on any node map it from the object store."""
    return {name: (ray.put(split.images), ray.put(split.labels)) for name, split in arrays.items()}


def _even_share_of_cpus(workers: int, *, streaming: bool) -> float:
    """CPUs per worker when unset: the cluster's CPUs shared evenly, at most one node's worth.

    Ray Data decodes in tasks that need CPUs of their own: if the workers held every core,
    no decode task could start and training would wait forever. So a streaming run leaves a
    quarter of the cores (at least one) to Ray Data, and workers may get a fraction of a core.
    """
    total = float(ray.cluster_resources().get("CPU", 1))
    largest_node = max(
        (float(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")), default=1.0
    )
    if streaming:
        total -= max(1.0, total // 4)
        # Quarter-core steps keep Ray's resource arithmetic exact.
        return max(0.25, min(math.floor(total / workers * 4) / 4, largest_node))
    return float(max(1, min(int(total) // workers, int(largest_node))))


def _raysight_failure(exc: WorkerGroupError) -> RaysightError | None:
    """The lowest rank's RaysightError among the workers' failures, if any."""
    for rank in sorted(exc.worker_failures):
        failure = exc.worker_failures[rank]
        if isinstance(failure, RaysightError):
            return failure
    return None


def _best_checkpoint(result: Any) -> ray.train.Checkpoint:
    if result.error is not None:
        raise result.error
    scored = [(m.get("val_accuracy", -1.0), c) for c, m in result.best_checkpoints]
    if not scored:
        raise RuntimeError("training finished without reporting a checkpoint")
    return max(scored, key=lambda pair: pair[0])[1]
