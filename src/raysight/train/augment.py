"""Augmentation presets: what each `--augment` choice does to a training batch.

Each preset is data, with the reason for each value beside it; `trainer.preparation` turns
the chosen one into the device-side `Preparation`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from raysight.config import Augment

Preset = Literal["none", "crop", "crop_flip", "photo", "book"]


@dataclass(frozen=True)
class Recipe:
    """The augmentation of one preset."""

    translate: bool = False  # random crop by the run's crop_padding
    flip: bool = False  # left-right mirror of half the batch
    crop_area: float = 1.0  # smallest area share of a random resized crop; 1.0: none
    zoom: float = 0.0  # largest relative zoom in or out; 0: none
    rotation: float = 0.0  # largest angle, in full turns; 0: none
    jitter: float = 0.0  # brightness, contrast and saturation strength; 0: none


RECIPES: Mapping[Preset, Recipe] = MappingProxyType(
    {
        "none": Recipe(),
        "crop": Recipe(translate=True),
        "crop_flip": Recipe(translate=True, flip=True),
        # A crop keeps at least 35% of the area, 38 px a side of a 64 px image and 106 of a
        # 180 px one, so it usually still holds the subject of a photo; torchvision's
        # ImageNet 8% would keep 18 px of a 64 px image. Colour jitter at half the 0.4 of
        # ImageNet recipes (Bag of Tricks, timm): enough that exposure and white balance
        # stop being cues, light enough that real colour (fur, sky) still is one.
        "photo": Recipe(flip=True, crop_area=0.35, jitter=0.2),
        # The book's RandomFlip("horizontal"), RandomRotation(0.1), RandomZoom(0.2).
        "book": Recipe(flip=True, zoom=0.2, rotation=0.1),
    }
)


def resolve_preset(augment: Augment, *, natural: bool) -> Preset:
    """The preset `augment` stands for: itself, or for "auto" one chosen from the data.

    Args:
        augment: The configured choice.
        natural: Whether the images are photos, which stay valid when mirrored.

    Returns:
        "crop" for digits (a mirrored digit is another symbol), "crop_flip" for photos.
    """
    if augment != "auto":
        return augment
    # Photos get translation and flips at every size, as measured on CIFAR-10's cats and
    # dogs at 64x64 (docs/benchmarks.md, 20 epochs): crop_flip 79.2% test accuracy, book
    # 79.7%, none 77.1%, photo 76.6%; crop_flip also led on validation (79.7% against
    # 77.3-78.9%). photo's resized crops were still underfitting after 20 epochs.
    return "crop_flip" if natural else "crop"
