"""Padded batches: one helper for every caller that runs a ragged number of
rows through a jitted function of a fixed batch size.

A batch is padded by repeating its last row (a valid row, so the padded
rows run without error; callers drop them after the call), and sizes are
rounded up to a few multiples so that calls share compilations.
"""

from typing import TypeVar

import jax
import jax.numpy as jnp
import numpy as np

T = TypeVar("T")


def round_up(x: int, m: int) -> int:
  """The smallest multiple of `m` that is >= x, and at least `m`."""
  return max(m, -(-x // m) * m)


def pad_rows(tree: T, rows: int) -> T:
  """Every leaf [B, ...] of `tree` grown to [rows, ...] by repeating its
  last row (numpy leaves stay numpy; in-graph leaves use jnp). B >= 1."""
  def pad(x):
    xp = jnp if isinstance(x, jax.Array) else np
    n = x.shape[0]
    if n == rows:
      return x
    if not 0 < n <= rows:
      raise ValueError(f"cannot pad {n} rows to {rows}")
    return xp.concatenate([x, xp.repeat(x[-1:], rows - n, axis=0)])
  return jax.tree.map(pad, tree)
