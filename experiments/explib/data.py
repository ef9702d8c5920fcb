"""Rows for the experiments: the dataset's own rows, generated in-graph.

`dataset_rows` makes the rows a dataset emit would write (the same row keys,
so the same programs, traces and token ids), for the train split and any
eval buckets, in one jitted call padded to sizes that fit all of them: one
compilation per tier and render set instead of one per bucket.
"""

import dataclasses
import functools
import json
import pathlib
import re
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tinyvm_jax._src import keys as keys_lib
from tinyvm_jax._src import tiers as tiers_lib
from tinyvm_jax._src.types import Rows

MODES = ("smoke", "full")
TRAIN = "train"   # the name this module gives the train split among buckets
REPO = pathlib.Path(__file__).resolve().parents[2]
STATS_PATH = REPO / "tests" / "data" / "stats.json"


@functools.partial(jax.jit, static_argnames=("tier", "shapes", "renders",
                                             "token_lengths"))
def _rows(tier, key_data, axes, sample, *, shapes, renders, token_lengths):
  def one(kd, ax, s):
    key = jax.random.wrap_key_data(kd, impl=keys_lib.IMPL)
    drawn = tier.sample_axes(keys_lib.axes_key(key))
    ax = jnp.where(s, drawn, ax)
    return tiers_lib.make_row(tier, key, axes=ax, shapes=shapes,
                              renders=renders,
                              token_lengths=dict(token_lengths))
  return jax.vmap(one)(key_data, axes, sample)


@functools.partial(jax.jit, static_argnames=("seed", "split", "bucket"))
def _key_data(indices, *, seed, split, bucket):
  return jax.vmap(lambda i: jax.random.key_data(
      keys_lib.row_key(seed, split, bucket, i)))(indices)


def dataset_rows(tier, seed: int, buckets: Sequence[str], size: int, *,
                 renders: Sequence[str] = ("direct",),
                 token_lengths: dict | None = None,
                 start: int = 0) -> dict[str, Rows]:
  """Rows `start .. start + size - 1` of each split, as a dataset emit with
  `seed_base=seed` would make them (padded to common sizes).

  Args:
    tier: a `Tier` or its name.
    seed: the dataset's seed base.
    buckets: split names: "train" and/or the tier's eval bucket names.
    size: rows per split.
    renders: render names.
    token_lengths: {render: (T_in, T_out)}; default the largest that the
      splits need.
    start: first row index.

  Returns:
    {split name: `Rows`} with leading dimension `size`.
  """
  tier = tiers_lib.get_tier(tier)
  if not buckets:
    raise ValueError("buckets must name at least one split")
  if isinstance(size, bool) or not isinstance(size, int) or size < 1:
    raise ValueError(f"size must be a positive int, got {size!r}")
  shapes_list = []
  kd, axes, sample = [], [], []
  index = jnp.arange(start, start + size, dtype=jnp.int32)
  for name in buckets:
    if name == TRAIN:
      split, bucket, ax = "train", None, np.zeros(tier.num_axes, np.int32)
      shapes_list.append(tier.train_shapes)
    else:
      b = tier.bucket(name)
      split, bucket, ax = "eval", name, np.asarray(b.axes, np.int32)
      shapes_list.append(b.shapes)
    kd.append(_key_data(index, seed=seed, split=split, bucket=bucket))
    axes.append(np.broadcast_to(ax, (size, tier.num_axes)))
    sample.append(np.full(size, name == TRAIN))
  shapes = tiers_lib.Shapes(**{
      f.name: max(getattr(s, f.name) for s in shapes_list)
      for f in dataclasses.fields(tiers_lib.Shapes)})
  lengths = {r: shapes.token_lengths(r) for r in renders}
  lengths.update(token_lengths or {})
  rows = _rows(tier, jnp.concatenate(kd), jnp.asarray(np.concatenate(axes)),
               jnp.asarray(np.concatenate(sample)), shapes=shapes,
               renders=tuple(renders),
               token_lengths=tuple(sorted(lengths.items())))
  return {name: jax.tree_util.tree_map(lambda x: x[i * size:(i + 1) * size],
                                       rows)
          for i, name in enumerate(buckets)}


def reference_stats() -> dict:
  """The reference's dataset figures (`tests/data/stats.json` of the repo)."""
  return json.loads(STATS_PATH.read_text())


def reference_splits(ref: dict) -> dict[tuple[str, str], str]:
  """{(tier, split name): stats.json key}; split name "train" or a bucket."""
  out = {}
  for key in ref:
    m = re.fullmatch(r"(tier\d+)_(train|eval_(.+))_(\d+)", key)
    if m:
      out[(m.group(1), m.group(3) or TRAIN)] = key
  return out


def to_numpy(tree):
  return jax.tree_util.tree_map(np.asarray, tree)
