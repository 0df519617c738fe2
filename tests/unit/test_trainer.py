"""The driver's checks that run before any Ray Train worker starts."""

from __future__ import annotations

from typing import Any

import pytest

from raysight.config import TrainConfig
from raysight.errors import ConfigError
from raysight.train import trainer


def test_a_model_too_big_for_the_images_fails_on_the_driver(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reached: list[str] = []

    def record(name: str) -> Any:
        return lambda *args, **kwargs: reached.append(name)

    monkeypatch.setattr(trainer, "_even_share_of_cpus", record("cluster"))
    monkeypatch.setattr(trainer, "TorchTrainer", record("workers"))
    # convnet's three valid 3x3 convolutions and two poolings need 18x18; digits are 8x8.
    with pytest.raises(ConfigError, match=r"image_size \(8, 8\) is too small for convnet"):
        trainer.train(TrainConfig(dataset="digits", model="convnet"))
    assert reached == []  # refused before the cluster or any worker was asked for anything
