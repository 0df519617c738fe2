"""Keep freed tensor memory inside a training process instead of handing it back each step.

glibc returns large freed blocks to the kernel: blocks above the mmap threshold are unmapped
on free, and a heap's free top is trimmed once it passes the trim threshold. Both
thresholds start low and adapt to the process's history. When they end up low, each step's
activations (the convnet's first layer alone is (128, 32, 26, 26) float32, 11 MB) come back
as fresh zeroed pages, one minor fault per 4 KiB page. A Ray Train worker hit that: 0.8 to
1.1 million page faults per 30,000-image MNIST epoch and about 20% fewer samples/s than
the same loop in a process whose history had raised the thresholds. Fixed thresholds
bring the faults to single digits (docs/benchmarks.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

# glibc refuses an mmap threshold above half its 64 MiB heap size on 64-bit builds.
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
# A heap's free top is kept up to this size: above one step's transient peak, so that the
# peak is allocated once per process rather than once per step.
TRIM_THRESHOLD_BYTES = 1024 * 1024 * 1024


def retain_freed_memory() -> bool:
    """Fix glibc's malloc thresholds for this process; call once, before training.

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
    applied = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
    if not applied:
        logger.warning("glibc refused the malloc thresholds; training may page-fault per step")
    return applied
