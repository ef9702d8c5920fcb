"""Tiers as data (spec section 12), rows, and the host API's errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_rows
from tinyvm_jax._src import tiers


def test_tier_table_matches_spec():
  t0, t1 = tiers.get_tier("tier0"), tiers.get_tier("tier1")
  assert set(tiers.TIERS) == {"tier0", "tier1", "tier2"}  # tier2: test_tier2.py
  assert (t0.name, t0.axis_names, t0.train_size, t0.renders) == (
      "tier0", ("n",), 100_000, ("direct",))
  assert [(b.name, b.axes, b.size) for b in t0.eval_buckets] == [
      ("all", (8,), 10_000)]
  assert (t1.name, t1.axis_names, t1.train_size, t1.renders) == (
      "tier1", ("n", "k"), 200_000, ("direct",))
  assert [(b.name, b.axes, b.size) for b in t1.eval_buckets] == [
      (f"len_{n}", (n, 4), 20_000) for n in (8, 16, 32, 48, 64, 96, 128)]


@pytest.mark.parametrize("name,support", [
    ("tier0", {(n,) for n in range(4, 9)}),
    ("tier1", {(n, k) for n in range(8, 33) for k in (2, 4, 8)})])
def test_train_axes_uniform_over_their_support(name, support):
  tier = tiers.get_tier(name)
  count = 20_000
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(5), i))(
      jnp.arange(count))
  axes = np.asarray(jax.jit(jax.vmap(tier.sample_axes))(keys))
  assert axes.dtype == np.int32 and axes.shape == (count, tier.num_axes)
  got = {tuple(a) for a in axes.tolist()}
  assert got == support
  for i in range(tier.num_axes):
    vals, counts = np.unique(axes[:, i], return_counts=True)
    p = 1 / len(vals)
    sigma = math.sqrt(p * (1 - p) / count)
    assert np.abs(counts / count - p).max() < 5 * sigma


@pytest.mark.parametrize("name", ["tier0", "tier1"])
def test_shapes_fit_every_split(name):
  tier = tiers.get_tier(name)
  top = max(n for n, *_ in [b.axes for b in tier.eval_buckets])
  assert tier.max_shapes.max_len >= top + 2
  for b in tier.eval_buckets:
    assert b.shapes.max_len == b.shapes.max_steps == b.axes[0] + 2
  assert tier.train_shapes.max_len == (8 if name == "tier0" else 32) + 2
  assert tier.shapes(None) == tier.train_shapes


@pytest.mark.parametrize("name,bucket,file", [
    ("tier0", None, "tier0_train"), ("tier1", None, "tier1_train"),
    ("tier1", "len_128", "tier1_eval_len_128"),
    ("tier1", "len_8", "tier1_eval_len_8")])
def test_reference_rows_fit_the_shapes(name, bucket, file):
  shapes = tiers.get_tier(name).shapes(bucket)
  t_in, t_out = shapes.token_lengths("direct")
  for row in load_rows(file):
    assert len(row["program"]) <= shapes.max_len
    assert len(row["trace"]["steps"]) <= shapes.max_steps
    assert len(row["renders"]["direct"]["input_ids"]) <= t_in
    assert len(row["renders"]["direct"]["target_ids"]) <= t_out


def test_eval_rows_take_the_bucket_axes():
  rows = tiers.generate("tier1", 0, "eval", "len_16", np.arange(7))
  assert (np.asarray(rows.axes) == [16, 4]).all()
  assert (np.asarray(rows.program.length) == 18).all()
  assert rows.program.op.shape == (7, 18)
  assert (np.asarray(rows.trace.error) == 0).all()
  r = rows.renders["direct"]
  assert (np.asarray(r.input.length) <= r.input.ids.shape[1]).all()


def test_get_tier():
  assert tiers.get_tier("tier1") is tiers.TIERS["tier1"]
  assert tiers.get_tier(tiers.TIERS["tier0"]) is tiers.TIERS["tier0"]
  with pytest.raises(ValueError, match="unknown tier 'tier9'"):
    tiers.get_tier("tier9")


def test_unknown_bucket():
  with pytest.raises(ValueError, match="has no eval bucket 'len_7'"):
    tiers.get_tier("tier1").bucket("len_7")


@pytest.mark.parametrize("args,match", [
    (("tier1", 0, "test", None, [0]), "split must be one of"),
    (("tier1", 0, "train", "len_8", [0]), "needs no bucket"),
    (("tier1", 0, "eval", None, [0]), "needs a bucket"),
    (("tier1", 0, "eval", "len_9", [0]), "no eval bucket"),
    (("tier1", 0, "train", None, [-1]), "indices must be"),
    (("tier1", 0, "train", None, [[0]]), "indices must be"),
    (("tier1", -1, "train", None, [0]), "seed_base must be"),
    (("tierX", 0, "train", None, [0]), "unknown tier"),
])
def test_generate_bad_inputs(args, match):
  with pytest.raises(ValueError, match=match):
    tiers.generate(*args)


def test_generate_unknown_render():
  with pytest.raises(ValueError, match="unknown render 'text'"):
    tiers.generate("tier1", 0, "train", None, [0], renders=("text",))


@pytest.mark.parametrize("args,kwargs,match", [
    (("tier1", 5, {"n": 8}), {}, "lack"),
    (("tier1", 5, [8]), {}, "takes 2 integer axes"),
    (("tier1", 5, [8.0, 4.0]), {}, "takes 2 integer axes"),
    (("tier1", 5, [64, 4]), {"max_len": 10}, "too short"),
    (("tier1", -5, None), {}, "seed must be"),
])
def test_build_bad_inputs(args, kwargs, match):
  with pytest.raises(ValueError, match=match):
    tiers.build(*args, **kwargs)
