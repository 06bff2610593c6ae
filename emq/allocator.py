"""glibc's allocator kept from handing large freed blocks back to the kernel in fitness processes.

Fitness evaluation allocates and frees tensor temporaries of a network's size many times per
candidate. glibc returns a freed heap top to the kernel once it exceeds twice the largest block
freed so far, so with a few 17 MB temporaries (ResNet-18's weights x 3 bit-widths in float64)
alive at once every new temporary is mapped afresh and page-faulted in: about 600,000 page
faults per 1,000 candidates, and a third of the CPU time of a five-bench fitness
(benchmarks/search_speed.py). Fixing the thresholds (blocks up to 32 MB from the heap, freed
memory kept up to 256 MB) removes them; the numbers computed do not change. It is a process-wide
setting, applied once in each process that evaluates fitness; elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # the highest glibc's own adjustment reaches on 64-bit systems
TRIM_THRESHOLD = 256 * 2**20
_done = False


def keep_freed_memory() -> bool:
    """Set the thresholds (once per process); True when glibc took them."""
    global _done
    if _done:
        return True
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        ok = libc is not None and bool(
            libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        )
    except (OSError, AttributeError):  # not glibc: nothing to tune
        ok = False
    log.debug("allocator thresholds %s", "set" if ok else "left as they are")
    _done = ok
    return ok
