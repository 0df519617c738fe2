"""Pinning a replica's threads to cores of its own.

A replica's threads (the event loop, the forward-pass thread, gRPC's pollers, Ray's core
worker) pass the interpreter lock and the work between them thousands of times a second.
Left to the scheduler they spread over every core: each handoff may wake another core and
find its caches cold, and two replicas' threads interleave on both. Pinned, a replica's
handoffs stay on its cores and the replicas stop meeting. Measured on the 2-core build
machine with two replicas (docs/benchmarks.md, "Serving: a replica on cores of its own"):
one caller +17% unary and +16% streamed requests a second, 32 and 128 streams +8% and +6%,
unary at 32 and 128 callers level.

This pays only where the replicas own the cores they pin to: a machine `raysight serve`
started itself (where it is the default), or pods whose CPUs are their own (Kubernetes'
static CPU manager, Guaranteed QoS with whole CPUs). Two pods sharing a node's cores would
each pin their first replica to the same core.

Linux only (`os.sched_setaffinity`); elsewhere the setting is logged and has no effect.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Collection, Sequence
from pathlib import Path

import ray
from ray import serve

logger = logging.getLogger(__name__)

_TASKS = Path("/proc/self/task")


def supported() -> bool:
    """Whether this platform can pin threads."""
    return hasattr(os, "sched_setaffinity") and _TASKS.is_dir()


def node_share() -> tuple[int, float]:
    """In a Serve replica: its rank among its deployment's replicas on its node, and the
    CPUs Ray gave it."""
    rank = serve.get_replica_context().rank
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    return (rank.local_rank if rank is not None else 0), cpus


def replica_cores(local_rank: int, cpus: float, allowed: Sequence[int]) -> tuple[int, ...]:
    """The cores the replica of `local_rank` on its node pins to.

    Each replica takes ceil(`cpus`) of `allowed` (at least one), in rank order: rank 0 the
    first, rank 1 the next, and so on, wrapping round when the replicas ask for more cores
    than the node allows (two then share a core, as they would unpinned).

    Args:
        local_rank: The replica's rank among its deployment's replicas on this node.
        cpus: The CPUs Ray gave the replica.
        allowed: The cores this process may run on, in order.

    Raises:
        ValueError: If `allowed` is empty or `local_rank` negative.
    """
    if not allowed:
        raise ValueError("no cores allowed")
    if local_rank < 0:
        raise ValueError(f"local_rank must be >= 0, got {local_rank}")
    count = min(len(allowed), max(1, math.ceil(cpus - 1e-6)))  # Ray counts in 1e-4: 1.0000001 is 1
    start = local_rank * count
    return tuple(allowed[(start + i) % len(allowed)] for i in range(count))


def pin_process(cores: Collection[int]) -> int:
    """Pin every thread of this process to `cores`; threads started later inherit it from
    the thread that starts them. Returns how many threads were pinned.

    Raises:
        OSError: If a thread could not be pinned for any reason but having ended.
    """
    pinned = 0
    for task in _TASKS.iterdir():
        try:
            os.sched_setaffinity(int(task.name), cores)
        except ProcessLookupError:
            continue  # the thread ended between the listing and the call
        pinned += 1
    return pinned


class ReplicaAffinity:
    """Pins this process's threads, or lets them go back to every core they started with.

    Args:
        allowed: The cores this process may run on; default: its affinity now, before any
            pinning, which unpinning restores.
    """

    def __init__(self, allowed: Collection[int] | None = None) -> None:
        if allowed is None:
            allowed = os.sched_getaffinity(0) if supported() else ()
        self.allowed = tuple(sorted(allowed))
        self.pinned: tuple[int, ...] | None = None

    def apply(self, pin: bool, local_rank: int, cpus: float) -> None:
        """Pin to this replica's cores, or unpin, if that changes anything.

        Pinning is a speed setting: a failure is logged, and the replica serves unpinned.
        """
        if pin and not supported():
            logger.warning("pin_cpus: this platform cannot pin threads; serving unpinned")
            return
        cores = replica_cores(local_rank, cpus, self.allowed) if pin else None
        if cores == self.pinned:
            return
        try:
            threads = pin_process(cores if cores is not None else self.allowed)
        except OSError as exc:
            logger.warning("pin_cpus: could not pin to cores %s (%s); serving unpinned", cores, exc)
            with contextlib.suppress(OSError):  # undo a pin that stopped part way
                pin_process(self.allowed)
            self.pinned = None
            return
        self.pinned = cores
        if cores is None:
            logger.info("unpinned %d threads: cores %s", threads, list(self.allowed))
        else:
            logger.info(
                "pinned %d threads to cores %s (local rank %d)", threads, list(cores), local_rank
            )
