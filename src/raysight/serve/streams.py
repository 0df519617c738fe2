"""Pipelined bidirectional streams: read requests as they arrive, answer each as it is done.

Answering one message at a time would make a stream as slow as a client that waits for each
answer, and keep its requests out of each other's batches. Instead up to `window` requests
of one stream are in progress at once and their answers go out in completion order, each
carrying its request's id, so a client matches them by id, not by position.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

Request = TypeVar("Request")
Response = TypeVar("Response")

WINDOW = 64
"""Requests of one stream in progress or waiting to be sent: two full batches of one-image
requests at the default max_batch_size (32). Serve counts a stream as one ongoing request,
so this, not max_ongoing_requests, bounds what one stream asks of a replica."""


class _End:
    """Marks the end of the answers; carries the reader's error, if it failed."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


async def pipelined(
    requests: AsyncIterator[Request],
    answer: Callable[[Request], Awaitable[Response]],
    window: int = WINDOW,
) -> AsyncIterator[Response]:
    """The answers to `requests`, in completion order, at most `window` in flight.

    Args:
        requests: The stream's requests, read as they arrive.
        answer: One request's response; errors belong inside the response, so an exception
            it raises ends the stream (re-raised here).
        window: The most requests read but not yet answered and sent.

    Raises:
        Exception: What reading `requests` or an `answer` raised.
    """
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    done: asyncio.Queue[Response | _End] = asyncio.Queue()
    slots = asyncio.Semaphore(window)  # released when an answer is handed to the client
    tasks: set[asyncio.Task[None]] = set()

    async def one(request: Request) -> None:
        try:
            done.put_nowait(await answer(request))
        except Exception as exc:
            done.put_nowait(_End(exc))

    async def read() -> None:
        try:
            async for request in requests:
                await slots.acquire()
                task = asyncio.create_task(one(request))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            while tasks:  # answer everything read before ending the stream
                await asyncio.gather(*tasks)
        except Exception as exc:
            done.put_nowait(_End(exc))
            return
        done.put_nowait(_End())

    reader = asyncio.create_task(read())
    try:
        while not isinstance(item := await done.get(), _End):
            yield item
            slots.release()
        if item.error is not None:
            raise item.error
    finally:  # the client went away, or an error ended the stream: stop the rest
        for task in (reader, *tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(reader, *tasks, return_exceptions=True)
