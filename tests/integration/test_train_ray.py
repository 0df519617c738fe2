"""Ray Train end to end on a real local cluster: train, checkpoint, evaluate, fail, resume."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from raysight.checkpoint import verify_checkpoint
from raysight.config import TrainConfig
from raysight.engine import Engine
from raysight.evaluate import dataset_batches, evaluate
from raysight.train.loop import TrainingDivergedError
from raysight.train.trainer import train
from tests.conftest import RayCluster, scrape_metrics

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DIGITS = TrainConfig(
    dataset="digits",
    model="convnet",
    model_args={"padding": "same"},
    epochs=4,
    batch_size=32,
    lr=3e-3,
    workers=2,
    max_failures=0,
)


def test_two_workers_train_checkpoint_and_evaluate(ray_cluster: RayCluster, tmp_path: Path) -> None:
    cfg = DIGITS.replace(
        output=str(tmp_path / "best"),
        storage_path=str(tmp_path / "storage"),
        run_name="two-workers",
    )
    outcome = train(cfg)

    manifest = verify_checkpoint(outcome.checkpoint)
    assert manifest.model == "convnet" and manifest.dataset == "digits"
    assert manifest.class_names == tuple(str(d) for d in range(10))
    assert manifest.input_shape == (1, 8, 8)
    assert manifest.train_config["workers"] == 2
    assert 1 <= manifest.epoch <= cfg.epochs
    # Digits are easy: a few epochs must learn them, far above the 10% of chance.
    assert manifest.metrics["test_accuracy"] > 0.85
    # Evaluating the saved checkpoint reproduces the number training recorded.
    engine = Engine.from_directory(outcome.checkpoint)
    again = evaluate(engine, dataset_batches("digits", None, "test", engine.manifest))
    assert again.accuracy == pytest.approx(manifest.metrics["test_accuracy"], abs=1e-9)
    assert again.samples == outcome.test.samples == 359
    # Per-epoch checkpoints were persisted to storage, at most keep_checkpoints of them.
    kept = [p for p in (tmp_path / "storage" / "two-workers").glob("checkpoint_*") if p.is_dir()]
    assert 1 <= len(kept) <= cfg.keep_checkpoints


def test_a_worker_error_reaches_the_caller_as_itself(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    cfg = DIGITS.replace(
        lr=1e30,  # every weight overflows on the first step
        epochs=2,
        workers=1,
        output=str(tmp_path / "best"),
        storage_path=str(tmp_path / "storage"),
    )
    with pytest.raises(TrainingDivergedError, match="training loss became nan in epoch 1"):
        train(cfg)
    assert not (tmp_path / "best").exists()


def test_training_metrics_reach_rays_prometheus_endpoint(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    cfg = DIGITS.replace(
        epochs=2,
        workers=1,
        batch_size=64,
        output=str(tmp_path / "m"),
        storage_path=str(tmp_path / "s"),
        run_name="metrics-run",
    )
    train(cfg)
    wanted = (
        "ray_raysight_train_samples_per_second",
        "ray_raysight_train_epochs_total",
        "ray_raysight_train_accuracy",
        "ray_raysight_train_loss",
    )
    text = scrape_metrics(
        ray_cluster.metrics_port,
        lambda t: all(f"{w}{{" in t for w in wanted) and 'run="metrics-run"' in t,
    )
    lines = [line for line in text.splitlines() if 'run="metrics-run"' in line]
    for name in wanted:
        assert any(line.startswith(name + "{") for line in lines), name
    epochs = [line for line in lines if line.startswith("ray_raysight_train_epochs_total{")]
    assert float(epochs[0].rsplit(" ", 1)[1]) == 2.0
    assert any('split="val"' in line and 'model="convnet"' in line for line in lines)


def _registered_epoch(run_dir: Path) -> int:
    """Epoch of the latest checkpoint Ray Train's controller has registered (0: none yet).

    Reports reach the controller when it next polls the workers, so a checkpoint directory
    can exist before the controller would hand it to a restarted worker group; its snapshot
    file is the record of what it would hand over.
    """
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):  # not written yet, or caught mid-write
        return 0
    latest = snapshot.get("latest_checkpoint_result") or {}
    return int(latest.get("metrics", {}).get("epoch", 0))


def _kill_a_worker_once_a_checkpoint_is_registered(
    run_dir: Path, killed: list[int], address: str
) -> None:
    from ray.util.state import list_actors

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and _registered_epoch(run_dir) < 1:
        time.sleep(0.05)
    actors = list_actors(
        address=address,
        filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
    )
    if actors:
        pid = int(actors[0]["pid"])
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)


def test_killed_worker_resumes_from_last_checkpoint(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    storage = tmp_path / "storage"
    # Small batches make each epoch long enough for the kill to land mid-run.
    cfg = DIGITS.replace(
        epochs=12,
        batch_size=8,
        max_failures=2,
        output=str(tmp_path / "out"),
        storage_path=str(storage),
        run_name="resume",
    )
    killed: list[int] = []
    killer = threading.Thread(
        target=_kill_a_worker_once_a_checkpoint_is_registered,
        args=(storage / "resume", killed, ray_cluster.dashboard_url),
    )
    killer.start()
    started = time.monotonic()
    outcome = train(cfg)
    killer.join()
    accuracy = verify_checkpoint(outcome.checkpoint).metrics["test_accuracy"]
    if out := os.environ.get("RAYSIGHT_RELIABILITY_OUT"):  # the figures of docs/reliability.md
        figures = {
            "epochs": cfg.epochs,
            "workers_killed": len(killed),
            "resumed_from_epoch": outcome.last_report["resumed_from_epoch"],
            "test_accuracy": accuracy,
            "wall_s": round(time.monotonic() - started, 1),
        }
        Path(out).write_text(json.dumps(figures, indent=2))

    assert killed, "no worker was alive to kill"
    # The restarted group loaded a checkpoint instead of starting over, then finished.
    assert outcome.last_report["resumed_from_epoch"] >= 1
    assert outcome.last_report["epoch"] == cfg.epochs
    assert accuracy > 0.85


def test_real_mnist_one_epoch_reaches_98_percent(
    ray_cluster: RayCluster, mnist_dir: Path, tmp_path: Path
) -> None:
    cfg = TrainConfig(
        dataset="mnist",
        data_dir=str(mnist_dir),
        model="convnet",
        epochs=1,
        batch_size=128,
        workers=2,
        max_failures=0,
        output=str(tmp_path / "mnist"),
        storage_path=str(tmp_path / "storage"),
    )
    outcome = train(cfg)
    assert outcome.test.samples == 10_000
    assert outcome.test.accuracy >= 0.98
