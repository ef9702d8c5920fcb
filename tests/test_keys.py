"""Row keys, seeds and counter-based words; rows are bit-identical whatever
the batch size or the number of devices, and `build` reproduces them."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap
import zlib

import hypothesis
import hypothesis.strategies as st
import jax
import numpy as np
import pytest

from tinyvm_jax._src import keys
from tinyvm_jax._src import program as program_lib
from tinyvm_jax._src import tiers

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _row(rows, i):
  return jax.tree_util.tree_map(lambda x: np.asarray(x[i]), rows)


def _assert_rows_equal(a, b):
  la, ta = jax.tree_util.tree_flatten(a)
  lb, tb = jax.tree_util.tree_flatten(b)
  assert ta == tb
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@hypothesis.given(st.integers(0, 2 ** 64 - 1))
@hypothesis.settings(max_examples=50, deadline=None)
def test_seed_key_roundtrip(seed):
  assert keys.key_to_seed(keys.seed_to_key(seed)) == seed


@pytest.mark.parametrize("bad", [-1, 2 ** 64, 1.5, True, "3", None])
def test_bad_seed(bad):
  with pytest.raises(ValueError, match="seed must be an integer"):
    keys.seed_to_key(bad)
  with pytest.raises(ValueError, match="seed_base must be an integer"):
    keys.base_key(bad)


def test_key_to_seed_needs_one_key():
  with pytest.raises(ValueError, match="one threefry key"):
    keys.key_to_seed(jax.random.split(jax.random.key(0), 2))


@pytest.mark.parametrize("seed_base", [0, 12345, 2 ** 32 - 1])
def test_row_key_formula(seed_base):
  """The documented derivation; the base is jax.random.key for 32-bit bases."""
  k = jax.random.key(seed_base)
  for f in (keys.split_id("eval"), zlib.crc32(b"len_8") & 0x7FFFFFFF, 17):
    k = jax.random.fold_in(k, f)
  got = keys.row_key(seed_base, "eval", "len_8", 17)
  np.testing.assert_array_equal(jax.random.key_data(got),
                                jax.random.key_data(k))


def test_large_seed_base_is_not_truncated():
  a = jax.random.key_data(keys.base_key(2 ** 40 + 5))
  b = jax.random.key_data(keys.base_key(5))
  assert not np.array_equal(a, b)


def test_split_and_bucket_ids():
  assert keys.split_id("train") == 0 and keys.split_id("eval") == 1
  assert keys.bucket_id(None) == 0
  assert keys.bucket_id("len_8") == zlib.crc32(b"len_8") & 0x7FFFFFFF
  with pytest.raises(ValueError, match="split must be one of"):
    keys.split_id("test")
  with pytest.raises(ValueError, match="bucket must be a non-empty name"):
    keys.bucket_id("")


def test_axes_and_program_streams_differ():
  k = keys.row_key(0, "train", None, 0)
  a = jax.random.key_data(keys.axes_key(k))
  p = jax.random.key_data(keys.program_key(k))
  assert not np.array_equal(a, p)


@hypothesis.given(st.integers(0, 2 ** 32 - 1), st.integers(1, 2 ** 16 - 1),
                  st.integers(1, 2 ** 32 - 1))
@hypothesis.settings(max_examples=200, deadline=None)
def test_uniform_int_is_multiply_high(word, n, n32):
  w = np.uint32(word)
  assert int(keys.uniform_int(w, n)) == (word * n) >> 32
  assert int(keys.uniform_int32(w, np.uint32(n32))) == (word * n32) >> 32
  # chaining: the next digit reads the fraction left over
  rest = int(keys.next_fraction(w, n))
  assert rest == (word * n) % 2 ** 32


def test_random_words_depend_only_on_counter():
  k = jax.random.key(3)
  a = np.asarray(keys.random_words(k, np.arange(10), 0))
  b = np.asarray(keys.random_words(k, np.arange(50), 0))
  c = np.asarray(keys.random_words(k, np.arange(10), 1))
  assert a.shape == (10, 2) and a.dtype == np.uint32
  np.testing.assert_array_equal(a, b[:10])
  assert not np.array_equal(a, c)


def test_seeds_from_key_data():
  rows = tiers.generate("tier0", 0, "train", None, np.arange(7))
  seeds = keys.seeds_from_key_data(rows.key_data)
  assert seeds.dtype == np.uint64
  for i in range(7):
    key = jax.random.wrap_key_data(rows.key_data[i], impl=keys.IMPL)
    assert int(seeds[i]) == keys.key_to_seed(key)


def test_rows_independent_of_batch_size():
  big = tiers.generate("tier1", 0, "train", None, np.arange(4096))
  seven = tiers.generate("tier1", 0, "train", None,
                         np.array([0, 1, 2, 3, 300, 5, 4000]))
  one = tiers.generate("tier1", 0, "train", None, np.array([5]))
  _assert_rows_equal(_row(one, 0), _row(big, 5))
  # a row depends on its index, not on its position in the batch
  for pos, i in enumerate([0, 1, 2, 3, 300, 5, 4000]):
    _assert_rows_equal(_row(seven, pos), _row(big, i))


@pytest.mark.parametrize("tier,bucket,axes_of", [
    ("tier0", None, None), ("tier1", None, None),
    ("tier1", "len_8", {"n": 8, "k": 4})])
def test_build_reproduces_rows(tier, bucket, axes_of):
  split = "train" if bucket is None else "eval"
  rows = tiers.generate(tier, 0, split, bucket, np.arange(7))
  seeds = keys.seeds_from_key_data(rows.key_data)
  for i in range(7):
    row = _row(rows, i)
    built = tiers.build(tier, int(seeds[i]), axes_of)
    _assert_rows_equal(built, row.program)
    if axes_of is None:
      np.testing.assert_array_equal(tiers.row_axes(tier, int(seeds[i])),
                                    row.axes)


def test_build_pads_without_changing_the_program():
  rows = tiers.generate("tier1", 0, "eval", "len_8", np.arange(7))
  seed = int(keys.seeds_from_key_data(rows.key_data)[3])
  short = tiers.build("tier1", seed, [8, 4])
  long = tiers.build("tier1", seed, {"n": 8, "k": 4}, max_len=34)
  assert long.op.shape == (34,)
  assert program_lib.to_json(short) == program_lib.to_json(long)


_SUBPROCESS = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    from tinyvm_jax._src import keys, tiers
    assert len(jax.devices()) == 4, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("rows",))
    tier = tiers.get_tier("tier1")
    key = keys.base_key(0)
    key = jax.random.fold_in(key, keys.split_id("train"))
    key = jax.random.fold_in(key, keys.bucket_id(None))
    idx = jax.device_put(np.arange(7, 7 + 64, dtype=np.int32),
                         NamedSharding(mesh, PartitionSpec("rows")))
    rows = tiers._generate(tier, jax.random.key_data(key), idx, bucket=None,
                           renders=tier.renders)
    assert len(rows.program.op.sharding.device_set) == 4
    json.dump([np.asarray(x).tolist() for x in jax.tree_util.tree_leaves(rows)],
              sys.stdout)
""")


def test_rows_identical_on_four_devices():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  res = subprocess.run([sys.executable, "-c", _SUBPROCESS], env=env,
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert res.returncode == 0, res.stderr[-2000:]
  got = json.loads(res.stdout)
  rows = tiers.generate("tier1", 0, "train", None, np.arange(7, 7 + 64))
  want = [np.asarray(x).tolist() for x in jax.tree_util.tree_leaves(rows)]
  assert got == want
