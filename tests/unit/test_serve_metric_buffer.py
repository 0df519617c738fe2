"""Buffered serving metrics: what reaches Ray's metrics, and when (serve/metric_buffer.py)."""

from __future__ import annotations

import time
from typing import ClassVar

import pytest

from raysight.serve import metric_buffer
from raysight.serve.metric_buffer import MetricBuffer

TAGS = {"model": "m", "version": "v1", "method": "ModelInfer", "code": "OK"}
BOUNDS = [0.001, 0.01, 0.1]


class _RayMetric:
    """Stands in for a Ray Counter or Histogram: keeps every call as the exporter would see
    it."""

    made: ClassVar[dict[str, _RayMetric]] = {}

    def __init__(
        self,
        name: str,
        description: str = "",
        boundaries: list[float] | None = None,
        tag_keys: tuple[str, ...] = (),
    ) -> None:
        self.name, self.tag_keys = name, tag_keys
        self.calls: list[tuple[float, dict[str, str]]] = []
        _RayMetric.made[name] = self

    def inc(self, value: float, tags: dict[str, str]) -> None:
        assert set(tags) == set(self.tag_keys), (self.name, tags)
        self.calls.append((value, dict(tags)))

    observe = inc


@pytest.fixture
def ray_metrics(monkeypatch: pytest.MonkeyPatch) -> dict[str, _RayMetric]:
    _RayMetric.made = {}
    monkeypatch.setattr(metric_buffer.metrics, "Counter", _RayMetric)
    monkeypatch.setattr(metric_buffer.metrics, "Histogram", _RayMetric)
    return _RayMetric.made


def test_counter_increments_reach_ray_summed_once_per_series_and_flush(
    ray_metrics: dict[str, _RayMetric],
) -> None:
    buffer = MetricBuffer(start=False)
    counter = buffer.counter("x_total", description="d", tag_keys=tuple(TAGS))
    for _ in range(5):
        counter.inc(tags=TAGS)
    counter.inc(3, tags=dict(reversed(TAGS.items())))  # the same series, in another order
    counter.inc(2, tags={**TAGS, "code": "INVALID_ARGUMENT"})
    assert ray_metrics["x_total"].calls == []  # nothing reaches Ray between flushes
    buffer.flush()
    calls = ray_metrics["x_total"].calls
    assert len(calls) == 3  # one per label set and order, however many increments
    by_series: dict[frozenset[tuple[str, str]], float] = {}
    for value, tags in calls:  # what Ray sums per series
        series = frozenset(tags.items())
        by_series[series] = by_series.get(series, 0.0) + value
    assert by_series == {
        frozenset(TAGS.items()): 8.0,
        frozenset({**TAGS, "code": "INVALID_ARGUMENT"}.items()): 2.0,
    }
    ray_metrics["x_total"].calls.clear()
    buffer.flush()
    assert ray_metrics["x_total"].calls == []  # each increment is handed over once
    counter.inc(0, tags=TAGS)  # Ray refuses 0: nothing is sent for it
    buffer.flush()
    assert ray_metrics["x_total"].calls == []


def test_histogram_observations_reach_ray_one_each_at_the_flush(
    ray_metrics: dict[str, _RayMetric],
) -> None:
    buffer = MetricBuffer(start=False)
    histogram = buffer.histogram(
        "x_seconds", description="d", boundaries=BOUNDS, tag_keys=tuple(TAGS)
    )
    values = [0.0005, 0.002, 0.002, 7.0]
    for value in values:
        histogram.observe(value, tags=TAGS)
    histogram.observe(0.5, tags={**TAGS, "code": "CANCELLED"})
    assert ray_metrics["x_seconds"].calls == []
    buffer.flush()
    calls = ray_metrics["x_seconds"].calls
    assert [v for v, t in calls if t == TAGS] == values  # each value once, in order
    assert [v for v, t in calls if t != TAGS] == [0.5]
    calls.clear()
    buffer.flush()
    assert calls == []


def test_a_failing_series_loses_its_records_and_never_the_others(
    ray_metrics: dict[str, _RayMetric],
) -> None:
    buffer = MetricBuffer(start=False)
    bad = buffer.counter("bad_total", description="d", tag_keys=("model",))
    good = buffer.counter("good_total", description="d", tag_keys=("model",))
    bad.inc(tags={"model": "m", "stray": "label"})  # the stand-in refuses it, as Ray would
    good.inc(tags={"model": "m"})
    buffer.flush()  # logs the failure, raises nothing
    assert ray_metrics["good_total"].calls == [(1.0, {"model": "m"})]
    assert ray_metrics["bad_total"].calls == []


def test_the_flusher_thread_hands_records_over_on_its_own(
    ray_metrics: dict[str, _RayMetric],
) -> None:
    buffer = MetricBuffer(period_s=0.01)
    counter = buffer.counter("x_total", description="d", tag_keys=("model",))
    counter.inc(4, tags={"model": "m"})
    deadline = time.monotonic() + 5
    while not ray_metrics["x_total"].calls and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ray_metrics["x_total"].calls == [(4.0, {"model": "m"})]


def test_info_names_the_series_as_ray_metrics_do() -> None:
    buffer = MetricBuffer(start=False)
    histogram = buffer.histogram("x_seconds", description="d", boundaries=BOUNDS, tag_keys=("a",))
    assert histogram.info["name"] == "x_seconds"
    assert histogram.info["boundaries"] == BOUNDS
    assert histogram.info["tag_keys"] == ("a",)
    counter = buffer.counter("x_total", description="d", tag_keys=("a",))
    assert counter.info["name"] == "x_total"
    assert counter.info["tag_keys"] == ("a",)
