"""Signatures over a checkpoint directory, with OpenSSF's model-signing (offline modes only).

A signature (`model.sig` inside the checkpoint, a Sigstore bundle) covers the name and the
SHA-256 of every file of the directory: weights, manifest, train state. Verifying it proves
that the holder of the private key signed exactly these files, whatever the manifest says
of itself. Two offline modes, chosen by what the key file holds:

* an elliptic-curve key pair: `sign` takes the private key, verification the public key;
* a certificate: `sign` takes the private key, its certificate and the chain up to a CA;
  verification takes the CA certificate(s), so any key that CA certified is trusted.

Not verified: freshness (an older signed checkpoint still verifies; pin the one to serve
with serving's checkpoint_sha256) and anything about the key beyond the signature (no
transparency log: keep the private key safe).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from raysight.errors import CheckpointError

if TYPE_CHECKING:
    import model_signing.hashing

logger = logging.getLogger(__name__)

SIGNATURE_FILE = "model.sig"
"""Where the signature lies, inside the checkpoint directory (and outside what it covers)."""

# How model-signing names a file whose digest differs (followed by both digests as bytes),
# inside a list's repr, which escapes the quotes when a digest holds one.
_CHANGED = re.compile(r"Hash mismatch for \\?'([^'\\]+)\\?'")
_PUBLIC_KEY = b"-----BEGIN PUBLIC KEY-----"
_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"


def sign_checkpoint(
    directory: str | Path,
    private_key: str | Path,
    *,
    certificate: str | Path | None = None,
    chain: Sequence[str | Path] = (),
) -> Path:
    """Sign every file of a checkpoint directory; the signature goes to `model.sig` in it.

    Args:
        directory: The checkpoint directory.
        private_key: A PEM elliptic-curve private key (P-256, P-384 or P-521).
        certificate: The key's PEM certificate, to sign in certificate mode.
        chain: PEM certificates between it and the root, in certificate mode.

    Returns:
        The signature file.

    Raises:
        CheckpointError: the directory, key or certificate cannot be used; the message
            says which.
    """
    from model_signing import signing

    path = _checkpoint_dir(directory)
    config = signing.Config().set_hashing_config(_hashing(path))
    try:
        if certificate is None:
            config.use_elliptic_key_signer(private_key=Path(private_key))
        else:
            config.use_certificate_signer(
                private_key=Path(private_key),
                signing_certificate=Path(certificate),
                certificate_chain=[Path(c) for c in chain],
            )
        signature = path / SIGNATURE_FILE
        config.sign(path, signature)
    except (OSError, ValueError, TypeError) as error:
        raise CheckpointError(f"cannot sign {path}: {error}") from error
    logger.info("signed %s (%s)", path, signature.name)
    return signature


def verify_signature(directory: str | Path, trusted: str | Path) -> None:
    """Check that the checkpoint's files are exactly the ones its signature covers, signed
    by a key that `trusted` vouches for.

    Args:
        directory: The checkpoint directory.
        trusted: A PEM public key (key mode) or CA certificate(s) (certificate mode).

    Raises:
        CheckpointError: unsigned, signed by another key, or a file added, removed or
            changed since signing; the message says which.
    """
    from model_signing import verifying

    path = _checkpoint_dir(directory)
    signature = path / SIGNATURE_FILE
    if not signature.is_file():
        raise CheckpointError(f"{path}: unsigned (no {SIGNATURE_FILE}); sign it with raysight sign")
    config = verifying.Config()
    mode = _trust_mode(Path(trusted))
    if mode == "key":
        config.use_elliptic_key_verifier(public_key=Path(trusted))
    else:
        config.use_certificate_verifier(certificate_chain=[Path(trusted)])
    try:
        config.verify(path, signature)
    except Exception as error:  # the library raises ValueError and its backends' own errors
        raise CheckpointError(f"{path}: signature check failed: {_reason(error)}") from error
    logger.info("signature of %s verified against %s", path, trusted)


def _checkpoint_dir(directory: str | Path) -> Path:
    path = Path(directory)
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint directory not found")
    return path


def _hashing(path: Path) -> model_signing.hashing.Config:
    # Every file, hashed whole (checkpoints are a few files), the signature itself left out;
    # the ignored path is recorded in the signature, so verification leaves it out too.
    from model_signing import hashing

    config = hashing.Config().use_file_serialization()
    return config.set_ignored_paths(paths=[path / SIGNATURE_FILE])


def _trust_mode(trusted: Path) -> str:
    """ "key" or "certificate", by the PEM block the file starts with."""
    try:
        head = trusted.read_bytes()[:64].lstrip()
    except OSError as error:
        raise CheckpointError(f"cannot read the trusted key {trusted}: {error}") from error
    if head.startswith(_PUBLIC_KEY):
        return "key"
    if head.startswith(_CERTIFICATE):
        return "certificate"
    raise CheckpointError(
        f"{trusted}: neither a PEM public key nor a PEM certificate (BEGIN PUBLIC KEY or "
        "BEGIN CERTIFICATE)"
    )


def _reason(error: Exception) -> str:
    """model-signing's message, with changed files named rather than their raw digests."""
    text = " ".join(str(error).split()) or type(error).__name__
    changed = _CHANGED.findall(text)
    if changed:
        return f"{', '.join(changed)} changed since signing"
    return text
