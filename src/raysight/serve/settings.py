"""Serving settings: one typed object per replica, from the Serve config's `user_config`.

Each field maps one to one to a key of `user_config` in services/serve.yaml, to a Helm
value, and to a `raysight serve` flag.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from raysight.codec.image import ImageLimits
from raysight.config import doc, from_plain
from raysight.errors import ConfigError
from raysight.serve.batch_policy import BatchLimits

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""The largest gRPC message the ingress takes: 32 FP32 images of 3x224x224 (19 MB) or a
10 MiB image, with room to spare. Ray's default is 2 GiB, which a client could make a
replica parse."""
MESSAGE_SIZE_ENV = "RAY_SERVE_GRPC_MAX_MESSAGE_SIZE"
"""Read by Serve when a process imports it: the direct-ingress replicas' gRPC servers (set
through the replicas' runtime_env) and the classic proxy (the cluster's environment)."""
SAME_LOOP_ENV = "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"
""""0" runs a replica's user code on its main event loop, the one its own gRPC server runs
on: the in-replica path for OIP and the image API (serve/replica_ingress.py) needs it, so
that the deployment's batcher serves one loop."""


def replica_env(max_message_bytes: int) -> dict[str, str]:
    """The environment raysight's replicas run with (their runtime_env's env_vars)."""
    return {MESSAGE_SIZE_ENV: str(max_message_bytes), SAME_LOOP_ENV: "0"}


Device = Literal["auto", "cpu", "cuda"]
InputDatatype = Literal["FP32", "UINT8"]
OUTPUT_NAMES = ("logits", "probabilities")
"""The outputs a model can serve, each [-1, K] FP32."""
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True)
class CheckpointTrust:
    """What a checkpoint must prove before it is served, beyond its own hashes.

    Attributes:
        sha256: The sha256 its manifest must have (a pin), or empty.
        signer: A PEM public key or CA certificate(s) its signature must verify against,
            or empty: signatures are not checked.
        require_signature: Refuse an unsigned checkpoint (with `signer`); without it an
            unsigned one is served with a warning, a wrongly signed one never.
    """

    sha256: str = ""
    signer: str = ""
    require_signature: bool = False


