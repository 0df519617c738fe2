"""retain_freed_memory: a repeated large allocation stops costing page faults.

Runs in a child process, because malloc thresholds are process-wide and would leak into
the rest of the test session.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import subprocess
import sys
import textwrap

import pytest

_libc_name = ctypes.util.find_library("c")
_GLIBC = _libc_name is not None and hasattr(ctypes.CDLL(_libc_name), "gnu_get_libc_version")

# A 16 MiB buffer allocated, written and freed 20 times, after forcing the low fixed mmap
# threshold (128 KiB) that makes every such buffer a fresh mapping. Prints minor faults.
_CHILD = textwrap.dedent(
    """
    import ctypes, ctypes.util, resource, sys
    import numpy as np
    from raysight.train.allocator import retain_freed_memory

    ctypes.CDLL(ctypes.util.find_library("c")).mallopt(-3, 128 * 1024)
    if sys.argv[1] == "retain":
        assert retain_freed_memory()
    np.ones(4 << 20, dtype=np.float32)  # first use may fault in either case
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        np.ones(4 << 20, dtype=np.float32)  # (4Mi,) float32 = 16 MiB
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def _faults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, mode], capture_output=True, text=True, check=True
    )
    return int(done.stdout.strip())


@pytest.mark.skipif(not _GLIBC, reason="malloc thresholds are a glibc feature")
def test_retained_memory_is_reused_without_page_faults() -> None:
    iterations = 20
    # Without: every iteration maps fresh zeroed pages (4 KiB each, or 2 MiB where numpy's
    # huge-page advice is taken), so faults grow with the iterations.
    assert _faults("default") >= 5 * iterations
    # With: the freed buffer stays in the heap and the next one reuses its pages.
    assert _faults("retain") < iterations


@pytest.mark.skipif(_GLIBC, reason="only C libraries other than glibc decline")
def test_other_c_libraries_decline() -> None:
    from raysight.train.allocator import retain_freed_memory

    assert retain_freed_memory() is False
