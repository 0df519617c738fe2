"""`raysight sign` and `raysight verify`: signatures over a checkpoint directory."""

from __future__ import annotations

import argparse
from typing import Any


def add_commands(commands: Any) -> None:
    """Add `sign` and `verify` to the CLI's subcommands."""
    sign = commands.add_parser(
        "sign",
        help="sign a checkpoint directory (writes model.sig in it)",
        description="Sign every file of a checkpoint with an elliptic-curve private key "
        "(OpenSSF model-signing, offline). Serving verifies it with signature_trust.",
    )
    sign.add_argument("checkpoint", help="checkpoint directory")
    sign.add_argument("--key", required=True, help="PEM elliptic-curve private key")
    sign.add_argument("--certificate", help="the key's PEM certificate: sign in certificate mode")
    sign.add_argument(
        "--chain",
        nargs="*",
        default=[],
        metavar="PEM",
        help="certificates between --certificate and the root CA",
    )
    sign.set_defaults(handler=_sign)

    verify = commands.add_parser(
        "verify",
        help="check a checkpoint: its hashes, optionally its pin and signature",
        description="Check a checkpoint as serving does before it loads it: the manifest, "
        "the hash of every file, and, when given, the manifest's sha256 and the signature.",
    )
    verify.add_argument("checkpoint", help="checkpoint directory")
    verify.add_argument("--sha256", default="", help="the manifest's expected sha256 (a pin)")
    verify.add_argument(
        "--trust", help="PEM public key or CA certificate(s) the signature must verify against"
    )
    verify.set_defaults(handler=_verify)


def _sign(args: argparse.Namespace) -> int:
    from raysight.checkpoint.signing import sign_checkpoint

    signature = sign_checkpoint(
        args.checkpoint, args.key, certificate=args.certificate, chain=args.chain
    )
    print(f"signed: {signature}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from raysight.checkpoint import manifest_sha256, verify_checkpoint
    from raysight.checkpoint.signing import verify_signature

    if args.trust:
        verify_signature(args.checkpoint, args.trust)
    manifest = verify_checkpoint(args.checkpoint, expected_sha256=args.sha256)
    signed = ", signature verified" if args.trust else ""
    print(
        f"ok: {manifest.model} on {manifest.dataset}, epoch {manifest.epoch}, "
        f"manifest sha256 {manifest_sha256(args.checkpoint)}{signed}"
    )
    return 0
