"""The gRPC services the ingress registers, and reflection over raysight's descriptors.

Ray's proxy (classic mode) and each replica's direct-ingress server (HAProxy mode) import
this module by name from `grpc_servicer_functions`, so it must stay light: no torch.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from raysight._proto import POOL

HEALTH_SERVICE = "grpc.health.v1.Health"
SERVICE_NAMES = ("inference.GRPCInferenceService", "raysight.v1.ImageService")
"""The services the deployment implements (health answers for each, and for "")."""

GRPC_SERVICER_FUNCTIONS = [
    "raysight._proto.inference.grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server",
    "raysight._proto.raysight.v1.image_service_pb2_grpc.add_ImageServiceServicer_to_server",
    # These two mark their services as answered by the ingress server itself (passthrough),
    # so they come after the routed ones.
    "raysight.serve.grpc_services.add_health_to_server",
    "raysight.serve.grpc_services.add_reflection_to_server",
]
"""gRPCOptions.grpc_servicer_functions for the Serve config (with enable_reflection: false)."""


def add_health_to_server(servicer: Any, server: Any) -> None:
    """Register grpc.health.v1: on a replica's own server (HAProxy mode) answered there,
    outside Serve's request slots (see serve/health.py); on the classic proxy routed to the
    deployment, like the other services."""
    if not _in_replica():
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        return
    from raysight.serve.health import IngressHealth  # imports this module: not at the top

    server.add_passthrough_service(HEALTH_SERVICE)
    health_pb2_grpc.add_HealthServicer_to_server(IngressHealth(), server)


def _in_replica() -> bool:
    """Whether this process is a Serve replica (and not the classic proxy)."""
    from ray import serve
    from ray.serve.exceptions import RayServeException

    try:
        serve.get_replica_context()
    except RayServeException:
        return False
    return True


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
