"""Row classes: per-row bounds, the class choice, in-graph narrowing and the
part split between processes. Rows must not depend on any of them."""

import dataclasses
import shutil

import numpy as np
import pytest

from tinyvm_jax._src import branched
from tinyvm_jax._src.emit import classes as classes_lib
from tinyvm_jax._src.emit import kernels
from tinyvm_jax._src.emit import plan as plan_lib
from tinyvm_jax._src.emit.run import emit_dataset
from tinyvm_jax._src import keys as keys_lib
from tinyvm_jax._src import tiers
from tinyvm_jax._src.io import rows as rows_lib
from tinyvm_jax._src.io import zarr_store


def _plan(tier="tier2", train=4000, ev=200, **kw):
  args = dict(tier=tier, seed_base=0, train_size=train, eval_size=ev,
              renders=("direct", "cot") if tier == "tier2" else ("direct",),
              formats=("zarr",), batch_size=64, vmap_rows=16, part_rows=512,
              chunk_rows=128)
  args.update(kw)
  return plan_lib.make_plan(**args)


@pytest.mark.parametrize("tier", ["tier1", "tier2"])
def test_row_bounds_hold_for_generated_rows(tier):
  t = tiers.get_tier(tier)
  rows = tiers.generate(t, 11, "train", None, np.arange(48), renders=())
  p, s = t.row_bounds(np.asarray(rows.axes))
  assert (np.asarray(rows.program.length) <= p).all()
  assert (np.asarray(rows.trace.num_steps) <= s).all()
  for i, axes in enumerate(np.asarray(rows.axes)):   # within the split's
    shapes = t.shapes_fn(axes)
    assert p[i] <= shapes.max_len and s[i] <= shapes.max_steps


def test_branched_row_bounds_are_at_most_the_grid_maxima():
  rng = np.random.default_rng(0)
  axes = np.stack([rng.integers(16, 257, 300), rng.choice([4, 6, 8], 300),
                   rng.integers(1, 9, 300), rng.integers(0, 17, 300),
                   rng.integers(0, 2, 300), rng.integers(0, 3, 300)], 1)
  p, s = branched.row_bounds(axes)
  for (n, k, b, l, use, fr), pi, si in zip(axes.tolist(), p, s):
    frames = fr if use else 0
    assert pi <= branched.max_program_len(n, k, b, l, frames, b_min=b)
    assert si <= branched.max_trace_steps(n, k, b, l, frames, b_min=b)
  assert p.max() <= 524 and s.max() <= 1615


@pytest.mark.parametrize("bad", [np.zeros((3, 5)), np.zeros(6)])
def test_row_bounds_bad_shape(bad):
  with pytest.raises(ValueError, match="axes must be"):
    tiers.get_tier("tier2").row_bounds(bad)


def test_row_classes_cover_every_row_and_are_cheapest_first():
  plan = _plan()
  classes = classes_lib.row_classes(plan, max_classes=6)
  assert 1 <= len(classes) <= 6
  units = [classes_lib.class_units(c, plan.renders) for c in classes]
  assert units == sorted(units)
  top = classes[-1]
  assert (top.max_len, top.max_steps) == (524, 1615)  # no fallback class
  for sp in plan.splits:
    p, s = classes_lib.row_sizes(plan, sp, classes_lib.rows_axes(plan, sp, 0,
                                                           sp.num_rows))
    cls = classes_lib.assign_classes(classes, p, s)
    assert (cls >= 0).all()
    assert (p <= np.array([classes[c].max_len for c in cls])).all()
    assert (s <= np.array([classes[c].max_steps for c in cls])).all()
  assert classes_lib.row_classes(plan, max_classes=0) == ()


