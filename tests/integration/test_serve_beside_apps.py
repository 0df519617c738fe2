"""raysight on a cluster whose Serve already runs another application: deploying and
swapping raysight leaves that application running, its replicas untouched."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

from raysight._proto.raysight.v1 import image_service_pb2 as image_pb
from raysight._proto.raysight.v1 import image_service_pb2_grpc as image_grpc
from raysight.client import ImageClient
from raysight.data import load_arrays
from raysight.serve import runner
from raysight.serve.runner import DeployError
from raysight.serve.settings import ServeSettings
from tests.conftest import INGRESS, RayCluster, free_port
from tests.integration.serving import digits_checkpoint, png, stop_serve

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OTHER = "other"
# A trivial HTTP application, as someone else's team might run beside raysight. It takes no
# CPU so that it fits beside raysight's replica on the session's 2-CPU cluster.
OTHER_MODULE = """
from ray import serve


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Other:
    def __call__(self, request) -> str:
        return "other says hello"


app = Other.bind()
"""
# With two applications both ingress modes route gRPC by this metadata alone.
TO_RAYSIGHT = (("application", runner.APP_NAME),)


@dataclass(frozen=True)
class Beside:
    """The session cluster's Serve, running the other application alone at first."""

    client: ServeSubmissionClient  # Serve's config API
    settings: ServeSettings  # raysight's first user_config
    grpc_port: int
    http_port: int
    other: dict[str, Any]  # the other application's details once it ran

    def config(self, settings: ServeSettings | None = None, **ports: int) -> dict[str, Any]:
        """raysight's Serve config, on this Serve's ports unless told."""
        ports = {"grpc_port": self.grpc_port, "http_port": self.http_port, **ports}
        return runner.serve_config(settings or self.settings, **ports)


@pytest.fixture(scope="module")
def beside(ray_cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Beside]:
    """Serve started with raysight's options, as on a cluster set up for raysight, and the
    other application; Serve is shut down at the end.

    Serve's ports are fixed while it runs, and the other serving tests start it afresh with
    ports of their own: so it must not run before these tests, nor after them.
    """

    client = ServeSubmissionClient(ray_cluster.dashboard_url)
    assert not runner.serve_running(client.get_serve_details()), (
        "Serve already runs on the session cluster: the test that started it should shut "
        "it down (serving.stop_serve) in its teardown"
    )
    root = tmp_path_factory.mktemp("beside")
    checkpoint = digits_checkpoint(root / "ckpt", seed=0, epochs=2)
    settings = ServeSettings(checkpoint=str(checkpoint), top_k=3)
    grpc_port, http_port = free_port(), free_port()
    config = runner.serve_config(settings, grpc_port=grpc_port, http_port=http_port)
    try:
        _deploy_other(client, config, root / "other")
        yield Beside(client, settings, grpc_port, http_port, _app(client, OTHER))
    finally:
        stop_serve(ray_cluster.dashboard_url)


def test_what_the_running_serve_cannot_do_is_refused_before_any_change(
    beside: Beside,
) -> None:
    before = beside.client.get_serve_details()["applications"]
    with pytest.raises(DeployError, match=f"its gRPC port is {beside.grpc_port}"):
        runner.deploy(beside.config(grpc_port=free_port()))
    wrong_mode = "proxy" if INGRESS == "haproxy" else "haproxy"
    with pytest.raises(DeployError, match=f"runs the {INGRESS} ingress, not {wrong_mode}"):
        runner.deploy(beside.config(), ingress=wrong_mode)
    assert beside.client.get_serve_details()["applications"].keys() == before.keys()
    _assert_untouched(beside)


def test_deploy_and_swap_keep_the_other_application(beside: Beside) -> None:
    deployed = runner.deploy(beside.config(), ingress=INGRESS)
    assert deployed == runner.Deployed(ingress=INGRESS, neighbours=(OTHER,))
    _assert_untouched(beside)
    assert _labels(beside.grpc_port) == 3
    assert _http_get(beside.http_port, "/other") == "other says hello"
    # Without the metadata, the ingress cannot tell which application a call is for.
    with pytest.raises(grpc.RpcError) as err:
        _classify(beside.grpc_port, metadata=())
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # raysight's own client (and `raysight predict --application raysight`) sends it.
    pixels = load_arrays("digits", None, "test").images[0][0]  # (8, 8) uint8
    with ImageClient(f"127.0.0.1:{beside.grpc_port}", application=runner.APP_NAME) as client:
        assert len(client.classify(png(pixels), top_k=2).labels) == 2
        assert [len(c.labels) for c in client.classify_many([png(pixels)] * 2, top_k=1)] == [1, 1]

    # A checkpoint swap is a changed user_config, applied in place: again beside the other.
    swapped = ServeSettings.from_dict({**beside.settings.to_dict(), "top_k": 2})
    runner.deploy(beside.config(swapped))
    _assert_untouched(beside)
    assert _labels(beside.grpc_port) == 2


def _deploy_other(client: ServeSubmissionClient, config: dict[str, Any], where: Path) -> None:
    """Start Serve with raysight's options (as a cluster set up for raysight has it) and
    the other application alone, and wait until it runs."""
    where.mkdir()
    (where / "beside_other.py").write_text(OTHER_MODULE)
    other = {
        "name": OTHER,
        "route_prefix": "/other",
        "import_path": "beside_other:app",
        # A local cluster's workers share this machine's files; a real one would use a URI.
        "runtime_env": {"env_vars": {"PYTHONPATH": str(where)}},
    }
    client.deploy_applications({**config, "applications": [other]})
    deadline = time.monotonic() + 120
    while _app(client, OTHER).get("status") != "RUNNING":
        assert _app(client, OTHER).get("status") != "DEPLOY_FAILED", _app(client, OTHER)
        assert time.monotonic() < deadline, f"{OTHER} never ran: {_app(client, OTHER)}"
        time.sleep(1)


def _app(client: ServeSubmissionClient, name: str) -> dict[str, Any]:
    return client.get_serve_details()["applications"].get(name, {})


def _assert_untouched(beside: Beside) -> None:
    """The other application still runs its submitted config on the very same replicas."""
    before, now = beside.other, _app(beside.client, OTHER)
    assert now["status"] == "RUNNING"
    assert now["deployed_app_config"] == before["deployed_app_config"]
    assert _replica_ids(now) == _replica_ids(before)


def _replica_ids(app: dict[str, Any]) -> set[str]:
    return {r["replica_id"] for d in app["deployments"].values() for r in d["replicas"]}


def _labels(port: int) -> int:
    """How many labels raysight answers for a digit when the request leaves top_k to it,
    once its gRPC health says SERVING."""
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    health = health_pb2_grpc.HealthStub(channel)
    reply = health.Check(health_pb2.HealthCheckRequest(), metadata=TO_RAYSIGHT, timeout=30)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    result = _classify(port, metadata=TO_RAYSIGHT)
    assert result.model_name == "convnet-digits"
    return len(result.predictions)


def _classify(port: int, metadata: tuple[tuple[str, str], ...]) -> image_pb.ClassifyResponse:
    pixels = load_arrays("digits", None, "test").images[0][0]  # (8, 8) uint8
    stub = image_grpc.ImageServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    return stub.Classify(image_pb.ClassifyRequest(image=png(pixels)), metadata=metadata, timeout=30)


def _http_get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as reply:
        return reply.read().decode()
