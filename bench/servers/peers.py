"""Peer servers, each in a virtualenv of its own under the bench's work directory.

Seldon MLServer and KServe's ModelServer serve the same checkpoint through raysight's
engine (bench/servers/peer/), over their own Open Inference Protocol gRPC servers on
127.0.0.1. Neither is a dependency of raysight: each virtualenv gets the peer from
bench/requirements-PEER.txt plus what the engine imports, pinned to the versions in the
project's constraints.txt; raysight itself comes from the source tree on PYTHONPATH.

Neither peer batches requests here (MLServer's adaptive batching is off by default and
KServe has none), and each runs its model with one torch thread unless told otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
from collections.abc import Iterator
from pathlib import Path

from venvs import venv

from servers.process import free_port, running, wait_ready
from servers.spec import Context, Running

PEER_CODE = Path(__file__).resolve().with_name("peer")
READY_TIMEOUT_S = 180.0
THREADS_ENV = "RAYSIGHT_BENCH_TORCH_THREADS"  # read by peer/raysight_peer.py


def _env(ctx: Context) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONPATH"] = f"{PEER_CODE}{os.pathsep}{ctx.repo / 'src'}"
    env[THREADS_ENV] = str(ctx.threads)
    return env


@contextlib.contextmanager
def start_mlserver(ctx: Context, name: str, parallel_workers: int | None) -> Iterator[Running]:
    """MLServer with the runtime in peer/mlserver_model.py; `parallel_workers` None keeps
    MLServer's default (1: inference in one worker process beside the server's), 0 runs
    inference in the server's own process."""
    env = venv(ctx.work_dir, "mlserver")
    folder = ctx.work_dir / "peers" / name
    model_dir = folder / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    grpc_port = free_port()
    settings: dict[str, object] = {
        "host": "127.0.0.1",  # MLServer's default is 0.0.0.0, for every listener
        "http_port": free_port(),
        "grpc_port": grpc_port,
        "metrics_port": free_port(),
        "debug": False,
        "model_repository_root": str(folder),
    }
    if parallel_workers is not None:
        settings["parallel_workers"] = parallel_workers
    (folder / "settings.json").write_text(json.dumps(settings, indent=2))
    (model_dir / "model-settings.json").write_text(
        json.dumps(
            {
                "name": ctx.model_name,
                "implementation": "mlserver_model.RaysightModel",
                "parameters": {"uri": str(ctx.checkpoint)},
            },
            indent=2,
        )
    )
    argv = [str(env.bin / "mlserver"), "start", str(folder)]
    log = ctx.log_dir / f"{name}.log"
    with running(argv, log, env=_env(ctx), cwd=folder) as child:
        target = f"127.0.0.1:{grpc_port}"
        wait_ready(target, child, READY_TIMEOUT_S)
        yield Running(name, target, log, f"{shlex.join(argv)}  # settings: {settings}", child.pid)


@contextlib.contextmanager
def start_kserve(ctx: Context, name: str) -> Iterator[Running]:
    """KServe's ModelServer with the model in peer/kserve_server.py."""
    env = venv(ctx.work_dir, "kserve")
    grpc_port = free_port()
    argv = [
        str(env.python),
        str(PEER_CODE / "kserve_server.py"),
        "--checkpoint",
        str(ctx.checkpoint),
        "--model-name",
        ctx.model_name,
        "--grpc-port",
        str(grpc_port),
        "--http-port",
        str(free_port()),
    ]
    log = ctx.log_dir / f"{name}.log"
    with running(argv, log, env=_env(ctx), cwd=ctx.work_dir) as child:
        target = f"127.0.0.1:{grpc_port}"
        wait_ready(target, child, READY_TIMEOUT_S)
        yield Running(name, target, log, shlex.join(argv), child.pid)
