"""The device-side work of training: one optimizer step, one evaluation batch, one epoch.

Shared by the Ray Train loop and the plain single-process loop of the benchmark, so that the
two differ only in what Ray adds.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from raysight.data.transforms import (
    color_jitter,
    random_affine,
    random_crop,
    random_flip,
    random_resized_crop,
    standardize,
    to_unit,
)


@dataclass(frozen=True)
class Preparation:
    """How a uint8 batch becomes the model's input on the device.

    Augmentations apply to training batches only. The fields after `channels_last` default
    to off, so a Preparation that names only the crop and the flip does just those.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int  # 0: no random crop
    flip: bool
    channels_last: bool
    crop_area: float = 1.0  # smallest area share of a random resized crop; 1.0: none
    zoom: float = 0.0  # largest relative zoom in or out; 0: none
    rotation: float = 0.0  # largest angle, in full turns; 0: none
    jitter: float = 0.0  # brightness, contrast and saturation strength; 0: none


@dataclass
class EpochSums:
    """Unnormalised totals of one epoch on one rank; all-reduce them, then divide."""

    loss: float
    correct: int
    samples: int
    seconds: float  # wall time of the whole pass, data wait included
    wait_seconds: float  # the part of `seconds` spent blocked on the feed for the next batch


class WaitClock(Iterator[tuple[torch.Tensor, torch.Tensor]]):
    """Yields the batches of an iterable and adds up the time spent waiting for each.

    The wait is host time blocked in the feed's `next()`: reading and decoding, or for a
    Ray Data stream, its executor starting up and falling behind. On a GPU, kernels queued
    by the previous step may still run meanwhile, so there it bounds the device's idle time
    from above rather than measuring it.
    """

    def __init__(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self._batches = iter(batches)
        self.seconds = 0.0

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        start = time.perf_counter()
        try:
            return next(self._batches)
        finally:
            self.seconds += time.perf_counter() - start


class Stepper:
    """Runs training and evaluation batches of one model on one device."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        prep: Preparation,
        *,
        label_smoothing: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.device = device
        self.prep = prep
        self.label_smoothing = label_smoothing
        # bf16 autocast on GPU: matmuls and convs in bf16, BatchNorm and the loss in fp32.
        self._autocast: Callable[[], contextlib.AbstractContextManager[object]] = (
            (lambda: torch.autocast("cuda", dtype=torch.bfloat16))
            if device.type == "cuda"
            else contextlib.nullcontext
        )
        self._generator = torch.Generator(device=device).manual_seed(seed)

    def _inputs(self, images: torch.Tensor, augment: bool) -> torch.Tensor:
        prep = self.prep
        x = to_unit(images.to(self.device, non_blocking=True))  # (B, C, H, W) float32, [0, 1]
        if augment:
            # Colour on [0, 1] pixels, where brightness, contrast and saturation have their
            # photographic meaning and the result can be clipped to the pixel range.
            x = color_jitter(x, prep.jitter, prep.jitter, prep.jitter, self._generator)
        x = standardize(x, prep.mean, prep.std)
        if augment:
            x = self._move(x)
        if prep.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _move(self, x: torch.Tensor) -> torch.Tensor:
        """The geometric augmentations of a standardised (B, C, H, W) batch.

        They come after standardisation, so that the zeros filling pixels moved in from
        outside the image are the mean colour, not black.
        """
        prep, generator = self.prep, self._generator
        if prep.crop_area < 1.0:
            x = random_resized_crop(x, (prep.crop_area, 1.0), generator=generator)
        x = random_affine(x, zoom=prep.zoom, rotation=prep.rotation, generator=generator)
        if prep.crop_padding:
            x = random_crop(x, prep.crop_padding, generator)
        if prep.flip:
            x = random_flip(x, generator)
        return x

    def train_batch(
        self, images: torch.Tensor, labels: torch.Tensor, lr: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step. Returns (summed loss, correct count) as device tensors, so the
        caller can accumulate without a host sync per step."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x = self._inputs(images, augment=True)
        y = labels.to(self.device, non_blocking=True)  # (B,)
        with self._autocast():
            logits = self.model(x)  # (B, K)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach() * len(y), (logits.argmax(1) == y).sum()

    @torch.no_grad()
    def eval_batch(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss sum and correct count of one batch, without augmentation.

        `model` is the unwrapped module: evaluation needs no DDP gradient hooks, and ranks may
        evaluate different numbers of batches.
        """
        x = self._inputs(images, augment=False)
        y = labels.to(self.device, non_blocking=True)
        with self._autocast():
            logits = model(x)
        return F.cross_entropy(logits.float(), y, reduction="sum"), (logits.argmax(1) == y).sum()

    def train_epoch(
        self,
        batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
        lr_for_step: Callable[[int], float],
        first_step: int,
        on_step: Callable[[int], None] | None = None,
    ) -> EpochSums:
        """Train on every batch; `lr_for_step` maps the global step number to a rate, and
        `on_step`, if given, hears how many steps of this epoch are done after each one."""
        self.model.train()
        loss = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        samples = 0
        start = time.perf_counter()
        waited = WaitClock(batches)
        for i, (images, labels) in enumerate(waited):
            batch_loss, batch_correct = self.train_batch(
                images, labels, lr_for_step(first_step + i)
            )
            loss += batch_loss
            correct += batch_correct
            samples += len(labels)
            if on_step is not None:
                on_step(i + 1)
        loss_total, correct_total = loss.item(), int(correct.item())  # one host sync per epoch
        seconds = time.perf_counter() - start
        return EpochSums(loss_total, correct_total, samples, seconds, waited.seconds)

    def evaluate(
        self, model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
    ) -> EpochSums:
        """Loss and accuracy sums over a split."""
        model.eval()
        loss = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        samples = 0
        start = time.perf_counter()
        waited = WaitClock(batches)
        for images, labels in waited:
            batch_loss, batch_correct = self.eval_batch(model, images, labels)
            loss += batch_loss
            correct += batch_correct
            samples += len(labels)
        loss_total, correct_total = loss.item(), int(correct.item())
        seconds = time.perf_counter() - start
        return EpochSums(loss_total, correct_total, samples, seconds, waited.seconds)


def build_optimizer(
    model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float
) -> torch.optim.Optimizer:
    """AdamW or Nesterov SGD over the trainable parameters (a frozen backbone's are left
    out); no weight decay on biases and norm scales (1-d parameters)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.ndim > 1]
    no_decay = [p for p in trainable if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=lr)
