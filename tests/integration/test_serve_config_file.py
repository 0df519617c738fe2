"""services/serve.yaml works with Ray's own `serve run`, unchanged but for ports and path."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from raysight.client import ImageClient
from raysight.data import load_arrays
from tests.conftest import REPO, free_port
from tests.integration.serving import digits_checkpoint, png

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _wait_serving(target: str, process: subprocess.Popen, timeout: float = 180) -> None:
    stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(target))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "serve run exited early"
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        time.sleep(1)
    raise AssertionError(f"{target} never reported SERVING")


def test_serve_run_with_the_repository_config(tmp_path: Path) -> None:
    checkpoint = digits_checkpoint(tmp_path / "ckpt", seed=0, epochs=2)
    config = yaml.safe_load((REPO / "services" / "serve.yaml").read_text())
    grpc_port, http_port = free_port(), free_port()
    config["grpc_options"]["port"] = grpc_port
    config["http_options"]["port"] = http_port
    config["applications"][0]["deployments"][0]["user_config"]["checkpoint"] = str(checkpoint)
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))

    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    env["RAY_TMPDIR"] = str(REPO / ".tmp")  # this `serve run` starts its own cluster
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "serve"), "run", str(path)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, stopped as a whole below
    )
    try:
        _wait_serving(f"127.0.0.1:{grpc_port}", process)
        with ImageClient(f"127.0.0.1:{grpc_port}") as client:
            result = client.classify(png(_first_test_digit()), top_k=2)
        assert result.model_name == "convnet-digits"
        assert len(result.labels) == 2
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _first_test_digit() -> np.ndarray:
    """(8, 8) uint8 pixels of the first test digit."""
    return load_arrays("digits", None, "test").images[0][0]
