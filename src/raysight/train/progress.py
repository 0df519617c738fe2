"""A progress bar for `raysight train` on a terminal, drawn by the driver from rank 0's steps.

Workers run in other processes, often on other machines, so a bar drawn there never reaches
the screen of the person who started the run. Instead rank 0 posts its position to a small
actor (`ProgressBoard`) a few times a second without waiting for an answer; the driver
reads it and draws one line at the bottom of its terminal (`TerminalBar`). Every other line
written meanwhile, the driver's own log lines and the worker lines Ray forwards, first
clears the bar and then has it drawn again below, so the two never share a line.
"""

from __future__ import annotations

import logging
import math
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TextIO

import ray

logger = logging.getLogger(__name__)

# How often rank 0 posts and the driver redraws: smooth enough to read, and a few actor
# calls a second cost nothing next to a training step.
_POST_INTERVAL_S = 0.25
_REFRESH_S = 0.25
_ERASE = "\r\x1b[K"  # carriage return, then clear to the end of the line


@dataclass(frozen=True)
class Position:
    """Where the run stands, as rank 0 sees it."""

    epoch: int  # 1-based number of the epoch in progress
    epochs: int
    step: int  # optimizer steps done in this epoch
    steps: int  # optimizer steps per epoch
    samples_per_second: float  # this epoch so far, all ranks together
    seconds_left: float  # whole run, at the pace of this attempt so far (evaluation included)


@ray.remote(num_cpus=0)
class ProgressBoard:
    """Holds rank 0's latest position for the driver to read."""

    def __init__(self) -> None:
        self._position: Position | None = None

    def post(self, position: Position) -> None:
        self._position = position

    def read(self) -> Position | None:
        return self._position


class ProgressPoster:
    """Rank 0's side: posts its position at most every `_POST_INTERVAL_S`, fire and forget."""

    def __init__(
        self, board: Any, *, epochs: int, steps: int, samples_per_step: int, start_epoch: int
    ) -> None:
        self._board = board  # ActorHandle[ProgressBoard]
        self._epochs, self._steps = epochs, steps
        self._samples_per_step = samples_per_step  # the global batch: per-rank batch x world
        self._start_epoch = start_epoch  # after a restart, pace counts this attempt only
        self._run_start = time.perf_counter()
        self._last_post = -math.inf

    def for_epoch(self, epoch: int) -> Callable[[int], None]:
        """The step callback of 0-based `epoch`: takes the steps done so far in it."""
        epoch_start = time.perf_counter()

        def on_step(step: int) -> None:
            now = time.perf_counter()
            if step < self._steps and now - self._last_post < _POST_INTERVAL_S:
                return  # throttled; the epoch's last step always posts
            self._last_post = now
            done = (epoch - self._start_epoch) * self._steps + step
            left = (self._epochs - epoch) * self._steps - step
            self._board.post.remote(
                Position(
                    epoch=epoch + 1,
                    epochs=self._epochs,
                    step=step,
                    steps=self._steps,
                    samples_per_second=step * self._samples_per_step / (now - epoch_start),
                    seconds_left=(now - self._run_start) / done * left,
                )
            )

        return on_step


def render(position: Position, width: int, fill: str = "█", empty: str = "░") -> str:
    """One line of at most `width - 1` characters (the last column would wrap on some
    terminals), e.g. `epoch 2/5 ████████░░░░  312/469  5,612 samples/s  1m 12s left`."""
    head = f"epoch {position.epoch}/{position.epochs} "
    tail = (
        f"  {position.step}/{position.steps}  {position.samples_per_second:,.0f} samples/s"
        f"  {_duration(position.seconds_left)} left"
    )
    bar_width = max(10, min(40, width - 1 - len(head) - len(tail)))
    filled = round(bar_width * position.step / max(position.steps, 1))
    return (head + fill * filled + empty * (bar_width - filled) + tail)[: max(width - 1, 1)]


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


class TerminalBar:
    """The driver's side: a bar on the last line of `terminal`, kept below all other output.

    Use through `show_progress`, which also routes stdout, stderr and logging through
    `write` while the bar is up.
    """

    def __init__(self, board: Any, terminal: TextIO) -> None:
        self._board = board  # ActorHandle[ProgressBoard]
        self._terminal = terminal
        self._lock = threading.Lock()
        self._frame = ""  # last drawn line, "" before the first position
        self._shown = False  # the frame is on screen now
        self._line_open = False  # output stopped mid-line: drawing now would join that line
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="raysight-progress", daemon=True)
        utf = (getattr(terminal, "encoding", "") or "").lower().replace("-", "").startswith("utf")
        self._glyphs = ("█", "░") if utf else ("#", "-")

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop polling and take the bar off the screen; the epoch lines stay as the record."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        with self._lock:
            self._erase()

    def write(self, stream: TextIO, text: str) -> int:
        """Write `text` to `stream` (any stream on the same screen) around the bar."""
        with self._lock:
            self._erase()
            written = stream.write(text)
            stream.flush()
            if text:
                self._line_open = not text.endswith("\n")
            self._draw()
            return written

    def _poll(self) -> None:
        while not self._stop.wait(_REFRESH_S):
            try:
                position = ray.get(self._board.read.remote(), timeout=10)
            except Exception:  # a missed frame is harmless; the run goes on
                logger.debug("progress board unreadable", exc_info=True)
                continue
            if position is not None:
                self.show(position)

    def show(self, position: Position) -> None:
        """Draw `position` now, or as soon as the line being written is finished."""
        frame = render(position, shutil.get_terminal_size().columns, *self._glyphs)
        with self._lock:
            if frame != self._frame:  # an unchanged frame stays as drawn: no flicker
                self._erase()
                self._frame = frame
            self._draw()

    def _erase(self) -> None:
        if self._shown:
            self._terminal.write(_ERASE)
            self._terminal.flush()
            self._shown = False

    def _draw(self) -> None:
        if self._frame and not self._line_open and not self._shown:
            self._terminal.write(self._frame)
            self._terminal.flush()
            self._shown = True


class _BarAware:
    """A stand-in for sys.stdout or sys.stderr that writes through the bar."""

    def __init__(self, bar: TerminalBar, inner: TextIO) -> None:
        self._bar, self._inner = bar, inner

    def write(self, text: str) -> int:
        return self._bar.write(self._inner, text)

    def flush(self) -> None:
        self._inner.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)  # isatty, fileno, encoding, ...


@contextmanager
def show_progress(board: Any) -> Iterator[None]:
    """Draw `board`'s position on stderr until the block ends.

    stdout and stderr (where Ray prints worker lines) and the logging handlers that write
    to them go through the bar while it is up, and are restored afterwards.
    """
    terminal = sys.stderr
    bar = TerminalBar(board, terminal)
    originals = {id(sys.stdout): sys.stdout, id(sys.stderr): sys.stderr}
    wrapped = {key: _BarAware(bar, stream) for key, stream in originals.items()}
    handlers = [
        (handler, handler.stream)
        for name in ("", "raysight", "ray")
        for handler in logging.getLogger(name).handlers
        if isinstance(handler, logging.StreamHandler) and id(handler.stream) in originals
    ]
    saved_out, saved_err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = wrapped[id(saved_out)], wrapped[id(saved_err)]
    for handler, stream in handlers:
        handler.setStream(wrapped[id(stream)])
    bar.start()
    try:
        yield
    finally:
        bar.close()
        for handler, stream in handlers:
            handler.setStream(stream)
        sys.stdout, sys.stderr = saved_out, saved_err
