"""Pipelined streams: every request answered, in completion order, within the window."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from raysight.serve.streams import pipelined


async def _arrive(items: list[Any]) -> AsyncIterator[Any]:
    for item in items:
        await asyncio.sleep(0)
        yield item


def _run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, timeout=30))


def test_answers_come_in_completion_order_and_all_come() -> None:
    last_done = asyncio.Event()

    async def answer(n: int) -> int:
        if n == 0:  # the first asked can finish only after the last: one at a time would hang
            await asyncio.wait_for(last_done.wait(), timeout=5)
        if n == 4:
            last_done.set()
        return n

    async def main() -> list[int]:
        return [a async for a in pipelined(_arrive(list(range(5))), answer)]

    answers = _run(main())
    assert sorted(answers) == [0, 1, 2, 3, 4]
    assert answers[-1] == 0


def test_no_more_than_the_window_is_in_flight() -> None:
    running = 0
    most = 0

    async def answer(n: int) -> int:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.001)
        running -= 1
        return n

    async def main() -> list[int]:
        return [a async for a in pipelined(_arrive(list(range(20))), answer, window=3)]

    assert sorted(_run(main())) == list(range(20))
    assert most == 3


def test_a_request_read_error_ends_the_stream_after_its_error() -> None:
    async def broken() -> AsyncIterator[int]:
        yield 1
        raise ConnectionError("client went away")

    async def answer(n: int) -> int:
        return n

    async def main() -> list[int]:
        return [a async for a in pipelined(broken(), answer)]

    with pytest.raises(ConnectionError):
        _run(main())


def test_closing_the_stream_cancels_the_requests_in_flight() -> None:
    started: list[int] = []
    cancelled: list[int] = []

    async def answer(n: int) -> int:
        if n == 0:
            return n
        started.append(n)
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(n)
            raise
        return n

    async def main() -> None:
        stream = pipelined(_arrive([0, 1, 2]), answer)
        assert await anext(stream) == 0
        while len(started) < 2:
            await asyncio.sleep(0)
        await stream.aclose()  # the client hangs up with two in flight

    _run(main())
    assert sorted(cancelled) == [1, 2]


def test_window_must_be_positive() -> None:
    async def main() -> None:
        async for _ in pipelined(_arrive([1]), asyncio.sleep, window=0):
            pass

    with pytest.raises(ValueError, match="window"):
        _run(main())