def test_batches_hold_each_row_of_a_part_once():
  plan = _plan()
  sp = plan.splits[0]
  classes = classes_lib.row_classes(plan)
  got = np.concatenate([rows for _, rows in
                        classes_lib.part_batches(plan, sp, 1, classes, 64)])
  assert sorted(got.tolist()) == list(range(512, 1024))
  assert all(len(rows) <= 64 for _, rows in
             classes_lib.part_batches(plan, sp, 1, classes, 64))


@pytest.mark.parametrize("tier", ["tier2"])
def test_classes_do_not_change_the_bytes(tmp_path, tier, monkeypatch):
  # compilations made cheap: a small emit gets several classes
  kw = dict(train=600, ev=0, formats=("zarr", "jsonl", "parquet"),
            part_rows=256, chunk_rows=64)
  plan = _plan(tier, **kw)
  monkeypatch.setattr(classes_lib, "_COMPILE_SECONDS", 0.0)
  assert len(classes_lib.row_classes(plan, max_classes=3)) == 3
  hashes = []
  for mc in (0, 3):
    r = emit_dataset(plan, tmp_path / str(mc), max_classes=mc)
    hashes.append({k: v["sha256"] for k, v in r.files.items()})
  assert hashes[0] == hashes[1]


def test_narrow_keeps_values_and_widen_restores_int32():
  rows = tiers.generate("tier2", 5, "eval", "easy", np.arange(4),
                        renders=("direct", "cot"))
  small = kernels.narrow(rows)
  back = rows_lib.widen(jax_to_np(small))
  arrays = zarr_store.rows_to_arrays(jax_to_np(rows))
  assert zarr_store.rows_to_arrays(jax_to_np(small)).keys() == arrays.keys()
  for name, x in zarr_store.rows_to_arrays(jax_to_np(small)).items():
    assert x.dtype == arrays[name].dtype and np.array_equal(x, arrays[name])
  for a, b in zip(np.asarray(rows.trace.regs), back.trace.regs):
    assert b.dtype == np.int32 and np.array_equal(a, b)


def jax_to_np(tree):
  import jax
  return jax.tree.map(np.asarray, tree)


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_part_assignment_is_a_partition_in_order(n):
  plan = _plan(train=5000, ev=700)
  shares = classes_lib.part_assignment(plan, n)
  assert len(shares) == n
  flat = [(sp.name, k) for share in shares for sp, k in share]
  want = [(sp.name, k) for sp in plan.splits
          for k in range(sp.num_parts(plan.part_rows))]
  assert flat == want


def test_run_rejects_a_bad_process_id(tmp_path):
  with pytest.raises(plan_lib.EmitError, match="process_id=2"):
    emit_dataset(_plan(train=10, ev=0), tmp_path, process_id=2,
                 num_processes=2, barrier=lambda name: None)


def test_fill_values_are_the_padding_values():
  """Rows computed at larger sizes hold each array's fill value past the
  split's sizes: writing a row's prefix stores the padded row's bytes."""
  import jax
  plan = _plan()
  sp = plan.splits[1]   # eval easy
  big = dataclasses.replace(sp.shapes, max_len=sp.shapes.max_len + 7,
                            max_steps=sp.shapes.max_steps + 5)
  rows = jax.device_get(kernels.rows_batch(
      plan.tier, keys_lib.split_key_data(0, sp.split, sp.bucket),
      np.arange(4, dtype=np.int32), np.int32(4),
      np.asarray(sp.axes, np.int32), np.asarray(False), shapes=big,
      renders=plan.renders, vmap_rows=4))
  small = zarr_store.rows_to_arrays(rows_lib.trim(rows, sp.shapes, 4))
  wide = zarr_store.rows_to_arrays(rows_lib.trim(rows, big, 4))
  grown = 0
  for name, x in wide.items():
    y = small[name]
    box = tuple(slice(0, d) for d in y.shape)
    assert np.array_equal(x[box], y), name
    outside = np.ones(x.shape, bool)
    outside[box] = False
    grown += outside.any()
    assert (x[outside] == zarr_store.fill_value(name)).all(), name
  assert grown >= 15
