"""`raysight serve` with TLS and mutual TLS, through real clients (tritonclient, the
`raysight predict` command, grpc health), and the ports a local cluster opens."""

from __future__ import annotations

import os
import re
import select
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc

from raysight.data import load_arrays
from raysight.engine import Engine
from raysight.serve.haproxy_launch import MARK
from tests.conftest import REPO, free_port
from tests.integration.serving import digits_checkpoint, png, serve_argv
from tests.keys import TlsFiles, tls_files
from tests.sockets import listeners

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BIN = Path(sys.executable).parent
HAPROXY_ADMIN_PORTS = (8404, 9101)


@contextmanager
def _serving(tmp_path: Path, *flags: str) -> Iterator[tuple[subprocess.Popen, int, int, Path]]:
    """`raysight serve` of a digits checkpoint, as its console script in a fresh process."""
    checkpoint = digits_checkpoint(tmp_path / "ckpt", seed=0, epochs=2)
    grpc_port, metrics_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAYSIGHT_TLS"))}
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [*serve_argv(checkpoint, grpc_port, metrics_port, free_port()), *flags],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=log,  # a file: a pipe nobody reads would fill and stall the command
        text=True,
        start_new_session=True,
    )
    try:
        _wait_for_line(server, "Ctrl-C stops")
        yield server, grpc_port, metrics_port, checkpoint
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            raise
        finally:
            log.close()


def _wait_for_line(server: subprocess.Popen, text: str, timeout: float = 240) -> None:
    """Read the command's output until a line holds `text`: the command is past its deploy,
    where Ctrl-C (which reaches Ray's processes too) stops it cleanly."""
    assert server.stdout is not None
    fd, seen = server.stdout.fileno(), b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # os.read on the descriptor: a buffered readline would hide lines from select.
        if select.select([fd], [], [], 1.0)[0]:
            chunk = os.read(fd, 65536)
            seen += chunk
            if text.encode() in seen:
                return
            if not chunk and server.poll() is not None:
                break
    raise AssertionError(f"raysight serve never printed {text!r}; it printed {seen[-2000:]!r}")


def _credentials(files: TlsFiles, *, client: bool) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=files.ca.read_bytes(),
        private_key=files.client_key.read_bytes() if client else None,
        certificate_chain=files.client_cert.read_bytes() if client else None,
    )


def _health(target: str, credentials: grpc.ChannelCredentials | None) -> int:
    channel = (
        grpc.secure_channel(target, credentials)
        if credentials is not None
        else grpc.insecure_channel(target)
    )
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status


def _wait_serving(
    target: str, credentials: grpc.ChannelCredentials, server: subprocess.Popen
) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError("raysight serve exited early (its log: serve.log in tmp_path)")
        try:
            if _health(target, credentials) == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        time.sleep(1)
    raise AssertionError(f"{target} never reported SERVING over TLS")


