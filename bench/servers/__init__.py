"""The servers the serving bench measures, by name.

Each is started as a child process on 127.0.0.1 with free ports, awaited through OIP
ServerReady, and stopped (its whole session killed) when its block ends. "engine" is the
exception: raysight's engine alone, no transport, measured by `servers/engine.py`.
"""

from __future__ import annotations

import contextlib
import shlex
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from loadgen import ModelFacts, StreamReply

from servers import peers, raysight_serve
from servers.process import ServerError, free_port, running, wait_ready
from servers.spec import Context, Running

__all__ = ["SERVERS", "Context", "Running", "Server", "ServerError", "context"]

HERE = Path(__file__).resolve().parent
BARE_READY_TIMEOUT_S = 120.0

ALL_WORKLOADS = None
OIP_ONLY = frozenset({"oip-fp32-1", "oip-fp32-8", "oip-uint8-1", "oip-uint8-8"})
OIP_AND_STREAM = OIP_ONLY | {"stream-uint8-1"}


@dataclass(frozen=True)
class Server:
    """One server the bench can measure."""

    name: str
    description: str
    kind: str  # "raysight", "limit" (bare, bare+engine, engine) or "peer"
    start: Callable[[Context], AbstractContextManager[Running]] | None  # None: "engine"
    workloads: frozenset[str] | None = ALL_WORKLOADS  # None: every workload
    venv: str | None = None  # the bench's virtualenv it needs (a peer's)
    stream_reply: StreamReply = "triton"  # how it answers ModelStreamInfer

    def serves(self, workload: str) -> bool:
        return self.workloads is None or workload in self.workloads


@contextlib.contextmanager
def _ray_nowork(ctx: Context, name: str) -> Iterator[Running]:
    port = free_port()
    argv = [sys.executable, str(HERE / "ray_nowork.py"), "--port", str(port)]
    argv += ["--http-port", str(free_port()), "--metrics-port", str(free_port())]
    log = ctx.log_dir / f"{name}.log"
    env = raysight_serve.cluster_env()
    with running(argv, log, env=env, grace_s=raysight_serve.STOP_GRACE_S) as child:
        target = f"127.0.0.1:{port}"
        wait_ready(target, child, raysight_serve.READY_TIMEOUT_S)
        yield Running(name, target, log, shlex.join(argv), child.pid)


@contextlib.contextmanager
def _bare(ctx: Context, name: str, engine: bool) -> Iterator[Running]:
    port = free_port()
    argv = [sys.executable, str(HERE / "bare.py"), "--port", str(port)]
    if engine:
        argv += ["--checkpoint", str(ctx.checkpoint), "--device", ctx.device]
        argv += ["--threads", str(ctx.threads)]
    log = ctx.log_dir / f"{name}.log"
    with running(argv, log, grace_s=10) as child:
        target = f"127.0.0.1:{port}"
        wait_ready(target, child, BARE_READY_TIMEOUT_S)
        yield Running(name, target, log, shlex.join(argv), child.pid)


SERVERS: dict[str, Server] = {
    server.name: server
    for server in (
        Server(
            "raysight",
            "`raysight serve` as it starts by default: HAProxy in front of direct-ingress "
            "replicas, one replica pinned to each core, each batching up to 32 images a pass, "
            "gathered towards 6 while requests keep arriving",
            "raysight",
            lambda ctx: raysight_serve.start(ctx, "raysight", None),
        ),
        Server(
            "raysight-proxy",
            "`raysight serve --ingress proxy` (Serve's classic gRPC proxy), for the record",
            "raysight",
            lambda ctx: raysight_serve.start(ctx, "raysight-proxy", "proxy"),
        ),
        Server(
            "bare",
            "a grpc.aio server in one process answering fixed bytes, no work: the transport limit",
            "limit",
            lambda ctx: _bare(ctx, "bare", engine=False),
        ),
        Server(
            "ray-nowork",
            "Ray Serve's HAProxy ingress as `raysight serve` starts it (one replica pinned to "
            "each core), each replica answering with the bare server's no-work handlers: the "
            "transport limit through Serve",
            "limit",
            lambda ctx: _ray_nowork(ctx, "ray-nowork"),
        ),
        Server(
            "bare+engine",
            "the bare server running raysight's codec, batcher (the replica's own: 32 images, "
            "gathered towards 6) and engine: transport + compute, without Ray Serve",
            "limit",
            lambda ctx: _bare(ctx, "bare+engine", engine=True),
        ),
        Server(
            "engine",
            "raysight's engine alone, in process, no transport: the compute limit",
            "limit",
            None,
        ),
        Server(
            "mlserver",
            "Seldon MLServer, `parallel_workers: 0` (inference in the server's process), "
            "custom runtime calling raysight's engine, no batching",
            "peer",
            lambda ctx: peers.start_mlserver(ctx, "mlserver", parallel_workers=0),
            OIP_AND_STREAM,
            "mlserver",
            "plain",
        ),
        Server(
            "mlserver-default",
            "Seldon MLServer, default `parallel_workers` (1 inference process beside the "
            "server), same runtime",
            "peer",
            lambda ctx: peers.start_mlserver(ctx, "mlserver-default", parallel_workers=None),
            OIP_AND_STREAM,
            "mlserver",
            "plain",
        ),
        Server(
            "kserve",
            "KServe ModelServer, custom `kserve.Model` calling raysight's engine, no batching "
            "(KServe implements no ModelStreamInfer)",
            "peer",
            lambda ctx: peers.start_kserve(ctx, "kserve"),
            OIP_ONLY,
            "kserve",
        ),
    )
}


def context(repo: Path, checkpoint: Path, work_dir: Path, *, threads: int, device: str) -> Context:
    """The Context for serving `checkpoint` under the name its manifest gives the model."""
    return Context(
        repo=repo,
        checkpoint=checkpoint,
        model_name=ModelFacts.from_checkpoint(checkpoint).name,
        work_dir=work_dir,
        threads=threads,
        device=device,
    )
