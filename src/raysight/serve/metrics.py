"""Serving metrics, declared once, exported through Ray's metrics endpoint.

Ray's exporter prefixes application metrics with `ray_`, so Prometheus sees e.g.
`ray_raysight_requests_total`. Labels are bounded: model, version (one per checkpoint),
method (the RPC), code (gRPC status name) and reason (a fixed vocabulary); never a request.
"""

from __future__ import annotations

from ray.util import metrics

# 100 us to 10 s, roughly 1-2.5-5 per decade: a forward pass on CPU is milliseconds, a
# queue under overload can be seconds.
LATENCY_BUCKETS = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
]  # fmt: skip
BATCH_BUCKETS = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]


class ServingMetrics:
    """The Prometheus view of one replica."""

    def __init__(self) -> None:
        self.requests = metrics.Counter(
            "raysight_requests_total",
            description="RPCs answered, by model, version, method and gRPC status code.",
            tag_keys=("model", "version", "method", "code"),
        )
        self.latency = metrics.Histogram(
            "raysight_request_duration_seconds",
            description="Time from an RPC's arrival at the replica to its answer.",
            boundaries=LATENCY_BUCKETS,
            tag_keys=("model", "version", "method", "code"),
        )
        self.images = metrics.Counter(
            "raysight_images_total",
            description="Images classified (OIP batch rows and image-API images).",
            tag_keys=("model", "version", "method"),
        )
        self.batch_size = metrics.Histogram(
            "raysight_batch_size",
            description="Images per forward pass after dynamic batching.",
            boundaries=BATCH_BUCKETS,
            tag_keys=("model", "version"),
        )
        self.queue_wait = metrics.Histogram(
            "raysight_queue_wait_seconds",
            description="Time a request waited for its batch to start.",
            boundaries=LATENCY_BUCKETS,
            tag_keys=("model", "version"),
        )
        self.compute = metrics.Histogram(
            "raysight_compute_seconds",
            description="Time of one batched forward pass.",
            boundaries=LATENCY_BUCKETS,
            tag_keys=("model", "version"),
        )
        self.rejected = metrics.Counter(
            "raysight_rejected_inputs_total",
            description="Requests refused before inference, by reason.",
            tag_keys=("model", "reason"),
        )
        self.model_info = metrics.Gauge(
            "raysight_model_info",
            description="1 for the checkpoint a replica serves (version, weights hash).",
            tag_keys=("model", "version", "checkpoint_sha256"),
        )
        self.checkpoint_failures = metrics.Counter(
            "raysight_checkpoint_load_failures_total",
            description="Checkpoint swaps refused (bad or unreadable checkpoint).",
            tag_keys=("model",),
        )
