"""Training metrics, declared once, exported through Ray's metrics endpoint.

Ray's exporter prefixes every application metric with its namespace, so Prometheus sees
`ray_raysight_train_samples_per_second` and so on. Labels are the run and the model only:
both bounded by the number of runs, never per step or per sample.
"""

from __future__ import annotations

from ray.util import metrics

from raysight.gauges import HeldGauges, Refresher
from raysight.train.epoch import EpochStats, EpochTimes

_TAGS = ("run", "model")


class TrainMetrics:
    """The Prometheus view of a run. Create it on rank 0 only: the stats are already global.

    The last epoch's gauges are held (set again every few seconds) until `close`, so a long
    epoch does not read as a run that has gone: Ray drops a gauge left unset for ~25 s.
    """

    def __init__(self, run: str, model: str) -> None:
        self._tags = {"run": run, "model": model}
        self._held = HeldGauges()
        self._refresher = Refresher(self._held)
        self._throughput = metrics.Gauge(
            "raysight_train_samples_per_second",
            description="Training throughput of the last epoch, all workers together.",
            tag_keys=_TAGS,
        )
        self._epoch_seconds = metrics.Gauge(
            "raysight_train_epoch_seconds",
            description="Wall time of the last epoch's training pass, data wait included.",
            tag_keys=_TAGS,
        )
        self._wall_seconds = metrics.Gauge(
            "raysight_train_epoch_wall_seconds",
            description="Wall time of the last epoch: training, validation, checkpoint, report.",
            tag_keys=_TAGS,
        )
        self._phase_seconds = metrics.Gauge(
            "raysight_train_phase_seconds",
            description="Where the last epoch's wall time went, by phase (train, data_wait, "
            "val, checkpoint, report, other).",
            tag_keys=(*_TAGS, "phase"),
        )
        self._loss = metrics.Gauge(
            "raysight_train_loss",
            description="Mean cross-entropy of the last epoch, by split (train, val).",
            tag_keys=(*_TAGS, "split"),
        )
        self._accuracy = metrics.Gauge(
            "raysight_train_accuracy",
            description="Top-1 accuracy of the last epoch, by split (train, val).",
            tag_keys=(*_TAGS, "split"),
        )
        self._samples = metrics.Counter(
            "raysight_train_samples_total",
            description="Training samples processed, all workers together.",
            tag_keys=_TAGS,
        )
        self._epochs = metrics.Counter(
            "raysight_train_epochs_total",
            description="Training epochs completed.",
            tag_keys=_TAGS,
        )

    def record(self, stats: EpochStats, times: EpochTimes) -> None:
        """Publish one epoch's numbers."""
        held = self._held
        held.set(self._throughput, stats.samples_per_second, self._tags)
        held.set(self._epoch_seconds, stats.seconds, self._tags)
        held.set(self._wall_seconds, times.wall, self._tags)
        for phase, seconds in {**times.parts(), "other": times.other}.items():
            held.set(self._phase_seconds, seconds, {**self._tags, "phase": phase})
        for split, loss, acc in (
            ("train", stats.train_loss, stats.train_accuracy),
            ("val", stats.val_loss, stats.val_accuracy),
        ):
            held.set(self._loss, loss, {**self._tags, "split": split})
            held.set(self._accuracy, acc, {**self._tags, "split": split})
        self._samples.inc(stats.samples, tags=self._tags)
        self._epochs.inc(1, tags=self._tags)

    def close(self) -> None:
        """The run is over: stop holding its gauges, which then leave the export."""
        self._refresher.stop()
