"""TLS for the gRPC API: the files `raysight serve` hands to the HAProxy it starts.

TLS terminates in HAProxy (`raysight-haproxy` adds it to Ray's configuration), so it needs
the HAProxy ingress and a cluster started with these settings in its environment; Ray
2.60's classic gRPC proxy has no TLS.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from raysight.errors import ConfigError
from raysight.serve.haproxy_launch import CERT_ENV, CLIENT_CA_ENV, KEY_ENV


@dataclass(frozen=True)
class ServerTls:
    """The server's certificate chain and key (PEM), and for mutual TLS the CA
    certificates (PEM) that clients' certificates must chain to."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    @classmethod
    def from_flags(
        cls, cert: str | None, key: str | None, client_ca: str | None
    ) -> ServerTls | None:
        """None when no TLS flag is given.

        Raises:
            ConfigError: a flag is given without the others it needs.
        """
        if not (cert or key or client_ca):
            return None
        if not (cert and key):
            raise ConfigError(
                "TLS needs both --tls-cert and --tls-key (--tls-client-ca adds mutual TLS)"
            )
        return cls(
            cert=Path(cert).absolute(),
            key=Path(key).absolute(),
            client_ca=Path(client_ca).absolute() if client_ca else None,
        )

    def check(self) -> None:
        """Load the files as a TLS server would, so a wrong one fails before a cluster starts.

        Raises:
            ConfigError: a file is missing, not PEM, or the key does not match the certificate.
        """
        for path in (self.cert, self.key, self.client_ca):
            if path is not None and any(c.isspace() for c in str(path)):
                # HAProxy's configuration separates words by spaces.
                raise ConfigError(f"TLS file path {path} contains a space: move or link it")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(self.cert, self.key)
        except FileNotFoundError as exc:
            raise ConfigError(f"TLS file {exc.filename} does not exist") from exc
        except ssl.SSLError as exc:
            raise ConfigError(
                f"--tls-cert {self.cert} and --tls-key {self.key} are not a PEM certificate "
                f"chain and its private key ({exc.reason or exc})"
            ) from exc
        if self.client_ca is not None:
            try:
                context.load_verify_locations(cafile=self.client_ca)
            except FileNotFoundError as exc:
                raise ConfigError(f"--tls-client-ca {self.client_ca} does not exist") from exc
            except ssl.SSLError as exc:
                raise ConfigError(
                    f"--tls-client-ca {self.client_ca} holds no PEM CA certificate "
                    f"({exc.reason or exc})"
                ) from exc

    def cluster_env(self) -> dict[str, str]:
        """The environment variables the cluster's HAProxy launcher reads."""
        env = {CERT_ENV: str(self.cert), KEY_ENV: str(self.key)}
        if self.client_ca is not None:
            env[CLIENT_CA_ENV] = str(self.client_ca)
        return env
