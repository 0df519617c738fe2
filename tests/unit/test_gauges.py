"""Held gauges: set again on refresh until released (Ray drops a gauge left unset ~25 s)."""

from __future__ import annotations

import time
from typing import Any, cast

from ray.util import metrics

from raysight.gauges import HeldGauges, Refresher


class _Recording:
    """Stands in for a Ray gauge: records every set, as the exporter would see it."""

    def __init__(self) -> None:
        self.sets: list[tuple[float, dict[str, str]]] = []

    def set(self, value: float, tags: dict[str, str]) -> None:
        self.sets.append((value, dict(tags)))


def _gauge() -> tuple[_Recording, metrics.Gauge]:
    recording = _Recording()
    return recording, cast(metrics.Gauge, cast(Any, recording))


def test_refresh_sets_the_last_value_of_every_held_series_again() -> None:
    recording, gauge = _gauge()
    held = HeldGauges()
    held.set(gauge, 1.0, {"model": "a"})
    held.set(gauge, 2.0, {"model": "a"})  # the same series: only its last value is held
    held.set(gauge, 7.0, {"model": "b"})
    recording.sets.clear()
    held.refresh()
    assert sorted(recording.sets, key=lambda s: s[0]) == [
        (2.0, {"model": "a"}),
        (7.0, {"model": "b"}),
    ]


def test_a_released_series_is_no_longer_refreshed() -> None:
    recording, gauge = _gauge()
    held = HeldGauges()
    held.set(gauge, 1.0, {"model": "a", "class": "cat"})
    held.set(gauge, 1.0, {"class": "dog", "model": "a"})
    held.release(gauge, {"class": "cat", "model": "a"})  # tags in any order name one series
    recording.sets.clear()
    held.refresh()
    assert recording.sets == [(1.0, {"class": "dog", "model": "a"})]


def test_the_refresher_keeps_setting_until_stopped() -> None:
    recording, gauge = _gauge()
    held = HeldGauges()
    held.set(gauge, 3.0, {"run": "r"})
    refresher = Refresher(held, period_s=0.01)
    deadline = time.monotonic() + 5
    while len(recording.sets) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    refresher.stop()
    count = len(recording.sets)
    assert count >= 4
    time.sleep(0.05)
    assert len(recording.sets) == count  # stopped: nothing more is set
