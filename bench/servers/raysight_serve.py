"""`raysight serve` as the bench starts it: a fresh local Ray cluster per start."""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from servers.process import free_port, running, wait_ready
from servers.spec import Context, Running

READY_TIMEOUT_S = 300.0  # Ray's start plus the first deploy, on a busy 2-core machine
STOP_GRACE_S = 60.0  # the CLI stops its cluster on SIGTERM; give it time before SIGKILL


def command(
    ctx: Context, ingress: str | None, grpc_port: int, extra: Sequence[str] = ()
) -> list[str]:
    """The command line; None keeps the CLI's default ingress; `extra`: more flags, such as
    serving settings (`--latency-target-s 0.05`)."""
    raysight = Path(os.path.normpath(sys.executable)).with_name("raysight")
    argv = [
        str(raysight),
        "serve",
        "--checkpoint",
        str(ctx.checkpoint),
        "--grpc-port",
        str(grpc_port),
        "--http-port",
        str(free_port()),
        "--metrics-port",
        str(free_port()),
        "--device",
        ctx.device,
    ]
    if ctx.device == "cuda":
        argv += ["--num-gpus", "1"]
    if ingress:
        argv += ["--ingress", ingress]
    return argv + list(extra)


def cluster_env() -> dict[str, str]:
    """The environment a bench server that starts its own Ray cluster runs with."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # never join another
    env.update(RAY_AUTH_MODE="token", RAY_worker_niceness="0")
    return env


@contextlib.contextmanager
def start(
    ctx: Context, name: str, ingress: str | None, extra: Sequence[str] = ()
) -> Iterator[Running]:
    """Serve the checkpoint until the block ends, on a local cluster of its own."""
    env = cluster_env()
    grpc_port = free_port()
    argv = command(ctx, ingress, grpc_port, extra)
    log = ctx.log_dir / f"{name}.log"
    with running(argv, log, env=env, grace_s=STOP_GRACE_S) as child:
        target = f"127.0.0.1:{grpc_port}"
        wait_ready(target, child, READY_TIMEOUT_S)
        yield Running(name, target, log, shlex.join(argv), child.pid)
