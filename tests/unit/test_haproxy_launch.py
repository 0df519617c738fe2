"""raysight-haproxy: Ray's HAProxy configuration rewritten for loopback admin ports, a
private admin socket and TLS, checked by the real HAProxy binary."""

from __future__ import annotations

import fcntl
import os
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from raysight.serve.haproxy_launch import (
    CERT_ENV,
    CLIENT_CA_ENV,
    KEY_ENV,
    MARK,
    FrontSettings,
    LaunchError,
    TlsFiles,
    launch_args,
    real_binary,
    rewrite,
    settings_from_env,
)
from tests.keys import tls_files

# Ray 2.60's configuration for one application, as its HAProxy manager wrote it.
RAY_CONFIG = (Path(__file__).parents[1] / "data" / "ray-2.60-haproxy.cfg").read_text()
EXAMPLE_DIR = "/tmp/haproxy-serve/example"


def _binds(config: str) -> list[str]:
    return [line.strip() for line in config.splitlines() if line.strip().startswith("bind ")]


def test_admin_listeners_move_to_loopback_and_the_socket_to_its_owner() -> None:
    assert "bind :9101" in _binds(RAY_CONFIG) and "bind *:8404" in _binds(RAY_CONFIG)
    changed = rewrite(RAY_CONFIG, FrontSettings())
    assert _binds(changed) == [
        "bind 127.0.0.1:9101",
        "bind 127.0.0.1:18000",
        "bind 127.0.0.1:19000 proto h2",  # no TLS asked: the gRPC frontend is as Ray wrote it
        "bind 127.0.0.1:8404",
    ]
    assert f"stats socket {EXAMPLE_DIR}/admin.sock mode 600 level admin" in changed
    assert "mode 666" not in changed
    # Nothing else moved.
    assert len(changed.splitlines()) == len(RAY_CONFIG.splitlines())


def test_admin_and_grpc_hosts_are_settings() -> None:
    changed = rewrite(RAY_CONFIG, FrontSettings(admin_host="10.0.0.5"))
    assert "bind 10.0.0.5:9101" in _binds(changed) and "bind 10.0.0.5:8404" in _binds(changed)
    # A pod's gRPC port faces its Service; Serve's HTTP port stays on loopback.
    tls = TlsFiles(bundle=Path("/b.pem"), client_ca=None)
    binds = _binds(rewrite(RAY_CONFIG, FrontSettings(grpc_host="0.0.0.0", tls=tls)))
    assert "bind 0.0.0.0:19000 ssl crt /b.pem alpn h2 proto h2" in binds
    assert "bind 127.0.0.1:18000" in binds
    env = {"RAYSIGHT_HAPROXY_GRPC_HOST": "0.0.0.0", "RAYSIGHT_HAPROXY_ADMIN_HOST": "10.0.0.5"}
    assert settings_from_env(env, Path("/unused")) == FrontSettings(
        admin_host="10.0.0.5", grpc_host="0.0.0.0"
    )


def test_tls_and_mutual_tls_on_the_grpc_frontend_only() -> None:
    tls = TlsFiles(bundle=Path("/certs/bundle.pem"), client_ca=None)
    grpc_bind = "bind 127.0.0.1:19000 ssl crt /certs/bundle.pem alpn h2 proto h2"
    assert grpc_bind in _binds(rewrite(RAY_CONFIG, FrontSettings(tls=tls)))
    mutual = TlsFiles(bundle=Path("/certs/bundle.pem"), client_ca=Path("/certs/ca.pem"))
    binds = _binds(rewrite(RAY_CONFIG, FrontSettings(tls=mutual)))
    assert (
        "bind 127.0.0.1:19000 ssl crt /certs/bundle.pem alpn h2 "
        "ca-file /certs/ca.pem verify required proto h2"
    ) in binds
    assert "bind 127.0.0.1:18000" in binds  # HTTP is left plaintext


@pytest.mark.parametrize(
    ("cut", "named"),
    [
        ("listen stats", "`listen stats`"),
        ("frontend prometheus", "`frontend prometheus`"),
        ("frontend grpc_frontend", "`frontend grpc_frontend`"),
    ],
)
def test_a_template_without_a_line_to_change_is_refused(cut: str, named: str) -> None:
    config = RAY_CONFIG.replace(cut, "# gone")
    tls = TlsFiles(bundle=Path("/b.pem"), client_ca=None)
    with pytest.raises(LaunchError, match=named):
        rewrite(config, FrontSettings(tls=tls))


def test_a_socket_line_without_a_mode_is_refused() -> None:
    with pytest.raises(LaunchError, match="stats socket"):
        rewrite(RAY_CONFIG.replace(" mode 666", ""), FrontSettings())


