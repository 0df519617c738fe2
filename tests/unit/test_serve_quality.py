"""Model-quality signals: top-1 confidence and predicted-class counts of a batch, and how
the serving metrics record them (names and labels are a contract with dashboards)."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pytest
import torch

from raysight.serve.metrics import ServingMetrics
from raysight.serve.model import softmax
from raysight.serve.quality import top1_quality

CLASSES = ("cat", "dog", "fox")


def test_confidences_and_counts_of_known_logits() -> None:
    logits = np.array(
        [
            [2.0, 1.0, 0.0],  # cat: e^2 / (e^2 + e + 1)
            [0.0, 0.0, 5.0],  # fox: 1 / (1 + 2 e^-5)
            [1.0, 1.0, 1.0],  # a three-way tie: the first class, at 1/3
            [10.0, 0.0, 0.0],  # cat: 1 / (1 + 2 e^-10)
        ],
        dtype=np.float32,
    )
    quality = top1_quality(logits, CLASSES)
    expected = [
        math.exp(2) / (math.exp(2) + math.e + 1),
        1 / (1 + 2 * math.exp(-5)),
        1 / 3,
        1 / (1 + 2 * math.exp(-10)),
    ]
    np.testing.assert_allclose(quality.confidences, expected, rtol=1e-12)
    assert quality.counts == {"cat": 3, "fox": 1}  # dog predicted by no row: absent


def test_confidences_match_torch_softmax_on_random_logits() -> None:
    logits = np.random.default_rng(0).normal(scale=4.0, size=(32, 10)).astype(np.float32)
    names = tuple(str(k) for k in range(10))
    quality = top1_quality(logits, names)
    reference = torch.softmax(torch.from_numpy(logits).double(), dim=1).max(dim=1)
    np.testing.assert_allclose(quality.confidences, reference.values.numpy(), rtol=1e-12)
    expected_counts = np.bincount(reference.indices.numpy(), minlength=10)
    assert quality.counts == {names[k]: int(c) for k, c in enumerate(expected_counts) if c}
    assert sum(quality.counts.values()) == 32
    # The same numbers clients get in the "probabilities" output (float32 there).
    np.testing.assert_allclose(quality.confidences, softmax(logits).max(axis=1), rtol=1e-6)


def test_large_logits_stay_finite_and_non_finite_rows_count_as_zero() -> None:
    logits = np.array(
        [[1000.0, 0.0, 0.0], [-1000.0, -999.0, -1000.0], [np.nan, 0.0, 0.0], [0, np.inf, 0]],
        dtype=np.float32,
    )
    with warnings.catch_warnings():  # no overflow or invalid-value warning reaches the log
        warnings.simplefilter("error")
        quality = top1_quality(logits, CLASSES)
    expected = [1.0, 1 / (1 + 2 * math.exp(-1)), 0.0, 0.0]
    np.testing.assert_allclose(quality.confidences, expected, rtol=1e-12)
    assert sum(quality.counts.values()) == 4


def test_an_empty_batch_has_no_predictions() -> None:
    quality = top1_quality(np.zeros((0, 3), np.float32), CLASSES)
    assert quality.confidences.shape == (0,)
    assert quality.counts == {}


def test_logits_of_another_width_are_refused() -> None:
    with pytest.raises(ValueError, match=r"logits must be \(N, 3\)"):
        top1_quality(np.zeros((2, 4), np.float32), CLASSES)


# --- recording ------------------------------------------------------------------------


class _Recorder:
    """Stands in for a Ray metric and keeps every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, dict[str, str]]] = []

    def observe(self, value: float, tags: dict[str, str]) -> None:
        self.calls.append((value, tags))

    inc = set = observe


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> ServingMetrics:
    metrics = ServingMetrics()
    for name in ("confidence", "predictions", "class_prior"):
        monkeypatch.setattr(metrics, name, _Recorder())
    return metrics


def test_a_batch_records_one_confidence_per_row_and_one_count_per_class(
    recorded: ServingMetrics,
) -> None:
    tags = {"model": "m", "version": "abc"}
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 0.0, 5.0], [9.0, 0.0, 0.0]], np.float32)
    recorded.record_predictions(tags, top1_quality(logits, CLASSES))
    confidence: Any = recorded.confidence
    predictions: Any = recorded.predictions
    assert [t for _, t in confidence.calls] == [tags] * 3
    np.testing.assert_allclose(
        [v for v, _ in confidence.calls], softmax(logits).max(axis=1), rtol=1e-6
    )
    assert sorted(predictions.calls, key=lambda call: call[1]["class"]) == [
        (2, {**tags, "class": "cat"}),
        (1, {**tags, "class": "fox"}),
    ]


def test_the_class_prior_sets_every_class_even_zero(recorded: ServingMetrics) -> None:
    tags = {"model": "m", "version": "abc"}
    recorded.set_class_prior(tags, CLASSES, (0.75, 0.0, 0.25))
    prior: Any = recorded.class_prior
    assert prior.calls == [
        (0.75, {**tags, "class": "cat"}),
        (0.0, {**tags, "class": "dog"}),
        (0.25, {**tags, "class": "fox"}),
    ]


def test_metric_names_labels_and_buckets_are_the_documented_ones() -> None:
    metrics = ServingMetrics()
    assert metrics.confidence.info["name"] == "raysight_prediction_confidence"
    assert metrics.confidence.info["tag_keys"] == ("model", "version")
    assert metrics.confidence.info["boundaries"] == [
        0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99,
    ]  # fmt: skip
    assert metrics.predictions.info["name"] == "raysight_predictions_total"
    assert metrics.predictions.info["tag_keys"] == ("model", "version", "class")
    assert metrics.class_prior.info["name"] == "raysight_model_class_prior"
    assert metrics.class_prior.info["tag_keys"] == ("model", "version", "class")
