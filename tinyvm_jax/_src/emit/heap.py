"""Giving freed heap memory back to the system.

glibc's allocator keeps the memory that a compilation or a part's buffers
used once they are freed (for its next allocations), so a process's
resident memory stays near its highest point: a compilation of a Tier 2
row class leaves about 300 MB that no later allocation needs. `release`
asks the allocator to return it (`malloc_trim`); elsewhere (other C
libraries, other systems) it does nothing.
"""

import ctypes
import functools


@functools.cache
def _malloc_trim():
  try:
    return ctypes.CDLL("libc.so.6").malloc_trim
  except (OSError, AttributeError):
    return None


def release() -> None:
  """Returns the heap's free memory to the system, where glibc can."""
  trim = _malloc_trim()
  if trim is not None:
    trim(0)