def test_settings_from_env_bundle_the_certificate_and_key_privately(tmp_path: Path) -> None:
    files = tls_files(tmp_path)
    env = {
        CERT_ENV: str(files.server_cert),
        KEY_ENV: str(files.server_key),
        CLIENT_CA_ENV: str(files.ca),
    }
    settings = settings_from_env(env, tmp_path)
    assert settings.admin_host == "127.0.0.1"
    assert settings.tls is not None and settings.tls.client_ca == files.ca
    bundle = settings.tls.bundle
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o600
    text = bundle.read_text()
    assert files.server_cert.read_text() in text and files.server_key.read_text() in text


def test_settings_from_env_refusals_name_the_setting(tmp_path: Path) -> None:
    assert settings_from_env({}, tmp_path).tls is None
    with pytest.raises(LaunchError, match=f"both {CERT_ENV} and {KEY_ENV}"):
        settings_from_env({CERT_ENV: "/x.pem"}, tmp_path)
    with pytest.raises(LaunchError, match=CLIENT_CA_ENV):
        settings_from_env({CLIENT_CA_ENV: "/ca.pem"}, tmp_path)
    with pytest.raises(LaunchError, match=f"{CERT_ENV}=/nowhere.pem: cannot read"):
        settings_from_env({CERT_ENV: "/nowhere.pem", KEY_ENV: "/nowhere.key"}, tmp_path)


def test_launch_rewrites_rays_file_in_place_once(tmp_path: Path) -> None:
    config = tmp_path / "haproxy.cfg"
    config.write_text(RAY_CONFIG)
    argv = ["-db", "-f", str(config), "-dR", "-sf", "123"]
    env = {CERT_ENV: "/dev/null", KEY_ENV: "/dev/null"}
    # The command line is Ray's own: Ray knows its HAProxy processes by the file's path.
    assert launch_args(argv, env) == argv
    once = config.read_text()
    assert once.startswith(MARK) and once[len(MARK) :] == rewrite(
        RAY_CONFIG, settings_from_env(env, tmp_path)
    )
    assert launch_args(argv, env) == argv
    assert config.read_text() == once  # a second start changes nothing twice
    assert once.count("ssl crt") == 1
    assert launch_args(["-vv"], {}) == ["-vv"]


def test_launch_waits_for_rays_lock(tmp_path: Path) -> None:
    config = tmp_path / "haproxy.cfg"
    config.write_text(RAY_CONFIG)
    with open(f"{config}.lock", "w") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        worker = threading.Thread(target=launch_args, args=(["-f", str(config)], {}))
        worker.start()
        worker.join(timeout=0.5)
        assert worker.is_alive()  # held while Ray writes
        assert config.read_text() == RAY_CONFIG
        fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    worker.join(timeout=10)
    assert config.read_text().startswith(MARK)


def test_the_real_binary_is_never_the_launcher_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    # Ray's resolver honours RAY_SERVE_HAPROXY_BINARY_PATH, which names the launcher: asking
    # it would exec the launcher again and again.
    launcher = "/usr/local/bin/raysight-haproxy"
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", launcher)
    binary = real_binary({"RAY_SERVE_HAPROXY_BINARY_PATH": launcher})
    assert binary != launcher and os.access(binary, os.X_OK)
    assert real_binary({"RAYSIGHT_HAPROXY_BINARY": "/opt/haproxy"}) == "/opt/haproxy"


@pytest.mark.parametrize("mutual", [False, True])
def test_haproxy_accepts_the_rewritten_configuration(tmp_path: Path, mutual: bool) -> None:
    files = tls_files(tmp_path)
    (tmp_path / "500.http").write_text("HTTP/1.1 500 Internal Server Error\r\n\r\n")
    original = tmp_path / "haproxy.cfg"
    original.write_text(RAY_CONFIG.replace(EXAMPLE_DIR, str(tmp_path)))
    env = {CERT_ENV: str(files.server_cert), KEY_ENV: str(files.server_key)}
    if mutual:
        env[CLIENT_CA_ENV] = str(files.ca)
    launch_args(["-db", "-f", str(original)], env)
    check = subprocess.run(
        [real_binary({}), "-c", "-f", str(original)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "Configuration file is valid" in check.stdout + check.stderr


def test_the_key_bundle_goes_where_raysight_serve_says(tmp_path: Path) -> None:
    config = tmp_path / "ray" / "haproxy.cfg"
    config.parent.mkdir()
    config.write_text(RAY_CONFIG)
    private = tmp_path / "private"
    private.mkdir()
    files = tls_files(tmp_path)
    env = {
        CERT_ENV: str(files.server_cert),
        KEY_ENV: str(files.server_key),
        "RAYSIGHT_TLS_BUNDLE_DIR": str(private),
    }
    launch_args(["-f", str(config)], env)
    assert f"ssl crt {private / 'raysight-tls.pem'} alpn h2" in config.read_text()
    assert not (config.parent / "raysight-tls.pem").exists()
