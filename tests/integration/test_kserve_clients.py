"""KServe's own Python clients, unchanged, against raysight over gRPC and REST.

kserve is not one of raysight's dependencies (it brings a server of its own and pins much
of what Ray pins), so its clients run in a virtualenv of their own: the Python named by
RAYSIGHT_KSERVE_PYTHON (`make test` builds .venv-kserve and names it), else .venv-kserve's
or the serving bench's (runs/bench/venvs/kserve). Without one the test skips, or fails
under `make test`.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from raysight.data import load_arrays
from raysight.engine import Engine
from raysight.serve import runner
from raysight.serve.settings import ServeSettings
from tests.conftest import RayCluster, free_port
from tests.integration.serving import digits_checkpoint, png, stop_serve

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
MODEL = "convnet-digits"


def _kserve_python() -> Path:
    named = os.environ.get("RAYSIGHT_KSERVE_PYTHON")
    candidates = [Path(named)] if named else [
        REPO / ".venv-kserve/bin/python", REPO / "runs/bench/venvs/kserve/bin/python"
    ]  # fmt: skip
    for python in candidates:
        if python.exists():
            return python
    reason = f"no Python with kserve at {', '.join(map(str, candidates))} (make kserve-client)"
    if os.environ.get("RAYSIGHT_REQUIRE_TOOLS"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def answers(
    ray_cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[dict, np.ndarray]]:
    python = _kserve_python()
    root = tmp_path_factory.mktemp("kserve-clients")
    checkpoint = digits_checkpoint(root / "ckpt", seed=0)
    images = load_arrays("digits", None, "test").images[:3]  # (3, 1, 8, 8) uint8
    files = []
    for i, pixels in enumerate(images):
        files.append(root / f"{i}.png")
        files[-1].write_bytes(png(pixels[0]))
    expected = Engine.from_directory(checkpoint).classify_pixels(images).argmax(1)
    port, http_port = free_port(), free_port()
    settings = ServeSettings(checkpoint=str(checkpoint), rest=True)
    try:
        runner.deploy(runner.serve_config(settings, grpc_port=port, http_port=http_port))
        run = subprocess.run(
            [
                str(python),
                str(Path(__file__).with_name("kserve_client_run.py")),
                f"127.0.0.1:{port}",
                f"http://127.0.0.1:{http_port}",
                MODEL,
                *map(str, files),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        yield json.loads(run.stdout.strip().splitlines()[-1]), expected
    finally:
        stop_serve(ray_cluster.dashboard_url)


def test_health_over_both_transports(answers: tuple[dict, np.ndarray]) -> None:
    got, _ = answers
    assert got["grpc_health"] == [True, True, True]
    assert got["rest_health"] == [True, True, True]


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_tensors_and_image_files_are_answered(
    answers: tuple[dict, np.ndarray], transport: str
) -> None:
    got, expected = answers
    for contents in ("raw", "typed"):
        tensors = got[f"{transport}_fp32_{contents}"]
        assert tensors["id"] == "r1"
        assert tensors["shapes"] == {"logits": [2, 10], "probabilities": [2, 10]}
    for contents in ("raw", "typed"):  # typed: the files as base64 text
        files = got[f"{transport}_bytes_{contents}"]
        assert files["shapes"]["probabilities"] == [3, 10]
        assert files["top"] == expected.tolist()  # the model's own answers for the digits
