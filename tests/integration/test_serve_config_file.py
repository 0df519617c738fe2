"""services/serve.yaml works with Ray's own `serve run`, unchanged but for ports and path."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from raysight.client import ImageClient
from raysight.cluster import short_temp_dir
from raysight.data import load_arrays
from tests.conftest import REPO, free_port
from tests.integration.serving import digits_checkpoint, png, wait_serving

pytestmark = [pytest.mark.integration, pytest.mark.slow]


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
    # This `serve run` starts its own cluster: give it a private temp dir whose path leaves
    # room for Ray's unix sockets, wherever the checkout is.
    ray_tmp = short_temp_dir("rs-serve-run-")
    env["RAY_TMPDIR"] = str(ray_tmp)
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "serve"), "run", str(path)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, stopped as a whole below
    )
    try:
        wait_serving(f"127.0.0.1:{grpc_port}", process)
        with ImageClient(f"127.0.0.1:{grpc_port}") as client:
            result = client.classify(png(_first_test_digit()), top_k=2)
        assert result.model_name == "convnet-digits"
        assert len(result.labels) == 2
    finally:
        os.killpg(process.pid, signal.SIGINT)  # as Ctrl-C: serve run then shuts Serve down
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _first_test_digit() -> np.ndarray:
    """(8, 8) uint8 pixels of the first test digit."""
    return load_arrays("digits", None, "test").images[0][0]
