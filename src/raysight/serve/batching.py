"""Dynamic batching counted in images: many requests' rows, one forward pass.

Pure asyncio and numpy: the model is whatever `run(key, batch)` does, in a worker thread,
or on the event loop for a lone short pass when the policy says so.

**Dispatch when free.** Whenever fewer than `max_concurrent` passes run and something is
queued, a pass starts, unless the policy has the oldest item wait a little for company. It
takes the oldest item and, in arrival order, the queued items
checked against the same model (a swap may land while items queue; different models never
share a pass) while their rows fit the row cap; it stops at the first that does not fit,
so a large request is never overtaken for long. An item is never split, and the oldest
always goes, even when it alone is over a shrunken cap. Items that arrive while passes run
wait and form the next batch: batches grow with load, a timer only bounds a wait, and a
lone request runs at once. The row cap, whether to wait for company and whether to
take an item at all are the policy's (serve/batch_policy.py).

Exceptions in a pass fail that pass's items only. An item whose caller goes away before its
pass starts leaves the queue.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

from raysight.serve.batch_policy import BatchLimits, BatchPolicy, OverloadedError

logger = logging.getLogger(__name__)

SWITCH_INTERVAL_S = 0.0002
"""How long a thread may hold the interpreter lock while another waits for it, in a process
that runs passes beside an event loop (`shorten_switch_interval`)."""

K = TypeVar("K", bound=Hashable)
Outputs = dict[str, np.ndarray]
"""A forward pass's outputs by name, each with the batch as its first dimension."""


@dataclass(eq=False)
class _Item(Generic[K]):
    """One request's rows, tied to the model (key) it was checked against."""

    key: K
    inputs: np.ndarray  # (B_i, ...) the request's rows
    queued_at: float
    future: asyncio.Future[Outputs] = field(repr=False)
    predicted_s: float | None = None  # the policy's predicted finish, when it made one

    @property
    def rows(self) -> int:
        return len(self.inputs)


@dataclass(frozen=True)
class PassReport(Generic[K]):
    """What one successful forward pass did, for metrics and statistics.

    Attributes:
        key: The model the pass ran on.
        rows: Images in the pass.
        queue_waits: Seconds each item waited before the pass started, oldest first.
        compute_s: Seconds the pass took in `run`.
        outputs: The whole pass's outputs, (rows, ...) each.
    """

    key: K
    rows: int
    queue_waits: tuple[float, ...]
    compute_s: float
    outputs: Outputs


