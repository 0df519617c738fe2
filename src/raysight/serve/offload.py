"""Preparing a request off the event loop when its payload is large.

A replica answers every RPC on one event loop, so work done there stalls all of them: one
40-megapixel JPEG decoded inline holds up every other request for about a second. Decoding
images, decoding typed OIP contents and normalising UINT8 pixels cost time in proportion to
the payload, so large payloads go to worker threads; small ones stay inline, where the
thread hop would cost more than the work itself.

Measured on the 2-core build machine (Python 3.11, Pillow, torch on 1 thread), medians:

| work                                     | cost                                   |
|------------------------------------------|----------------------------------------|
| a hop to a thread and back (no-op)       | ~90 us                                 |
| decoding an encoded image to model size  | 0.1-0.3 ms for a digit; 5-80 us / KiB  |
| decoding typed contents (`contents`)     | 35-65 us / KiB                         |
| normalising UINT8 pixels                 | ~1.5 us / KiB                          |
| viewing raw contents (`np.frombuffer`)   | ~15 us, whatever the size              |

So each kind of payload stays inline while its work is about a millisecond or less (ten
hops): 16 KiB of encoded image or typed contents, 512 KiB of pixels to normalise.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

INLINE_BYTES = 16 * 1024
"""Encoded image or typed contents up to this size is prepared on the event loop."""
INLINE_PIXEL_BYTES = 512 * 1024
"""UINT8 pixels up to this size are normalised on the event loop."""
WORKERS = 2
"""Large preparations at once: the replica's CPU share, and a bound on the memory held by
decoded pixels (a 40-megapixel RGB image is 120 MB before it is resized)."""

P = ParamSpec("P")
T = TypeVar("T")


class Offloader:
    """Runs heavy preparations in a small pool of its own, apart from the forward passes, so
    a queue of large images never delays the model for small requests."""

    def __init__(self, workers: int = WORKERS) -> None:
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="raysight-prep")

    async def run(self, heavy: bool, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(*args, **kwargs)`: inline when not `heavy`, else in a worker thread."""
        if not heavy:
            return fn(*args, **kwargs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    def close(self) -> None:
        self._executor.shutdown(wait=False)
