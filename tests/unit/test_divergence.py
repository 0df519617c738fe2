"""A diverged run stops with an error that says so, before it writes a checkpoint."""

from __future__ import annotations

import pytest

from raysight.train.epoch import EpochStats
from raysight.train.loop import TrainingDivergedError, check_losses_finite


def _stats(train_loss: float, val_loss: float) -> EpochStats:
    return EpochStats(
        epoch=2,
        train_loss=train_loss,
        train_accuracy=0.8,
        val_loss=val_loss,
        val_accuracy=0.75,
        samples=8,
        seconds=1.0,
        train_wait_seconds=0.0,
        val_seconds=0.1,
        val_wait_seconds=0.0,
    )


@pytest.mark.parametrize(
    ("train_loss", "val_loss", "message"),
    [
        (float("nan"), 0.5, "training loss became nan in epoch 2"),
        (float("inf"), float("nan"), "training loss became inf in epoch 2"),
        (0.5, float("nan"), "validation loss became nan in epoch 2"),
        (0.5, float("-inf"), "validation loss became -inf in epoch 2"),
    ],
)
def test_a_loss_that_is_not_finite_stops_the_run(
    train_loss: float, val_loss: float, message: str
) -> None:
    with pytest.raises(TrainingDivergedError, match=message) as info:
        check_losses_finite(_stats(train_loss, val_loss), lr=0.5)
    assert "lower lr (now 0.5)" in str(info.value)


def test_finite_losses_pass() -> None:
    check_losses_finite(_stats(1e30, 0.0), lr=0.5)
