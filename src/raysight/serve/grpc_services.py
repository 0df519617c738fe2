"""The gRPC services the ingress registers, and reflection over raysight's descriptors.

Ray's proxy (classic mode) and each replica's direct-ingress server (HAProxy mode) import
this module by name from `grpc_servicer_functions`, so it must stay light: no torch.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from raysight._proto import POOL
from raysight._proto.inference import grpc_service_pb2_grpc as pb_grpc
from raysight._proto.raysight.v1 import image_service_pb2_grpc as image_grpc
from raysight.serve.settings import SAME_LOOP_ENV

logger = logging.getLogger(__name__)

HEALTH_SERVICE = "grpc.health.v1.Health"
INFERENCE_SERVICE = "inference.GRPCInferenceService"
IMAGE_SERVICE = "raysight.v1.ImageService"
SERVICE_NAMES = (INFERENCE_SERVICE, IMAGE_SERVICE)
"""The services the deployment implements (health answers for each, and for "")."""

GRPC_SERVICER_FUNCTIONS = [
    "raysight.serve.grpc_services.add_inference_to_server",
    "raysight.serve.grpc_services.add_images_to_server",
    "raysight.serve.grpc_services.add_health_to_server",
    "raysight.serve.grpc_services.add_reflection_to_server",
]
"""gRPCOptions.grpc_servicer_functions for the Serve config (with enable_reflection: false)."""


def add_inference_to_server(servicer: Any, server: Any) -> None:
    """Register the Open Inference Protocol: answered in the replica when it can be (see
    `answered_in_replica`), otherwise routed through Serve to the deployment."""
    if answered_in_replica():
        from raysight.serve.replica_ingress import ReplicaInference  # replicas only: no Ray

        server.add_passthrough_service(INFERENCE_SERVICE)
        servicer = ReplicaInference()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)


def add_images_to_server(servicer: Any, server: Any) -> None:
    """Register the image API, answered in the replica or routed, as OIP is."""
    if answered_in_replica():
        from raysight.serve.replica_ingress import ReplicaImages

        server.add_passthrough_service(IMAGE_SERVICE)
        servicer = ReplicaImages()
    image_grpc.add_ImageServiceServicer_to_server(servicer, server)


def answered_in_replica() -> bool:
    """Whether this server is a replica's own (HAProxy mode) that may answer OIP and the
    image API itself: its user code shares the server's event loop, and its deployment does
    not autoscale (Serve's autoscaler counts only the requests its own path carries)."""
    context = _replica_context()
    if context is None:
        return False
    if os.environ.get(SAME_LOOP_ENV) != "0":
        logger.info("%s is not 0: requests go through Serve's request path", SAME_LOOP_ENV)
        return False
    if context._deployment_config.autoscaling_config is not None:
        logger.info("the deployment autoscales: requests go through Serve's request path")
        return False
    return True


def add_health_to_server(servicer: Any, server: Any) -> None:
    """Register grpc.health.v1: on a replica's own server (HAProxy mode) answered there,
    outside Serve's request slots (see serve/health.py); on the classic proxy routed to the
    deployment, like the other services."""
    if _replica_context() is None:
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        return
    from raysight.serve.health import IngressHealth  # imports this module: not at the top

    server.add_passthrough_service(HEALTH_SERVICE)
    health_pb2_grpc.add_HealthServicer_to_server(IngressHealth(), server)


def _replica_context() -> Any:
    """This Serve replica's context; None in another process (the classic proxy)."""
    from ray import serve
    from ray.serve.exceptions import RayServeException

    try:
        return serve.get_replica_context()
    except RayServeException:
        return None


def add_reflection_to_server(servicer: Any, server: Any) -> None:
    """Register server reflection that can describe raysight's messages.

    Our generated code keeps its descriptors in `raysight._proto.POOL` (so it can live beside
    tritonclient's copies of the `inference` protos), which Ray's built-in reflection does
    not search. This registers reflection over that pool instead; Serve calls it with a
    placeholder `servicer` and its own server.
    """
    for module in (health_pb2, reflection_pb2):
        _add_file(module.DESCRIPTOR)
    server.add_passthrough_service(reflection.SERVICE_NAME)
    names = [*SERVICE_NAMES, HEALTH_SERVICE, reflection.SERVICE_NAME]
    reflection.enable_server_reflection(names, server, pool=POOL)


def _add_file(descriptor: Any) -> None:
    try:
        POOL.FindFileByName(descriptor.name)
    except KeyError:
        proto = descriptor_pb2.FileDescriptorProto()
        descriptor.CopyToProto(proto)
        POOL.Add(proto)
