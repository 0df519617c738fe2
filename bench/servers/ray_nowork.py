"""Ray Serve's HAProxy ingress answering fixed bytes: the transport limit through Serve.

A local Ray cluster started as `raysight serve` starts its own (HAProxy in front of
direct-ingress replicas through raysight's HAProxy launcher, replicas of one CPU with
raysight's replica environment, each pinned to a core as raysight pins its own), running a
deployment that does nothing. Each replica answers OIP and the image API on its own gRPC
server with bench/servers/bare.py's no-work handlers, registered as passthrough services
the way raysight registers its own (src/raysight/serve/grpc_services.py): what Serve's
ingress allows with no work, to set beside `bare`, the same handlers without Ray.

    python bench/servers/ray_nowork.py --port 9100 --http-port 8100 --metrics-port 8101

The replicas import this module by name (`ray_nowork.add_to_server`), so this folder goes
on the cluster's PYTHONPATH before the cluster starts; keep the imports at the top light.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

logger = logging.getLogger("bench.ray_nowork")

HERE = Path(__file__).resolve().parent
SERVICES = ("inference.GRPCInferenceService", "raysight.v1.ImageService")
APP_NAME = "nowork"


def add_to_server(servicer: Any, server: Any) -> None:
    """Serve's `grpc_servicer_functions` entry: on a replica's own server, the bare
    server's no-work handlers as passthrough services; nothing on Serve's proxy (HAProxy
    falls back to it only when no replica runs)."""
    from ray import serve
    from ray.serve.exceptions import RayServeException

    try:
        serve.get_replica_context()
    except RayServeException:
        return  # Serve's proxy process
    from bare import _handlers  # bench/servers/bare.py, on the cluster's PYTHONPATH

    for name in SERVICES:
        server.add_passthrough_service(name)  # before the handlers: they stay unwrapped
    server.add_generic_rpc_handlers(_handlers(None))


def _cluster_env(max_message_bytes: int) -> dict[str, str]:
    """`raysight serve`'s local-cluster environment, and this folder on the path."""
    from raysight.cli_serve import local_cluster_env

    args = argparse.Namespace(ingress=None, max_message_bytes=max_message_bytes)
    env = local_cluster_env(args, None)
    path = os.environ.get("PYTHONPATH", "")
    env["PYTHONPATH"] = f"{HERE}{os.pathsep}{path}" if path else str(HERE)
    return env


def serve_until_stopped(port: int, http_port: int, metrics_port: int, replicas: int | None) -> None:
    """Start the cluster, deploy, and serve until SIGINT or SIGTERM; the cluster stops
    with this call. `replicas` None: as many as `raysight serve --replicas auto` starts."""
    import ray
    from ray import serve

    from raysight.cluster import connected
    from raysight.serve.runner import REPLICA_CPUS, auto_replicas
    from raysight.serve.settings import DEFAULT_MAX_MESSAGE_BYTES, replica_env

    os.environ.update(_cluster_env(DEFAULT_MAX_MESSAGE_BYTES))
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())

    @serve.deployment
    class NoWork:
        """Gives Serve replicas to start; the passthrough services answer every RPC."""

        def __init__(self) -> None:
            # Pinned as `raysight serve` pins its replicas on a cluster it starts.
            from raysight.serve.affinity import ReplicaAffinity, node_share

            ReplicaAffinity().apply(True, *node_share())

        def __call__(self, request: Any) -> str:
            return "no work"

    with connected(metrics_port=metrics_port):
        if replicas is None:
            replicas = auto_replicas(ray.cluster_resources(), REPLICA_CPUS, 0.0)
        serve.start(
            http_options={"host": "127.0.0.1", "port": http_port},
            grpc_options={"port": port, "grpc_servicer_functions": ["ray_nowork.add_to_server"]},
        )
        app = NoWork.options(
            num_replicas=replicas,
            ray_actor_options={
                "num_cpus": REPLICA_CPUS,
                "runtime_env": {"env_vars": replica_env(DEFAULT_MAX_MESSAGE_BYTES)},
            },
        ).bind()
        serve.run(app, name=APP_NAME, route_prefix="/")
        logger.info("serving on 127.0.0.1:%d through HAProxy, %d replicas, no work", port, replicas)
        while not stop.wait(1.0):
            pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="HAProxy's gRPC port")
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument(
        "--replicas", type=int, help="default: as many as `raysight serve` starts here"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    serve_until_stopped(args.port, args.http_port, args.metrics_port, args.replicas)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
