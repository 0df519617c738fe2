"""A small Python client for the image API (raysight.v1.ImageService)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from raysight._proto.raysight.v1 import image_service_pb2 as pb
from raysight._proto.raysight.v1 import image_service_pb2_grpc as pb_grpc


@dataclass(frozen=True)
class Label:
    """One prediction: the class name, its index and its probability."""

    label: str
    class_index: int
    score: float


@dataclass(frozen=True)
class Classification:
    """The answer for one image."""

    labels: tuple[Label, ...]
    model_name: str
    model_version: str
    error: str = ""  # set only for a failed image in a stream


@dataclass(frozen=True)
class ClientTls:
    """TLS for the channel: the CA certificates (PEM) that signed the server's certificate
    (None: the system's roots), and for mutual TLS this client's certificate and key."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate needs its key, and a key its certificate")

    def credentials(self) -> grpc.ChannelCredentials:
        """gRPC channel credentials from the files.

        Raises:
            OSError: a file cannot be read.
        """
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes() if self.ca else None,
            private_key=self.key.read_bytes() if self.key else None,
            certificate_chain=self.cert.read_bytes() if self.cert else None,
        )


def open_channel(target: str, tls: ClientTls | None = None) -> grpc.Channel:
    """A channel to `target` (HOST:PORT), over TLS when `tls` is given."""
    if tls is None:
        return grpc.insecure_channel(target)
    return grpc.secure_channel(target, tls.credentials())


class ImageClient:
    """Classify encoded images (PNG, JPEG, WebP) over gRPC.

    Example:
        with ImageClient("127.0.0.1:9000") as client:
            print(client.classify(open("cat.jpg", "rb").read()).labels[0])
    """

    def __init__(
        self,
        target: str,
        timeout: float = 30.0,
        application: str = "",
        tls: ClientTls | None = None,
    ) -> None:
        """
        Args:
            target: HOST:PORT of the server.
            timeout: seconds each call may take.
            application: the Ray Serve application to address, sent as the `application`
                metadata; needed only when other Serve applications share the cluster.
            tls: connect over TLS with these files; None: plaintext.
        """
        self._channel = open_channel(target, tls)
        self._stub = pb_grpc.ImageServiceStub(self._channel)
        self._timeout = timeout
        self._metadata = (("application", application),) if application else None

    def classify(self, image: bytes, top_k: int = 0, model_name: str = "") -> Classification:
        """One image; raises grpc.RpcError with the server's status on failure."""
        reply = self._stub.Classify(
            pb.ClassifyRequest(image=image, top_k=top_k, model_name=model_name),
            timeout=self._timeout,
            metadata=self._metadata,
        )
        return _classification(reply)

    def classify_many(self, images: Iterable[bytes], top_k: int = 0) -> Iterator[Classification]:
        """Many images on one streaming call, results in the order of `images`; a bad image
        yields a result with `error` set.

        The server answers in completion order; results that come early wait here for
        those before them (at most the server's window of a stream, 64).
        """
        requests = (
            pb.ClassifyRequest(image=image, top_k=top_k, request_id=str(i))
            for i, image in enumerate(images)
        )
        replies = self._stub.ClassifyStream(
            requests, timeout=self._timeout, metadata=self._metadata
        )
        early: dict[int, Classification] = {}
        following = 0
        for reply in replies:
            early[int(reply.request_id)] = _classification(reply)
            while following in early:
                yield early.pop(following)
                following += 1
        if early:  # the stream ended without this one's answer
            raise RuntimeError(f"the server sent no answer for image {following}")

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ImageClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _classification(reply: pb.ClassifyResponse) -> Classification:
    return Classification(
        labels=tuple(Label(p.label, p.class_index, p.score) for p in reply.predictions),
        model_name=reply.model_name,
        model_version=reply.model_version,
        error=reply.error,
    )
