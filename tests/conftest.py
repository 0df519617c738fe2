"""Shared fixtures: paths, the shared datasets, a watch on Pillow's image readers, and one
real Ray cluster per test session."""

from __future__ import annotations

import os
import shutil
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from raysight.ports import free_loopback_port

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MNIST_DIR = SHARED / "datasets" / "mnist"

# Ray workers start at nice 15 by default and starve beside the test process on 2 cores.
os.environ.setdefault("RAY_worker_niceness", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a test never reports usage anywhere
# As the raysight command sets it (src/raysight/__init__.py); before any test module imports
# Ray, which reads it once.
os.environ.setdefault("RAY_AUTH_MODE", "token")

# Serve's ingress for this session: "proxy" (the classic gRPC proxy) or "haproxy" (HAProxy in
# front of direct-ingress replicas). One Ray cluster has one mode, so the serving suite runs
# again under the other mode in a subprocess (tests/integration/test_serve_ingress_modes.py).
INGRESS = os.environ.get("RAYSIGHT_TEST_INGRESS", "haproxy")
if INGRESS == "haproxy":
    os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
# The classic proxy's cap on gRPC messages, as `raysight serve` sets it for its cluster (the
# replicas get theirs from the Serve config).
os.environ.setdefault("RAY_SERVE_GRPC_MAX_MESSAGE_SIZE", str(64 * 1024 * 1024))


def free_port() -> int:
    """An unused TCP port on the loopback interface, outside the range a starting Ray
    cluster's processes bind at random (raysight.ports.free_loopback_port)."""
    return free_loopback_port()


def scrape_metrics(port: int, ready: Callable[[str], bool], timeout: float = 60.0) -> str:
    """Ray's Prometheus text from 127.0.0.1:`port`, once `ready(text)` holds or `timeout`
    passes (Ray exports application metrics every few seconds, so they lag)."""
    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        if ready(text) or time.monotonic() > deadline:
            return text
        time.sleep(2)


def require_tool(name: str) -> str:
    """The path of command `name`, or a skip that says why.

    `make test` installs every tool the tests use and sets RAYSIGHT_REQUIRE_TOOLS, which
    turns the skip into a failure: CI never passes by skipping a check.
    """
    path = shutil.which(name)
    if path is None:
        reason = f"{name} is not installed (make tools installs it)"
        if os.environ.get("RAYSIGHT_REQUIRE_TOOLS"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@dataclass(frozen=True)
class RayCluster:
    """The session's local Ray cluster."""

    metrics_port: int
    dashboard_url: str  # job submission and the state API
    gcs_address: str  # what RAY_ADDRESS names for drivers joining this cluster


# The formats the image decoders read: serving's default limits and image folders alike.
DECODED_FORMATS = frozenset({"PNG", "JPEG", "WEBP"})


@pytest.fixture
def other_readers(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Pillow's readers of every other format, each made to record its name when asked
    whether it takes a file (and to decline); returns the names as they are asked."""
    Image.init()  # registers every reader now, so none is added after the patch
    asked: list[str] = []

    def declining(name: str) -> Callable[[bytes], bool]:
        def accept(prefix: bytes) -> bool:
            asked.append(name)
            return False

        return accept

    for name, (factory, _) in list(Image.OPEN.items()):
        if name not in DECODED_FORMATS:
            monkeypatch.setitem(Image.OPEN, name, (factory, declining(name)))
    return asked


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    """A real local Ray cluster on 127.0.0.1, started once and always shut down.

    Like every local cluster raysight starts, it keeps its files in a private short-path
    temp dir, removed when it stops, whatever the checkout's path.
    """
    import ray

    from raysight.cluster import connected

    metrics_port, dashboard_port = free_port(), free_port()
    os.environ.pop("RAY_ADDRESS", None)
    os.environ.pop("RAYSIGHT_RAY_TMPDIR", None)
    with connected(num_cpus=2, metrics_port=metrics_port, dashboard_port=dashboard_port):
        yield RayCluster(
            metrics_port,
            f"http://127.0.0.1:{dashboard_port}",
            ray.get_runtime_context().gcs_address,
        )


@pytest.fixture
def mnist_dir() -> Path:
    """The real MNIST files in ../shared, or a skip that says why."""
    if not (MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"real MNIST not found at {MNIST_DIR} (../shared is absent)")
    return MNIST_DIR
