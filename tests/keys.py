"""Keys and certificates made in the test, for signing checkpoints and for TLS (nothing
fetched)."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path


@dataclass(frozen=True)
class CertifiedKey:
    private: Path
    certificate: Path
    ca: Path


def key_pair(directory: Path, name: str = "signer") -> KeyPair:
    """An elliptic-curve (P-256) key pair as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = directory / f"{name}.key", directory / f"{name}.pub"
    private.write_bytes(_private_pem(key))
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return KeyPair(private, public)


def certified_key(directory: Path, name: str = "signer") -> CertifiedKey:
    """A CA, and a code-signing key it certified, as PEM files."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        _builder(_name(f"{name} CA"), _name(f"{name} CA"), ca_key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_usage(cert_sign=True), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        _builder(_name(name), _name(f"{name} CA"), key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = CertifiedKey(
        directory / f"{name}.key", directory / f"{name}.crt", directory / f"{name}-ca.crt"
    )
    paths.private.write_bytes(_private_pem(key))
    paths.certificate.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return paths


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for a TLS server on 127.0.0.1 and its clients."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path
    """A client certificate from another CA, which the server must refuse under mutual TLS."""
    stranger_key: Path


def tls_files(directory: Path) -> TlsFiles:
    """A CA; a server certificate for 127.0.0.1 and localhost and a client certificate it
    signed; a client certificate signed by another CA."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, ca = _tls_ca("raysight test CA", now)
    stranger_ca_key, _ = _tls_ca("stranger CA", now)
    names = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    files = TlsFiles(
        *(
            directory / f
            for f in (
                "ca.crt",
                "server.crt",
                "server.key",
                "client.crt",
                "client.key",
                "stranger.crt",
                "stranger.key",
            )
        )
    )
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for cert, key, issuer_key, issuer, usage, extra in (
        (files.server_cert, files.server_key, ca_key, ca, ExtendedKeyUsageOID.SERVER_AUTH, names),
        (files.client_cert, files.client_key, ca_key, ca, ExtendedKeyUsageOID.CLIENT_AUTH, None),
        (
            files.stranger_cert,
            files.stranger_key,
            stranger_ca_key,
            None,
            ExtendedKeyUsageOID.CLIENT_AUTH,
            None,
        ),
    ):
        leaf_key = ec.generate_private_key(ec.SECP256R1())
        issuer_name = issuer.subject if issuer is not None else _name("stranger CA")
        builder = (
            _builder(_name(cert.stem), issuer_name, leaf_key.public_key(), now)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if extra is not None:
            builder = builder.add_extension(extra, critical=False)
        cert.write_bytes(
            builder.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
        )
        key.write_bytes(_private_pem(leaf_key))
    return files


def _tls_ca(
    name: str, now: datetime.datetime
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(_name(name), _name(name), key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_usage(cert_sign=True), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePublicKey, now: datetime.datetime
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


def _usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
        crl_sign=cert_sign,
    )
