"""`raysight predict`: classify image files through a server's image API."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from raysight.errors import ConfigError


def add_commands(commands: Any) -> None:
    """Add `predict` to the CLI's subcommands."""
    predict = commands.add_parser("predict", help="classify image files through a server")
    predict.add_argument("images", nargs="+", help="PNG, JPEG or WebP files")
    predict.add_argument("--target", default="127.0.0.1:9000", help="HOST:PORT of the server")
    predict.add_argument("--top-k", type=int, default=3)
    predict.add_argument(
        "--tls-ca",
        metavar="PEM",
        help="connect over TLS, trusting these CA certificates for the server's",
    )
    predict.add_argument(
        "--tls-cert", metavar="PEM", help="this client's certificate, for mutual TLS"
    )
    predict.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    predict.add_argument(
        "--application",
        default="",
        help="Ray Serve application to address (metadata `application`); needed only when "
        "other Serve applications share the cluster, e.g. --application raysight",
    )
    predict.set_defaults(handler=_predict)


def _connection_hint(tls: bool) -> str:
    """What an UNAVAILABLE answer most often means, for the way this client connected."""
    if tls:
        return (
            " (if the server is up: --tls-ca must hold the CA that signed its certificate, "
            "which must name the --target host, and a server that asks for a client "
            "certificate needs --tls-cert and --tls-key)"
        )
    return " (if the server is up, it may speak TLS only: add --tls-ca)"


def _predict(args: argparse.Namespace) -> int:
    # gRPC's core logs a failed TLS handshake on stderr in its own format; the status below
    # says what failed, once.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    import grpc

    from raysight.client import ClientTls, ImageClient

    tls = None
    try:
        if args.tls_ca or args.tls_cert or args.tls_key:
            tls = ClientTls(
                ca=Path(args.tls_ca) if args.tls_ca else None,
                cert=Path(args.tls_cert) if args.tls_cert else None,
                key=Path(args.tls_key) if args.tls_key else None,
            )
        client = ImageClient(args.target, application=args.application, tls=tls)
    except OSError as exc:
        raise ConfigError(f"cannot read TLS file {exc.filename}: {exc.strerror}") from exc
    except ValueError as exc:  # ClientTls: a certificate without its key, or a key alone
        raise ConfigError(f"--tls-cert and --tls-key go together (mutual TLS): {exc}") from exc
    with client:
        for path in args.images:
            try:
                result = client.classify(Path(path).read_bytes(), top_k=args.top_k)
            except OSError as exc:
                print(f"{path}: cannot read: {exc.strerror}", file=sys.stderr)
                return 2
            except grpc.RpcError as exc:
                unavailable = exc.code() == grpc.StatusCode.UNAVAILABLE
                hint = _connection_hint(tls is not None) if unavailable else ""
                print(f"{path}: {exc.code().name}: {exc.details()}{hint}", file=sys.stderr)
                return 1
            labels = ", ".join(f"{x.label} ({x.score:.3f})" for x in result.labels)
            print(f"{path}: {labels}")
    return 0
