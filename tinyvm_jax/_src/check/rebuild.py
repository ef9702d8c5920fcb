"""Rebuilding row programs from `meta.seed` and `meta.axes`, a batch of rows
a jitted call (`tiers.rebuild_row`, the one program-rebuild kernel)."""

import functools
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from tinyvm_jax._src import batching
from tinyvm_jax._src import program as program_lib
from tinyvm_jax._src import tiers


@functools.partial(jax.jit, static_argnames=("tier", "max_len"))
def rebuild_batch(tier, key_data, axes, *, max_len):
  """([B, A] train axes drawn from each row key, [B] programs rebuilt from
  each key at the given axes): `tiers.rebuild_row` over a batch.

  Args:
    tier: the `Tier` (static).
    key_data: [B, 2] uint32 row-key data (meta.seed's words).
    axes: [B, A] int32 axes to build at.
    max_len: static program length `P`.
  """
  return jax.vmap(functools.partial(tiers.rebuild_row, tier,
                                    max_len=max_len))(key_data, axes)


def _parse_meta(row: Any) -> tuple[tiers.Tier, int, np.ndarray, dict]:
  """(tier, seed, [A] axes, meta) of a row, checked.

  Raises:
    KeyError, TypeError, ValueError: a meta the row cannot be rebuilt from.
  """
  meta = row["meta"]
  tier = tiers.get_tier(meta["tier"])
  seed = int(meta["seed"])
  if not 0 <= seed < 2 ** 64:
    raise ValueError(f"meta.seed {seed} is not a 64-bit seed")
  axes = tiers.row_axes(tier, seed, meta["axes"])
  if meta.get("split") == "eval":
    fixed = np.asarray(tier.bucket(meta.get("bucket")).axes)
    if not np.array_equal(fixed, axes):
      raise ValueError(f"meta.axes {meta['axes']} are not bucket "
                       f"{meta.get('bucket')!r}'s {fixed.tolist()}")
  elif meta.get("split") != "train":
    raise ValueError(f"meta.split {meta.get('split')!r} is neither "
                     "train nor eval")
  if tier.shapes_fn(axes).max_len > tier.max_shapes.max_len:
    raise ValueError(f"meta.axes {meta['axes']} are outside tier "
                     f"{tier.name!r}'s range")
  return tier, seed, axes, meta


def _rebuild_tier(tier: tiers.Tier, items: Sequence[tuple[int, int,
                                                          np.ndarray,
                                                          Mapping]],
                  batch: int) -> dict[int, list | ValueError]:
  """{index: program JSON or error} of items (index, seed, axes, meta) of
  one tier, in one call of at least `batch` rows (one compilation a tier:
  programs do not depend on their padding)."""
  b = max(batch, len(items))
  key_data = np.array([[s >> 32, s & 0xFFFFFFFF] for _, s, _, _ in items],
                      np.uint32)
  axes = np.stack([a for _, _, a, _ in items]).astype(np.int32)
  drawn, progs = jax.device_get(rebuild_batch(
      tier, batching.pad_rows(key_data, b), batching.pad_rows(axes, b),
      max_len=tier.max_shapes.max_len))
  out = {}
  for i, (k, _, ax, meta) in enumerate(items):
    if meta.get("split") == "train" and not np.array_equal(drawn[i], ax):
      out[k] = ValueError(
          f"meta.axes {meta['axes']} differ from the axes drawn from "
          f"meta.seed {dict(zip(tier.axis_names, drawn[i].tolist()))}")
      continue
    out[k] = program_lib.to_json(jax.tree.map(lambda x, i=i: x[i], progs))
  return out


class Rebuilder:
  """The `rebuild` of `replay.check_rows`: the programs of a batch of row
  dicts rebuilt from their meta, padded to `batch` rows a call."""

  def __init__(self, batch: int):
    self.batch = batch

  def __call__(self, rows: Sequence[Any]) -> list[list | ValueError]:
    """For each row, its rebuilt program (an instruction list), or the
    ValueError saying why it cannot be rebuilt."""
    out: list = [None] * len(rows)
    groups: dict[str, list] = {}
    for k, row in enumerate(rows):
      try:
        tier, seed, axes, meta = _parse_meta(row)
      except (KeyError, TypeError, ValueError) as e:
        out[k] = ValueError(f"bad meta: {e}")
        continue
      groups.setdefault(tier.name, []).append((k, seed, axes, meta))
    for name, items in groups.items():
      for k, got in _rebuild_tier(tiers.get_tier(name), items,
                                  self.batch).items():
        out[k] = got
    return out
