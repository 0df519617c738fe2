"""retain_freed_memory: a repeated large allocation stops costing page faults.

Each case runs in a child process, because malloc settings are process-wide and would
leak into the rest of the test session. Faults are counted over 20 allocations of the same
size, each written in full and freed, after a first one outside the count.
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
_ITERATIONS = 20

_PRELUDE = """
import ctypes, ctypes.util, resource, sys, threading
import numpy as np
from raysight.allocator import retain_freed_memory

def faults(mib):
    np.ones((mib << 20) // 4, dtype=np.float32)  # the first use may fault in any case
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        np.ones((mib << 20) // 4, dtype=np.float32)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
"""

# The main thread, after forcing the low fixed mmap threshold (128 KiB) that makes every
# large buffer a fresh mapping.
_LOW_THRESHOLD = """
ctypes.CDLL(ctypes.util.find_library("c")).mallopt(-3, 128 * 1024)
if sys.argv[1] == "retain":
    assert retain_freed_memory()
print(faults(16))
"""

# A thread (as Ray Train runs the training function) whose first 64 MiB heap is mostly
# held, so each 30 MiB buffer lands in a second heap, which is wholly free after each step.
_SECOND_HEAP = """
if sys.argv[1] == "retain":
    assert retain_freed_memory()
out = []
def work():
    held = [np.ones(5 << 20, dtype=np.float32) for _ in range(2)]  # 2 x 20 MiB
    out.append(faults(30))
thread = threading.Thread(target=work)
thread.start()
thread.join()
print(out[0])
"""


def _faults(case: str, mode: str) -> int:
    script = textwrap.dedent(_PRELUDE) + textwrap.dedent(case)
    done = subprocess.run(
        [sys.executable, "-c", script, mode], capture_output=True, text=True, check=True
    )
    return int(done.stdout.strip())


@pytest.mark.skipif(not _GLIBC, reason="malloc settings are a glibc feature")
@pytest.mark.parametrize("case", [_LOW_THRESHOLD, _SECOND_HEAP], ids=["threshold", "heap"])
def test_a_freed_buffer_is_reused_without_page_faults(case: str) -> None:
    # Without: every iteration maps fresh zeroed pages (4 KiB each, or 2 MiB where numpy's
    # huge-page advice is taken), so faults grow with the iterations.
    assert _faults(case, "default") >= 5 * _ITERATIONS
    # With: the freed buffer stays in the heap and the next one reuses its pages.
    assert _faults(case, "retain") < _ITERATIONS


@pytest.mark.skipif(_GLIBC, reason="only C libraries other than glibc decline")
def test_other_c_libraries_decline() -> None:
    from raysight.allocator import retain_freed_memory

    assert retain_freed_memory() is False
