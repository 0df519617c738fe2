"""Deploy the gRPC application the way a RayService does: a declarative Serve config.

Going through the config (rather than `serve.run` of a freshly bound app) matters for
checkpoint swaps: Serve treats a changed `user_config` as a lightweight update and calls
`reconfigure` on the running replicas, which load and verify the new checkpoint while the
old one keeps serving. A re-bound app would instead start new replicas.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import ray
from ray.dashboard.modules.serve.sdk import ServeSubmissionClient
from ray.serve.schema import ApplicationStatus

from raysight.errors import RaysightError
from raysight.serve.grpc_services import GRPC_SERVICER_FUNCTIONS
from raysight.serve.settings import ServeSettings

logger = logging.getLogger(__name__)

APP_NAME = "raysight"
IMPORT_PATH = "raysight.serve.app:app_builder"
DEPLOYMENT = "InferenceServer"


class DeployError(RaysightError):
    """Serve could not bring the application up; the message has Serve's reason."""


def serve_config(
    settings: ServeSettings,
    *,
    grpc_port: int = 9000,
    http_port: int = 8000,
    replicas: int = 1,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    max_ongoing_requests: int = 64,
    max_queued_requests: int = 256,
    autoscaling: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The Serve config document (as in services/serve.yaml and a RayService's serveConfigV2).

    Args:
        settings: the replicas' user_config.
        grpc_port: the gRPC ingress port.
        http_port: Serve's HTTP port, bound to 127.0.0.1 (routes and Serve's own health).
        replicas: a fixed replica count, unless `autoscaling` is given.
        num_cpus, num_gpus: per replica; a fractional GPU shares a card.
        max_ongoing_requests: per replica; must exceed the batch size for batches to fill.
        max_queued_requests: waiting requests beyond which Serve answers RESOURCE_EXHAUSTED
            (clients back off) instead of letting latency grow without bound.
        autoscaling: a Serve autoscaling_config (min_replicas, max_replicas, ...).
    """
    deployment: dict[str, Any] = {
        "name": DEPLOYMENT,
        "max_ongoing_requests": max_ongoing_requests,
        "max_queued_requests": max_queued_requests,
        "ray_actor_options": {"num_cpus": num_cpus, "num_gpus": num_gpus},
        "user_config": settings.to_dict(),
    }
    if autoscaling:
        deployment["autoscaling_config"] = autoscaling
    else:
        deployment["num_replicas"] = replicas
    return {
        "http_options": {"host": "127.0.0.1", "port": http_port},
        "grpc_options": {
            "port": grpc_port,
            "grpc_servicer_functions": GRPC_SERVICER_FUNCTIONS,
            "enable_reflection": False,  # ours knows raysight's descriptors (grpc_services)
        },
        "applications": [
            {
                "name": APP_NAME,
                "route_prefix": "/",
                "import_path": IMPORT_PATH,
                # No args: a changed `args` rebuilds the app (new replicas), while a changed
                # user_config is applied in place by reconfigure.
                "args": {},
                "deployments": [deployment],
            }
        ],
    }


def deploy(config: dict[str, Any], timeout_s: float = 180.0) -> None:
    """Apply `config` to the connected cluster and wait until every replica runs it.

    Raises:
        DeployError: the application failed to deploy (e.g. the first checkpoint is bad),
            with Serve's message, or did not come up within `timeout_s`.
    """
    # Ray 2.60 clusters use token authentication; the dashboard API wants the token too.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    client = ServeSubmissionClient(_dashboard_url())
    client.deploy_applications(config)
    wanted = config["applications"][0]["deployments"][0]["user_config"]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        app = client.get_serve_details().get("applications", {}).get(APP_NAME, {})
        status = app.get("status")
        if status == ApplicationStatus.DEPLOY_FAILED:
            raise DeployError(f"serving failed to start: {app.get('message', '')}")
        deployment = app.get("deployments", {}).get(DEPLOYMENT, {})
        current = deployment.get("deployment_config", {}).get("user_config")
        if (
            status == ApplicationStatus.RUNNING
            and current == wanted
            and (deployment.get("status") == "HEALTHY")
        ):
            logger.info("application %s is running", APP_NAME)
            return
        time.sleep(0.5)
    raise DeployError(f"serving did not start within {timeout_s:.0f}s")


def _dashboard_url() -> str:
    url = ray._private.worker.get_dashboard_url()
    if not url:
        raise DeployError("the Ray cluster has no dashboard; Serve's config API lives there")
    return url if "://" in url else f"http://{url}"
