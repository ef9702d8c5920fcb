"""Host-side argument checks shared by every public function."""

from typing import Any

import numpy as np


def is_int(value: Any) -> bool:
  """Whether `value` is a Python or numpy integer (bools are not)."""
  return isinstance(value, (int, np.integer)) and not isinstance(
      value, (bool, np.bool_))


def check_int(name: str, value: Any, *, lo: int | None = None,
              hi: int | None = None, error: type[Exception] = ValueError
              ) -> int:
  """`value` as an int, or `error` naming `name` and the allowed range.

  `lo` and `hi` are inclusive bounds (None: unbounded).
  """
  if is_int(value) and (lo is None or value >= lo) and (
      hi is None or value <= hi):
    return int(value)
  if lo is not None and hi is not None:
    want = f"an int in [{lo}, {hi}]"
  elif lo == 1:
    want = "a positive int"
  elif lo is not None:
    want = f"an int >= {lo}"
  elif hi is not None:
    want = f"an int <= {hi}"
  else:
    want = "an int"
  raise error(f"{name} must be {want}, got {value!r}")
