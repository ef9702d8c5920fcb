"""The emit's jitted row kernel: rows of one split at static sizes, a loop
of vectorised blocks on each device, sharded over the local devices.

A row is padding-free: the same as `tiers.generate`'s at the split's own
sizes, whatever static sizes it is computed at (programs, traces and
renders do not depend on their padding, and each zarr array's fill value is
its padding value), so a row class is one compilation shared by every split.
"""

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec
import numpy as np

from tinyvm_jax._src import batching
from tinyvm_jax._src import keys as keys_lib
from tinyvm_jax._src import tiers
from tinyvm_jax._src.emit.plan import Plan, SplitPlan
from tinyvm_jax._src.io import rows as rows_lib
from tinyvm_jax._src.io import zarr_store
from tinyvm_jax._src.types import Program, Render, Rows, Tokens, Trace


def narrow(rows: Rows) -> Rows:
  """Rows in the zarr store's dtypes (token ids uint8, register values
  int16, ...), in-graph: every value of a row that ran without error fits
  them, and the device-to-host copy and the host work shrink (the host
  checks `trace.error` before it writes)."""
  def cast(name, x):
    return x.astype(zarr_store.store_dtype(name))
  program = Program(**{f: cast(f"program/{f}", getattr(rows.program, f))
                       for f in Program.__dataclass_fields__})
  trace = Trace(**{f: cast(f"trace/{f}", getattr(rows.trace, f))
                   for f in Trace.__dataclass_fields__})
  renders = {
      name: Render(*(Tokens(ids=cast(f"renders/{name}/{part}_ids", t.ids),
                            length=cast(f"renders/{name}/{part}_length",
                                        t.length))
                     for part, t in (("input", r.input), ("target", r.target))))
      for name, r in rows.renders.items()}
  return Rows(key_data=rows.key_data, axes=cast("axes", rows.axes),
              program=program, trace=trace, renders=renders)


def _rows_loop(tier, split_key_data, indices, count, fixed_axes, sample_axes,
               *, shapes, renders, vmap_rows):
  """Rows of `indices[:count]` at static `shapes`, `vmap_rows` at a time
  (a loop of `ceil(count / vmap_rows)` vectorised blocks: on a CPU, small
  blocks stay in cache; rows past `count` are not computed, left zero)."""
  split_key = jax.random.wrap_key_data(split_key_data, impl=keys_lib.IMPL)

  def one(index):
    key = jax.random.fold_in(split_key, index)
    drawn = tier.sample_axes(keys_lib.axes_key(key))
    axes = jnp.where(sample_axes, drawn, fixed_axes)
    return tiers.make_row(tier, key, axes=axes, shapes=shapes,
                          renders=renders)

  b = indices.shape[0]
  v = max(1, min(vmap_rows, b))
  nb = -(-b // v)
  idx = batching.pad_rows(indices, nb * v)
  block = lambda i: narrow(jax.vmap(one)(
      jax.lax.dynamic_slice_in_dim(idx, i * v, v)))
  shape = jax.eval_shape(block, 0)
  out = jax.tree.map(lambda x: jnp.zeros((nb * v,) + x.shape[1:], x.dtype),
                     shape)

  def body(i, out):
    return jax.tree.map(
        lambda o, r: jax.lax.dynamic_update_slice_in_dim(o, r, i * v, 0),
        out, block(i))
  out = jax.lax.fori_loop(0, (count + v - 1) // v, body, out)
  return jax.tree.map(lambda o: o[:b], out)


@functools.partial(jax.jit, static_argnames=("tier", "shapes", "renders",
                                             "vmap_rows", "mesh"))
def rows_batch(tier, split_key_data, indices, count, fixed_axes,
               sample_axes, *, shapes, renders, vmap_rows, mesh=None):
  """[B] rows of one split at static `shapes` (row i: index `indices[i]`,
  for i < count); with a `mesh` of several devices, sharded over its
  "rows" axis (`shard_map`: each device computes B / D consecutive rows).

  Args:
    tier: the `Tier` (static).
    split_key_data: [2] uint32 data of the split key.
    indices: [B] int32 row indices (B a multiple of the mesh size).
    count: int32 scalar, rows to compute (the rest are padding).
    fixed_axes: [A] int32 axes of an eval bucket (ignored for train).
    sample_axes: bool scalar, True for train rows (axes drawn per row).
    shapes, renders, vmap_rows, mesh: static sizes, render names, rows a
      vectorised block, devices to shard over.

  Returns:
    `Rows` [B] in the storage dtypes (`narrow`).
  """
  f = functools.partial(_rows_loop, tier, shapes=shapes, renders=renders,
                        vmap_rows=vmap_rows)
  if mesh is None or mesh.size == 1:
    return f(split_key_data, indices, count, fixed_axes, sample_axes)

  def local(kd, idx, cnt, fixed, sample):
    per = idx.shape[0]
    mine = jnp.clip(cnt - jax.lax.axis_index("rows") * per, 0, per)
    return f(kd, idx, mine, fixed, sample)
  rep, rows = PartitionSpec(), PartitionSpec("rows")
  return jax.shard_map(local, mesh=mesh, in_specs=(rep, rows, rep, rep, rep),
                       out_specs=rows, check_vma=False)(
                           split_key_data, indices, count, fixed_axes,
                           sample_axes)


def split_inputs(plan: Plan, sp: SplitPlan
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(split key data [2] uint32, fixed axes [A] int32, sample_axes bool):
  the arguments of `rows_batch` that are the same for a whole split."""
  return (keys_lib.split_key_data(plan.seed_base, sp.split, sp.bucket),
          np.asarray(sp.axes if sp.axes is not None else
                     (0,) * plan.tier.num_axes, np.int32),
          np.asarray(sp.axes is None))


def generate_rows(plan: Plan, sp: SplitPlan, start: int, count: int
                  ) -> Rows:
  """Host rows `start:start + count` of split `sp`, at its own sizes (the
  rows an emit of `plan` writes there)."""
  key_data, fixed, sample = split_inputs(plan, sp)
  rows = rows_batch(
      plan.tier, key_data, np.arange(start, start + count, dtype=np.int32),
      np.int32(count), fixed, sample, shapes=sp.shapes,
      renders=plan.renders, vmap_rows=plan.vmap_rows)
  return rows_lib.trim(jax.device_get(rows), sp.shapes, count)


@functools.lru_cache(maxsize=64)
def _example_shapes(tier: tiers.Tier, shapes: tiers.Shapes,
                    renders: tuple[str, ...]):
  return jax.eval_shape(
      lambda k: tiers.make_row(tier, k, axes=jnp.zeros(tier.num_axes,
                                                       jnp.int32),
                               shapes=shapes, renders=renders),
      jax.random.key(0, impl=keys_lib.IMPL))


def example_arrays(plan: Plan, sp: SplitPlan) -> dict[str, np.ndarray]:
  """One all-zero row of the split at its own sizes, as zarr arrays (the
  names, trailing shapes and storage dtypes of the split's arrays)."""
  shape = _example_shapes(plan.tier, sp.shapes, plan.renders)
  rows = jax.tree.map(lambda x: np.zeros((1,) + x.shape, x.dtype), shape)
  return zarr_store.rows_to_arrays(rows)
