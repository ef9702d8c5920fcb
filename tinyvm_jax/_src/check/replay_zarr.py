"""Replay verification of a zarr store, on arrays: run every stored
program, render it and compare trace and token arrays with the stored
ones; optionally rebuild each program (and a train row's axes) from its
seed and check that the seed is the one of its row index."""

import dataclasses
import functools
from typing import Callable, Iterator, NamedTuple

import jax
import numpy as np

from tinyvm_jax._src import batching
from tinyvm_jax._src import interpreter
from tinyvm_jax._src import keys as keys_lib
from tinyvm_jax._src import tiers
from tinyvm_jax._src.emit import classes as classes_lib
from tinyvm_jax._src.io import rows as rows_lib
from tinyvm_jax._src.io import zarr_store
from tinyvm_jax._src.types import Program, Rows

_ROWS_MULTIPLE = 256   # a batch is padded to a multiple of this


@dataclasses.dataclass(frozen=True)
class ZarrMismatch:
  """A disagreement in a zarr store: row `line` (1-based) of `group`."""
  group: str
  line: int
  field: str
  detail: str


class _Group(NamedTuple):
  """A group of the store: one split, as its attributes describe it."""
  name: str
  split: str
  bucket: str | None
  num_rows: int
  shapes: tiers.Shapes               # the split's sizes (the arrays')
  axes: tuple[int, ...] | None       # an eval bucket's fixed axes
  renders: tuple[str, ...]


# The rebuilt program is always computed (it is cheap beside the run and the
# render), so replay and rebuild share one compilation.
@functools.partial(jax.jit, static_argnames=("tier", "shapes", "renders"))
def _replay_batch(tier, program, key_data, axes, indices, split_kd, *,
                  shapes, renders):
  """Replays [B] stored rows: (trace, renders, {axes, program, key_data}
  rebuilt from the seeds and row indices), at static `shapes`."""
  split_key = jax.random.wrap_key_data(split_kd, impl=keys_lib.IMPL)

  def one(prog, kd, ax, index):
    trace = interpreter.run(prog, max_steps=shapes.max_steps)
    out = {}
    for name in renders:
      t_in, t_out = shapes.token_lengths(name)
      out[name] = tiers.render_row(name, prog, trace, kd,
                                   max_input_len=t_in, max_target_len=t_out)
    drawn, rebuilt = tiers.rebuild_row(tier, kd, ax, max_len=shapes.max_len)
    extra = {"axes": drawn, "program": rebuilt,
             "key_data": jax.random.key_data(
                 jax.random.fold_in(split_key, index))}
    return trace, out, extra
  return jax.vmap(one)(program, key_data, axes, indices)


def _groups(store: zarr_store.Store) -> list[_Group]:
  tier = tiers.get_tier(store.attrs["tier"])
  out = []
  for name, n in store.groups.items():
    g = store.group_attributes(name)
    axes = None if g["bucket"] is None else tuple(
        tier.bucket(g["bucket"]).axes)
    out.append(_Group(name, g["split"], g["bucket"], int(n),
                      tiers.Shapes(**g["shapes"]), axes,
                      tuple(g["renders"])))
  return out


def zarr_replay(store: zarr_store.Store, *, rebuild: bool, batch_size: int,
                on_batch: Callable[[str, int], None] | None = None
                ) -> Iterator[ZarrMismatch]:
  """Yields the mismatches of every group of a zarr store (`on_batch(group,
  rows)` after each batch of `rows` rows).

  Runs every stored program, renders it and compares trace and token arrays
  with the stored ones; with `rebuild`, also regenerates each program (and a
  train row's axes) from its seed and checks that the seed is the one of its
  row index. Vectorised: one jitted call a batch; groups of similar sizes
  share a compilation (the emit's cost model, `classes.group_sizes`).
  """
  tier = tiers.get_tier(store.attrs["tier"])
  groups = _groups(store)
  tops = classes_lib.group_sizes([(g.shapes, g.num_rows) for g in groups],
                                 tuple(store.attrs["renders"]))
  for g, top in zip(groups, tops):
    for start in range(0, g.num_rows, batch_size):
      stop = min(g.num_rows, start + batch_size)
      yield from _check_batch(store, tier, g, top, start, stop,
                              int(store.attrs["seed_base"]), rebuild)
      if on_batch is not None:
        on_batch(g.name, stop - start)


def _padded_program(program: Program, max_len: int, rows: int) -> Program:
  """[rows] programs padded to `max_len` with each array's fill value."""
  def pad(f):
    x = getattr(program, f)
    if f != "length":
      widths = [(0, 0), (0, max_len - x.shape[1])] + [(0, 0)] * (x.ndim - 2)
      x = np.pad(x, widths,
                 constant_values=zarr_store.fill_value(f"program/{f}"))
    return batching.pad_rows(x, rows)
  return Program(**{f: pad(f) for f in Program.__dataclass_fields__})


def _check_batch(store, tier, g: _Group, top: tiers.Shapes, start: int,
                 stop: int, seed_base: int, rebuild: bool
                 ) -> Iterator[ZarrMismatch]:
  """Yields the mismatches of rows `start:stop` of group `g`, replayed at
  sizes `top`."""
  rows = zarr_store.arrays_to_rows(store.read(g.name, start, stop))
  b = rows.key_data.shape[0]
  rb = batching.round_up(b, _ROWS_MULTIPLE)
  trace, renders, extra = jax.device_get(_replay_batch(
      tier, _padded_program(rows.program, top.max_len, rb),
      batching.pad_rows(rows.key_data, rb), batching.pad_rows(rows.axes, rb),
      np.arange(start, start + rb, dtype=np.int32),
      keys_lib.split_key_data(seed_base, g.split, g.bucket),
      shapes=top, renders=g.renders))
  got = rows_lib.trim(Rows(key_data=rows.key_data, axes=rows.axes,
                           program=rows.program, trace=trace,
                           renders=renders), g.shapes, b, check=False)
  fields = {f"trace.{f}": (getattr(got.trace, f), getattr(rows.trace, f))
            for f in rows.trace.__dataclass_fields__}
  for name in g.renders:
    for part in ("input", "target"):
      x, t = getattr(got.renders[name], part), getattr(rows.renders[name],
                                                       part)
      fields[f"renders.{name}.{part}_ids"] = (x.ids, t.ids)
      fields[f"renders.{name}.{part}_length"] = (x.length, t.length)
  if rebuild:
    fields.update(_rebuilt_fields(g, rows, extra, b))
  bad = set()
  for field, (x, t) in fields.items():
    x, t = np.asarray(x), np.asarray(t)
    diff = (np.ones(b, bool) if x.shape != t.shape else
            (x != t).reshape(b, -1).any(axis=1))
    bad.update((int(i), field) for i in np.flatnonzero(diff))
  for i, field in sorted(bad):
    yield ZarrMismatch(g.name, start + i + 1, field,
                       "differs from the replayed value")


def _rebuilt_fields(g: _Group, rows: Rows, extra: dict, b: int) -> dict:
  """{field: (rebuilt, stored)} of the program, seed and axes."""
  p = g.shapes.max_len
  fields = {}
  for f in rows.program.__dataclass_fields__:
    x = getattr(extra["program"], f)[:b]
    fields[f"program.{f}"] = (x if f == "length" else x[:, :p],
                              getattr(rows.program, f))
  fields["meta.seed"] = (extra["key_data"][:b], rows.key_data)
  want = (extra["axes"][:b] if g.axes is None else
          np.broadcast_to(np.asarray(g.axes, np.int32), rows.axes.shape))
  fields["meta.axes"] = (want, rows.axes)
  return fields