def _refused(target: str, credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        _health(target, credentials)
    return caught.value.code()


def _triton_infer(target: str, files: TlsFiles, checkpoint: Path) -> None:
    """tritonclient over mutual TLS gets the model's own logits for a test image."""
    client = triton.InferenceServerClient(
        target,
        ssl=True,
        root_certificates=str(files.ca),
        private_key=str(files.client_key),
        certificate_chain=str(files.client_cert),
    )
    (model,) = [m.name for m in client.get_model_repository_index().models]
    metadata = client.get_model_metadata(model)
    (spec,) = metadata.inputs
    pixels = load_arrays("digits", None, "test").images[:2]
    engine = Engine.from_directory(checkpoint)
    images = engine.normalize(pixels)  # (2, 1, 8, 8) float32, as the OIP input expects
    request = triton.InferInput(spec.name, list(images.shape), "FP32")
    request.set_data_from_numpy(images)
    logits = client.infer(model, [request]).as_numpy("logits")
    np.testing.assert_allclose(logits, engine.logits(images), rtol=1e-4, atol=1e-5)


def test_mutual_tls_answers_certified_clients_only_and_every_admin_port_is_loopback(
    tmp_path: Path,
) -> None:
    files = tls_files(tmp_path)
    flags = (
        "--tls-cert",
        str(files.server_cert),
        "--tls-key",
        str(files.server_key),
        "--tls-client-ca",
        str(files.ca),
    )
    with _serving(tmp_path, *flags) as (server, port, metrics_port, checkpoint):
        target = f"127.0.0.1:{port}"
        _wait_serving(target, _credentials(files, client=True), server)
        _triton_infer(target, files, checkpoint)
        image = tmp_path / "digit.png"
        image.write_bytes(png(load_arrays("digits", None, "test").images[0][0]))
        tls_flags = ["--tls-ca", str(files.ca)]
        client_flags = ["--tls-cert", str(files.client_cert), "--tls-key", str(files.client_key)]
        predict = subprocess.run(
            [
                str(BIN / "raysight"),
                "predict",
                str(image),
                "--target",
                target,
                *tls_flags,
                *client_flags,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert predict.returncode == 0, predict.stderr
        assert predict.stdout.startswith(f"{image}: ")
        no_cert = subprocess.run(
            [str(BIN / "raysight"), "predict", str(image), "--target", target, *tls_flags],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert no_cert.returncode == 1 and "UNAVAILABLE" in no_cert.stderr
        assert "--tls-cert and --tls-key" in no_cert.stderr  # the hint
        assert "ssl_transport_security" not in no_cert.stderr  # gRPC core's own log, silenced
        plaintext = subprocess.run(
            [str(BIN / "raysight"), "predict", str(image), "--target", target],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert plaintext.returncode == 1 and "may speak TLS only: add --tls-ca" in plaintext.stderr

        # Refused: no client certificate, one from another CA, plaintext, an unknown server.
        assert _refused(target, _credentials(files, client=False)) == grpc.StatusCode.UNAVAILABLE
        stranger = grpc.ssl_channel_credentials(
            root_certificates=files.ca.read_bytes(),
            private_key=files.stranger_key.read_bytes(),
            certificate_chain=files.stranger_cert.read_bytes(),
        )
        assert _refused(target, stranger) == grpc.StatusCode.UNAVAILABLE
        assert _refused(target, None) == grpc.StatusCode.UNAVAILABLE
        system_roots = grpc.ssl_channel_credentials(
            private_key=files.client_key.read_bytes(),
            certificate_chain=files.client_cert.read_bytes(),
        )
        assert _refused(target, system_roots) == grpc.StatusCode.UNAVAILABLE
        # Still answering the certified client after the refusals.
        assert _health(target, _credentials(files, client=True)) == 1

        open_ports = listeners(server.pid)
        by_port = {socket.port: socket for socket in open_ports}
        for admin in (*HAPROXY_ADMIN_PORTS, port, metrics_port):
            assert by_port[admin].loopback, by_port[admin]
        # Ray Serve 2.60 binds its own gRPC servers (the proxy's fallback and each replica's)
        # to every interface with no setting; everything else is on loopback.
        wide = [s for s in open_ports if not s.loopback]
        assert all(s.name.startswith(("ray::ServeReplica", "ray::ProxyActor")) for s in wide), wide
        assert len(open_ports) - len(wide) >= 10  # Ray's own servers did move to loopback
        haproxy = {s.pid for s in open_ports if s.name.endswith("haproxy")}
        assert haproxy  # HAProxy ran, through the launcher
        for pid in haproxy:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            config = Path(argv[argv.index(b"-f") + 1].decode())
            text = config.read_text()
            assert text.startswith(MARK)
            (bundle,) = set(re.findall(r" crt (\S+)", text))
            assert Path(bundle).parent != config.parent  # raysight's own private directory
            assert stat.S_IMODE((config.parent / "admin.sock").stat().st_mode) == 0o600
    assert not Path(bundle).exists()  # no copy of the key outlives the server
    # Ray stopped every HAProxy it started (it knows them by its file in their command line).
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() for pid in haproxy):
        assert time.monotonic() < deadline, f"HAProxy left running: {haproxy}"
        time.sleep(0.5)


def test_server_tls_answers_clients_that_trust_its_ca(tmp_path: Path) -> None:
    files = tls_files(tmp_path)
    flags = ("--tls-cert", str(files.server_cert), "--tls-key", str(files.server_key))
    with _serving(tmp_path, *flags) as (server, port, _, _checkpoint):
        target = f"127.0.0.1:{port}"
        _wait_serving(target, _credentials(files, client=False), server)
        assert _health(f"localhost:{port}", _credentials(files, client=False)) == 1
        assert _refused(target, None) == grpc.StatusCode.UNAVAILABLE
        assert _refused(target, grpc.ssl_channel_credentials()) == grpc.StatusCode.UNAVAILABLE


@pytest.fixture(scope="module")
def refusal_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[TlsFiles, Path]:
    directory = tmp_path_factory.mktemp("tls")
    return tls_files(directory), digits_checkpoint(directory / "ckpt", seed=0, epochs=1)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tls-cert", "{server_cert}"], "needs both --tls-cert and --tls-key"),
        (["--tls-cert", "{server_cert}", "--tls-key", "{client_key}"], "are not a PEM"),
        (["--tls-cert", "{server_cert}", "--tls-key", "{nowhere}"], "does not exist"),
        (
            ["--tls-cert", "{server_cert}", "--tls-key", "{server_key}", "--ingress", "proxy"],
            "classic gRPC proxy has none",
        ),
        (
            [
                "--tls-cert",
                "{server_cert}",
                "--tls-key",
                "{server_key}",
                "--tls-client-ca",
                "{server_key}",
            ],
            "holds no PEM CA certificate",
        ),
    ],
)
def test_tls_flags_that_cannot_work_fail_before_any_cluster(
    refusal_files: tuple[TlsFiles, Path], tmp_path: Path, flags: list[str], message: str
) -> None:
    files, checkpoint = refusal_files
    paths = {
        "server_cert": files.server_cert,
        "server_key": files.server_key,
        "client_key": files.client_key,
        "nowhere": tmp_path / "nowhere.key",
    }
    argv = [str(BIN / "raysight"), "serve", "--checkpoint", str(checkpoint)]
    argv += [flag.format(**paths) for flag in flags]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    run = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 2, run.stderr
    assert message in run.stderr
    assert "Traceback" not in run.stderr
    assert "started a local Ray cluster" not in run.stderr
