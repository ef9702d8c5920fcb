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
import tinyvm_jax
from tinyvm_jax import Rows

MODES = ("smoke", "cpu", "full")
TRAIN = "train"   # the name this module gives the train split among buckets
REPO = pathlib.Path(__file__).resolve().parents[2]
STATS_PATH = REPO / "tests" / "data" / "stats.json"


# Token ids by name, from the public vocabulary.
TOKEN_ID = {name: i for i, name in enumerate(tinyvm_jax.TOKENS)}
PAD, BOS, EOS = TOKEN_ID["PAD"], TOKEN_ID["BOS"], TOKEN_ID["EOS"]
NEWLINE, EQUALS, MINUS = (TOKEN_ID["NEWLINE"], TOKEN_ID["EQUALS"],
                          TOKEN_ID["MINUS"])
DIGIT0, R0 = TOKEN_ID["0"], TOKEN_ID["R0"]
NUM_REGS = sum(1 for t in tinyvm_jax.TOKENS if re.fullmatch(r"R\d", t))
OP_NAMES = tuple(tinyvm_jax.TOKENS[:TOKEN_ID["HALT"] + 1])   # LOAD .. HALT
# opcodes that write their first register operand (spec section 2)
WRITING_OPS = tuple(OP_NAMES.index(o) for o in (
    "LOAD", "MOV", "ADD", "SUB", "MUL", "DIV", "NEG", "EQ", "LT", "POP"))


@functools.partial(jax.jit, static_argnames=("tier", "shapes", "renders",
                                             "token_lengths"))
def _rows(tier, keys, axes, sample, *, shapes, renders, token_lengths):
  """Rows from row keys: [N, A] fixed `axes`, or where `sample` [N] the axes
  a train row draws from its key."""
  def one(key, ax, s):
    # the train axes of the key (XLA drops this row's unused program)
    drawn = tinyvm_jax.make_row(tier, key, shapes=shapes, renders=()).axes
    return tinyvm_jax.make_row(tier, key, axes=jnp.where(s, drawn, ax),
                               shapes=shapes, renders=renders,
                               token_lengths=dict(token_lengths))
  return jax.vmap(one)(keys, axes, sample)


@functools.partial(jax.jit, static_argnames=("seed", "split", "bucket"))
def _keys(indices, *, seed, split, bucket):
  return jax.vmap(lambda i: tinyvm_jax.row_key(seed, split, bucket, i))(
      indices)


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
  tier = tinyvm_jax.get_tier(tier)
  if not buckets:
    raise ValueError("buckets must name at least one split")
  if isinstance(size, bool) or not isinstance(size, int) or size < 1:
    raise ValueError(f"size must be a positive int, got {size!r}")
  for name in buckets:
    if name != TRAIN:
      tier.bucket(name)   # raises for an unknown bucket
  every = [tier.shapes(None if b == TRAIN else b) for b in buckets]
  # one Shapes that fits every split asked for
  shapes = dataclasses.replace(every[0], **{
      f.name: max(getattr(s, f.name) for s in every)
      for f in dataclasses.fields(every[0])})
  lengths = {r: shapes.token_lengths(r) for r in renders}
  lengths.update(token_lengths or {})
  index = jnp.arange(start, start + size, dtype=jnp.int32)
  keys, axes = [], []
  for b in buckets:
    train = b == TRAIN
    keys.append(_keys(index, seed=seed, split="train" if train else "eval",
                      bucket=None if train else b))
    ax = np.zeros(tier.num_axes) if train else tier.bucket(b).axes
    axes.append(np.broadcast_to(np.asarray(ax, np.int32),
                                (size, tier.num_axes)))
  sample = np.repeat([b == TRAIN for b in buckets], size)
  rows = _rows(tier, jnp.concatenate(keys), jnp.asarray(np.concatenate(axes)),
               jnp.asarray(sample), shapes=shapes, renders=tuple(renders),
               token_lengths=tuple(sorted(lengths.items())))
  return {b: jax.tree_util.tree_map(lambda x: x[i * size:(i + 1) * size],
                                    rows)
          for i, b in enumerate(buckets)}


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
