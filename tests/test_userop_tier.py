"""Tier 4 as a tier: its description, rows by (seed base, split, bucket,
index), their JSONL / Parquet / zarr forms and the checker over each."""

import copy
import functools

import jax
import numpy as np
import pytest

from tinyvm_jax import verify
from tinyvm_jax._src import keys as keys_lib
from tinyvm_jax._src.io import loaders
from tinyvm_jax._src.io import parquet
from tinyvm_jax._src.io import zarr_store
from tinyvm_jax._src.userop import api as U
from tinyvm_jax._src.userop import formats
from tinyvm_jax._src.userop import tier as tier_lib

T = U.TIER4
N_TRAIN = 24


@functools.lru_cache(maxsize=None)
def rows(split, bucket, n):
  """(UseropRow batch, JSON rows) of rows 0..n-1 of a split, seed base 0."""
  batch = tier_lib.generate(0, split, bucket, np.arange(n))
  return batch, formats.rows_to_json(batch, split=split, bucket=bucket)


def _take(tree, i):
  return jax.tree_util.tree_map(lambda x: x[i], tree)


def _equal(a, b):
  flat_a, tree_a = jax.tree_util.tree_flatten(a)
  flat_b, tree_b = jax.tree_util.tree_flatten(b)
  assert tree_a == tree_b
  for x, y in zip(flat_a, flat_b):
    np.testing.assert_array_equal(x, y)


# ------------------------------------------------------------ description
def test_tier4_description():
  assert T.name == "tier4" and T.axis_names == U.AXIS_NAMES
  assert (T.train_size, T.eval_size) == (100_000, 1_000)
  assert len(T.bucket_names) == 16 and len(set(T.bucket_names)) == 16
  assert T.bucket("max_k4").fixed == (("userop", 1), ("k_demos", 4))
  assert T.num_programs() == 5 and T.num_programs("abs_k1") == 2
  assert T.shapes("ood_len_64").max_len > T.shapes().max_len
  assert hash(T) == hash(tier_lib._tier4())       # a static argument
  with pytest.raises(ValueError, match="no eval bucket"):
    T.bucket("len_8")
  with pytest.raises(ValueError, match="needs a bucket"):
    tier_lib.generate(0, "eval", None, [0])
  with pytest.raises(ValueError, match="indices"):
    tier_lib.generate(0, "train", None, [-1])


def test_train_axes_and_empty_slots():
  batch, _ = rows("train", None, N_TRAIN)
  axes = batch.axes
  assert axes.shape == (N_TRAIN, 4) and batch.n.shape == (N_TRAIN, 5)
  assert set(axes[:, 0]) <= set(range(5)) and len(set(axes[:, 0])) > 1
  assert set(axes[:, 1]) <= {1, 2, 3, 4} and len(set(axes[:, 1])) > 1
  assert ((8 <= axes[:, 2]) & (axes[:, 2] <= 32)).all()
  assert set(axes[:, 3]) == {0, 1}
  slot = np.arange(5)
  empty = (slot[None] >= axes[:, 1:2]) & (slot[None] < 4)
  np.testing.assert_array_equal(batch.with_symbol.length == 0, empty)
  np.testing.assert_array_equal(batch.n == 0, empty)
  np.testing.assert_array_equal(batch.n[:, -1], axes[:, 2])
  np.testing.assert_array_equal(
      keys_lib.seeds_from_key_data(batch.key_data),
      [keys_lib.key_to_seed(keys_lib.row_key(0, "train", None, i))
       for i in range(N_TRAIN)])


@pytest.mark.parametrize("bucket, fixed", [
    ("max_k1", {0: 1, 1: 1}),
    ("ood_len_64", {1: 2, 2: 64, 3: 1}),
])
def test_eval_buckets_fix_their_axes(bucket, fixed):
  batch, json_rows = rows("eval", bucket, 8)
  for a, v in fixed.items():
    assert (batch.axes[:, a] == v).all()
  assert batch.n.shape[1] == fixed.get(1, 4) + 1
  assert all(r["meta"]["bucket"] == bucket and r["meta"]["split"] == "eval"
             for r in json_rows)


def test_rows_do_not_depend_on_the_batch():
  batch, _ = rows("train", None, N_TRAIN)
  idx = np.array([17, 3, 5])
  _equal(tier_lib.generate(0, "train", None, idx), _take(batch, idx))


