"""Residual networks for small images (CIFAR-style).

``ResNet`` is the He et al. network adapted to 32x32 inputs: a 3x3 stem without the ImageNet
7x7 convolution and max pool, which would discard most of a small image in the first two
layers. ``ResNet9`` is the fast CIFAR-10 network of Myrtle.ai (David Page), a shallow net with
wide layers, max pooling and a scaled linear head.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812  (the conventional alias)
from torch import nn

from raysight.errors import ConfigError
from raysight.models._validate import dropout_layer, image_size_pair, positive_int, probability

# ResNet9 multiplies its logits by 1/8, as the original does: max-pooled ReLU features are
# large, and the scale keeps the initial logits, and so the softmax, from saturating.
RESNET9_LOGIT_SCALE = 0.125
RESNET9_POOLS = 3


def _conv3x3(
    in_channels: int,
    out_channels: int,
    stride: int,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (the BatchNorm after it has one)."""
    return nn.Conv2d(
        in_channels,
        out_channels,
        3,
        stride=stride,
        padding=1,
        bias=False,
        device=device,
        dtype=dtype,
    )


def drop_branch(branch: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Zero a residual branch for a random share ``rate`` of the samples (stochastic depth).

    The kept branches are scaled by ``1 / (1 - rate)``, so that the expected output is the
    one evaluation sees, where every branch is kept.

    Args:
        branch: (B, C, H, W) output of a residual branch.
        rate: Probability of dropping each sample's branch, in [0, 1).
        training: False returns ``branch`` unchanged.

    Returns:
        (B, C, H, W), same dtype and device as ``branch``.
    """
    if not training or rate == 0.0:
        return branch
    keep = 1.0 - rate
    mask = torch.empty((branch.shape[0], 1, 1, 1), dtype=branch.dtype, device=branch.device)
    return branch * mask.bernoulli_(keep) / keep


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut; the shortcut projects when the shape changes."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        drop_rate: float = 0.0,
    ) -> None:
        """Build one block.

        Args:
            in_channels: Channels of the block input.
            out_channels: Channels of the block output.
            stride: 2 halves the spatial size in the first convolution, 1 keeps it.
            device: Where to allocate parameters.
            dtype: Parameter dtype.
            drop_rate: Probability of skipping the two convolutions for a sample in
                training (stochastic depth); 0 always runs them.
        """
        super().__init__()
        self.drop_rate = drop_rate
        self.conv1 = _conv3x3(in_channels, out_channels, stride, device, dtype)
        self.bn1 = nn.BatchNorm2d(out_channels, device=device, dtype=dtype)
        self.conv2 = _conv3x3(out_channels, out_channels, 1, device, dtype)
        self.bn2 = nn.BatchNorm2d(out_channels, device=device, dtype=dtype)
        # A zero gamma makes each block start as the identity, so the deep net trains like a
        # shallow one at first (Goyal et al., "Accurate, Large Minibatch SGD").
        nn.init.zeros_(self.bn2.weight)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(
                    in_channels,
                    out_channels,
                    1,
                    stride=stride,
                    bias=False,
                    device=device,
                    dtype=dtype,
                ),
                nn.BatchNorm2d(out_channels, device=device, dtype=dtype),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C_in, H, W)`` to ``(B, C_out, H / stride, W / stride)``."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = drop_branch(self.bn2(self.conv2(out)), self.drop_rate, self.training)
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet of BasicBlocks; ``layers=(2, 2, 2, 2)`` is ResNet-18."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: tuple[int, int],
        *,
        layers: Sequence[int] = (2, 2, 2, 2),
        width: int = 64,
        dropout: float = 0.0,
        stochastic_depth: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        """Build the network.

        Args:
            in_channels: Channels of the input image.
            num_classes: Number of output logits.
            image_size: ``(height, width)`` of the input. Global average pooling makes the
                network size-agnostic; the argument is checked and kept for uniformity.
            layers: Blocks per stage. Stage ``i`` has ``width * 2**i`` channels and, after
                the first, halves the spatial size.
            width: Channels of the stem and the first stage.
            dropout: Share of the pooled features zeroed in training, before the head, in
                [0, 1); 0 turns it off.
            stochastic_depth: Drop rate of the last block's residual branch in training, in
                [0, 1); block ``l`` of ``L`` drops with ``stochastic_depth * l / L`` (Huang
                et al., "Deep Networks with Stochastic Depth"). 0 turns it off.
            device: Where to allocate parameters.
            dtype: Parameter dtype.

        Raises:
            ConfigError: An argument is invalid.
        """
        super().__init__()
        in_channels = positive_int("in_channels", in_channels)
        num_classes = positive_int("num_classes", num_classes)
        self.image_size = image_size_pair(image_size)
        width = positive_int("width", width)
        if isinstance(layers, str) or not isinstance(layers, Sequence) or not layers:
            raise ConfigError(f"layers must be a non-empty list of block counts, got {layers!r}")
        blocks_per_stage = [positive_int(f"layers[{i}]", n) for i, n in enumerate(layers)]
        depth_rate = probability("stochastic_depth", stochastic_depth)
        total_blocks = sum(blocks_per_stage)

        self.conv1 = _conv3x3(in_channels, width, 1, device, dtype)
        self.bn1 = nn.BatchNorm2d(width, device=device, dtype=dtype)
        stages: list[nn.Module] = []
        channels = width
        depth = 0  # blocks built so far
        for index, num_blocks in enumerate(blocks_per_stage):
            out_channels = width * 2**index
            stride = 1 if index == 0 else 2
            blocks = []
            for block_index in range(num_blocks):
                depth += 1
                block_stride = stride if block_index == 0 else 1
                # Deeper blocks are dropped more often: every later block builds on the
                # features of the early ones.
                drop_rate = depth_rate * depth / total_blocks
                blocks.append(
                    BasicBlock(
                        channels, out_channels, block_stride, device, dtype, drop_rate=drop_rate
                    )
                )
                channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        # Registered before the head, which stays the last module: fine-tuning replaces
        # the last Linear.
        self.dropout = dropout_layer(dropout)
        self.head = nn.Linear(channels, num_classes, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images ``(B, C, H, W)`` to logits ``(B, num_classes)``."""
        # Shapes for ResNet-18 (width 64) on 32x32 CIFAR images.
        x = F.relu(self.bn1(self.conv1(x)))  # (B, 64, 32, 32)
        x = self.stages(x)  # (B, 512, 4, 4)
        x = torch.mean(x, dim=(2, 3))  # (B, 512): global average pool
        x = self.dropout(x)  # (B, 512)
        return self.head(x)  # (B, num_classes)


class ConvBNReLU(nn.Module):
    """3x3 convolution, BatchNorm and ReLU: the unit ResNet9 is made of."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        """Build the unit.

        Args:
            in_channels: Channels of the input.
            out_channels: Channels of the output.
            device: Where to allocate parameters.
            dtype: Parameter dtype.
        """
        super().__init__()
        self.conv = _conv3x3(in_channels, out_channels, 1, device, dtype)
        self.bn = nn.BatchNorm2d(out_channels, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C_in, H, W)`` to ``(B, C_out, H, W)``."""
        return F.relu(self.bn(self.conv(x)))


class ResNet9(nn.Module):
    """Myrtle.ai's ResNet-9: prep, three pooled layers, two residual pairs, max-pooled head."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: tuple[int, int],
        *,
        width: int = 64,
        dropout: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        """Build the network.

        Args:
            in_channels: Channels of the input image.
            num_classes: Number of output logits.
            image_size: ``(height, width)`` of the input; at least 8x8 because of the three
                2x2 max pools. Global max pooling makes the network otherwise size-agnostic.
            width: Channels of the prep layer; the layers have 2x, 4x and 8x as many
                (64 gives 64-128-256-512).
            dropout: Share of the pooled features zeroed in training, before the head, in
                [0, 1); 0, the original's, turns it off.
            device: Where to allocate parameters.
            dtype: Parameter dtype.

        Raises:
            ConfigError: An argument is invalid or image_size is under 8x8.
        """
        super().__init__()
        in_channels = positive_int("in_channels", in_channels)
        num_classes = positive_int("num_classes", num_classes)
        self.image_size = image_size_pair(image_size)
        width = positive_int("width", width)
        min_side = 2**RESNET9_POOLS
        if min(self.image_size) < min_side:
            raise ConfigError(
                f"image_size {self.image_size} is too small for resnet9: its "
                f"{RESNET9_POOLS} max pools need at least {min_side}x{min_side}"
            )
        self.prep = ConvBNReLU(in_channels, width, device, dtype)
        self.layer1 = ConvBNReLU(width, 2 * width, device, dtype)
        self.res1 = nn.Sequential(
            ConvBNReLU(2 * width, 2 * width, device, dtype),
            ConvBNReLU(2 * width, 2 * width, device, dtype),
        )
        self.layer2 = ConvBNReLU(2 * width, 4 * width, device, dtype)
        self.layer3 = ConvBNReLU(4 * width, 8 * width, device, dtype)
        self.res3 = nn.Sequential(
            ConvBNReLU(8 * width, 8 * width, device, dtype),
            ConvBNReLU(8 * width, 8 * width, device, dtype),
        )
        # Before the head, which stays the last module: fine-tuning replaces the last Linear.
        self.dropout = dropout_layer(dropout)
        # No bias, as in the original network.
        self.head = nn.Linear(8 * width, num_classes, bias=False, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images ``(B, C, H, W)`` to logits ``(B, num_classes)``."""
        # Shapes for width 64.
        x = self.prep(x)  # (B, 64, H, W)
        x = F.max_pool2d(self.layer1(x), 2)  # (B, 128, H/2, W/2)
        x = x + self.res1(x)  # (B, 128, H/2, W/2)
        x = F.max_pool2d(self.layer2(x), 2)  # (B, 256, H/4, W/4)
        x = F.max_pool2d(self.layer3(x), 2)  # (B, 512, H/8, W/8)
        x = x + self.res3(x)  # (B, 512, H/8, W/8)
        x = torch.amax(x, dim=(2, 3))  # (B, 512): global max pool
        x = self.dropout(x)  # (B, 512)
        return self.head(x) * RESNET9_LOGIT_SCALE  # (B, num_classes)
