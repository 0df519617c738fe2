"""One epoch's record on rank 0: the global stats, where its wall time went, the metrics
Ray Train gets and the line a person reads."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochStats:
    """What one epoch measured, summed over all ranks (times: the slowest rank's)."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    samples: int
    seconds: float  # the training pass, data wait included; evaluation excluded
    train_wait_seconds: float  # of `seconds`, blocked on the training feed
    val_seconds: float  # the validation pass, data wait included
    val_wait_seconds: float  # of `val_seconds`, blocked on the validation feed

    @property
    def samples_per_second(self) -> float:
        # Over the whole training pass, data wait included: the rate the run actually gets.
        # A compute-only rate would flatter a run whose feed cannot keep up.
        return self.samples / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class EpochTimes:
    """Where rank 0's wall time of one epoch went, in seconds; the parts add up to `wall`
    less a small remainder (`other`): the stats all-reduce, removing the local checkpoint."""

    train: float  # training steps and their gradient all-reduce, data wait excluded
    data_wait: float  # blocked on the training and validation feeds (reading, decoding)
    val: float  # evaluation batches, data wait excluded
    checkpoint: float  # writing rank 0's checkpoint to a local temporary folder
    report: float  # ray.train.report: the ranks' barrier, the copy to storage, the hand-over
    wall: float  # from the epoch's start to the end of its report

    @classmethod
    def of(cls, stats: EpochStats, *, checkpoint: float, report: float, wall: float) -> EpochTimes:
        """Split the reduced pass times into compute and data wait, and add rank 0's own."""
        return cls(
            train=stats.seconds - stats.train_wait_seconds,
            data_wait=stats.train_wait_seconds + stats.val_wait_seconds,
            val=stats.val_seconds - stats.val_wait_seconds,
            checkpoint=checkpoint,
            report=report,
            wall=wall,
        )

    def parts(self) -> dict[str, float]:
        """The named parts, in the order they happen (without the remainder)."""
        return {
            "train": self.train,
            "data_wait": self.data_wait,
            "val": self.val,
            "checkpoint": self.checkpoint,
            "report": self.report,
        }

    @property
    def other(self) -> float:
        """Wall time no part accounts for (never negative: the slowest rank's pass times
        can exceed rank 0's share of the wall by a little)."""
        return max(0.0, self.wall - sum(self.parts().values()))


def report_metrics(stats: EpochStats, times: EpochTimes, start_epoch: int) -> dict[str, Any]:
    """The metrics of one epoch as `ray.train.report` takes them (plain floats, no tensors)."""
    return {
        "epoch": stats.epoch,
        "train_loss": stats.train_loss,
        "train_accuracy": stats.train_accuracy,
        "val_loss": stats.val_loss,
        "val_accuracy": stats.val_accuracy,
        "samples_per_second": stats.samples_per_second,
        "epoch_seconds": stats.seconds,  # the training pass, data wait included
        "train_seconds": times.train,
        "data_wait_seconds": times.data_wait,
        "val_seconds": times.val,
        "checkpoint_seconds": times.checkpoint,
        "epoch_wall_seconds": times.wall,  # up to this report, which cannot time itself
        "resumed_from_epoch": start_epoch,
    }


# The epoch line's names for the parts of EpochTimes.
_PART_LABELS = {
    "train": "train",
    "data_wait": "data wait",
    "val": "val",
    "checkpoint": "ckpt",
    "report": "report",
}
# Below this the remainder is rounding and logging, not worth a word on the line.
_OTHER_SHOWN_FROM_S = 0.05


def log_epoch(stats: EpochStats, times: EpochTimes, epochs: int, seconds_per_epoch: float) -> None:
    left = seconds_per_epoch * (epochs - stats.epoch)
    logger.info(
        "epoch %d/%d  loss %.4f  acc %.4f  val_loss %.4f  val_acc %.4f  %.0f samples/s  "
        "%s  ~%s left",
        stats.epoch,
        epochs,
        stats.train_loss,
        stats.train_accuracy,
        stats.val_loss,
        stats.val_accuracy,
        stats.samples_per_second,
        time_split(times),
        duration(left),
    )


def time_split(times: EpochTimes) -> str:
    """The epoch's wall time and its parts, e.g. "22.4s (train 9.8s, data wait 7.1s, ...)"."""
    parts = [f"{_PART_LABELS[name]} {seconds:.1f}s" for name, seconds in times.parts().items()]
    if times.other >= _OTHER_SHOWN_FROM_S:
        parts.append(f"other {times.other:.1f}s")
    return f"{times.wall:.1f}s ({', '.join(parts)})"


def duration(seconds: float) -> str:
    """A rough duration for people: "45s", "12m", "2h05m"."""
    if seconds < 90:
        return f"{seconds:.0f}s"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"{minutes}m"
    return f"{minutes // 60}h{minutes % 60:02d}m"
