"""pin_cpus on a real cluster: each replica's threads on a core of its own, still answering,
and back on every core when the setting is turned off in place."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
from ray.util.state import list_actors

from raysight.serve import runner
from raysight.serve.affinity import supported
from raysight.serve.settings import ServeSettings
from tests.conftest import RayCluster, free_port
from tests.integration.serving import digits_checkpoint, stop_serve

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(
        not supported() or len(os.sched_getaffinity(0)) < 2,
        reason="pinning needs Linux and at least 2 cores",
    ),
]

MODEL = "convnet-digits"


def _replica_threads() -> dict[int, list[set[int]]]:
    """Each live replica's pid -> the cores each of its threads may run on."""
    pids = [
        int(actor.pid)
        for actor in list_actors(filters=[("state", "=", "ALIVE")])
        if "InferenceServer" in actor.class_name
    ]
    cores: dict[int, list[set[int]]] = {}
    for pid in pids:
        threads = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                threads.append(os.sched_getaffinity(int(task.name)))
            except ProcessLookupError:
                continue  # the thread ended
        cores[pid] = threads
    return cores


def _eventually(check: Callable[[dict[int, list[set[int]]]], bool], what: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        threads = _replica_threads()
        if check(threads):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}; replicas' thread cores: {threads}")
        time.sleep(0.5)


def _answers(target: str) -> None:
    client = triton.InferenceServerClient(url=target)
    tensor = triton.InferInput("images", [2, 1, 8, 8], "FP32")
    tensor.set_data_from_numpy(np.zeros((2, 1, 8, 8), np.float32))
    assert client.infer(MODEL, [tensor]).as_numpy("logits").shape == (2, 10)


def test_pinned_replicas_take_a_core_each_and_unpin_in_place(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    allowed = os.sched_getaffinity(0)  # the cluster's processes start with this machine's
    checkpoint = digits_checkpoint(tmp_path / "ckpt", seed=0, epochs=1)
    pinned = ServeSettings(checkpoint=str(checkpoint), pin_cpus=True)
    port, http_port = free_port(), free_port()
    try:
        runner.deploy(runner.serve_config(pinned, grpc_port=port, http_port=http_port, replicas=2))

        def one_core_each(replicas: dict[int, list[set[int]]]) -> bool:
            cores = [set().union(*threads) for threads in replicas.values()]
            return (
                len(replicas) == 2
                and all(len(c) == 1 and c <= allowed for c in cores)
                and cores[0] != cores[1]
            )

        _eventually(one_core_each, "two replicas, every thread of each on one core of its own")
        _answers(f"127.0.0.1:{port}")

        unpinned = dataclasses.replace(pinned, pin_cpus=False)
        runner.deploy(
            runner.serve_config(unpinned, grpc_port=port, http_port=http_port, replicas=2)
        )
        _eventually(
            lambda replicas: (
                len(replicas) == 2
                and all(t == allowed for threads in replicas.values() for t in threads)
            ),
            "unpinned in place: every thread back on every core",
        )
        _answers(f"127.0.0.1:{port}")
    finally:
        stop_serve(ray_cluster.dashboard_url)
