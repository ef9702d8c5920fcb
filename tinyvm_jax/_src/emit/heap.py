"""The emit process's heap: freed memory given back to the system.

glibc's allocator keeps memory that was freed for its next allocations: in
one heap ("arena") a thread, and for blocks up to a threshold that grows to
32 MB as large blocks are freed. The emit's threads (host copy, one a
writer, compilation) each allocate and free many large temporaries, so
every arena stays near its own highest point and the process's resident
memory is their sum. `bound` fixes the threshold: blocks at or above it are
mapped on their own and unmapped when freed, at the cost of page faults
when they are mapped again. Measured on 2 cores (all formats, BUILD.md
"Memory"): Tier 1 (rows up to 10 KB) peaked at 1.94 GB without it, 1.42 GB
at 16 MB in the same time, 1.33 GB at 4 MB but about 20% slower; a
20,000-row Tier 2 emit (rows up to 236 KB) at 2.13 GB without, 1.96 GB at
16 MB, 1.66 GB at 4 MB. Hence 4 MB for rows over 64 KB, else 16 MB. The
CLI calls `bound` (a process that imports the emit as a library keeps its
own allocator settings); `release` returns what the heap holds free (after
a compilation, after each part). Elsewhere than glibc both do nothing.
"""

import ctypes
import functools

_M_MMAP_THRESHOLD = -3   # mallopt's parameter number (malloc.h)
LARGE_ROW = 64 << 10     # bytes of a row (its zarr arrays) that is large


@functools.cache
def _libc():
  try:
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc_trim, libc.mallopt   # glibc's
    return libc
  except (OSError, AttributeError):
    return None


def mmap_threshold(row_bytes: int) -> int:
  """The threshold `bound` sets for an emit whose largest row (at its
  split's sizes) takes `row_bytes`."""
  return 4 << 20 if row_bytes > LARGE_ROW else 16 << 20


def bound(row_bytes: int) -> None:
  """Blocks of `mmap_threshold(row_bytes)` bytes or more are mapped on
  their own (and returned when freed), where glibc can."""
  libc = _libc()
  if libc is not None:
    libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold(row_bytes))


def release() -> None:
  """Returns the heap's free memory to the system, where glibc can."""
  libc = _libc()
  if libc is not None:
    libc.malloc_trim(0)
