"""Gauges that stay exported while their process holds them.

Ray 2.60's exporter drops a gauge's series when it has not been set for about two export
intervals (measured: set once, gone from the metrics port 25-30 s later; counters stay).
A value that changes rarely (the model a replica serves, an epoch's loss on a long epoch)
would vanish from Prometheus while it is still true, and dashboards and alerts would read
"no data". `HeldGauges` remembers the last value of each series it set, and `refresh` sets
them again; the owner calls it on a period shorter than the exporter's window.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from ray.util import metrics

# Shorter than the ~25 s after which Ray drops an unset gauge, with room for a late tick.
REFRESH_PERIOD_S = 5.0

_SeriesKey = tuple[int, tuple[tuple[str, str], ...]]


class HeldGauges:
    """The last value of every gauge series set through it, set again on `refresh`."""

    def __init__(self) -> None:
        self._series: dict[_SeriesKey, tuple[metrics.Gauge, float, dict[str, str]]] = {}
        self._lock = threading.Lock()  # set() on the caller's thread, refresh() on a timer's

    def set(self, gauge: metrics.Gauge, value: float, tags: Mapping[str, str]) -> None:
        """Set a series now, and hold it at `value` until set again or released."""
        held = dict(tags)
        with self._lock:
            self._series[_key(gauge, held)] = (gauge, value, held)
        gauge.set(value, tags=held)

    def release(self, gauge: metrics.Gauge, tags: Mapping[str, str]) -> None:
        """Stop holding a series: Ray drops it from the export within a minute."""
        with self._lock:
            self._series.pop(_key(gauge, dict(tags)), None)

    def refresh(self) -> None:
        """Set every held series again to its last value."""
        with self._lock:
            held = list(self._series.values())
        for gauge, value, tags in held:
            gauge.set(value, tags=tags)


class Refresher:
    """A daemon thread that calls `HeldGauges.refresh` every `period_s` until stopped."""

    def __init__(self, gauges: HeldGauges, period_s: float = REFRESH_PERIOD_S) -> None:
        self._gauges = gauges
        self._period_s = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gauge-refresher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._period_s):
            self._gauges.refresh()

    def stop(self) -> None:
        """Stop refreshing; the held series then expire from Ray's export."""
        self._stop.set()
        self._thread.join(timeout=self._period_s + 1.0)


def _key(gauge: metrics.Gauge, tags: dict[str, str]) -> _SeriesKey:
    return id(gauge), tuple(sorted(tags.items()))
