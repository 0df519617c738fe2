"""The terminal progress bar: its line, and how other output is kept off that line."""

from __future__ import annotations

import io

from raysight.train.progress import Position, TerminalBar, render

ERASE = "\r\x1b[K"


def _position(step: int, steps: int = 40, seconds_left: float = 75.0) -> Position:
    return Position(
        epoch=2,
        epochs=5,
        step=step,
        steps=steps,
        samples_per_second=5612.4,
        seconds_left=seconds_left,
    )


def test_the_line_shows_epoch_steps_rate_and_time_left() -> None:
    line = render(_position(10), width=100)
    assert line.startswith("epoch 2/5 ")
    assert line.endswith("  10/40  5,612 samples/s  1m 15s left")
    assert line.count("█") == 10 and line.count("░") == 30  # a quarter of a 40-wide bar


def test_the_line_fits_the_terminal() -> None:
    for width in (200, 80, 60, 30):
        assert len(render(_position(39), width=width)) <= width - 1
    assert len(render(_position(39), width=200)) < 199  # the bar stops growing at 40


def test_time_left_reads_in_the_largest_units() -> None:
    assert render(_position(1, seconds_left=8.4), 100).endswith(" 8s left")
    assert render(_position(1, seconds_left=3 * 3600 + 7 * 60), 100).endswith(" 3h 07m left")


def test_ascii_glyphs_for_terminals_without_unicode() -> None:
    line = render(_position(20), width=100, fill="#", empty="-")
    assert "#" * 20 + "-" * 20 in line


def test_other_output_clears_the_bar_and_the_bar_returns_below_it() -> None:
    terminal = io.StringIO()
    bar = TerminalBar(board=None, terminal=terminal)
    bar.show(_position(10))
    frame = terminal.getvalue()
    assert frame.startswith("epoch 2/5")

    bar.write(terminal, "a log line\n")
    assert terminal.getvalue() == frame + ERASE + "a log line\n" + frame


def test_the_bar_waits_for_a_line_written_in_pieces() -> None:
    # print() writes the text and the newline separately; a frame between them would
    # land in the middle of that line.
    terminal = io.StringIO()
    bar = TerminalBar(board=None, terminal=terminal)
    bar.write(terminal, "(worker) epoch 1/5 loss 0.3")
    bar.show(_position(10))
    assert terminal.getvalue() == "(worker) epoch 1/5 loss 0.3"
    bar.write(terminal, "\n")
    line, frame = terminal.getvalue().split("\n")
    assert line == "(worker) epoch 1/5 loss 0.3"
    assert frame.startswith("epoch 2/5 ") and "10/40" in frame


def test_an_unchanged_position_is_not_redrawn_and_close_clears_it() -> None:
    terminal = io.StringIO()
    bar = TerminalBar(board=None, terminal=terminal)
    bar.show(_position(10))
    once = terminal.getvalue()
    bar.show(_position(10))
    assert terminal.getvalue() == once
    bar.close()
    assert terminal.getvalue() == once + ERASE
