"""The emit process's heap: freed memory given back to the system.

glibc's allocator keeps memory that was freed for its next allocations: in
one heap ("arena") a thread, and for blocks up to a threshold that grows to
32 MB as large blocks are freed. The emit's threads (host copy, one a
writer, compilation) each allocate and free many large temporaries, so
every arena stays near its own highest point and the process's resident
memory is their sum. `bound` fixes the threshold: blocks at or above it are
mapped on their own and unmapped when freed, at the cost of page faults
when they are mapped again. Measured on 2 cores (BUILD.md "Memory"): Tier 1
in all formats (rows up to 10 KB) peaked at 1.5-1.7 GB without it, 1.42 GB at
16 MB in the same time, 1.33 GB at 4 MB but about 20% slower; a 20,000-row
Tier 2 emit in all formats (rows up to 236 KB) at 2.13 GB without, 1.96 GB
at 16 MB, 1.66 GB at 4 MB; Tier 2 zarr alone peaks near 1 GB anyway and
runs about 10% slower with either. Hence: 16 MB for rows up to 64 KB; for
larger rows 4 MB with JSONL or Parquet, glibc's own for zarr alone.

A fixed mmap threshold also stops glibc from raising its trim threshold
(128 KB): each arena then gives back its top whenever 128 KB of it is free,
and faults it in again at the next batch. `bound` sets the trim threshold
with it (`trim_threshold`: 256 MB with the 16 MB threshold, 32 MB with 4 MB).
Measured with `perf stat -e page-faults` on 2 cores, the thresholds set from
the environment, one run each (not interleaved; a Tier 2 emit beside all but
the first Tier 1 run): the full Tier 1 in all formats
2.78 M -> 1.51 M page faults (14-17 -> 9.5 system CPU-s; peak 1.36-1.38 ->
1.51 GB); 20,000 Tier 2 rows in all formats 7.31 M -> 5.49 M (40.7 -> 33.9
system CPU-s; 1.78 -> 1.81 GB). Interleaved on a quieter machine, with this
round's other changes (BUILD.md): Tier 1 1.40-1.72 M -> 1.27-1.52 M faults
and no measurable change in wall time; Tier 2 20,000 rows 6.86 M -> 3.67 M,
64.1 -> 61.6 s. The CLI calls `bound` (a process that imports
the emit as a library keeps its own allocator settings); `release` returns
what the heap holds free (after a compilation, after each part). Elsewhere
than glibc both do nothing. The CLI also calls `arrow_pool`, so that
pyarrow's buffers come from this same bounded heap.
"""

import ctypes
import functools
import os

_M_TRIM_THRESHOLD = -1   # mallopt's parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
LARGE_ROW = 64 << 10     # bytes of a row (its zarr arrays) that is large


@functools.cache
def _libc():
  try:
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc_trim, libc.mallopt   # glibc's
    return libc
  except (OSError, AttributeError):
    return None


def mmap_threshold(row_bytes: int, formats) -> int | None:
  """The threshold `bound` sets for an emit of `formats` whose largest row
  (at its split's sizes) takes `row_bytes`; None: glibc's own."""
  if row_bytes <= LARGE_ROW:
    return 16 << 20
  return 4 << 20 if {"jsonl", "parquet"} & set(formats) else None


_TRIM = {16 << 20: 256 << 20, 4 << 20: 32 << 20}   # the measured pairs


def trim_threshold(mmap: int) -> int:
  """The free bytes an arena's top keeps, with an mmap threshold of `mmap`
  bytes (one of `mmap_threshold`'s)."""
  return _TRIM[mmap]


def bound(row_bytes: int, formats) -> None:
  """Blocks of `mmap_threshold(row_bytes, formats)` bytes or more are
  mapped on their own (and returned when freed), and arenas keep up to
  `trim_threshold` of it free at their top, where glibc can."""
  libc, threshold = _libc(), mmap_threshold(row_bytes, formats)
  if libc is not None and threshold is not None:
    libc.mallopt(_M_MMAP_THRESHOLD, threshold)
    libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold(threshold))


ARROW_POOL = "system"   # pyarrow's allocator for the emit's processes


def arrow_pool() -> None:
  """Has pyarrow, once imported, allocate with the system's allocator
  (glibc, bounded as above) instead of its default, unless the environment
  names one (`ARROW_DEFAULT_MEMORY_POOL`); the serialization workers inherit
  it. Measured (BUILD.md "Memory"): 10,240 Tier 2 train rows in all formats,
  two interleaved pairs, peak 1.69-1.73 -> 1.55-1.58 GB, 40.5-45.2 ->
  32.7-32.8 s (mimalloc's 26-29 system CPU-seconds -> 19)."""
  os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", ARROW_POOL)


def release() -> None:
  """Returns the heap's free memory to the system, where glibc can."""
  libc = _libc()
  if libc is not None:
    libc.malloc_trim(0)