@dataclass(frozen=True)
class ServeSettings:
    """What a replica serves and how it batches."""

    checkpoint: str = field(
        metadata=doc(
            "Checkpoint directory or s3:// / gs:// URI. Changing it swaps the model without "
            "downtime."
        )
    )
    checkpoint_sha256: str = field(
        default="",
        metadata=doc(
            "sha256 of the checkpoint's manifest.json (64 hex digits), or empty. Pins the "
            "checkpoint: the manifest lists the sha256 of every other file, so a replica "
            "refuses any other bytes at that path. Changing it reloads the checkpoint."
        ),
    )
    signature_trust: str = field(
        default="",
        metadata=doc(
            "A PEM public key, or PEM CA certificate(s), that checkpoint signatures (raysight "
            "sign) must verify against; a wrongly signed checkpoint is refused. Empty: "
            "signatures are not checked. A path every replica can read."
        ),
    )
    require_signature: bool = field(
        default=False,
        metadata=doc("Refuse unsigned checkpoints too (needs signature_trust)."),
    )
    model_name: str = field(
        default="",
        metadata=doc(
            "Name clients use (OIP model_name); default: the checkpoint manifest's model and "
            "dataset."
        ),
    )
    max_batch_size: int = field(
        default=32,
        metadata=doc(
            "Most images one forward pass holds, and most one request may carry (a request "
            "with more is refused)."
        ),
    )
    batch_wait_timeout_s: float = field(
        default=0.005,
        metadata=doc(
            "The most the first request of a batch waits for others to join, and only while "
            "more are likely to join: towards preferred_batch_size, and beyond it only when "
            "the measured cost of a pass is mostly fixed (as on a GPU); a lone request never "
            "waits."
        ),
    )
    preferred_batch_size: int = field(
        default=6,
        metadata=doc(
            "Images a forward pass gathers towards while requests keep arriving, waiting at "
            "most batch_wait_timeout_s and only while the arrival rate says another comes in "
            "time (as Triton's preferred_batch_size); 0: off. Fewer, fuller passes save the "
            "CPU each pass costs beyond the model."
        ),
    )
    latency_target_s: float = field(
        default=0.0,
        metadata=doc(
            "Seconds from arrival to answer a request should stay under. The batch's image "
            "cap follows the measured cost of a pass (two passes must fit the target), and "
            "a request that would be answered later, behind the queue, is refused at once "
            "with RESOURCE_EXHAUSTED. 0 (off): the cap stays at max_batch_size and the "
            "queue is bounded only by the deployment's limits, the most throughput."
        ),
    )
    max_concurrent_batches: int = field(
        default=1,
        metadata=doc("Forward passes one replica runs at once, each in its own thread."),
    )
    pin_cpus: bool = field(
        default=False,
        metadata=doc(
            "Pin each replica's threads to cores of its own (as many as its num_cpus, by its "
            "rank on the node; Linux). Pays where the replicas own the cores: a machine "
            "`raysight serve` started, where it is on unless --no-pin-cpus, or pods with "
            "whole CPUs of their own (Kubernetes' static CPU manager)."
        ),
    )
    top_k: int = field(
        default=5, metadata=doc("Labels returned by Classify when the request does not say.")
    )
    max_image_bytes: int = field(
        default=10 * 1024 * 1024, metadata=doc("Largest encoded image accepted by Classify.")
    )
    max_image_pixels: int = field(
        default=40_000_000,
        metadata=doc("Largest width x height accepted, checked from the header before decoding."),
    )
    device: Device = field(
        default="auto", metadata=doc("cpu, cuda, or auto (cuda when the replica was given a GPU).")
    )
    outputs: str = field(
        default="logits,probabilities",
        metadata=doc(
            "The OIP outputs served, comma-separated: logits, probabilities or both. Metadata "
            "lists only these, and a request naming another is refused."
        ),
    )
    input_datatype: InputDatatype = field(
        default="FP32",
        metadata=doc(
            "The form OIP metadata advertises for `images`: FP32 (normalised) or UINT8 (raw "
            "pixels, for clients that send what the metadata says). Both are accepted."
        ),
    )
    rest: bool = field(
        default=False,
        metadata=doc(
            "Answer KServe V2 REST (Triton's HTTP/JSON API, binary tensors included) on "
            "Serve's HTTP port, beside gRPC. Off: every HTTP request gets 404."
        ),
    )

    def __post_init__(self) -> None:
        if not self.checkpoint:
            raise ConfigError("checkpoint is required")
        if self.checkpoint_sha256 and not _SHA256.fullmatch(self.checkpoint_sha256):
            raise ConfigError(
                f"checkpoint_sha256 must be 64 hex digits, got {self.checkpoint_sha256!r}"
            )
        if self.require_signature and not self.signature_trust:
            raise ConfigError(
                "require_signature needs signature_trust: the public key or CA certificate "
                "signatures must verify against"
            )
        positive = ("max_batch_size", "max_concurrent_batches", "top_k", "max_image_bytes")
        for name in (*positive, "max_image_pixels"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.preferred_batch_size <= self.max_batch_size:
            raise ConfigError(
                f"preferred_batch_size must be between 0 and max_batch_size "
                f"({self.max_batch_size}), got {self.preferred_batch_size}"
            )
        for name in ("batch_wait_timeout_s", "latency_target_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        # Checked here too, not only by from_dict: the constructor is called directly.
        if self.device not in get_args(Device):
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.input_datatype not in get_args(InputDatatype):
            raise ConfigError(f"input_datatype must be FP32 or UINT8, got {self.input_datatype!r}")
        _parse_outputs(self.outputs)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "user_config") -> ServeSettings:
        """Build from `user_config` (or flags), checking names and types.

        Raises:
            ConfigError: naming the unknown, missing or wrongly typed key.
        """
        return from_plain(cls, values, source)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def trust(self) -> CheckpointTrust:
        """What a checkpoint must prove before it is served."""
        return CheckpointTrust(
            sha256=self.checkpoint_sha256,
            signer=self.signature_trust,
            require_signature=self.require_signature,
        )

    @property
    def served_outputs(self) -> tuple[str, ...]:
        """The outputs served, in the order metadata lists them, e.g. ("probabilities",)."""
        return _parse_outputs(self.outputs)

    @property
    def batch_limits(self) -> BatchLimits:
        return BatchLimits(
            max_batch_size=self.max_batch_size,
            max_wait_s=self.batch_wait_timeout_s,
            preferred_batch_size=self.preferred_batch_size,
            latency_target_s=self.latency_target_s,
            max_concurrent=self.max_concurrent_batches,
        )

    @property
    def image_limits(self) -> ImageLimits:
        return ImageLimits(max_bytes=self.max_image_bytes, max_pixels=self.max_image_pixels)


def _parse_outputs(text: str) -> tuple[str, ...]:
    # "logits, probabilities" -> ("logits", "probabilities"); blanks around names are allowed.
    names = tuple(name.strip() for name in text.split(","))
    wanted = " or ".join(OUTPUT_NAMES)
    if not any(names):
        raise ConfigError(f"outputs must name at least one of {wanted}, got {text!r}")
    for name in names:
        if name not in OUTPUT_NAMES:
            raise ConfigError(f"outputs: {name!r} is not an output; use {wanted}")
    if len(set(names)) != len(names):
        raise ConfigError(f"outputs names an output twice: {text!r}")
    return names
