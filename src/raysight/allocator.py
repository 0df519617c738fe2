"""Keep freed tensor memory inside a process instead of handing it back each step or pass.

glibc gives large freed blocks back to the kernel in three ways: blocks above the mmap
threshold are unmapped on free; a heap's free top is trimmed once it passes the trim
threshold; and a thread's arena (training runs in Ray Train's thread, not the main one)
unmaps any of its 64 MiB heaps the moment that heap is wholly free. The thresholds start
low and adapt to the process's history. Whichever path is taken, each step's activations
(the convnet's first layer alone is (128, 32, 26, 26) float32, 11 MB) then come back as
fresh zeroed pages, one minor fault per 4 KiB page.

A Ray Train worker hit this in some runs and not others: 0.8 to 1.1 million page faults
per 30,000-image MNIST epoch (up to 165,000 a second on each of its two threads) and 30 to
45% fewer samples/s. Fixed thresholds and a top pad bring the faults to single digits in
every run (docs/benchmarks.md). Buffers above 32 MiB are still mapped fresh each time,
which glibc does not let a process change; an allocator such as jemalloc, preloaded, is
the remedy there.

A serving replica runs its forward passes in a worker thread and hit the same: the
catsdogs model at 180x180, 1 torch thread, took 65 ms for a batch of 8 in a thread (50 ms
in the main thread) against 35 ms with these settings, which keep the cost per image flat
from 1 image to 8; the MNIST convnet's batch of 32 took 1.3 to 3.3 ms a pass from one
process to the next in the main thread, 1.3 ms in every process with them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

# glibc refuses an mmap threshold above half its 64 MiB heap size on 64-bit builds.
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
# A heap's free top is kept up to this size: above one step's transient peak, so that the
# peak is allocated once per process rather than once per step.
TRIM_THRESHOLD_BYTES = 1024 * 1024 * 1024
# A thread's arena is a chain of 64 MiB heaps, and glibc unmaps a whole heap the moment it
# is entirely free, whatever the trim threshold. Training runs in a thread (Ray Train's),
# and a step that frees everything it put in the newest heap loses that heap every step.
# Keeping this much spare at the top blocks that, at the cost of address space only:
# pages are touched only when used.
TOP_PAD_BYTES = 64 * 1024 * 1024


def retain_freed_memory() -> bool:
    """Fix glibc's malloc settings for this process; call once, before training or serving.

    Returns:
        True when applied; False where the C library is not glibc (macOS, musl), whose
        allocators have no such thresholds to set.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return False
    applied = all(
        libc.mallopt(param, value)
        for param, value in (
            (_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
            (_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
            (_M_TOP_PAD, TOP_PAD_BYTES),
        )
    )
    if not applied:
        logger.warning("glibc refused the malloc thresholds; each step or pass may page-fault")
    return applied
