"""Keep the memory glibc frees: a CPU training step's large blocks are otherwise handed back to the
system when freed and faulted in again, page by page, when next allocated.

A step allocates its gradients and activations afresh. glibc serves large blocks with `mmap` and
returns them on `free`, and trims the heap's free top, so each step pays a minor page fault per 4 KiB
page touched again (a few microseconds each on a virtual machine). m-SAM pays it once per group:
every group's ascent gradient is a new model-sized block (`docs/performance.md`, "Page faults").
The same as starting the process with `MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...`; it changes
no number a run computes, only where its memory comes from, and the process keeps its peak.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
KEEP_UP_TO = 2**31 - 1
"""The free heap top kept (mallopt takes an int: 2 GiB, beyond a step's freed blocks here)."""


def keep_freed_memory() -> bool:
    """Large blocks from the heap (no `mmap`) and no trimming, for the rest of the process; False where
    the C library has no `mallopt` (not glibc), which leaves the allocator as it was."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, KEEP_UP_TO) == 1
