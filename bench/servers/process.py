"""A server under test as a child process: free ports, readiness, and a stop that leaves
nothing behind.

Each server runs in its own session (so its own process group); stopping sends SIGTERM to
the leader, waits, then SIGKILLs whatever is left of the session, which also catches
helpers that moved to another process group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from raysight._proto.inference import grpc_service_pb2 as pb
from raysight._proto.inference import grpc_service_pb2_grpc as pb_grpc
from raysight.ports import free_loopback_port


class ServerError(RuntimeError):
    """The server exited or never became ready; the message ends with its log's tail."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, outside the range a starting Ray cluster's
    processes bind at random (raysight.ports.free_loopback_port)."""
    return free_loopback_port()


@dataclass
class Child:
    """A started server process and its log file."""

    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def alive(self) -> bool:
        return self.process.poll() is None


def start(
    command: Sequence[str],
    log: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Child:
    """Start `command` in a new session, its output appended to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        process = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=None if env is None else dict(env),
            cwd=cwd,
            start_new_session=True,
        )
    return Child(process, log)


def _session_members(session: int) -> list[int]:
    """Pids of the live (not zombie) processes whose session id is `session` (from /proc)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Field 6 is the session id; the command name (field 2) may hold spaces, so split
        # after its closing parenthesis.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[3]) == session and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def stop(child: Child, grace_s: float = 30.0) -> None:
    """SIGTERM the leader, wait up to `grace_s` for it to clean up, then SIGKILL every
    process left in its session (its process group first)."""
    session = child.pid  # start_new_session: the leader's pid is the session and group id
    if child.alive():
        with contextlib.suppress(ProcessLookupError):
            child.process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.process.wait(grace_s)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(session, signal.SIGKILL)
    for pid in _session_members(session):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.process.wait(10)
    deadline = time.monotonic() + 10  # until the kernel has taken them all away
    while _session_members(session) and time.monotonic() < deadline:
        time.sleep(0.1)


@contextlib.contextmanager
def running(
    command: Sequence[str],
    log: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    grace_s: float = 30.0,
) -> Iterator[Child]:
    """`start`, and `stop` however the block ends."""
    child = start(command, log, env=env, cwd=cwd)
    try:
        yield child
    finally:
        stop(child, grace_s)


def wait_ready(target: str, child: Child, timeout_s: float, *, health: bool = False) -> None:
    """Poll until the server at `target` says it is ready: OIP ServerReady, or gRPC health
    ("" service) when `health`.

    Raises:
        ServerError: The process exited, or `timeout_s` passed.
    """
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    with grpc.insecure_channel(target) as channel:
        oip = pb_grpc.GRPCInferenceServiceStub(channel)
        checker = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if not child.alive():
                raise ServerError(
                    f"exited with {child.process.returncode} before it was ready; "
                    f"log {child.log}:\n{child.tail()}"
                )
            try:
                if health:
                    reply = checker.Check(health_pb2.HealthCheckRequest(), timeout=2)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                elif oip.ServerReady(pb.ServerReadyRequest(), timeout=2).ready:
                    return
                last = "answered: not ready"
            except grpc.RpcError as exc:
                last = f"{exc.code().name}"
            time.sleep(0.5)
    raise ServerError(
        f"not ready after {timeout_s:.0f} s ({last}); log {child.log}:\n{child.tail()}"
    )
