"""The cats-vs-dogs convnet of *Deep Learning with Python* (Chollet), for any image size.

Five 3x3 convolutions with 32, 64, 128, 256 and 256 filters, each of the first four followed
by 2x2 max pooling, then dropout and one dense layer. The book trains it from scratch on
180x180 photos with one sigmoid output; here it returns ``num_classes`` logits (the softmax
lives in the loss and in the engine), and ``num_classes=1`` gives the book's 991,041
parameters.
"""

from itertools import count
from typing import cast

import torch
import torch.nn.functional as F  # noqa: N812  (the conventional alias)
from torch import nn

from raysight.errors import ConfigError
from raysight.models._validate import dropout_layer, image_size_pair, positive_int
from raysight.models.convnet import PADDINGS, Padding, shrink_by_conv

FILTERS = (32, 64, 128, 256, 256)


def feature_side(size: int, padding: Padding) -> int:
    """Side length of the last feature map for an input side of ``size``.

    Runs the layer arithmetic rather than a dummy forward, so the model can be built on the
    meta device and a too-small input is caught up front.

    Args:
        size: Input height or width in pixels.
        padding: ``"valid"`` (no padding, the book's choice) or ``"same"``.

    Returns:
        The side of the final feature map; 0 or less means the input is too small.
    """
    for _ in FILTERS[:-1]:
        size = shrink_by_conv(size, padding) // 2  # conv, then 2x2 max pool
    return shrink_by_conv(size, padding)


def min_image_side(padding: Padding) -> int:
    """Smallest input side for which the last feature map is at least 1x1."""
    return next(side for side in count(1) if feature_side(side, padding) >= 1)


class CatsDogsNet(nn.Module):
    """Five conv-ReLU layers, four of them max-pooled, then dropout and dense logits."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: tuple[int, int],
        *,
        padding: str = "valid",
        dropout: float = 0.5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        """Build the network for inputs of shape ``(in_channels, *image_size)``.

        Args:
            in_channels: Channels of the input image.
            num_classes: Number of output logits; 1 is the book's single output.
            image_size: ``(height, width)`` of the input; fixes the flatten size. The book
                uses 180x180.
            padding: ``"valid"`` (the book's) or ``"same"``; use ``"same"`` for inputs
                under 78x78 such as 64x64, which valid convolutions shrink to nothing.
            dropout: Share of the flattened features zeroed in training, in [0, 1); the
                book's 0.5 by default.
            device: Where to allocate parameters; placement is the caller's decision.
            dtype: Parameter dtype.

        Raises:
            ConfigError: An argument is invalid or image_size is too small for the layers.
        """
        super().__init__()
        in_channels = positive_int("in_channels", in_channels)
        num_classes = positive_int("num_classes", num_classes)
        height, width = image_size_pair(image_size)
        if padding not in PADDINGS:
            raise ConfigError(f"padding must be one of {PADDINGS}, got {padding!r}")
        pad = cast(Padding, padding)
        out_h, out_w = feature_side(height, pad), feature_side(width, pad)
        if out_h < 1 or out_w < 1:
            side = min_image_side(pad)
            hint = "; use padding='same' for smaller images" if pad == "valid" else ""
            raise ConfigError(
                f"image_size {(height, width)} is too small for catsdogs with "
                f"padding={padding!r}, which needs at least {side}x{side}{hint}"
            )
        self.image_size = (height, width)
        c1, c2, c3, c4, c5 = FILTERS
        self.conv1 = nn.Conv2d(in_channels, c1, 3, padding=pad, device=device, dtype=dtype)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=pad, device=device, dtype=dtype)
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=pad, device=device, dtype=dtype)
        self.conv4 = nn.Conv2d(c3, c4, 3, padding=pad, device=device, dtype=dtype)
        self.conv5 = nn.Conv2d(c4, c5, 3, padding=pad, device=device, dtype=dtype)
        # Registered before the head, which stays the last module: fine-tuning replaces
        # the last Linear.
        self.dropout = dropout_layer(dropout)
        self.head = nn.Linear(c5 * out_h * out_w, num_classes, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images ``(B, C, H, W)`` to logits ``(B, num_classes)``."""
        # Shapes for the book's 180x180 input with padding="valid".
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (B, 32, 89, 89)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (B, 64, 43, 43)
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)  # (B, 128, 20, 20)
        x = F.max_pool2d(F.relu(self.conv4(x)), 2)  # (B, 256, 9, 9)
        x = F.relu(self.conv5(x))  # (B, 256, 7, 7)
        x = torch.flatten(x, 1)  # (B, 12544)
        x = self.dropout(x)  # (B, 12544)
        return self.head(x)  # (B, num_classes): logits, softmax is the caller's
