"""Per-request metrics gathered on the event loop, handed to Ray's metrics from a thread.

Every call into Ray's metrics (`Counter.inc`, `Histogram.observe`) leaves the interpreter
lock in C++ and must take it back, behind whichever thread took it meanwhile (the forward
pass, gRPC's pollers). A replica made five or more such calls an image on its event loop,
which then waited for the lock at each (docs/benchmarks.md, "Serving: metrics off the
event loop"). Here the loop only adds to dicts under a lock it shares with one flusher
thread, which every `FLUSH_PERIOD_S` takes what has gathered and hands it to Ray:

- a counter's increments, summed per label set: one `Counter.inc` per series and flush;
- a histogram's observations, one `Histogram.observe` each (Ray's takes one value a call),
  so the thread waits for the lock at each, and the loop does not.

What Prometheus sees is unchanged but for the delay (at most `FLUSH_PERIOD_S`, under Ray's
own export period). A replica that stops loses at most its last period's records.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ray.util import metrics

logger = logging.getLogger(__name__)

FLUSH_PERIOD_S = 1.0
"""How often records reach Ray's metrics; Ray exports to Prometheus on its own, longer,
period."""

Labels = tuple[tuple[str, str], ...]
"""A label set as its (key, value) pairs, in its dict's order: not sorted on the hot path,
as the same series reached in two orders is only two calls, which Ray sums."""


class MetricBuffer:
    """The lock, the pending records and the flusher thread that one replica's buffered
    metrics share.

    Args:
        period_s: Seconds between flushes.
        start: Start the flusher thread; without it, records wait for `flush`.
    """

    def __init__(self, period_s: float = FLUSH_PERIOD_S, *, start: bool = True) -> None:
        self.lock = threading.Lock()
        self._metrics: list[BufferedCounter | BufferedHistogram] = []
        self._period_s = period_s
        if start:
            threading.Thread(target=self._run, name="raysight-metrics", daemon=True).start()

    def counter(self, name: str, *, description: str, tag_keys: Sequence[str]) -> BufferedCounter:
        counter = BufferedCounter(self, name, description, tuple(tag_keys))
        self._metrics.append(counter)
        return counter

    def histogram(
        self,
        name: str,
        *,
        description: str,
        boundaries: Sequence[float],
        tag_keys: Sequence[str],
    ) -> BufferedHistogram:
        histogram = BufferedHistogram(self, name, description, boundaries, tuple(tag_keys))
        self._metrics.append(histogram)
        return histogram

    def flush(self) -> None:
        """Hand every pending record to Ray's metrics now (on the caller's thread)."""
        with self.lock:
            exports = [(metric.name, metric.take()) for metric in self._metrics]
        for name, export in exports:
            try:
                export()
            except Exception:  # a bad label set loses its records, never the thread
                logger.exception("exporting %s failed", name)

    def _run(self) -> None:
        while True:
            time.sleep(self._period_s)
            self.flush()


class BufferedCounter:
    """A Ray Counter whose increments are summed per label set between flushes."""

    def __init__(
        self, buffer: MetricBuffer, name: str, description: str, tag_keys: tuple[str, ...]
    ) -> None:
        self._buffer = buffer
        self.name = name
        self._counter = metrics.Counter(name, description=description, tag_keys=tag_keys)
        self._pending: dict[Labels, float] = {}

    @property
    def info(self) -> dict[str, Any]:
        """Ray's Counter's `info`: name, description, label keys."""
        return self._counter.info

    def inc(self, value: float = 1.0, *, tags: Mapping[str, str]) -> None:
        key = tuple(tags.items())
        with self._buffer.lock:
            self._pending[key] = self._pending.get(key, 0.0) + value

    def take(self) -> Callable[[], None]:
        """Take the pending sums, which start again from nothing (under the buffer's lock);
        the call that exports them (outside it)."""
        pending, self._pending = self._pending, {}
        return lambda: self._export(pending)

    def _export(self, pending: Mapping[Labels, float]) -> None:
        for key, total in pending.items():
            if total > 0:  # Ray refuses an increment of 0
                self._counter.inc(total, tags=dict(key))


class BufferedHistogram:
    """A Ray Histogram whose observations wait here for the flusher thread (module doc)."""

    def __init__(
        self,
        buffer: MetricBuffer,
        name: str,
        description: str,
        boundaries: Sequence[float],
        tag_keys: tuple[str, ...],
    ) -> None:
        self._buffer = buffer
        self.name = name
        self._histogram = metrics.Histogram(
            name, description=description, boundaries=list(boundaries), tag_keys=tag_keys
        )
        self._pending: dict[Labels, list[float]] = {}

    @property
    def info(self) -> dict[str, Any]:
        """Ray's Histogram's `info`: name, description, label keys, boundaries."""
        return self._histogram.info

    def observe(self, value: float, *, tags: Mapping[str, str]) -> None:
        key = tuple(tags.items())
        with self._buffer.lock:
            values = self._pending.get(key)
            if values is None:
                values = self._pending[key] = []
            values.append(value)

    def take(self) -> Callable[[], None]:
        """As BufferedCounter.take."""
        pending, self._pending = self._pending, {}
        return lambda: self._export(pending)

    def _export(self, pending: Mapping[Labels, list[float]]) -> None:
        for key, values in pending.items():
            tags = dict(key)
            for value in values:
                self._histogram.observe(value, tags=tags)
