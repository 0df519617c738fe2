"""The device-side training step: repeatable with a seed, and it learns."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from raysight.data import load_arrays
from raysight.data.transforms import normalize
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


MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
# Each augmentation alone, then all together, each at its preset's value.
AUGMENTATIONS = {
    "resized_crop": Preparation(MEAN, STD, 0, False, False, crop_area=0.35),
    "affine": Preparation(MEAN, STD, 0, False, False, zoom=0.2, rotation=0.1),
    "jitter": Preparation(MEAN, STD, 0, False, False, jitter=0.2),
    "all": Preparation(
        MEAN, STD, 2, True, False, crop_area=0.35, zoom=0.2, rotation=0.1, jitter=0.2
    ),
}


def _stepper(prep: Preparation, seed: int = 0) -> Stepper:
    model = build_model(
        "convnet", in_channels=3, num_classes=2, image_size=(16, 16), padding="same"
    )
    optimizer = build_optimizer(model, "adamw", 3e-3, 5e-4, 0.9)
    return Stepper(model, optimizer, torch.device("cpu"), prep, seed=seed)


def _pixels(n: int = 8) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, 16, 16), generator=generator).to(torch.uint8)


def test_evaluation_inputs_are_the_normalised_pixels_whatever_the_augmentation() -> None:
    images = _pixels()
    inputs = _stepper(AUGMENTATIONS["all"])._inputs(images, augment=False)
    assert torch.equal(inputs, normalize(images, MEAN, STD))


@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_training_inputs_are_augmented_and_repeat_with_the_seed(name: str) -> None:
    prep = AUGMENTATIONS[name]
    images = _pixels()
    first = _stepper(prep, seed=1)._inputs(images, augment=True)
    again = _stepper(prep, seed=1)._inputs(images, augment=True)
    other = _stepper(prep, seed=2)._inputs(images, augment=True)
    evaluated = _stepper(prep)._inputs(images, augment=False)
    assert first.shape == evaluated.shape
    assert first.dtype == torch.float32
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert not torch.equal(first, evaluated)


def test_colour_is_jittered_on_pixels_before_standardising() -> None:
    prep = dataclasses.replace(AUGMENTATIONS["jitter"], jitter=1.0)
    inputs = _stepper(prep)._inputs(_pixels(), augment=True)
    pixels = inputs * torch.tensor(STD).view(1, -1, 1, 1) + torch.tensor(MEAN).view(1, -1, 1, 1)
    # Strong jitter pushes many pixels out of range; clipped as pixels, they stop at 0 and 1.
    assert pixels.min() >= -1e-6
    assert pixels.max() <= 1 + 1e-6
    assert bool(((pixels - 1).abs() < 1e-6).any())
