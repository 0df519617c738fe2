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

from raysight.data.transforms import normalize, random_crop, random_flip


@dataclass(frozen=True)
class Preparation:
    """How a uint8 batch becomes the model's input on the device."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int  # 0: no random crop
    flip: bool
    channels_last: bool


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
        x = images.to(self.device, non_blocking=True)  # (B, C, H, W) uint8
        x = normalize(x, self.prep.mean, self.prep.std)  # (B, C, H, W) float32
        if augment and self.prep.crop_padding:
            # After normalisation, zero padding means "mean colour", not black.
            x = random_crop(x, self.prep.crop_padding, self._generator)
        if augment and self.prep.flip:
            x = random_flip(x, self._generator)
        if self.prep.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
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
