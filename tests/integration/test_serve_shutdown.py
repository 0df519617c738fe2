"""Shutdown under load: requests in flight when the application is removed are answered.

The model is an untrained ResNet-18 at 64x64 (a pass of 8 images takes most of a second on
this machine), so requests are still queued and computing when the removal starts.

    RAYSIGHT_RELIABILITY_OUT=shutdown.json .venv/bin/pytest tests/integration/test_serve_shutdown.py
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import pytest

from raysight._proto.inference import grpc_service_pb2 as pb
from raysight._proto.inference import grpc_service_pb2_grpc as pb_grpc
from raysight.serve import runner
from raysight.serve.settings import ServeSettings
from tests.conftest import RayCluster, free_port
from tests.integration.serving import stop_serve, untrained_checkpoint

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SHAPE = (3, 64, 64)
IN_FLIGHT = 6  # requests of 4 images each: three passes of 8


def test_removing_the_application_answers_the_requests_in_flight(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    checkpoint = untrained_checkpoint(tmp_path / "slow", "resnet18", SHAPE)
    settings = ServeSettings(checkpoint=str(checkpoint), max_batch_size=8)
    port = free_port()
    images = np.random.default_rng(0).random((4, *SHAPE), dtype=np.float32)
    request = pb.ModelInferRequest(model_name="resnet18-untrained")
    request.inputs.add(name="images", datatype="FP32", shape=list(images.shape))
    request.raw_input_contents.append(images.tobytes())
    codes: list[str] = []
    finished: list[float] = []
    try:
        runner.deploy(runner.serve_config(settings, grpc_port=port, http_port=free_port()))
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            stub.ModelInfer(request, timeout=60)  # warm: the first pass allocates

            def call() -> None:
                try:
                    stub.ModelInfer(request, timeout=60)
                    codes.append("OK")
                except grpc.RpcError as exc:
                    codes.append(exc.code().name)
                finished.append(time.monotonic())

            callers = [threading.Thread(target=call) for _ in range(IN_FLIGHT)]
            for caller in callers:
                caller.start()
            time.sleep(0.3)  # sequencing: the requests have reached the replica
            removing = time.monotonic()
            runner.remove()
            removed = time.monotonic()
            for caller in callers:
                caller.join(timeout=60)
    finally:
        stop_serve(ray_cluster.dashboard_url)
    figures = {
        "in_flight": IN_FLIGHT,
        "codes": dict(Counter(codes)),
        "last_answer_after_removal_began_s": round(max(finished) - removing, 2),
        "removal_s": round(removed - removing, 2),
    }
    if out := os.environ.get("RAYSIGHT_RELIABILITY_OUT"):  # the figures of docs/reliability.md
        Path(out).write_text(json.dumps(figures, indent=2))
    assert codes == ["OK"] * IN_FLIGHT, figures
