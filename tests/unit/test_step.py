"""The device-side training step: repeatable with a seed, and it learns."""

from __future__ import annotations

import torch

from raysight.data import load_arrays
from raysight.models import build_model
from raysight.train.feeds import ArrayFeed
from raysight.train.step import Preparation, Stepper, build_optimizer

PREP = Preparation(mean=(0.3,), std=(0.4,), crop_padding=1, flip=False, channels_last=False)


def _train(seed: int, epochs: int = 2) -> tuple[dict[str, torch.Tensor], float]:
    torch.manual_seed(seed)
    data = load_arrays("digits", None, "train")
    model = build_model("convnet", in_channels=1, num_classes=10, image_size=(8, 8), padding="same")
    optimizer = build_optimizer(model, "adamw", 3e-3, 5e-4, 0.9)
    stepper = Stepper(model, optimizer, torch.device("cpu"), PREP, seed=seed)
    feed = ArrayFeed(
        data.images, data.labels, rank=0, world=1, batch_size=64, train=True, seed=seed
    )
    for epoch in range(epochs):
        sums = stepper.train_epoch(feed.epoch(epoch), lambda _: 3e-3, 0)
    return model.state_dict(), sums.correct / sums.samples


def test_same_seed_gives_identical_weights() -> None:
    first, _ = _train(seed=3)
    second, _ = _train(seed=3)
    other, _ = _train(seed=4)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_two_epochs_learn_the_digits() -> None:
    _, accuracy = _train(seed=0, epochs=3)
    assert accuracy > 0.6  # chance is 0.1


def test_optimizer_skips_decay_on_biases_and_norms() -> None:
    model = build_model("resnet9", in_channels=3, num_classes=10, image_size=(32, 32), width=8)
    optimizer = build_optimizer(model, "sgd", 0.1, 5e-4, 0.9)
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 5e-4
    assert plain["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"])
    assert all(p.ndim == 1 for p in plain["params"])
    assert optimizer.defaults["nesterov"] is True
