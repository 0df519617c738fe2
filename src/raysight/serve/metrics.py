"""Serving metrics, declared once, exported through Ray's metrics endpoint.

Ray's exporter prefixes application metrics with `ray_`, so Prometheus sees e.g.
`ray_raysight_requests_total`. Labels are bounded: model, version (one per checkpoint),
method (the RPC), code (gRPC status name), reason (a fixed vocabulary) and class (the
checkpoint's class names); never a request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ray.util import metrics

from raysight.gauges import HeldGauges
from raysight.serve.metric_buffer import MetricBuffer
from raysight.serve.quality import BatchQuality

# 100 us to 10 s, roughly 1-2.5-5 per decade: a forward pass on CPU is milliseconds, a
# queue under overload can be seconds.
LATENCY_BUCKETS = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
]  # fmt: skip
BATCH_BUCKETS = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]
# Top-1 softmax probability, finer near 1 where a healthy model's mass sits: a shift from
# the 0.99 bucket to the 0.9-0.95 one is the early sign of inputs unlike the training data.
# Query the buckets (e.g. the share at or below 0.5), not _sum / _count: Ray 2.60 rebuilds
# exported histograms from bucket counts, so _sum counts each value as its bucket's midpoint
# (and anything above 0.99 as 1.98) and the mean it gives is not a probability.
CONFIDENCE_BUCKETS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]


class ServingMetrics:
    """The Prometheus view of one replica."""

    def __init__(self) -> None:
        # Recorded per request or per pass on the event loop, so buffered and handed to Ray
        # from a thread (serve/metric_buffer.py); the gauges and checkpoint failures, rare,
        # go to Ray at once.
        self._buffer = MetricBuffer()
        self.requests = self._buffer.counter(
            "raysight_requests_total",
            description="RPCs answered, by model, version, method and gRPC status code.",
            tag_keys=("model", "version", "method", "code"),
        )
        self.latency = self._buffer.histogram(
            "raysight_request_duration_seconds",
            description="Time from an RPC's arrival at the replica to its answer.",
            boundaries=LATENCY_BUCKETS,
            tag_keys=("model", "version", "method", "code"),
        )
        self.images = self._buffer.counter(
            "raysight_images_total",
            description="Images classified (OIP batch rows and image-API images).",
            tag_keys=("model", "version", "method"),
        )
        self.batch_size = self._buffer.histogram(
            "raysight_batch_size",
            description="Images per forward pass after dynamic batching.",
            boundaries=BATCH_BUCKETS,
            tag_keys=("model", "version"),
        )
        self.queue_wait = self._buffer.histogram(
            "raysight_queue_wait_seconds",
            description="Time a request waited for its batch to start.",
            boundaries=LATENCY_BUCKETS,
            tag_keys=("model", "version"),
        )
        self.compute = self._buffer.histogram(
            "raysight_compute_seconds",
            description="Time of one batched forward pass.",
            boundaries=LATENCY_BUCKETS,
            tag_keys=("model", "version"),
        )
        self.rejected = self._buffer.counter(
            "raysight_rejected_inputs_total",
            description="Requests refused before inference, by reason.",
            tag_keys=("model", "reason"),
        )
        self.model_info = metrics.Gauge(
            "raysight_model_info",
            description="1 for the checkpoint a replica serves (version, weights hash).",
            tag_keys=("model", "version", "checkpoint_sha256"),
        )
        self.dropped = self._buffer.counter(
            "raysight_dropped_requests_total",
            description=(
                "Requests whose caller went away (a passed gRPC deadline, a cancel) while "
                "they waited for a forward pass: dropped before compute."
            ),
            tag_keys=("model", "version"),
        )
        self.checkpoint_failures = metrics.Counter(
            "raysight_checkpoint_load_failures_total",
            description="Checkpoint swaps refused (bad or unreadable checkpoint).",
            tag_keys=("model",),
        )
        # The gauges are held and set again on every health check (`refresh`): Ray drops a
        # gauge left unset for ~25 s, and these change only when a checkpoint loads.
        self._held = HeldGauges()
        self.confidence = self._buffer.histogram(
            "raysight_prediction_confidence",
            description="Top-1 softmax probability of each classified image.",
            boundaries=CONFIDENCE_BUCKETS,
            tag_keys=("model", "version"),
        )
        self.predictions = self._buffer.counter(
            "raysight_predictions_total",
            description="Images classified, by the class of their top-1 prediction.",
            tag_keys=("model", "version", "class"),
        )
        # Held for the version served; a replaced version's priors stop being held and leave
        # the export. Select the live version by joining on raysight_model_info == 1.
        self.class_prior = metrics.Gauge(
            "raysight_model_class_prior",
            description=(
                "Fraction of the training images in each class, from the checkpoint's "
                "manifest; absent for checkpoints that do not record it."
            ),
            tag_keys=("model", "version", "class"),
        )

    def record_predictions(self, tags: Mapping[str, str], quality: BatchQuality) -> None:
        """Count one forward pass's predictions: a confidence per row, a count per class.

        Args:
            tags: The batch's model and version.
            quality: From `top1_quality` on the batch's logits.
        """
        model_tags = dict(tags)
        for confidence in quality.confidences.tolist():
            self.confidence.observe(confidence, tags=model_tags)
        for name, rows in quality.counts.items():
            self.predictions.inc(rows, tags={**tags, "class": name})

    def set_class_prior(
        self, tags: Mapping[str, str], class_names: Sequence[str], frequencies: Sequence[float]
    ) -> None:
        """Export a checkpoint's training class frequencies, every class (zeros included)."""
        for name, frequency in zip(class_names, frequencies, strict=True):
            self._held.set(self.class_prior, frequency, {**tags, "class": name})

    def set_serving(self, info_tags: Mapping[str, str]) -> None:
        """Mark a checkpoint as the one this replica serves (raysight_model_info 1)."""
        self._held.set(self.model_info, 1, info_tags)

    def set_replaced(
        self, info_tags: Mapping[str, str], tags: Mapping[str, str], class_names: Sequence[str]
    ) -> None:
        """Mark a checkpoint as no longer served: model_info 0, then both its model_info and
        its class priors leave the export."""
        self._held.release(self.model_info, info_tags)
        self.model_info.set(0, tags=dict(info_tags))
        for name in class_names:
            self._held.release(self.class_prior, {**tags, "class": name})

    def refresh(self) -> None:
        """Set the held gauges again; call more often than every ~20 s."""
        self._held.refresh()
