"""The small MNIST convnet of *Deep Learning with Python* (Chollet), for any image size.

Three 3x3 convolutions (widths w, 2w, 2w) with 2x2 max pooling between them, then a dense
hidden layer and a dense head. The book's head ends in a softmax; here the model returns
logits and the softmax lives in the loss (``cross_entropy``) during training and in the
engine at inference, which is numerically safer than a softmax inside the model.
"""

from itertools import count
from typing import Literal, cast

import torch
import torch.nn.functional as F  # noqa: N812  (the conventional alias)
from torch import nn

from raysight.errors import ConfigError
from raysight.models._validate import dropout_layer, image_size_pair, positive_int

Padding = Literal["valid", "same"]
PADDINGS: tuple[Padding, ...] = ("valid", "same")


def shrink_by_conv(size: int, padding: Padding) -> int:
    """Side length after a 3x3 stride-1 convolution."""
    return size if padding == "same" else size - 2


def feature_side(size: int, padding: Padding) -> int:
    """Side length of the last feature map for an input side of ``size``.

    Runs the layer arithmetic (conv, pool, conv, pool, conv) rather than a dummy forward, so
    the model can be built on the meta device and a too-small input is caught up front.

    Args:
        size: Input height or width in pixels.
        padding: ``"valid"`` (no padding, the book's choice) or ``"same"``.

    Returns:
        The side of the final feature map; 0 or less means the input is too small.
    """
    size = shrink_by_conv(size, padding)
    size = size // 2
    size = shrink_by_conv(size, padding)
    size = size // 2
    return shrink_by_conv(size, padding)


def min_image_side(padding: Padding) -> int:
    """Smallest input side for which the last feature map is at least 1x1."""
    return next(side for side in count(1) if feature_side(side, padding) >= 1)


class ConvNet(nn.Module):
    """Conv-pool-conv-pool-conv feature extractor, then dense hidden and dense logits."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: tuple[int, int],
        *,
        width: int = 32,
        hidden: int = 64,
        padding: str = "valid",
        dropout: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        """Build the network for inputs of shape ``(in_channels, *image_size)``.

        Args:
            in_channels: Channels of the input image (1 for MNIST, 3 for colour).
            num_classes: Number of output logits.
            image_size: ``(height, width)`` of the input; fixes the flatten size.
            width: Channels of the first convolution; the other two have ``2 * width``.
                32 gives the book's 32-64-64.
            hidden: Units of the dense hidden layer (64 in the book).
            padding: ``"valid"`` (the book's) or ``"same"``; use ``"same"`` for inputs
                under 18x18 such as the 8x8 digits, which valid convolutions shrink to nothing.
            dropout: Share of the hidden units zeroed in training, in [0, 1); 0, the
                book's, turns it off.
            device: Where to allocate parameters; placement is the caller's decision.
            dtype: Parameter dtype.

        Raises:
            ConfigError: An argument is invalid or image_size is too small for the layers.
        """
        super().__init__()
        in_channels = positive_int("in_channels", in_channels)
        num_classes = positive_int("num_classes", num_classes)
        height, width_px = image_size_pair(image_size)
        width = positive_int("width", width)
        hidden = positive_int("hidden", hidden)
        if padding not in PADDINGS:
            raise ConfigError(f"padding must be one of {PADDINGS}, got {padding!r}")
        pad = cast(Padding, padding)
        out_h, out_w = feature_side(height, pad), feature_side(width_px, pad)
        if out_h < 1 or out_w < 1:
            side = min_image_side(pad)
            hint = "; use padding='same' for small images" if pad == "valid" else ""
            raise ConfigError(
                f"image_size {(height, width_px)} is too small for convnet with "
                f"padding={padding!r}, which needs at least {side}x{side}{hint}"
            )
        self.image_size = (height, width_px)
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=pad, device=device, dtype=dtype)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=pad, device=device, dtype=dtype)
        self.conv3 = nn.Conv2d(2 * width, 2 * width, 3, padding=pad, device=device, dtype=dtype)
        self.fc = nn.Linear(2 * width * out_h * out_w, hidden, device=device, dtype=dtype)
        # Registered before the head, which stays the last module: fine-tuning replaces
        # the last Linear.
        self.dropout = dropout_layer(dropout)
        self.head = nn.Linear(hidden, num_classes, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images ``(B, C, H, W)`` to logits ``(B, num_classes)``."""
        # Shapes for the book's 28x28 input with padding="valid" and width=32.
        x = F.relu(self.conv1(x))  # (B, 32, 26, 26)
        x = F.max_pool2d(x, 2)  # (B, 32, 13, 13)
        x = F.relu(self.conv2(x))  # (B, 64, 11, 11)
        x = F.max_pool2d(x, 2)  # (B, 64, 5, 5)
        x = F.relu(self.conv3(x))  # (B, 64, 3, 3)
        x = torch.flatten(x, 1)  # (B, 576)
        x = F.relu(self.fc(x))  # (B, 64)
        x = self.dropout(x)  # (B, 64)
        return self.head(x)  # (B, num_classes): logits, softmax is the caller's
