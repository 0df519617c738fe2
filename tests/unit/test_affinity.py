"""A replica's cores by its rank, and pinning every thread of a real process to them."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Collection, Iterator

import pytest

from raysight.serve import affinity
from raysight.serve.affinity import ReplicaAffinity, pin_process, replica_cores

needs_pinning = pytest.mark.skipif(
    not affinity.supported() or len(os.sched_getaffinity(0)) < 2,
    reason="pinning needs Linux and at least 2 cores",
)


@pytest.mark.parametrize(
    ("rank", "cpus", "allowed", "expected"),
    [
        (0, 1.0, (0, 1), (0,)),
        (1, 1.0, (0, 1), (1,)),
        (2, 1.0, (0, 1), (0,)),  # more replicas than cores: they share, round the cores
        (1, 2.0, (0, 1, 2, 3), (2, 3)),
        (1, 1.5, (0, 1, 2, 3), (2, 3)),  # a share of a core is a whole one
        (0, 0.5, (4, 6), (4,)),  # the cores allowed, whatever their numbers
        (1, 1.0, (2, 5, 7), (5,)),
        (3, 1.0, (2, 5, 7), (2,)),
        (1, 8.0, (0, 1), (0, 1)),  # more than the node has: all of it
        (0, 1.0000001, (0, 1), (0,)),  # float noise in Ray's resources is not a second core
    ],
)
def test_each_rank_takes_its_own_slice_of_the_allowed_cores(
    rank: int, cpus: float, allowed: tuple[int, ...], expected: tuple[int, ...]
) -> None:
    assert replica_cores(rank, cpus, allowed) == expected


def test_no_cores_or_a_negative_rank_is_refused() -> None:
    with pytest.raises(ValueError, match="no cores"):
        replica_cores(0, 1.0, ())
    with pytest.raises(ValueError, match="local_rank"):
        replica_cores(-1, 1.0, (0, 1))


@pytest.fixture
def restored_affinity() -> Iterator[set[int]]:
    """This process's cores, given back to every thread however the test ends."""
    allowed = os.sched_getaffinity(0)
    try:
        yield allowed
    finally:
        pin_process(allowed)


class _Parked(threading.Thread):
    """A thread that waits until released, reporting the cores it started with."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.release = threading.Event()
        self.cores_seen: set[int] = set()

    def run(self) -> None:
        self.cores_seen = os.sched_getaffinity(0)  # as it started
        self.release.wait(30)


@contextlib.contextmanager
def _parked() -> Iterator[int]:
    """A parked thread's kernel id while the block runs; released and joined after."""
    thread = _Parked()
    thread.start()
    try:
        assert thread.native_id is not None
        yield thread.native_id
    finally:
        thread.release.set()
        thread.join(30)


@needs_pinning
def test_pinning_reaches_threads_already_running_and_those_started_later(
    restored_affinity: set[int],
) -> None:
    core = max(restored_affinity)
    with _parked() as running:
        assert pin_process({core}) >= 2  # this thread and the parked one at least
        assert os.sched_getaffinity(running) == {core}
        assert os.sched_getaffinity(0) == {core}
        later = _Parked()
        later.start()
        later.release.set()
        later.join(30)
        assert later.cores_seen == {core}  # inherited from the thread that started it


@needs_pinning
def test_replica_affinity_pins_by_rank_and_unpins_to_what_it_started_with(
    restored_affinity: set[int],
) -> None:
    allowed = sorted(restored_affinity)
    with _parked() as worker:
        replica = ReplicaAffinity()
        assert replica.allowed == tuple(allowed)
        replica.apply(True, local_rank=1, cpus=1.0)
        assert replica.pinned == (allowed[1],)
        assert os.sched_getaffinity(worker) == {allowed[1]}
        replica.apply(True, local_rank=1, cpus=1.0)  # unchanged: nothing to do
        assert replica.pinned == (allowed[1],)
        replica.apply(False, local_rank=1, cpus=1.0)
        assert replica.pinned is None
        assert os.sched_getaffinity(worker) == restored_affinity
        assert os.sched_getaffinity(0) == restored_affinity


def test_a_platform_without_pinning_serves_unpinned(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(affinity, "supported", lambda: False)
    replica = ReplicaAffinity(allowed=(0, 1))
    with caplog.at_level("WARNING", logger=affinity.__name__):
        replica.apply(True, local_rank=0, cpus=1.0)
    assert replica.pinned is None
    assert "cannot pin" in caplog.text


def test_a_failed_pin_is_logged_undone_and_leaves_the_replica_unpinned(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    asked: list[tuple[int, ...]] = []

    def refuse(cores: Collection[int]) -> int:
        asked.append(tuple(cores))
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(affinity, "supported", lambda: True)
    monkeypatch.setattr(affinity, "pin_process", refuse)
    replica = ReplicaAffinity(allowed=(0, 1))
    with caplog.at_level("WARNING", logger=affinity.__name__):
        replica.apply(True, local_rank=1, cpus=1.0)
    assert replica.pinned is None
    assert asked == [(1,), (0, 1)]  # the pin, then every allowed core back
    assert "could not pin to cores (1,)" in caplog.text
