"""Triton-style cumulative statistics of one replica, the answer to ModelStatistics."""

from __future__ import annotations

import time

from raysight._proto.inference import grpc_service_pb2 as pb
from raysight.serve.model import ServedModel


class Statistics:
    """Counts since the replica started: requests, images and forward passes."""

    def __init__(self) -> None:
        self.success_count = 0
        self.success_ns = 0
        self.fail_count = 0
        self.fail_ns = 0
        self.inference_count = 0  # images
        self.execution_count = 0  # forward passes
        self.compute_ns = 0
        self.last_inference_ms = 0
        # Images per pass -> (passes, ns): what the batcher actually formed.
        self.batches: dict[int, tuple[int, int]] = {}

    def record_request(self, ok: bool, seconds: float) -> None:
        """Count one OIP inference request, answered or failed, and its time."""
        if ok:
            self.success_count += 1
            self.success_ns += int(seconds * 1e9)
        else:
            self.fail_count += 1
            self.fail_ns += int(seconds * 1e9)
        self.last_inference_ms = int(time.time() * 1000)

    def record_batch(self, images: int, seconds: float) -> None:
        """Count one forward pass of `images` rows that took `seconds`."""
        self.inference_count += images
        self.execution_count += 1
        self.compute_ns += int(seconds * 1e9)
        count, ns = self.batches.get(images, (0, 0))
        self.batches[images] = (count + 1, ns + int(seconds * 1e9))

    def to_proto(self, model: ServedModel) -> pb.ModelStatistics:
        return pb.ModelStatistics(
            name=model.name,
            version=model.version,
            last_inference=self.last_inference_ms,
            inference_count=self.inference_count,
            execution_count=self.execution_count,
            inference_stats=pb.InferStatistics(
                success=pb.StatisticDuration(count=self.success_count, ns=self.success_ns),
                fail=pb.StatisticDuration(count=self.fail_count, ns=self.fail_ns),
                compute_infer=pb.StatisticDuration(count=self.execution_count, ns=self.compute_ns),
            ),
            batch_stats=[
                pb.InferBatchStatistics(
                    batch_size=size, compute_infer=pb.StatisticDuration(count=count, ns=ns)
                )
                for size, (count, ns) in sorted(self.batches.items())
            ],
        )
