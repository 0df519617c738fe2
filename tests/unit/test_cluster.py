"""Ray start-up choices that need no cluster: temp dir length, addresses, busy ports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from raysight import cluster
from raysight.errors import ConfigError
from tests.conftest import free_port


def test_temp_dir_leaves_room_for_rays_socket_paths() -> None:
    path = cluster.short_temp_dir()
    try:
        # Ray's temp dir is <path>/ray (see cluster._local_files).
        session = "session_2026-11-29_16-08-38_123456_4194304"
        socket_path = f"{path}/ray/{session}/sockets/plasma_store.1"
        assert len(socket_path.encode()) <= 107
        assert path.stat().st_mode & 0o077 == 0  # private to this user
    finally:
        path.rmdir()


def test_a_long_system_temp_dir_falls_back_to_tmp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", "/var/folders/xy/abcdefghijklmnopqrstuvwxyz012/T")
    path = cluster.short_temp_dir()
    try:
        assert path.parent == Path("/tmp")
    finally:
        path.rmdir()


def test_a_long_given_temp_dir_is_refused_naming_the_limit(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    long_dir = tmp_path / ("d" * 60)
    monkeypatch.setenv(cluster.TEMP_DIR_ENV, str(long_dir))
    limit = rf"RAYSIGHT_RAY_TMPDIR=.* at most {cluster.MAX_TEMP_DIR - 4} bytes"
    with pytest.raises(ConfigError, match=limit):
        cluster._temp_base()
    assert not long_dir.exists()


def test_a_given_short_temp_dir_is_used_and_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    path = Path(tempfile.mkdtemp(prefix="rs-", dir="/tmp"))
    try:
        monkeypatch.setenv(cluster.TEMP_DIR_ENV, str(path))
        assert cluster._temp_base() == (path, False)
    finally:
        path.rmdir()


def test_a_dashboard_url_in_ray_address_names_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"dashboard .*HEAD:6379.*ray job submit"):
        cluster._check_reachable("http://127.0.0.1:8265")


def test_an_address_nobody_answers_fails_at_once() -> None:
    port = free_port()  # closed again: nothing listens there
    nobody = rf"no Ray cluster answers at RAY_ADDRESS=127.0.0.1:{port}"
    with pytest.raises(ConfigError, match=nobody):
        cluster._check_reachable(f"127.0.0.1:{port}")


def test_a_busy_port_names_the_flag() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"port {port} is in use.*--grpc-port"):
            cluster.check_port_free(port, "pick another port with --grpc-port")
    cluster.check_port_free(port, "unused")  # free again once closed


def test_ray_defaults_are_set_on_import_and_leave_explicit_values() -> None:
    show = (
        "import os, raysight; print(os.environ['RAY_AUTH_MODE'], os.environ['RAY_worker_niceness'])"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    fresh = subprocess.run(
        [sys.executable, "-c", show], env=env, capture_output=True, text=True, check=True
    )
    assert fresh.stdout.split() == ["token", "0"], fresh.stderr
    env["RAY_AUTH_MODE"] = "disabled"
    given = subprocess.run(
        [sys.executable, "-c", show], env=env, capture_output=True, text=True, check=True
    )
    assert given.stdout.split() == ["disabled", "0"], given.stderr
    del env["RAY_AUTH_MODE"]
    late = "import os, ray, raysight; print(os.environ.get('RAY_AUTH_MODE', 'unset'))"
    after_ray = subprocess.run(
        [sys.executable, "-c", late], env=env, capture_output=True, text=True, check=True
    )
    assert after_ray.stdout.split() == ["unset"], after_ray.stderr  # Ray already read it


def test_local_files_are_named_to_the_cluster_and_removed_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(cluster.TEMP_DIR_ENV, raising=False)
    monkeypatch.setenv("RAY_TMPDIR", "/elsewhere")
    with cluster._local_files() as temp_dir:
        assert temp_dir.name == "ray"
        assert os.environ["RAY_TMPDIR"] == str(temp_dir.parent)  # inherited by the cluster
        temp_dir.mkdir()
        # A worker's files in flight, left by a worker killed mid-write, go with the cluster.
        with cluster.staging_dir("raysight-ckpt-") as staged:
            assert Path(staged).parent == temp_dir.parent
            left = Path(tempfile.mkdtemp(dir=Path(staged).parent))
    assert os.environ["RAY_TMPDIR"] == "/elsewhere"
    assert not left.exists()
    assert not temp_dir.parent.exists()


def test_local_files_of_a_failed_run_are_kept_and_named(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(cluster.TEMP_DIR_ENV, raising=False)
    # Directly on the module's logger: the CLI's setup stops raysight's records at its root.
    cluster.logger.addHandler(caplog.handler)
    try:
        with pytest.raises(RuntimeError), cluster._local_files() as temp_dir:
            raise RuntimeError("the run failed")
    finally:
        cluster.logger.removeHandler(caplog.handler)
    try:
        assert temp_dir.parent.is_dir()
        assert str(temp_dir.parent) in caplog.text
    finally:
        temp_dir.parent.rmdir()
