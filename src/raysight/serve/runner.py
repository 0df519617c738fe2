"""Deploy the gRPC application the way a RayService does: a declarative Serve config.

Going through the config (rather than `serve.run` of a freshly bound app) matters for
checkpoint swaps: Serve treats a changed `user_config` as a lightweight update and calls
`reconfigure` on the running replicas, which load and verify the new checkpoint while the
old one keeps serving. A re-bound app would instead start new replicas.

Serve's config API is declarative for the whole cluster: a submitted config replaces every
application an earlier config deployed. So `deploy` first reads what the cluster runs and
submits raysight's application beside the others, unchanged.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import ray
from ray.dashboard.modules.serve.sdk import ServeSubmissionClient
from ray.serve.schema import ApplicationStatus

from raysight.errors import RaysightError
from raysight.serve.grpc_services import GRPC_SERVICER_FUNCTIONS
from raysight.serve.settings import DEFAULT_MAX_MESSAGE_BYTES, ServeSettings, replica_env

logger = logging.getLogger(__name__)

APP_NAME = "raysight"
IMPORT_PATH = "raysight.serve.app:app_builder"
DEPLOYMENT = "InferenceServer"

INGRESS_BY_PROXY_CLASS = {"HAProxyManager": "haproxy", "ProxyActor": "proxy"}
"""The ingress mode each class of Serve's per-node proxy actor means. The controller picks
the class once, from RAY_SERVE_ENABLE_HA_PROXY in its own environment (the environment the
cluster was started with), so the running proxies are the one reliable witness."""

# Options Serve fixes when it starts: (section, key, how a person calls it).
_FIXED_OPTIONS = (
    ("grpc_options", "port", "gRPC port"),
    ("grpc_options", "enable_reflection", "Serve's built-in gRPC reflection"),
    ("http_options", "port", "HTTP port"),
)


class DeployError(RaysightError):
    """Serve could not bring the application up, or could not as asked; the message says
    why (with Serve's reason when Serve gave one) and what to do."""


@dataclass(frozen=True)
class Deployed:
    """How the deployed application is reached, as the cluster reports it."""

    ingress: str | None
    """The ingress mode, "haproxy" or "proxy"; None when no running proxy says which."""
    neighbours: tuple[str, ...]
    """The other applications on the cluster's Serve. With any, both ingress modes route
    gRPC by the `application` metadata alone, so clients must send `application: raysight`."""


REPLICA_CPUS = 1.0
"""CPUs a replica asks for unless told: Ray gives its torch as many threads."""
AUTO_REPLICAS_MAX = 8
"""The most replicas `auto_replicas` gives: each is a process with its own copy of the model
(about 0.6 GB resident for the MNIST convnet on CPU), so a large machine gets a bounded
number unless asked for more."""


def auto_replicas(resources: Mapping[str, float], num_cpus: float, num_gpus: float) -> int:
    """The replica count `raysight serve` picks for a cluster it started: one replica per
    `num_gpus` share of the cluster's GPUs, or on CPU one per `num_cpus` of its cores, at
    least 1 and at most AUTO_REPLICAS_MAX.

    A replica answers its RPCs on one event loop, under one interpreter lock, so it uses about
    one core: on the 2-core build machine one replica kept 0.95 of a core busy at 32
    concurrent callers while a quarter of the machine stood idle. There, with NCHW weights,
    a second replica answered 12% more unary and 25% more streamed requests; with the faster
    channels-last engine, whose load generator and HAProxy share the same 2 cores, it no
    longer beat one (docs/benchmarks.md). More cores than that give each replica its own.

    Args:
        resources: the cluster's resources (`ray.cluster_resources()`).
        num_cpus, num_gpus: what each replica asks for.
    """
    if num_gpus > 0:
        fitting = resources.get("GPU", 0.0) / num_gpus
    else:
        fitting = resources.get("CPU", 0.0) / num_cpus
    return max(1, min(AUTO_REPLICAS_MAX, int(fitting + 1e-9)))  # 0.7 / 0.1 is 6.999...


def serve_config(
    settings: ServeSettings,
    *,
    grpc_port: int = 9000,
    http_port: int = 8000,
    host: str = "127.0.0.1",
    replicas: int = 1,
    num_cpus: float = REPLICA_CPUS,
    num_gpus: float = 0.0,
    max_ongoing_requests: int = 64,
    max_queued_requests: int = 256,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    autoscaling: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The Serve config document (as in services/serve.yaml and a RayService's serveConfigV2).

    Args:
        settings: the replicas' user_config.
        grpc_port: the gRPC ingress port.
        http_port: Serve's HTTP port (the REST API, Serve's routes and its own health).
        host: the interface both ports listen on; 0.0.0.0 for every one.
        replicas: a fixed replica count, unless `autoscaling` is given.
        num_cpus, num_gpus: per replica; a fractional GPU shares a card.
        max_ongoing_requests: per replica; must exceed the batch size for batches to fill.
        max_queued_requests: waiting requests beyond which Serve answers RESOURCE_EXHAUSTED
            (clients back off) instead of letting latency grow without bound.
        max_message_bytes: the largest request (and answer) the replicas' gRPC servers
            take; a larger one is refused with RESOURCE_EXHAUSTED before it is parsed.
        autoscaling: a Serve autoscaling_config (min_replicas, max_replicas, ...).
    """
    deployment: dict[str, Any] = {
        "name": DEPLOYMENT,
        "max_ongoing_requests": max_ongoing_requests,
        "max_queued_requests": max_queued_requests,
        "ray_actor_options": {
            "num_cpus": num_cpus,
            "num_gpus": num_gpus,
            "runtime_env": {"env_vars": replica_env(max_message_bytes)},
        },
        "user_config": settings.to_dict(),
    }
    if autoscaling:
        deployment["autoscaling_config"] = autoscaling
    else:
        deployment["num_replicas"] = replicas
    return {
        "http_options": {"host": host, "port": http_port},
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


def deploy(
    config: dict[str, Any], timeout_s: float = 180.0, *, ingress: str | None = None
) -> Deployed:
    """Apply `config`'s raysight application to the connected cluster, beside its other
    applications, and wait until every replica runs it.

    Args:
        config: a document from `serve_config`.
        timeout_s: how long the replicas may take to come up.
        ingress: "haproxy" or "proxy" to insist on that ingress mode; None takes the
            cluster's. The mode is fixed when the cluster starts, so this only checks it.

    Raises:
        DeployError: the cluster's Serve cannot take the application as asked (see
            `merged_config`), runs the other ingress mode, or the application failed to
            deploy (e.g. the first checkpoint is bad), with Serve's message, or did not
            come up within `timeout_s`.
    """
    client = _client()
    details = client.get_serve_details()
    if serve_running(details):  # refuse before touching anything
        check_ingress(ingress, _ingress_mode(details))
    client.deploy_applications(merged_config(config, details))
    _wait_running(client, _our_app(config)["deployments"][0]["user_config"], timeout_s)
    details = client.get_serve_details()
    mode = _ingress_mode(details)
    try:
        check_ingress(ingress, mode)  # Serve may have started just now, in the other mode
    except DeployError:
        remove()
        raise
    return Deployed(ingress=mode, neighbours=neighbours(details))


def remove() -> None:
    """Delete raysight's application, and only it, when the cluster has it."""
    from ray import serve

    if APP_NAME in _client().get_serve_details().get("applications", {}):
        serve.delete(APP_NAME)


def merged_config(config: dict[str, Any], details: dict[str, Any]) -> dict[str, Any]:
    """The config to submit: `config`'s raysight application beside every other application
    the cluster runs from a config, each as it was submitted.

    Applications started with `serve.run` are left out: a submitted config never touches
    them. A running Serve keeps its proxy and HTTP/gRPC options (it cannot change them
    without a restart), so they are taken from `details`, after checking that raysight can
    be reached through them.

    Args:
        config: a document from `serve_config`.
        details: the cluster's Serve details (`ServeSubmissionClient.get_serve_details`).

    Raises:
        DeployError: another application holds raysight's route prefix, or the running
            Serve's ports, reflection or gRPC services differ from what `config` needs.
    """
    ours = _our_app(config)
    _check_route_prefix(ours, details)
    merged = dict(config)
    if serve_running(details):
        _check_fixed_options(config, details)
        for key in ("proxy_location", "http_options", "grpc_options", "target_capacity"):
            if details.get(key) is not None:
                merged[key] = details[key]
    merged["applications"] = [*_other_app_configs(details), ours]
    return merged


def serve_running(details: dict[str, Any]) -> bool:
    """Whether the cluster already runs a Serve controller (with its options fixed)."""
    return bool((details.get("controller_info") or {}).get("actor_id"))


def neighbours(details: dict[str, Any]) -> tuple[str, ...]:
    """The names of the applications other than raysight's, sorted."""
    return tuple(sorted(name for name in details.get("applications", {}) if name != APP_NAME))


def ingress_mode(proxy_class: str | None) -> str | None:
    """The ingress mode a proxy actor's class means; None for no proxy or an unknown class."""
    return INGRESS_BY_PROXY_CLASS.get(proxy_class or "")


def check_ingress(wanted: str | None, running: str | None) -> None:
    """Refuse when the caller insists on an ingress mode the cluster is known not to run.

    Raises:
        DeployError: `wanted` and `running` are both known and differ.
    """
    if wanted is None or running is None or wanted == running:
        return
    flag = "1" if wanted == "haproxy" else "0"
    raise DeployError(
        f"the cluster's Serve runs the {running} ingress, not {wanted}. The mode is fixed "
        f"when the cluster starts: {wanted} needs RAY_SERVE_ENABLE_HA_PROXY={flag} in the "
        "environment of `ray start` (or of the RayService's pods). Ask for the "
        f"{running} ingress, or for none, to serve on this cluster"
    )


def _our_app(config: dict[str, Any]) -> dict[str, Any]:
    """raysight's application in `config`."""
    for app in config.get("applications", []):
        if app.get("name") == APP_NAME:
            return dict(app)
    raise DeployError(f"the Serve config has no application named {APP_NAME!r}")


def _check_route_prefix(ours: dict[str, Any], details: dict[str, Any]) -> None:
    """Serve routes one prefix to one application; refuse instead of failing half-way."""
    prefix = ours.get("route_prefix", "/")
    for name, app in details.get("applications", {}).items():
        if name != APP_NAME and app.get("route_prefix") == prefix:
            raise DeployError(
                f"application {name!r} already holds route prefix {prefix!r} on this "
                f"cluster, where raysight serves. Give {name!r} another route prefix, or "
                "delete it, then serve again"
            )


def _check_fixed_options(config: dict[str, Any], details: dict[str, Any]) -> None:
    """Raise when the running Serve cannot reach raysight as `config` asks.

    The HTTP host is not compared: raysight picks 127.0.0.1 only for a cluster of its own,
    and on a shared one the host belongs to whoever started Serve.
    """
    conflicts = []
    for section, key, label in _FIXED_OPTIONS:
        wanted = config.get(section, {}).get(key)
        running = (details.get(section) or {}).get(key)
        if wanted is not None and wanted != running:
            conflicts.append(f"its {label} is {running} (raysight asked for {wanted})")
    running_services = (details.get("grpc_options") or {}).get("grpc_servicer_functions", [])
    missing = [
        f
        for f in config.get("grpc_options", {}).get("grpc_servicer_functions", [])
        if f not in running_services
    ]
    if missing:
        conflicts.append(f"its gRPC ingress lacks raysight's services ({', '.join(missing)})")
    if conflicts:
        raise DeployError(
            "Serve already runs on this cluster with options it cannot change while "
            f"running: {'; '.join(conflicts)}. Serve raysight with the running ports, or "
            "restart Serve with the grpc_options of services/serve.yaml (`serve shutdown` "
            "stops every application on it)"
        )


def _other_app_configs(details: dict[str, Any]) -> list[dict[str, Any]]:
    """The submitted configs of the other applications deployed from a config.

    An application in the middle of deletion has no config any more and stays deleted.
    """
    return [
        app["deployed_app_config"]
        for name, app in details.get("applications", {}).items()
        if name != APP_NAME
        and app.get("source") == "declarative"
        and app.get("deployed_app_config")
    ]


def _wait_running(client: ServeSubmissionClient, user_config: Any, timeout_s: float) -> None:
    """Poll until raysight's replicas are healthy and run `user_config`."""
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
            and current == user_config
            and (deployment.get("status") == "HEALTHY")
        ):
            logger.info("application %s is running", APP_NAME)
            return
        time.sleep(0.5)
    raise DeployError(f"serving did not start within {timeout_s:.0f}s")


def _ingress_mode(details: dict[str, Any]) -> str | None:
    """The running ingress mode, from the class of one of Serve's proxy actors."""
    from ray.util.state import get_actor
    from ray.util.state.exception import RayStateApiException

    proxies = list((details.get("proxies") or {}).values())
    if not proxies or not proxies[0].get("actor_id"):
        return None  # Serve not started, or started without proxies
    try:
        actor = get_actor(proxies[0]["actor_id"])
    except RayStateApiException as exc:
        logger.debug("could not look up Serve's proxy actor: %s", exc)
        return None
    return ingress_mode(actor.class_name if actor else None)


def _client() -> ServeSubmissionClient:
    # Ray 2.60 clusters use token authentication; the dashboard API wants the token too.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    return ServeSubmissionClient(_dashboard_url())


def _dashboard_url() -> str:
    url = ray._private.worker.get_dashboard_url()
    if not url:
        raise DeployError("the Ray cluster has no dashboard; Serve's config API lives there")
    return url if "://" in url else f"http://{url}"