class Batcher(Generic[K]):
    """Queues items and runs them in forward passes off the event loop, but for a lone short
    pass (module policy).

    Args:
        run: The forward pass: (key, (N, ...) batch) -> outputs with N rows each. Called in
            a worker thread, at most `limits.max_concurrent` at once; on the event loop for
            a lone pass the policy predicts short (`BatchPolicy.runs_inline`).
        limits: The knobs.
        on_pass: Called on the event loop after each successful pass; its errors are logged
            and never reach the items.
        on_drop: Called with an item's key when its caller went away (a passed deadline, a
            cancel) before any pass took it: dropped before compute.
        clock: Monotonic seconds; a test may pass its own.
    """

    def __init__(
        self,
        run: Callable[[K, np.ndarray], Outputs],
        limits: BatchLimits,
        *,
        on_pass: Callable[[PassReport[K]], None] | None = None,
        on_drop: Callable[[K], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._run = run
        self._on_pass = on_pass
        self._on_drop = on_drop
        self._clock = clock
        self.policy = BatchPolicy(limits)
        self._executor = _executor(limits.max_concurrent)
        self._queue: list[_Item[K]] = []
        # Running passes by the id of their item list: (started at, rows).
        self._running: dict[int, tuple[float, int]] = {}
        self._in_passes = 0  # items in those passes
        self._tasks: set[asyncio.Task[None]] = set()  # held so they are not collected
        self._timer: asyncio.TimerHandle | None = None
        self._last_end = -float("inf")  # when the last pass ended

    @property
    def limits(self) -> BatchLimits:
        return self.policy.limits

    @property
    def queued(self) -> int:
        """Items waiting for a pass."""
        return len(self._queue)

    def configure(self, limits: BatchLimits) -> None:
        """Apply new limits; passes already running finish as they are."""
        if limits.max_concurrent != self.limits.max_concurrent:
            self._executor.shutdown(wait=False)
            self._executor = _executor(limits.max_concurrent)
        self.policy.configure(limits)
        self._kick()

    def close(self) -> None:
        """Let the worker threads end once their passes finish."""
        self._executor.shutdown(wait=False)

    async def submit(self, key: K, inputs: np.ndarray) -> Outputs:
        """Queue `inputs` (B, ...) for a pass on `key`; its B rows of every output.

        Raises:
            ValueError: If B is 0 or over max_batch_size (the caller refuses such requests).
            OverloadedError: If the item would be answered after the latency target.
            Exception: Whatever `run` raised for this item's pass.
        """
        rows = len(inputs)
        if not 1 <= rows <= self.limits.max_batch_size:
            raise ValueError(f"an item needs 1..{self.limits.max_batch_size} rows, got {rows}")
        predicted = self._admit(rows)
        future = asyncio.get_running_loop().create_future()
        now = self._clock()
        item = _Item(key, inputs, now, future, predicted)
        self.policy.on_arrival(len(self._queue) + self._in_passes, rows, now)
        self._queue.append(item)
        self._kick()
        try:
            return await item.future
        except asyncio.CancelledError:
            if item in self._queue:  # not started: no pass will carry it
                self._queue.remove(item)
                if self._on_drop is not None:
                    self._on_drop(key)
            raise

    def _admit(self, rows: int) -> float | None:
        """The predicted finish of a new item of `rows` (None without a latency target),
        which the policy later learns from.

        Raises:
            OverloadedError: If the policy refuses it.
        """
        target = self.limits.latency_target_s
        if target <= 0:
            return None
        ahead, busy = sum(item.rows for item in self._queue), self._busy_s()
        finish = self.policy.refuses(rows, ahead, busy)
        if finish is not None:
            raise OverloadedError(
                f"server at capacity: this request would be answered in about "
                f"{finish * 1000:.0f} ms, over the latency target of {target * 1000:.0f} ms; "
                "retry with backoff"
            )
        return self.policy.finish_s(rows, ahead, busy)

    def _busy_s(self) -> float:
        """How long until a pass slot frees: 0 while one is free, else the soonest predicted
        end of the running passes."""
        if len(self._running) < self.limits.max_concurrent:
            return 0.0
        now = self._clock()
        return min(
            self.policy.remaining_s(rows, now - started) for started, rows in self._running.values()
        )

    # ---- dispatch ---------------------------------------------------------------------------

    def _kick(self) -> None:
        """Start passes while a slot is free and something is queued (or arm the wait)."""
        while self._queue and len(self._running) < self.limits.max_concurrent:
            items = self._take()
            head = items[0]
            rows = sum(item.rows for item in items)
            waited = self._clock() - head.queued_at
            wait = self.policy.wait_s(rows, waited, len(self._queue) + self._in_passes)
            if wait > 0:
                self._arm(wait)
                return
            self._start(self._pop(items))
        self._disarm()

    def _take(self) -> list[_Item[K]]:
        """The next pass: the oldest item, then same-model items while they fit the cap."""
        head = self._queue[0]
        taken, rows = [head], head.rows
        for item in self._queue[1:]:
            if item.key != head.key:
                continue  # another model's items wait for a pass of their own
            if rows + item.rows > self.policy.cap:
                break
            taken.append(item)
            rows += item.rows
        return taken

    def _pop(self, items: list[_Item[K]]) -> list[_Item[K]]:
        chosen = set(map(id, items))
        self._queue = [item for item in self._queue if id(item) not in chosen]
        return items

    def _arm(self, delay: float) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._kick()

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _start(self, items: list[_Item[K]]) -> None:
        rows = sum(item.rows for item in items)
        now = self._clock()
        inline = (
            not self._queue
            and not self._running
            and self.policy.runs_inline(rows, now - self._last_end)
        )
        self._running[id(items)] = (now, rows)
        self._in_passes += len(items)
        task = asyncio.get_running_loop().create_task(self._pass(items, inline))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- one pass ---------------------------------------------------------------------------

    async def _pass(self, items: list[_Item[K]], inline: bool) -> None:
        started = self._clock()
        key = items[0].key
        batch = (
            items[0].inputs if len(items) == 1 else np.concatenate([i.inputs for i in items])
        )  # (sum B_i, ...)
        loop = asyncio.get_running_loop()
        try:
            if inline:  # a lone short pass: cheaper than the hop to the worker and back
                outputs = self._run(key, batch)
            else:
                outputs = await loop.run_in_executor(self._executor, self._run, key, batch)
        except BaseException as exc:  # the whole pass failed: its items fail, no other
            self._finish(items)
            for item in items:
                _fail(item, exc)
            if not isinstance(exc, Exception):
                raise  # cancelled: the loop is shutting down
            return
        ended = self._clock()
        compute = ended - started
        self.policy.on_pass(len(batch), compute)
        self._finish(items)  # the next pass starts now, with the cap just updated
        offset = 0
        for item in items:
            if not item.future.done():  # done: its caller went away while the pass ran
                item.future.set_result(
                    {k: v[offset : offset + item.rows] for k, v in outputs.items()}
                )
            if item.predicted_s is not None:
                self.policy.on_answer(item.predicted_s, ended - item.queued_at)
            offset += item.rows
        self._report(key, items, started, compute, outputs)

    def _finish(self, items: list[_Item[K]]) -> None:
        self._last_end = self._clock()
        del self._running[id(items)]
        self._in_passes -= len(items)
        self._kick()

    def _report(
        self, key: K, items: list[_Item[K]], started: float, compute: float, outputs: Outputs
    ) -> None:
        if self._on_pass is None:
            return
        waits = tuple(started - item.queued_at for item in items)
        rows = sum(item.rows for item in items)
        try:
            self._on_pass(PassReport(key, rows, waits, compute, outputs))
        except Exception:
            logger.exception("recording a forward pass failed")


def shorten_switch_interval() -> None:
    """Let a forward pass in its worker thread take the interpreter lock back quickly.

    torch releases the lock in every operation and must take it again to go on; while the
    event loop runs Python, each retake waits up to the switch interval (5 ms by default).
    Measured in one process on 2 cores: a 0.21 ms batch-1 pass took 41 ms beside a thread
    running Python at 5 ms, 1.9 ms at 0.2 ms. In `raysight serve` (two replicas, MNIST
    convnet in channels-last, three alternations, median req/s) 0.2 ms answered 4-17% more
    requests, unary and streamed, at 1 and at 32 callers (docs/benchmarks.md).
    The whole process shares the setting; call it once where the batcher runs.
    """
    sys.setswitchinterval(SWITCH_INTERVAL_S)


def _fail(item: _Item[K], error: BaseException) -> None:
    if item.future.done():
        return
    if isinstance(error, Exception):
        item.future.set_exception(error)
    else:
        item.future.cancel()


def _executor(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="raysight-forward")
