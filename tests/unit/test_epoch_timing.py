"""Where an epoch's time goes: data wait apart from compute, and the epoch line that says so.

The timed tests inject a sleep into the feed and assert only what a sleep guarantees (it
lasts at least as long as asked) or comparisons with a wide margin, never exact durations.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from raysight.data import imagefolder
from raysight.models import build_model
from raysight.train.epoch import EpochStats, EpochTimes, duration, time_split
from raysight.train.step import EpochSums, Preparation, Stepper, WaitClock, build_optimizer
from tests.builders import encode_image

PREP = Preparation(
    mean=(0.5,) * 3, std=(0.25,) * 3, crop_padding=0, flip=False, channels_last=False
)
SIZE = (16, 16)
BATCH = 16
DELAY_S = 0.05  # injected per batch


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> imagefolder.ImageFolderIndex:
    """ROOT/train/{a,b}/ with 40 tiny noise PNGs each."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        class_dir = root / "train" / name
        class_dir.mkdir(parents=True)
        for i in range(40):
            pixels = rng.integers(0, 256, size=(*SIZE, 3), dtype=np.uint8)  # (H, W, 3)
            (class_dir / f"{i:02d}.png").write_bytes(encode_image(pixels, "PNG"))
    return imagefolder.scan(str(root), "train")


def _decoding_feed(
    index: imagefolder.ImageFolderIndex, delay: float
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Reads and decodes each batch only when asked for it, as a streaming feed does."""
    for start in range(0, len(index.paths), BATCH):
        paths = index.paths[start : start + BATCH]
        images = np.stack(
            [imagefolder.decode_image(Path(p).read_bytes(), SIZE, 3, p) for p in paths]
        )
        time.sleep(delay)  # a slow disk or decoder
        labels = np.asarray(index.labels[start : start + BATCH], dtype=np.int64)
        yield torch.from_numpy(images), torch.from_numpy(labels)


def _stepper() -> Stepper:
    torch.manual_seed(0)
    model = build_model("convnet", in_channels=3, num_classes=2, image_size=SIZE, padding="same")
    optimizer = build_optimizer(model, "adamw", 1e-3, 0.0, 0.9)
    return Stepper(model, optimizer, torch.device("cpu"), PREP)


def _batches(index: imagefolder.ImageFolderIndex) -> int:
    return -(-len(index.paths) // BATCH)


def _train(index: imagefolder.ImageFolderIndex, delay: float) -> EpochSums:
    return _stepper().train_epoch(_decoding_feed(index, delay), lambda _: 1e-3, 0)


def test_a_slow_feed_shows_as_data_wait(folder: imagefolder.ImageFolderIndex) -> None:
    injected = _batches(folder) * DELAY_S
    fast, slow = _train(folder, 0.0), _train(folder, DELAY_S)
    for sums in (fast, slow):
        assert 0.0 <= sums.wait_seconds <= sums.seconds  # a part of the pass, never more
    assert slow.wait_seconds >= injected  # every sleep happened inside next()
    assert slow.wait_seconds - fast.wait_seconds > 0.5 * injected


def test_compute_and_data_wait_do_not_leak_into_each_other(
    folder: imagefolder.ImageFolderIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Real steps of even a tiny net vary by seconds on a busy machine; a step that sleeps
    # a known time does not, so both sides of the split can be bounded.
    step_s = 2 * DELAY_S

    def slow_step(self: Stepper, *_: object) -> tuple[torch.Tensor, torch.Tensor]:
        time.sleep(step_s)
        return torch.zeros(()), torch.zeros((), dtype=torch.long)

    monkeypatch.setattr(Stepper, "train_batch", slow_step)
    sums = _train(folder, DELAY_S)
    feed_total, step_total = _batches(folder) * DELAY_S, _batches(folder) * step_s
    assert feed_total <= sums.wait_seconds < feed_total + step_total / 2
    assert step_total <= sums.seconds - sums.wait_seconds < step_total + feed_total / 2


def test_evaluation_counts_its_data_wait_too(folder: imagefolder.ImageFolderIndex) -> None:
    stepper = _stepper()
    sums = stepper.evaluate(stepper.model, _decoding_feed(folder, DELAY_S))
    assert sums.samples == len(folder.paths)
    assert sums.seconds >= sums.wait_seconds >= _batches(folder) * DELAY_S


def test_wait_clock_passes_batches_through_and_stops() -> None:
    batches = [(torch.zeros(1), torch.ones(1)), (torch.ones(1), torch.zeros(1))]
    clock = WaitClock(batches)
    assert [b for b, _ in clock] == [batches[0][0], batches[1][0]]
    assert clock.seconds >= 0.0
    assert list(clock) == []


def _stats() -> EpochStats:
    return EpochStats(
        epoch=3,
        train_loss=0.5,
        train_accuracy=0.8,
        val_loss=0.6,
        val_accuracy=0.75,
        samples=8000,
        seconds=10.0,
        train_wait_seconds=4.0,
        val_seconds=3.0,
        val_wait_seconds=1.0,
    )


def test_epoch_times_split_passes_into_compute_and_wait() -> None:
    times = EpochTimes.of(_stats(), checkpoint=0.5, report=0.3, wall=14.0)
    assert (times.train, times.data_wait, times.val) == (6.0, 5.0, 2.0)
    assert sum(times.parts().values()) == pytest.approx(13.8)
    assert times.other == pytest.approx(0.2)


def test_throughput_divides_by_the_training_pass_with_its_wait() -> None:
    assert _stats().samples_per_second == 800.0  # 8000 samples / 10 s, of which 4 s waiting


def test_other_is_never_negative() -> None:
    # The slowest rank's pass can outlast rank 0's share of the wall by a little.
    assert EpochTimes.of(_stats(), checkpoint=0.5, report=0.3, wall=13.0).other == 0.0


def test_epoch_line_names_every_part() -> None:
    line = time_split(EpochTimes.of(_stats(), checkpoint=0.5, report=0.3, wall=14.0))
    assert (
        line == "14.0s (train 6.0s, data wait 5.0s, val 2.0s, ckpt 0.5s, report 0.3s, other 0.2s)"
    )
    exact = time_split(EpochTimes.of(_stats(), checkpoint=0.5, report=0.3, wall=13.8))
    assert "other" not in exact


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.4, "0s"), (47, "47s"), (130, "2m"), (5400, "1h30m"), (7500, "2h05m")]
)
def test_duration_reads_like_a_person_would_say_it(seconds: float, text: str) -> None:
    assert duration(seconds) == text
