"""Keep freed memory in the process: glibc's malloc hands every freed block above its mmap threshold (at most 32 MiB
by default) back to the kernel, so a CPU pass whose activations are larger faults all their pages in again on the
next pass. A certification pass of the digits CNN (≈4,000 rows, 65 MB per conv layer) spent a third of its job in the
kernel (48 s, 15 s of it system time → 31 s, 0.9 s). Allocation only: no number changes."""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
KEEP_BELOW = 1 << 30  # blocks up to 1 GiB come from the heap and stay there when freed


def keep_freed_memory(threshold: int = KEEP_BELOW) -> bool:
    """Raise glibc's mmap and trim thresholds to `threshold` bytes. False (nothing done) off Linux or without glibc;
    an explicit MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ in the environment is left to glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt  # glibc's soname: no ldconfig lookup at every job's start
    except (OSError, AttributeError):  # musl and others: no libc.so.6 or no mallopt
        return False
    done = True
    for parameter, variable in (
        (M_MMAP_THRESHOLD, "MALLOC_MMAP_THRESHOLD_"),
        (M_TRIM_THRESHOLD, "MALLOC_TRIM_THRESHOLD_"),
    ):
        if variable not in os.environ:
            done = bool(mallopt(parameter, threshold)) and done
    return done