def test_buckets_of_equal_sizes_share_one_compilation():
  """The bucket's fixed axes are traced: buckets of the same sizes reuse
  the kernel, which does not retrace."""
  _, want = rows("eval", "max_k1", 8)          # compiled for k_demos = 1
  size = tier_lib._rows._cache_size()
  for bucket in ("double_k1", "sign_k1"):
    batch = tier_lib.generate(0, "eval", bucket, np.arange(8))
    assert (batch.axes[:, 1] == 1).all()
  again = tier_lib.generate(0, "eval", "max_k1", np.arange(8))
  assert tier_lib._rows._cache_size() == size
  assert formats.rows_to_json(again, split="eval", bucket="max_k1") == want
  assert set(batch.axes[:, 0]) == {T.bucket_names.index("sign_k1") // 3}


def test_build_from_seed():
  for split, bucket, n in (("train", None, N_TRAIN), ("eval", "max_k1", 8)):
    batch, json_rows = rows(split, bucket, n)
    seeds = [r["meta"]["seed"] for r in json_rows[:4]]
    _equal(tier_lib.build(np.array(seeds, np.uint64), bucket=bucket),
           _take(batch, slice(0, 4)))
    _equal(tier_lib.build(seeds[1], bucket=bucket), _take(batch, 1))


def test_same_rows_as_generate_userop_rows():
  """A tier row of k demos (padded to 5 slots) is the row that
  `generate_userop_rows` makes with k_demos=k from the same key."""
  batch, json_rows = rows("train", None, N_TRAIN)
  pick = [i for i in range(N_TRAIN) if batch.axes[i, 1] == 2]
  assert pick
  ops = [tier_lib.USEROPS[batch.axes[i, 0]] for i in pick]
  other = U.generate_userop_rows(
      ops, batch.key_data[pick], n_target=batch.axes[pick, 2],
      use_stack=batch.axes[pick, 3] == 1, k_demos=2)
  for i, row in zip(pick, U.rows_to_json(other, ops)):
    want = copy.deepcopy(json_rows[i])
    del want["meta"]["split"], want["meta"]["bucket"]
    assert row == want


def test_row_layout():
  _, json_rows = rows("train", None, N_TRAIN)
  for r in json_rows:
    assert list(r["meta"]) == ["tier", "split", "bucket", "seed",
                               "opcode_spec", "k_demos", "n_target",
                               "use_stack", "renders"]
    assert len(r["demos"]) == r["meta"]["k_demos"]
    assert r["meta"]["opcode_spec"]["name"] in U.DEFAULT_USEROPS


# ------------------------------------------------------------ checks
def test_jsonl_rows_pass_the_checker():
  lines = []
  for split, bucket, n in (("train", None, N_TRAIN), ("eval", "max_k1", 8),
                           ("eval", "ood_len_64", 8)):
    lines += rows(split, bucket, n)[1]
  assert list(U.check_userop_rows(enumerate(lines, 1), rebuild=True)) == []


@pytest.mark.parametrize("edit, field", [
    (lambda r: r["meta"].__setitem__("bucket", "mod_k1"), "meta"),
    (lambda r: r["meta"].__setitem__("seed", r["meta"]["seed"] + 1),
     "with_symbol"),
    (lambda r: r["meta"].__setitem__("split", "test"), "meta"),
])
def test_checker_finds_rows_that_disagree_with_their_seed(edit, field):
  _, json_rows = rows("eval", "max_k1", 8)
  bad = copy.deepcopy(json_rows[:3])
  edit(bad[1])
  found = list(U.check_userop_rows(enumerate(bad, 1), rebuild=True))
  assert found and {m.line for m in found} == {2}
  assert any(field in m.field for m in found), found


def test_checker_finds_an_axis_only_the_seed_tells():
  """n_target of a row without a stack frame changes no program: only the
  axes drawn from the seed show it."""
  _, json_rows = rows("train", None, N_TRAIN)
  i = next(i for i, r in enumerate(json_rows) if not r["meta"]["use_stack"])
  bad = copy.deepcopy(json_rows[i])
  bad["meta"]["n_target"] += 1
  assert U.check_userop_row(bad) == []
  found = U.check_userop_row(bad, rebuild=True)
  assert [m.field for m in found] == ["meta"], found


# ------------------------------------------------------------ formats
def test_parquet_rows_equal_json_and_replay(tmp_path):

  batch, json_rows = rows("train", None, N_TRAIN)
  table = formats.rows_to_table(batch, split="train", bucket=None)
  assert table.schema == formats.schema()
  assert table.to_pylist() == json_rows
  path = tmp_path / "train.parquet"
  parquet.write_parquet(table, path)
  read = list(loaders.iter_parquet(path))
  assert [r for _, r in read] == json_rows
  assert list(U.check_userop_rows(read, rebuild=True)) == []


def _write_store(root, groups):
  """A Tier 4 zarr store of {group: (split, bucket, batch)}."""
  zarr_store.write_group(root, {zarr_store.ATTR_KEY: {
      "tier": T.name, "seed_base": 0,
      "groups": {g: int(b.n.shape[0]) for g, (_, _, b) in groups.items()}}})
  for group, (split, bucket, batch) in groups.items():
    arrays = formats.rows_to_arrays(batch)
    w = zarr_store.GroupWriter(root, group, batch.n.shape[0], arrays,
                               part_rows=16, chunk_rows=8, attributes={
                                   "split": split, "bucket": bucket})
    w.write(0, arrays)
    w.commit_part()


def test_zarr_rows_read_back_and_replay(tmp_path):

  train, json_rows = rows("train", None, N_TRAIN)
  ev, _ = rows("eval", "max_k1", 8)
  root = tmp_path / zarr_store.STORE_NAME
  _write_store(root, {"train": ("train", None, train),
                      "eval/max_k1": ("eval", "max_k1", ev)})
  store = zarr_store.Store(root)
  back = formats.arrays_to_rows(store.read("train"))
  _equal(back, train)
  assert formats.rows_to_json(back, split="train") == json_rows
  assert list(U.check_userop_zarr(store, rebuild=True)) == []
  report = verify.Report()
  verify.replay_path(root, report, rebuild=True)
  assert (report.status, report.rows) == (0, N_TRAIN + 8)


def test_zarr_finds_a_corrupted_row(tmp_path):

  train, _ = rows("train", None, N_TRAIN)
  bad = jax.tree_util.tree_map(np.copy, train)
  bad.trace.output[5, -1, 0] += 1
  root = tmp_path / zarr_store.STORE_NAME
  _write_store(root, {"train": ("train", None, bad)})
  found = list(U.check_userop_zarr(zarr_store.Store(root)))
  assert found and {(g, m.line) for g, m in found} == {("train", 6)}
  assert "target.trace.output" in {m.field for _, m in found}
