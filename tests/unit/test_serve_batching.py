"""The batcher and its policy, driven by fake run functions and a fake clock: no Ray, no
model, no timing thresholds."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
import pytest

from raysight.serve.batch_policy import (
    INLINE_MAX_S,
    BatchLimits,
    BatchPolicy,
    CostModel,
    OverloadedError,
)
from raysight.serve.batching import (
    SWITCH_INTERVAL_S,
    Batcher,
    Outputs,
    PassReport,
    shorten_switch_interval,
)

GPU_LIKE = (0.005, 0.0001)  # t(n) = 5 ms + 0.1 ms per row: a launch cost dominates
CPU_LIKE = (0.0, 0.0005)  # t(n) = 0.5 ms per row, no fixed cost
RESNET_LIKE = (0.0045, 0.0074)  # t(n) = 4.5 ms + 7.4 ms a row: resnet9 at 32x32 on 1 CPU


def _run(coroutine: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine(), timeout=30))


def _taught(
    policy: BatchPolicy,
    cost: tuple[float, float],
    others: int,
    gap_s: float = 0.010,
    rows: int = 1,
) -> BatchPolicy:
    """A policy that has seen passes of 1..32 rows costing `cost` and arrivals of `rows`,
    `gap_s` apart, that found `others` items in flight."""
    a, b = cost
    for n in list(range(1, 33)) * 3:
        policy.cost.observe(n, a + b * n)
    for i in range(200):
        policy.on_arrival(others, rows, now=i * gap_s)
    return policy


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _doubling(key: str, batch: np.ndarray) -> Outputs:
    return {"y": batch * 2}


def _rows(n: int, value: float) -> np.ndarray:
    return np.full((n, 3), value, np.float32)  # (n, 3): each item's rows carry its own value


# ---- the cost model and the policy -------------------------------------------------------


def test_cost_model_recovers_fixed_and_per_row_cost() -> None:
    model = CostModel()
    for n in (1, 4, 8, 16, 32) * 5:
        model.observe(n, 0.005 + 0.0001 * n)
    fit = model.fit()
    assert fit is not None
    assert fit[0] == pytest.approx(0.005, rel=1e-6)
    assert fit[1] == pytest.approx(0.0001, rel=1e-6)


def test_cost_model_cannot_separate_costs_from_one_size() -> None:
    model = CostModel()
    for _ in range(50):
        model.observe(1, 0.001)  # c=1: every pass holds one row
    assert model.fit() is None


def test_no_wait_without_a_fixed_cost() -> None:
    policy = _taught(BatchPolicy(BatchLimits(max_wait_s=0.01)), CPU_LIKE, others=20)
    assert policy.wait_s(queued_rows=1, waited_s=0.0, in_flight=1) == 0.0


def test_no_wait_for_a_lone_request_even_with_a_fixed_cost() -> None:
    policy = _taught(BatchPolicy(BatchLimits(max_wait_s=0.01)), GPU_LIKE, others=0)
    assert policy.wait_s(queued_rows=1, waited_s=0.0, in_flight=1) == 0.0


def test_waits_for_company_when_a_pass_is_mostly_fixed_cost() -> None:
    policy = _taught(BatchPolicy(BatchLimits(max_wait_s=0.01)), GPU_LIKE, others=20)

    def wait(waited_s: float) -> float:
        return policy.wait_s(queued_rows=1, waited_s=waited_s, in_flight=1)

    # Never longer than one fixed cost (5 ms), though the setting allows 10 ms.
    assert wait(0.0) == pytest.approx(0.005, rel=1e-3)
    assert wait(0.004) == pytest.approx(0.001, rel=1e-2)
    assert wait(0.006) == 0.0
    # Enough rows that the fixed cost is at most half the pass (a / b = 50 > cap 32): the cap.
    assert policy.wait_s(queued_rows=32, waited_s=0.0, in_flight=1) == 0.0


def test_no_wait_once_everyone_arrivals_have_been_finding_is_here() -> None:
    """Arrivals found 0-3 others (1.5 on average: bursts of 4, as a 4-deep stream sends):
    with 2 of them in flight the first waits, with all 4 it starts at once."""
    policy = BatchPolicy(BatchLimits(max_wait_s=0.01))
    for n in list(range(1, 33)) * 3:
        policy.on_pass(n, GPU_LIKE[0] + GPU_LIKE[1] * n)
    for i in range(50):
        for others in range(4):
            policy.on_arrival(others, 1, now=i * 0.01)  # each burst's four at once
    assert policy.wait_s(queued_rows=2, waited_s=0.0, in_flight=2) > 0
    assert policy.wait_s(queued_rows=4, waited_s=0.0, in_flight=4) == 0.0


def test_wait_is_bounded_by_the_setting() -> None:
    policy = _taught(BatchPolicy(BatchLimits(max_wait_s=0.002)), GPU_LIKE, others=20)
    assert policy.wait_s(queued_rows=1, waited_s=0.0, in_flight=1) == pytest.approx(0.002)
    off = _taught(BatchPolicy(BatchLimits(max_wait_s=0.0)), GPU_LIKE, others=20)
    assert off.wait_s(queued_rows=1, waited_s=0.0, in_flight=1) == 0.0


def test_gathers_towards_the_preferred_size_while_arrivals_keep_coming() -> None:
    """Arrivals 0.5 ms apart, each finding others in flight, and no fixed cost to pay for:
    the oldest waits as long as the preferred rows take to arrive, within the setting."""
    limits = BatchLimits(max_wait_s=0.005, preferred_batch_size=8)
    policy = _taught(BatchPolicy(limits), CPU_LIKE, others=6, gap_s=0.0005)
    assert policy.row_gap_s() == pytest.approx(0.0005)
    assert policy.wait_s(queued_rows=2, waited_s=0.0, in_flight=2) == pytest.approx(0.003)
    assert policy.wait_s(queued_rows=2, waited_s=0.004, in_flight=2) == pytest.approx(0.001)
    assert policy.wait_s(queued_rows=8, waited_s=0.0, in_flight=8) == 0.0  # gathered
    # Less than one arrival's gap left: no one more is expected in time.
    assert policy.wait_s(queued_rows=2, waited_s=0.0046, in_flight=2) == 0.0


def test_arrivals_count_in_rows() -> None:
    """Arrivals of 4 rows each, 1 ms apart: a row every 0.25 ms."""
    limits = BatchLimits(max_wait_s=0.005, preferred_batch_size=8)
    policy = _taught(BatchPolicy(limits), CPU_LIKE, others=6, gap_s=0.001, rows=4)
    assert policy.row_gap_s() == pytest.approx(0.00025)
    assert policy.wait_s(queued_rows=4, waited_s=0.0, in_flight=1) == pytest.approx(0.001)


def test_no_gathering_when_the_rows_would_not_come_in_time() -> None:
    """Arrivals 6 ms apart against a 5 ms wait: waiting would only add latency."""
    limits = BatchLimits(max_wait_s=0.005, preferred_batch_size=8)
    slow = _taught(BatchPolicy(limits), CPU_LIKE, others=6, gap_s=0.006)
    assert slow.wait_s(queued_rows=1, waited_s=0.0, in_flight=1) == 0.0


def test_no_gathering_for_a_lone_request_or_with_the_setting_off() -> None:
    limits = BatchLimits(max_wait_s=0.005, preferred_batch_size=8)
    lone = _taught(BatchPolicy(limits), CPU_LIKE, others=0, gap_s=0.0005)
    assert lone.wait_s(queued_rows=1, waited_s=0.0, in_flight=1) == 0.0
    off = _taught(BatchPolicy(BatchLimits(max_wait_s=0.005)), CPU_LIKE, others=6, gap_s=0.0005)
    assert off.wait_s(queued_rows=1, waited_s=0.0, in_flight=1) == 0.0


def test_the_preferred_size_never_exceeds_the_cap() -> None:
    """A latency target that shrinks the cap to 6 rows (RESNET_LIKE) bounds the gathering."""
    limits = BatchLimits(max_wait_s=0.005, preferred_batch_size=16, latency_target_s=0.100)
    policy = _taught(BatchPolicy(limits), RESNET_LIKE, others=20, gap_s=0.0005)
    policy.on_pass(6, RESNET_LIKE[0] + 6 * RESNET_LIKE[1])
    assert policy.cap == 6
    assert policy.wait_s(queued_rows=6, waited_s=0.0, in_flight=6) == 0.0


def test_a_pass_runs_inline_only_when_requests_come_alone_and_it_is_short() -> None:
    short = (0.0001, 0.0001)  # 0.2 ms at one row, 3.3 ms at 32
    assert _taught(BatchPolicy(BatchLimits()), short, others=0).runs_inline(1, 1.0)
    assert not _taught(BatchPolicy(BatchLimits()), short, others=0).runs_inline(32, 1.0)
    assert not _taught(BatchPolicy(BatchLimits()), short, others=3).runs_inline(1, 1.0)  # company
    # A 1 ms pass, as the MNIST convnet's lone pass measured on a slow day: the hop is still
    # worth saving.
    assert _taught(BatchPolicy(BatchLimits()), (0.0, 0.001), others=0).runs_inline(1, 1.0)
    slow = (0.0, INLINE_MAX_S * 2)
    assert not _taught(BatchPolicy(BatchLimits()), slow, others=0).runs_inline(1, 1.0)
    assert not BatchPolicy(BatchLimits()).runs_inline(1, 1.0)  # nothing measured yet
    lone = _taught(BatchPolicy(BatchLimits()), short, others=0)
    assert not lone.runs_inline(1, 0.00001)  # the model just finished a pass: under load


def test_a_pass_right_after_another_leaves_the_loop() -> None:
    """Lone requests with the model idle run on the loop; one that starts as the last pass
    ends (on a clock that has not moved) goes to the worker thread, so a loop kept busy by
    passes never hides the company arrivals would find."""
    threads: list[int] = []
    clock = FakeClock()

    async def main() -> int:
        batcher = Batcher(_thread_recording(threads), BatchLimits(), clock=clock)
        _taught(batcher.policy, (0.0001, 0.0001), others=0)
        await batcher.submit("m", _rows(1, 1.0))
        await batcher.submit("m", _rows(1, 2.0))  # no time since the last pass ended
        clock.now += 0.001
        await batcher.submit("m", _rows(1, 3.0))
        return threading.get_ident()

    loop_thread = _run(main)
    assert [t == loop_thread for t in threads] == [True, False, True]


def test_limits_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        BatchLimits(max_batch_size=0)
    with pytest.raises(ValueError, match=">= 0"):
        BatchLimits(latency_target_s=-1)
    with pytest.raises(ValueError, match="preferred_batch_size"):
        BatchLimits(preferred_batch_size=-1)


def test_latency_target_sizes_passes_from_their_cost() -> None:
    """Two passes of the cap fit the target: (0.100 / 2 - 0.0045) / 0.0074 = 6.1 rows."""
    policy = BatchPolicy(BatchLimits(max_batch_size=32, latency_target_s=0.100))
    assert policy.cap == 32  # nothing measured yet
    a, b = RESNET_LIKE
    for n in list(range(1, 33)) * 3:
        policy.on_pass(rows=n, compute_s=a + b * n)
    assert policy.cap == 6


def test_new_limits_keep_what_was_learned() -> None:
    """A config update (every one reconfigures the batcher) keeps the cost model: the cap
    follows the new target at once instead of starting from max_batch_size."""
    policy = _resnet_like(BatchLimits(max_batch_size=32, latency_target_s=0.100))
    policy.configure(BatchLimits(max_batch_size=32, latency_target_s=0.100))
    assert policy.cap == 6
    policy.configure(BatchLimits(max_batch_size=32, latency_target_s=0.200))
    assert policy.cap == 12  # (0.100 - 0.0045) / 0.0074 = 12.9
    policy.configure(BatchLimits(max_batch_size=32))
    assert policy.cap == 32


def test_passes_of_one_size_count_as_all_per_row_cost() -> None:
    """Every pass full at 32 rows (sustained overload): the fixed and per-row costs cannot be
    told apart, so all of it counts per row, which errs towards smaller passes."""
    policy = BatchPolicy(BatchLimits(max_batch_size=32, latency_target_s=0.100))
    for _ in range(5):
        policy.on_pass(rows=32, compute_s=0.240)  # 7.5 ms a row
    assert policy.cap == 6  # 0.050 / 0.0075 = 6.7


def test_a_target_shorter_than_one_row_keeps_one_row_and_the_cap_never_exceeds_the_max() -> None:
    tight = BatchPolicy(BatchLimits(max_batch_size=32, latency_target_s=0.001))
    tight.on_pass(rows=1, compute_s=0.012)
    assert tight.cap == 1
    loose = BatchPolicy(BatchLimits(max_batch_size=16, latency_target_s=10.0))
    loose.on_pass(rows=1, compute_s=0.012)
    assert loose.cap == 16


def test_no_latency_target_keeps_the_cap_at_the_maximum_and_refuses_nothing() -> None:
    policy = BatchPolicy(BatchLimits(max_batch_size=16))
    policy.on_pass(rows=16, compute_s=5.0)
    assert policy.cap == 16
    assert policy.refuses(rows=1, ahead_rows=1_000, busy_s=5.0) is None


def test_admission_predicts_the_finish_behind_the_queue() -> None:
    policy = BatchPolicy(BatchLimits(max_batch_size=32, latency_target_s=0.100))
    a, b = RESNET_LIKE
    for n in list(range(1, 33)) * 3:
        policy.on_pass(rows=n, compute_s=a + b * n)
    # 5 rows ahead + 1: one pass of 6 after the running one's 10 ms.
    assert policy.finish_s(rows=1, ahead_rows=5, busy_s=0.010) == pytest.approx(0.010 + a + 6 * b)
    assert policy.refuses(rows=1, ahead_rows=5, busy_s=0.010) is None  # 59 ms
    # 11 rows ahead + 1: two passes of 6 after 10 ms: 108 ms, over the target.
    assert policy.refuses(rows=1, ahead_rows=11, busy_s=0.010) == pytest.approx(
        0.010 + 2 * a + 12 * b
    )
    # An idle model takes anything, even an item that alone is over the target.
    assert policy.refuses(rows=32, ahead_rows=0, busy_s=0.0) is None


# ---- the batcher --------------------------------------------------------------------------


def test_a_lone_item_runs_at_once_without_waiting() -> None:
    """c=1: the item's pass starts in the same step it was queued, with zero queue wait on a
    clock that does not move, and no timer is armed, even where waiting could pay."""
    clock = FakeClock()
    reports: list[PassReport[str]] = []

    async def main() -> Outputs:
        batcher = Batcher(
            _doubling, BatchLimits(max_wait_s=1.0), on_pass=reports.append, clock=clock
        )
        _taught(batcher.policy, GPU_LIKE, others=0)
        task = asyncio.create_task(batcher.submit("m", _rows(1, 1.0)))
        await asyncio.sleep(0)  # the submit runs up to its await
        assert batcher.queued == 0  # already in a pass
        assert batcher._timer is None
        return await task

    outputs = _run(main)
    np.testing.assert_array_equal(outputs["y"], _rows(1, 2.0))
    assert [(r.rows, r.queue_waits) for r in reports] == [(1, (0.0,))]


def _thread_recording(threads: list[int]) -> Callable[[str, np.ndarray], Outputs]:
    def run(key: str, batch: np.ndarray) -> Outputs:
        threads.append(threading.get_ident())
        return {"y": batch * 2}

    return run


@pytest.mark.parametrize(
    ("cost", "others", "on_loop"),
    [
        ((0.0001, 0.0001), 0, True),  # lone requests, a 0.2 ms pass: on the loop
        ((0.0001, 0.0001), 6, False),  # others in flight: the worker thread
        ((0.0, 0.002), 0, False),  # a 2 ms pass would hold the loop: the worker thread
    ],
)
def test_where_a_lone_pass_runs(cost: tuple[float, float], others: int, on_loop: bool) -> None:
    threads: list[int] = []

    async def main() -> tuple[int, Outputs]:
        batcher = Batcher(_thread_recording(threads), BatchLimits())
        _taught(batcher.policy, cost, others=others)
        return threading.get_ident(), await batcher.submit("m", _rows(1, 3.0))

    loop_thread, outputs = _run(main)
    np.testing.assert_array_equal(outputs["y"], _rows(1, 6.0))
    assert (threads == [loop_thread]) is on_loop
    assert len(threads) == 1


def test_a_failing_inline_pass_fails_its_item_only() -> None:
    calls = 0

    def run(key: str, batch: np.ndarray) -> Outputs:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("model broke")
        return {"y": batch}

    async def main() -> Outputs:
        batcher = Batcher(run, BatchLimits())
        _taught(batcher.policy, (0.0001, 0.0001), others=0)
        with pytest.raises(RuntimeError, match="model broke"):
            await batcher.submit("m", _rows(1, 1.0))
        return await batcher.submit("m", _rows(1, 2.0))

    np.testing.assert_array_equal(_run(main)["y"], _rows(1, 2.0))


def _gated(seen: list[np.ndarray], gate: threading.Event) -> Callable[[str, np.ndarray], Outputs]:
    def run(key: str, batch: np.ndarray) -> Outputs:
        gate.wait(10)  # hold the first pass until every item is queued
        seen.append(batch)
        return {"y": batch * 2, "key": np.array([key] * len(batch))}

    return run


def test_passes_are_counted_in_rows_and_never_split_an_item() -> None:
    """40 requests of 7 rows, max_batch_size 16: no pass over 16 rows, each gets its own."""
    seen: list[np.ndarray] = []
    gate = threading.Event()

    async def main() -> list[Outputs]:
        batcher = Batcher(_gated(seen, gate), BatchLimits(max_batch_size=16))
        tasks = [asyncio.create_task(batcher.submit("m", _rows(7, i))) for i in range(40)]
        while batcher.queued < 39:
            await asyncio.sleep(0)
        gate.set()
        return await asyncio.gather(*tasks)

    results = _run(main)
    for i, outputs in enumerate(results):
        np.testing.assert_array_equal(outputs["y"], _rows(7, 2.0 * i))
    sizes = [len(batch) for batch in seen]
    assert max(sizes) <= 16
    assert sum(sizes) == 280
    assert sizes == [7] + [14] * 19 + [7]  # the first alone, the rest two by two
    for batch in seen:  # whole items: each value's rows all in one pass
        values, counts = np.unique(batch[:, 0], return_counts=True)
        assert set(counts.tolist()) == {7}, values


def test_an_item_over_the_maximum_is_refused_before_queueing() -> None:
    async def main() -> None:
        batcher = Batcher(_doubling, BatchLimits(max_batch_size=4))
        with pytest.raises(ValueError, match=r"1\.\.4 rows, got 5"):
            await batcher.submit("m", _rows(5, 0.0))
        assert batcher.queued == 0

    _run(main)


def test_items_of_different_models_never_share_a_pass() -> None:
    seen: list[np.ndarray] = []
    gate = threading.Event()

    async def main() -> list[Outputs]:
        batcher = Batcher(_gated(seen, gate), BatchLimits(max_batch_size=32))
        keys = ["old", "old", "new", "old", "new"]
        tasks = [asyncio.create_task(batcher.submit(k, _rows(1, i))) for i, k in enumerate(keys)]
        while batcher.queued < 4:
            await asyncio.sleep(0)
        gate.set()
        return await asyncio.gather(*tasks)

    results = _run(main)
    assert [r["key"][0] for r in results] == ["old", "old", "new", "old", "new"]
    passes = [sorted(batch[:, 0].tolist()) for batch in seen]
    assert passes == [[0.0], [1.0, 3.0], [2.0, 4.0]]


def test_a_failing_pass_fails_only_its_items() -> None:
    gate = threading.Event()

    def run(key: str, batch: np.ndarray) -> Outputs:
        gate.wait(10)
        if (batch[:, 0] < 0).any():
            raise RuntimeError("bad pass")
        return {"y": batch * 2}

    async def main() -> list[Any]:
        batcher = Batcher(run, BatchLimits(max_batch_size=2))
        tasks = [
            asyncio.create_task(batcher.submit("m", _rows(1, v))) for v in (1.0, -1.0, 2.0, 3.0)
        ]
        while batcher.queued < 3:
            await asyncio.sleep(0)
        gate.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    first, bad, shared, last = _run(main)
    np.testing.assert_array_equal(first["y"], _rows(1, 2.0))
    assert isinstance(bad, RuntimeError) and isinstance(shared, RuntimeError)  # one pass
    np.testing.assert_array_equal(last["y"], _rows(1, 6.0))


def test_a_cancelled_item_leaves_the_queue_before_its_pass() -> None:
    seen: list[np.ndarray] = []
    dropped: list[str] = []
    gate = threading.Event()

    async def main() -> None:
        batcher = Batcher(
            _gated(seen, gate), BatchLimits(max_batch_size=32), on_drop=dropped.append
        )
        first = asyncio.create_task(batcher.submit("m", _rows(1, 0.0)))
        gone = asyncio.create_task(batcher.submit("m", _rows(1, 1.0)))
        kept = asyncio.create_task(batcher.submit("m", _rows(1, 2.0)))
        while batcher.queued < 2:
            await asyncio.sleep(0)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert batcher.queued == 1
        gate.set()
        await asyncio.gather(first, kept)

    _run(main)
    assert [batch[:, 0].tolist() for batch in seen] == [[0.0], [2.0]]
    assert dropped == ["m"]  # counted as dropped before compute, once


def test_an_item_cancelled_during_its_pass_is_not_counted_as_dropped() -> None:
    started = threading.Event()
    gate = threading.Event()
    dropped: list[str] = []

    def run(key: str, batch: np.ndarray) -> Outputs:
        started.set()
        gate.wait(10)
        return {"y": batch}

    async def main() -> None:
        batcher = Batcher(run, BatchLimits(), on_drop=dropped.append)
        task = asyncio.create_task(batcher.submit("m", _rows(1, 0.0)))
        await asyncio.to_thread(started.wait, 10)
        task.cancel()
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task

    _run(main)
    assert dropped == []


def test_concurrent_passes_overlap_up_to_the_limit() -> None:
    both = threading.Barrier(2, timeout=10)  # broken unless two passes run at once

    def run(key: str, batch: np.ndarray) -> Outputs:
        both.wait()
        return {"y": batch}

    async def main() -> list[Outputs]:
        batcher = Batcher(run, BatchLimits(max_concurrent=2))
        return await asyncio.gather(*(batcher.submit("m", _rows(1, i)) for i in range(2)))

    assert len(_run(main)) == 2


def test_waiting_gathers_company_when_it_pays() -> None:
    """With a fixed cost to amortise and others in flight, two items queued together share
    one pass; without the cost model the first runs at once, alone."""
    seen: list[np.ndarray] = []

    def run(key: str, batch: np.ndarray) -> Outputs:
        seen.append(batch)
        return {"y": batch}

    async def main(teach: bool) -> None:
        batcher = Batcher(run, BatchLimits(max_wait_s=0.05))
        if teach:
            _taught(batcher.policy, (0.05, 0.0001), others=20)
        await asyncio.gather(*(batcher.submit("m", _rows(1, i)) for i in range(2)))

    asyncio.run(main(teach=True))
    assert [len(batch) for batch in seen] == [2]
    seen.clear()
    asyncio.run(main(teach=False))
    assert [len(batch) for batch in seen] == [1, 1]


def test_a_pass_gathers_the_preferred_rows_while_arrivals_keep_coming() -> None:
    """Items 0.5 ms apart on the batcher's clock, as arrivals have been coming: with a
    preferred size of 4 the first waits and the four share one pass; without it the first
    runs at once, alone (no fixed cost to wait for)."""
    seen: list[np.ndarray] = []

    def run(key: str, batch: np.ndarray) -> Outputs:
        seen.append(batch)
        return {"y": batch}

    async def main(preferred: int) -> None:
        clock = FakeClock()
        limits = BatchLimits(max_wait_s=1.0, preferred_batch_size=preferred)
        batcher = Batcher(run, limits, clock=clock)
        _taught(batcher.policy, CPU_LIKE, others=6, gap_s=0.0005)
        clock.now = 200 * 0.0005  # the next arrival, 0.5 ms after the taught ones
        tasks = []
        for i in range(4):
            tasks.append(asyncio.create_task(batcher.submit("m", _rows(1, i))))
            await asyncio.sleep(0)  # the submit queues its item
            clock.now += 0.0005
        await asyncio.gather(*tasks)

    asyncio.run(main(preferred=4))
    assert [len(batch) for batch in seen] == [4]
    seen.clear()
    asyncio.run(main(preferred=0))
    assert len(seen[0]) == 1


def test_a_failing_report_does_not_fail_the_items() -> None:
    def broken(report: PassReport[str]) -> None:
        raise RuntimeError("metrics down")

    async def main() -> Outputs:
        batcher = Batcher(_doubling, BatchLimits(), on_pass=broken)
        return await batcher.submit("m", _rows(2, 1.0))

    np.testing.assert_array_equal(_run(main)["y"], _rows(2, 2.0))


def test_an_item_that_would_finish_past_the_target_is_refused_at_once() -> None:
    """A real batcher with a fake clock: the model busy, items queue until the predicted
    finish passes the target; the next is refused with the figures, and nothing it held
    is left in the queue. The queued ones are answered when the pass ends."""
    clock = FakeClock()
    gate = threading.Event()
    seen: list[np.ndarray] = []

    async def main() -> tuple[int, str, list[Outputs]]:
        batcher = Batcher(
            _gated(seen, gate),
            BatchLimits(max_batch_size=32, latency_target_s=0.100),
            clock=clock,
        )
        a, b = RESNET_LIKE
        for n in list(range(1, 33)) * 3:
            batcher.policy.on_pass(rows=n, compute_s=a + b * n)
        first = asyncio.create_task(batcher.submit("m", _rows(1, 0.0)))  # idle: runs at once
        await asyncio.sleep(0)
        tasks = [first]
        refusal = ""
        for i in range(1, 40):
            try:
                task = asyncio.create_task(batcher.submit("m", _rows(1, i)))
                await asyncio.sleep(0)
                if task.done():
                    task.result()
                tasks.append(task)
            except OverloadedError as exc:
                refusal = str(exc)
                break
        queued = batcher.queued
        gate.set()
        return queued, refusal, await asyncio.gather(*tasks)

    queued, refusal, answered = _run(main)
    # The first pass (1 row) has 11.9 ms left on a clock that does not move; queued rows run
    # in passes of 6: with 9 ahead, the 10th finishes in 11.9 + 2 x 4.5 + 10 x 7.4 = 94.9 ms;
    # with 10 ahead the 11th would take 102.3 ms, over 100 ms: refused.
    assert queued == 10
    assert "about 102 ms, over the latency target of 100 ms" in refusal
    assert len(answered) == 11
    assert sum(len(batch) for batch in seen) == 11


def _resnet_like(limits: BatchLimits) -> BatchPolicy:
    policy = BatchPolicy(limits)
    a, b = RESNET_LIKE
    for n in list(range(1, 33)) * 3:
        policy.on_pass(rows=n, compute_s=a + b * n)
    return policy


def test_slack_learns_the_99th_percentile_of_actual_minus_predicted() -> None:
    policy = _resnet_like(BatchLimits(latency_target_s=0.100))
    late = np.random.default_rng(0).uniform(0.0, 0.050, size=20_000)  # 99th pct: 49.5 ms
    for extra in late:
        policy.on_answer(predicted_s=0.050, actual_s=0.050 + extra)
    assert policy.slack_s == pytest.approx(0.0495, abs=0.004)


def test_slack_never_credits_answers_faster_than_predicted() -> None:
    policy = _resnet_like(BatchLimits(latency_target_s=0.100))
    for _ in range(1_000):
        policy.on_answer(predicted_s=0.050, actual_s=0.010)
    assert policy.slack_s == 0.0


def test_slack_tightens_admission_and_leaves_the_cap() -> None:
    policy = _resnet_like(BatchLimits(latency_target_s=0.100))
    assert policy.cap == 6
    assert policy.refuses(rows=1, ahead_rows=5, busy_s=0.010) is None  # 59 ms predicted
    for _ in range(200):
        policy.on_answer(predicted_s=0.050, actual_s=0.100)  # every answer 50 ms late
    assert policy.slack_s == pytest.approx(0.050, abs=0.002)
    a, b = RESNET_LIKE
    policy.on_pass(rows=6, compute_s=a + 6 * b)
    assert policy.cap == 6  # passes as efficient as before: the slack is queue time
    # The same item as above, plus the slack: over 100 ms.
    refused = policy.refuses(rows=1, ahead_rows=5, busy_s=0.010)
    assert refused == pytest.approx(0.010 + a + 6 * b + 0.050, abs=0.002)


def test_the_batcher_reports_each_answer_against_its_prediction() -> None:
    """A pass that takes 4x what the cost model predicts: the slack grows."""
    clock = FakeClock()

    def slow(key: str, batch: np.ndarray) -> Outputs:
        clock.now += 4 * (RESNET_LIKE[0] + RESNET_LIKE[1] * len(batch))
        return {"y": batch}

    async def main() -> float:
        batcher = Batcher(slow, BatchLimits(latency_target_s=0.100), clock=clock)
        a, b = RESNET_LIKE
        for n in list(range(1, 33)) * 3:
            batcher.policy.cost.observe(n, a + b * n)
        await batcher.submit("m", _rows(1, 0.0))
        return batcher.policy.slack_s

    assert _run(main) == pytest.approx(0.02 * 0.100 * 0.99)  # one step up


def test_the_switch_interval_is_shortened_for_passes_beside_the_loop() -> None:
    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        shorten_switch_interval()
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL_S)
    finally:
        sys.setswitchinterval(before)
