"""Both Serve ingress modes: the serving suites (gRPC and REST) again, under the mode this
session is not in."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import INGRESS, REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OTHER = "proxy" if INGRESS == "haproxy" else "haproxy"


@pytest.mark.skipif(
    os.environ.get("RAYSIGHT_TEST_OTHER_INGRESS") == "1", reason="already the second run"
)
def test_serving_suite_passes_under_the_other_ingress_mode() -> None:
    env = {**os.environ, "RAYSIGHT_TEST_INGRESS": OTHER, "RAYSIGHT_TEST_OTHER_INGRESS": "1"}
    env.pop("RAY_SERVE_ENABLE_HA_PROXY", None)
    env.pop("RAY_ADDRESS", None)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/integration/test_serve_grpc.py",
            "tests/integration/test_serve_rest.py",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr[-2000:]
    assert run.returncode == 0, f"{OTHER} ingress: {summary}\n{run.stdout[-4000:]}"
    assert "29 passed" in summary
