"""The emit pipeline: rows generated in jitted batches on the local devices,
written by host threads to zarr, JSONL and Parquet, resumable after a crash,
by one process or several.

Work is cut into *parts*: `part_rows` consecutive rows of one split (one zarr
shard, one Parquet file, a step of a JSONL piece). Each process takes a contiguous
run of the dataset's parts (`part_assignment`). For a part, the main thread
groups the rows by *row class* (`row_classes`: a few static sizes chosen from
the rows' own bounds, so that a short Tier 2 row is not computed at the
split's 1,615 steps) and dispatches jitted batches of one class each, sharded
over the process's devices (`shard_map`), into a bounded queue (JAX dispatch
is asynchronous, so the devices compute the next batches while the host
writes); a host thread copies each finished batch to the host and trims it;
one thread a format places the rows at their positions and writes the part.
Memory is bounded by the queues, a few batches and one part, whatever the
dataset size.

Crash safety. Everything is written under `<tier>/.partial/`, in the final
layout (JSONL as one piece for each run of parts a process writes). When a
part is durable in every format, the process's progress file records it
(atomically). A rerun with the same
settings (same fingerprint), with any number of processes, keeps the
recorded parts and regenerates only the others: rows depend on (seed,
split, bucket, index) only, so the result is byte-identical to an
uninterrupted run. When all parts are done (a barrier), process 0
joins the JSONL pieces, records the hashes, renames the files into
place and writes `manifest.json` last (temporary name + `os.replace`): no
manifest means the emit did not finish.

Compilation. A row's content does not depend on the static sizes it is
computed at (programs, traces and renders are padding-independent, and each
zarr array's fill value is its padding value), so a row class is one
compilation shared by every split, and every batch is trimmed back to its
split's sizes before it is written.
"""

import dataclasses
import functools
import hashlib
import json
import os
import queue
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec
import numpy as np

from tinyvm_jax._src import keys as keys_lib
from tinyvm_jax._src.io import manifest as manifest_lib
from tinyvm_jax._src import render as render_lib
from tinyvm_jax._src import tiers
from tinyvm_jax._src.io import zarr_store
from tinyvm_jax._src.types import Program, Render, Rows, Tokens, Trace

FORMATS = ("zarr", "jsonl", "parquet")
PARTIAL = ".partial"
FINGERPRINT = "fingerprint"      # in .partial: the settings' fingerprint
PROGRESS_DIR = "progress"        # in .partial: one progress file a process
FINALIZING = "finalizing.json"   # in .partial: the manifest's file entries
JSONL_PARTS = "jsonl-parts"      # in .partial: JSONL pieces (runs of parts)
README = "README.md"
DATA_DIR = "data"          # Parquet files
EVAL_DIR = "eval"          # JSONL eval files
# Every name an emit may create in the tier directory (removed before a
# fresh emit so that no stale file survives).
OUTPUT_NAMES = ("train.jsonl", EVAL_DIR, DATA_DIR, README,
                zarr_store.STORE_NAME)

# Cost model of `shape_classes`, in units of about 0.25 us of CPU per row:
# a row costs about P + S + T_in / 4 units; one compilation about 3 s.
_COMPILE_UNITS = 12_000_000


def default_compile_cache() -> str:
  """Where the CLIs keep JAX's persistent compilation cache."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
  return os.path.join(base, "tinyvm_jax", "jax")


def enable_compile_cache(path: str) -> None:
  """Turns on JAX's persistent compilation cache in `path` ('' leaves it
  off): a rerun skips the seconds each shape class takes to compile."""
  if path:
    jax.config.update("jax_compilation_cache_dir", path)


class EmitError(RuntimeError):
  """An emit that cannot run (bad settings, unwritable output, ...)."""


# ----------------------------------------------------------------- the plan
@dataclasses.dataclass(frozen=True)
class SplitPlan:
  """One output split: train or one eval bucket."""
  split: str                       # "train" | "eval"
  bucket: str | None
  num_rows: int
  shapes: tiers.Shapes             # the split's own static sizes
  axes: tuple[int, ...] | None     # fixed axes of an eval bucket

  @property
  def name(self) -> str:
    """"train" or "eval/<bucket>": the zarr group and the progress key."""
    return "train" if self.bucket is None else f"{EVAL_DIR}/{self.bucket}"

  @property
  def jsonl(self) -> str:
    """The reference's file: train.jsonl or eval/<bucket>.jsonl."""
    return f"{self.name}.jsonl"

  @property
  def hf_split(self) -> str:
    """The Hub's split name: train or eval_<bucket>."""
    return "train" if self.bucket is None else f"eval_{self.bucket}"

  def num_parts(self, part_rows: int) -> int:
    return -(-self.num_rows // part_rows)

  def part_range(self, part: int, part_rows: int) -> tuple[int, int]:
    start = part * part_rows
    return start, min(self.num_rows, start + part_rows)

  def parquet(self, part: int, part_rows: int) -> str:
    n = self.num_parts(part_rows)
    return f"{DATA_DIR}/{self.hf_split}-{part:05d}-of-{n:05d}.parquet"


@dataclasses.dataclass(frozen=True)
class Plan:
  """Everything an emit writes is a function of these fields (the device
  and the batch size change only speed)."""
  tier: tiers.Tier
  seed_base: int
  renders: tuple[str, ...]
  formats: tuple[str, ...]
  splits: tuple[SplitPlan, ...]
  part_rows: int
  chunk_rows: int
  codec: Mapping[str, Any] | None
  batch_size: int
  vmap_rows: int

  @property
  def total_rows(self) -> int:
    return sum(s.num_rows for s in self.splits)

  def fingerprint(self) -> str:
    """Hash of what decides the output bytes (not batch size or device)."""
    d = {"tier": self.tier.name, "seed_base": self.seed_base,
         "renders": self.renders, "formats": sorted(self.formats),
         "splits": [(s.name, s.num_rows) for s in self.splits],
         "part_rows": self.part_rows, "chunk_rows": self.chunk_rows,
         "codec": self.codec, "version": manifest_lib.package_version(),
         "commit": manifest_lib.package_commit()}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def make_plan(*, tier: str, seed_base: int, train_size: int, eval_size: int,
              renders: Sequence[str], formats: Sequence[str],
              batch_size: int, part_rows: int, chunk_rows: int,
              vmap_rows: int = 256,
              codec: str = zarr_store.DEFAULT_CODEC_SPEC) -> Plan:
  """Checks the settings and builds the `Plan`.

  Raises:
    EmitError: one line naming the bad setting.
  """
  try:
    t = tiers.get_tier(tier)
  except ValueError as e:
    raise EmitError(str(e)) from None
  if not isinstance(seed_base, int) or not 0 <= seed_base < 2 ** 64:
    raise EmitError(f"seed must be an integer in [0, 2**64), got {seed_base}")
  for name, v, lo in (("train_size", train_size, 0), ("eval_size", eval_size,
                                                      0),
                      ("batch_size", batch_size, 1), ("part_rows", part_rows,
                                                      1),
                      ("chunk_rows", chunk_rows, 1),
                      ("vmap_rows", vmap_rows, 1)):
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
      raise EmitError(f"{name} must be an integer >= {lo}, got {v!r}")
  if train_size >= 2 ** 31 or eval_size >= 2 ** 31:
    raise EmitError("train_size and eval_size must be below 2**31")
  if part_rows % chunk_rows:
    raise EmitError(f"part_rows={part_rows} must be a multiple of "
                    f"chunk_rows={chunk_rows}")
  renders = tuple(renders)
  if not renders:
    raise EmitError("renders must name at least one render")
  for r in renders:
    if r not in render_lib.RENDER_NAMES:
      raise EmitError(f"unknown render {r!r}; expected some of "
                      f"{list(render_lib.RENDER_NAMES)}")
  if len(set(renders)) != len(renders):
    raise EmitError(f"renders {list(renders)} name a render twice")
  try:
    codec_json = zarr_store.parse_codec(codec)
  except ValueError as e:
    raise EmitError(str(e)) from None
  formats = tuple(formats)
  if not formats:
    raise EmitError(f"formats must name at least one of {list(FORMATS)}")
  for f in formats:
    if f not in FORMATS:
      raise EmitError(f"unknown format {f!r}; expected some of "
                      f"{list(FORMATS)}")
  if len(set(formats)) != len(formats):
    raise EmitError(f"formats {list(formats)} name a format twice")
  splits = [SplitPlan("train", None, train_size, t.train_shapes, None)]
  splits += [SplitPlan("eval", b.name, eval_size, b.shapes, tuple(b.axes))
             for b in t.eval_buckets]
  splits = [s for s in splits if s.num_rows]  # an empty split writes nothing
  if not splits:
    raise EmitError("train_size and eval_size are both 0: nothing to emit")
  return Plan(tier=t, seed_base=seed_base, renders=renders, formats=formats,
              splits=tuple(splits), part_rows=part_rows,
              chunk_rows=chunk_rows, codec=codec_json,
              batch_size=batch_size, vmap_rows=min(vmap_rows, batch_size))


# ----------------------------------------------------------------- compiling
def _row_units(s: tiers.Shapes) -> int:
  return s.max_len + s.max_steps + s.max_input_len // 4


def _max_shapes(shapes: Sequence[tiers.Shapes]) -> tiers.Shapes:
  return tiers.Shapes(*(max(getattr(s, f.name) for s in shapes)
                        for f in dataclasses.fields(tiers.Shapes)))


def shape_classes(splits: Sequence[SplitPlan]) -> dict[str, tiers.Shapes]:
  """The static sizes each split is computed at: splits are grouped (in
  order of size) to minimise compilations + padded work, each group at the
  largest sizes of its members. Returns {split name: Shapes}."""
  todo = sorted((s for s in splits if s.num_rows), key=lambda s: (
      _row_units(s.shapes), s.name))
  n = len(todo)
  best = [0.0] + [float("inf")] * n   # best[i]: cost of the first i splits
  cut = [0] * (n + 1)
  for i in range(1, n + 1):
    for j in range(i):
      group = todo[j:i]
      top = _max_shapes([s.shapes for s in group])
      cost = best[j] + _COMPILE_UNITS + sum(s.num_rows for s in group
                                            ) * _row_units(top)
      if cost < best[i]:
        best[i], cut[i] = cost, j
  out = {}
  i = n
  while i > 0:
    group = todo[cut[i]:i]
    top = _max_shapes([s.shapes for s in group])
    out.update({s.name: top for s in group})
    i = cut[i]
  return out


# Row classes. The rows of one split differ in size: a Tier 2 train row
# needs P from 34 to 506 rows and S from 28 to 1,510 steps
# (`Tier.row_bounds`), the split's static sizes being the maxima; computed
# at those, most of the work would be padding. So every row is computed at
# the sizes of its *class*: a few static (P, S) pairs chosen for the whole
# emit from a sample of the rows' bounds (`row_classes`), one compilation
# each. A row does not depend on the sizes it is computed at, so classes
# change the speed, never the bytes.
_SAMPLE_ROWS = 4096       # rows of each split sampled to choose the classes
_QUANTILES = 48           # candidate cut points of the choice
_COMPILE_SECONDS = 4.0    # about one compilation
_UNIT_SECONDS = 0.15e-6   # about the CPU time of one unit of `class_units`
_AXES_BLOCK = 4096        # rows a call of `_axes_batch`


def class_units(shapes: tiers.Shapes, renders: Sequence[str]) -> float:
  """A row's rough cost at `shapes`: P + S + (the renders' tokens) / 8."""
  u = shapes.max_len + shapes.max_steps
  for r in renders:
    t_in, t_out = shapes.token_lengths(r)
    u += (t_in + t_out) / 8
  return float(u)


@functools.partial(jax.jit, static_argnames=("tier",))
def _axes_batch(tier, split_key_data, indices):
  split_key = jax.random.wrap_key_data(split_key_data, impl=keys_lib.IMPL)
  return jax.vmap(lambda i: tier.sample_axes(keys_lib.axes_key(
      jax.random.fold_in(split_key, i))))(indices)


def rows_axes(plan: Plan, sp: SplitPlan, start: int, stop: int
              ) -> np.ndarray:
  """[stop - start, A] int64 axes of rows `start:stop` of a split (host)."""
  n = stop - start
  if sp.axes is not None:
    return np.broadcast_to(np.asarray(sp.axes, np.int64),
                           (n, plan.tier.num_axes))
  kd = jnp.asarray(keys_lib.split_key_data(plan.seed_base, sp.split, sp.bucket))
  out = []
  for lo in range(start, stop, _AXES_BLOCK):
    idx = np.arange(lo, lo + _AXES_BLOCK, dtype=np.int32)
    got = np.asarray(_axes_batch(plan.tier, kd, jnp.asarray(idx)))
    out.append(got[:min(_AXES_BLOCK, stop - lo)])
  return np.concatenate(out).astype(np.int64) if out else np.zeros(
      (0, plan.tier.num_axes), np.int64)


def row_sizes(plan: Plan, sp: SplitPlan, axes: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
  """([N] P, [N] S) bounds of rows with these axes, within the split's."""
  p, s = plan.tier.row_bounds(axes)
  return (np.minimum(p, sp.shapes.max_len),
          np.minimum(s, sp.shapes.max_steps))


def row_classes(plan: Plan, *, max_classes: int = 8
                ) -> tuple[tiers.Shapes, ...]:
  """Up to `max_classes` static sizes rows are computed at, cheapest first.

  The (P, S) bounds of a sample of every split's rows, weighted by the
  split's size and ordered by cost, are cut into contiguous groups; each
  group is computed at its largest P and S. The cut minimises compilations
  plus padded work (`_COMPILE_SECONDS`, `_UNIT_SECONDS`), by dynamic
  programming over weighted quantiles. `max_classes=0`: no classes (every
  row at its split's sizes).
  """
  if max_classes <= 0:
    return ()
  base = _max_shapes([sp.shapes for sp in plan.splits])
  ps, ss, ws = [], [], []
  for sp in plan.splits:
    n = min(sp.num_rows, _SAMPLE_ROWS)
    p, s = row_sizes(plan, sp, rows_axes(plan, sp, 0, n))
    ps.append(p)
    ss.append(s)
    ws.append(np.full(n, sp.num_rows / n))
  pairs, inverse = np.unique(np.stack([np.concatenate(ps),
                                       np.concatenate(ss)], 1),
                             axis=0, return_inverse=True)
  weight = np.bincount(inverse.ravel(), weights=np.concatenate(ws))
  make = lambda p, s: dataclasses.replace(base, max_len=int(p),
                                          max_steps=int(s))
  units = np.array([class_units(make(p, s), plan.renders) for p, s in pairs])
  order = np.argsort(units, kind="stable")
  pairs, weight = pairs[order], weight[order]
  cum = np.cumsum(weight) / weight.sum()
  cuts = sorted({0, len(pairs)} | {
      int(np.searchsorted(cum, q, side="left")) + 1
      for q in np.linspace(0, 1, _QUANTILES + 1)[1:-1]})
  cuts = [c for c in cuts if c <= len(pairs)]
  c = len(cuts)
  group = {}
  for j in range(c):
    for i in range(j + 1, c):
      a, b = cuts[j], cuts[i]
      shp = make(pairs[a:b, 0].max(), pairs[a:b, 1].max())
      group[j, i] = (_COMPILE_SECONDS + _UNIT_SECONDS * weight[a:b].sum()
                     * class_units(shp, plan.renders), shp)
  inf = float("inf")
  best = [[inf] * c for _ in range(max_classes + 1)]
  back = [[0] * c for _ in range(max_classes + 1)]
  best[0][0] = 0.0
  for g in range(1, max_classes + 1):
    for i in range(1, c):
      for j in range(i):
        if best[g - 1][j] < inf and best[g - 1][j] + group[j, i][0] < (
            best[g][i]):
          best[g][i], back[g][i] = best[g - 1][j] + group[j, i][0], j
  g = min(range(1, max_classes + 1), key=lambda g: best[g][c - 1])
  out, i = [], c - 1
  while g > 0:
    j = back[g][i]
    out.append(group[j, i][1])
    i, g = j, g - 1
  out = sorted(set(out), key=lambda s: class_units(s, plan.renders))
  # the sample may miss a split's largest rows: the costliest class takes
  # every size, so that no row falls back to a class of its own
  out[-1] = dataclasses.replace(out[-1], max_len=base.max_len,
                                max_steps=base.max_steps)
  return tuple(out)


def assign_classes(classes: Sequence[tiers.Shapes], p: np.ndarray,
                   s: np.ndarray) -> np.ndarray:
  """[N] int: each row's cheapest class that fits its (P, S) bounds
  (`classes` cheapest first), -1 where none does (the split's sizes)."""
  out = np.full(p.shape, -1, np.int64)
  for c, shp in enumerate(classes):
    out = np.where((out < 0) & (p <= shp.max_len) & (s <= shp.max_steps), c,
                   out)
  return out


def _fit(shapes: tiers.Shapes, sp: SplitPlan) -> tiers.Shapes:
  """The sizes a row of `sp` computed at `shapes` is cut to: the smaller
  of the two in P and S (the row fits both), the split's other fields."""
  return dataclasses.replace(
      sp.shapes, max_len=min(shapes.max_len, sp.shapes.max_len),
      max_steps=min(shapes.max_steps, sp.shapes.max_steps))


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
  idx = jnp.concatenate([indices, jnp.broadcast_to(indices[-1:],
                                                   (nb * v - b,))])
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


@functools.partial(jax.jit, static_argnames=("tier", "shapes", "renders",
                                             "vmap_rows", "mesh"))
def _rows_batch(tier, split_key_data, indices, count, fixed_axes,
                sample_axes, *, shapes, renders, vmap_rows, mesh=None):
  """[B] rows of one split at static `shapes` (row i: index `indices[i]`,
  for i < count); with a `mesh` of several devices, sharded over its
  "rows" axis (`shard_map`: each device computes B / D consecutive rows).
  A row is padding-free: the same as `tiers.generate`'s at the split's
  own sizes."""
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


def generate_rows(plan: Plan, sp: SplitPlan, start: int, count: int
                  ) -> Rows:
  """Host rows `start:start + count` of split `sp`, at its own sizes (the
  rows an emit of `plan` writes there)."""
  rows = _rows_batch(
      plan.tier, keys_lib.split_key_data(plan.seed_base, sp.split, sp.bucket),
      np.arange(start, start + count, dtype=np.int32), np.int32(count),
      np.asarray(sp.axes if sp.axes is not None else
                 (0,) * plan.tier.num_axes, np.int32),
      np.asarray(sp.axes is None), shapes=sp.shapes,
      renders=plan.renders, vmap_rows=plan.vmap_rows)
  return trim(jax.device_get(rows), sp.shapes, count)


def token_lengths(name: str, shapes: tiers.Shapes) -> tuple[int, int]:
  """Static (input, target) token lengths of render `name` at `shapes`."""
  return shapes.token_lengths(name)


def trim(rows: Rows, shapes: tiers.Shapes, count: int, *,
         check: bool = True) -> Rows:
  """The first `count` rows of a host batch, cut to `shapes`' sizes.

  Raises:
    EmitError: (when `check`) if a row does not fit (a program, trace or
      render longer than its split's static size, or a run that ended in
      error).
  """
  p, s = shapes.max_len, shapes.max_steps
  pr, tr = rows.program, rows.trace
  if check:
    if (pr.length[:count] > p).any() or (tr.num_steps[:count] > s).any():
      raise EmitError(f"a row does not fit the split's sizes P={p}, S={s}")
    bad = np.flatnonzero(tr.error[:count])
    if bad.size:
      raise EmitError(f"row {int(bad[0])} of a batch ended in error "
                      f"{int(tr.error[bad[0]])}")
  program = Program(**{f: (getattr(pr, f)[:count] if f == "length" else
                           getattr(pr, f)[:count, :p])
                       for f in Program.__dataclass_fields__})
  scalars = ("num_output", "num_steps", "halted", "error")
  trace = Trace(**{f: (getattr(tr, f)[:count] if f in scalars else
                       getattr(tr, f)[:count, :s])
                   for f in Trace.__dataclass_fields__})
  renders = {}
  for name, r in rows.renders.items():
    sizes = token_lengths(name, shapes)
    toks = []
    for tok, t in zip((r.input, r.target), sizes):
      if check and (tok.length[:count] > t).any():
        raise EmitError(f"a {name} render is longer than {t} tokens")
      toks.append(Tokens(ids=tok.ids[:count, :t], length=tok.length[:count]))
    renders[name] = Render(input=toks[0], target=toks[1])
  return Rows(key_data=rows.key_data[:count], axes=rows.axes[:count],
              program=program, trace=trace, renders=renders)


# ----------------------------------------------------------------- writers
# A writer gets each part's rows in batches, in any order of rows (a batch
# holds the rows of one class: ascending positions, not contiguous), and
# makes the part durable in `end_part`, returning what progress records.
def probe_steps(plan: Plan, rows: Rows) -> np.ndarray | None:
  """[B] the step a probe_query render asks about: meta.seed % steps (as
  `tiers.render_row` chooses it); None without that render."""
  if "probe_query" not in plan.renders:
    return None
  return keys_lib.probe_steps(rows.key_data, rows.trace.num_steps)


def _fsync_file(path: Path) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def jsonl_piece(sp: SplitPlan, part: int) -> str:
  """The JSONL piece whose first part is `part`, under `.partial/`: a
  process appends the consecutive parts it writes of a split to one piece;
  when the emit finishes, a split written as one piece is renamed into
  place, several are concatenated in part order."""
  return f"{JSONL_PARTS}/{sp.name}/{part:05d}.jsonl"


def widen(rows: Rows) -> Rows:
  """Host rows with int32 integer leaves (after `narrow`; bool, uint32
  key data stay): what the JSONL and Parquet serialisers compute with."""
  def up(x):
    x = np.asarray(x)
    return x if x.dtype in (np.bool_, np.uint32, np.int32) else x.astype(
        np.int32)
  return jax.tree.map(up, rows)


class _JsonlWriter:
  """Orders each part's lines and appends them to the process's current
  piece of the split (`jsonl_piece`), hashing as it goes. Progress records,
  a part, its piece, the piece's length and hash after it: a rerun
  continues a piece after its last recorded part (cutting off a torn
  write), and a finished split of one piece needs no copy."""

  def __init__(self, plan: Plan, work: Path, done: Mapping[str, dict]):
    from tinyvm_jax._src.io import jsonl
    self._jsonl = jsonl
    self.plan, self.work, self.done = plan, work, done
    self.lines, self.positions = [], []
    self.file = None
    self.key = None   # (split name, piece's first part, last part written)

  def write(self, sp: SplitPlan, rows: Rows, positions: np.ndarray) -> None:
    rows = widen(rows)
    data = self._jsonl.rows_to_jsonl(
        rows, tier=self.plan.tier.name, split=sp.split, bucket=sp.bucket,
        axis_names=self.plan.tier.axis_names, render_names=self.plan.renders,
        probe_step=probe_steps(self.plan, rows))
    lines = data.split(b"\n")
    assert len(lines) == len(positions) + 1 and not lines[-1]
    self.lines.extend(lines[:-1])
    self.positions.append(positions)

  def _open(self, sp: SplitPlan, part: int) -> None:
    """Makes the piece that part `part` goes to the open file."""
    if self.key is not None and self.key[0] == sp.name and (
        self.key[2] == part - 1):
      return
    self._close_file()
    first, end = part, 0
    prev = self.done.get(_part_key(sp, part - 1), {}).get("jsonl")
    if prev is not None:
      last = max(int(k.rsplit(":", 1)[1]) for k, v in self.done.items()
                 if k.rsplit(":", 1)[0] == sp.name
                 and v.get("jsonl", {}).get("piece") == prev["piece"])
      if last == part - 1:   # continue the piece that part - 1 ended
        first, end = int(prev["piece"]), int(prev["end"])
    path = self.work / jsonl_piece(sp, first)
    path.parent.mkdir(parents=True, exist_ok=True)
    self.file = open(path, "r+b" if end else "wb")
    self.hash = hashlib.sha256()
    if end:
      self.file.truncate(end)
      left = end
      while left:
        block = self.file.read(min(left, 1 << 22))
        if not block:
          raise EmitError(f"{path}: shorter than its recorded progress")
        self.hash.update(block)
        left -= len(block)
    self.file.seek(end)
    self.bytes = end
    self.key = (sp.name, first, part - 1)

  def end_part(self, sp: SplitPlan, part: int) -> dict:
    self._open(sp, part)
    order = np.argsort(np.concatenate(self.positions), kind="stable")
    data = b"\n".join([self.lines[i] for i in order]) + b"\n"
    self.lines, self.positions = [], []
    self.file.write(data)
    self.hash.update(data)
    self.bytes += len(data)
    self.file.flush()
    os.fsync(self.file.fileno())
    self.key = (sp.name, self.key[1], part)
    return {"jsonl": {"rows": len(order), "piece": self.key[1],
                      "end": self.bytes, "sha256": self.hash.hexdigest()}}

  def _close_file(self) -> None:
    if self.file is not None:
      self.file.close()
    self.file, self.key = None, None

  def close(self) -> None:
    self.lines, self.positions = [], []
    self._close_file()


class _ParquetWriter:
  """One Parquet file a part: `.partial/data/<split>-<part>-of-<n>.parquet`
  (written under a temporary name, then renamed)."""

  def __init__(self, plan: Plan, work: Path, done: Mapping[str, dict]):
    from tinyvm_jax._src.io import parquet
    self._parquet = parquet
    self.plan, self.work = plan, work
    self.tables, self.positions = [], []

  def write(self, sp: SplitPlan, rows: Rows, positions: np.ndarray) -> None:
    rows = widen(rows)
    self.tables.append(self._parquet.rows_to_table(
        rows, tier=self.plan.tier.name, split=sp.split, bucket=sp.bucket,
        axis_names=self.plan.tier.axis_names, render_names=self.plan.renders,
        probe_step=probe_steps(self.plan, rows)))
    self.positions.append(positions)

  def end_part(self, sp: SplitPlan, part: int) -> dict:
    import pyarrow as pa
    rel = sp.parquet(part, self.plan.part_rows)
    path = self.work / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # rows in index order: slices of the batches' tables, a run of rows of
    # one batch each (`take` changes how Arrow lays out the nested columns,
    # and with it the file's bytes; slices do not)
    pos = np.concatenate(self.positions)
    batch = np.concatenate([np.full(len(p), i) for i, p in
                            enumerate(self.positions)])
    row = np.concatenate([np.arange(len(p)) for p in self.positions])
    order = np.argsort(pos, kind="stable")
    b, r = batch[order], row[order]
    starts = np.flatnonzero(np.r_[True, (b[1:] != b[:-1])
                                  | (r[1:] != r[:-1] + 1)])
    ends = np.r_[starts[1:], len(order)]
    table = pa.concat_tables([self.tables[b[i]].slice(r[i], e - i)
                              for i, e in zip(starts, ends)])
    # one chunk a column: the writer's dictionary-page fallback on long
    # string columns (Tier 2 cot text) depends on how the rows are chunked
    table = table.combine_chunks()
    self.tables, self.positions = [], []
    self._parquet.write_parquet(table, tmp)
    _fsync_file(tmp)
    os.replace(tmp, path)
    manifest_lib.fsync_dir(path.parent)
    digest, size, _ = manifest_lib.sha256_file(path)
    return {"files": {rel: {"rows": table.num_rows, "sha256": digest,
                            "bytes": size}}}

  def close(self) -> None:
    self.tables, self.positions = [], []


class _ZarrWriter:
  """A group a split in `.partial/rows.zarr`, one shard a part. A part's
  rows arrive in batches of one row class each (scattered positions, the
  class's sizes); they are placed into a buffer of the part at the split's
  sizes, filled with each array's padding value, which is written in one
  contiguous write when the part ends (tensorstore writes contiguous boxes
  far faster than index arrays)."""

  def __init__(self, plan: Plan, work: Path, done: Mapping[str, dict]):
    self.plan = plan
    self.root = work / zarr_store.STORE_NAME
    self.groups = {}
    self.buffer, self.start, self.kept = None, 0, None

  def _group(self, sp: SplitPlan) -> zarr_store.GroupWriter:
    if sp.name not in self.groups:
      attrs = {"split": sp.split, "bucket": sp.bucket, "rows": sp.num_rows,
               "axis_names": list(self.plan.tier.axis_names),
               "renders": list(self.plan.renders),
               "shapes": dataclasses.asdict(sp.shapes)}
      self.groups[sp.name] = zarr_store.GroupWriter(
          self.root, sp.name, sp.num_rows, _example_arrays(self.plan, sp),
          part_rows=self.plan.part_rows, chunk_rows=self.plan.chunk_rows,
          codec=self.plan.codec, attributes=attrs)
    return self.groups[sp.name]

  def write(self, sp: SplitPlan, rows: Rows, positions: np.ndarray) -> None:
    arrays = zarr_store.rows_to_arrays(rows)
    if self.buffer is None:
      part = positions[0] // self.plan.part_rows
      lo, hi = sp.part_range(part, self.plan.part_rows)
      self.start = lo
      self.buffer = self._fresh_buffer(sp, hi - lo)
    rel = np.asarray(positions) - self.start
    for name, x in arrays.items():
      buf = self.buffer[name]
      if x.shape[1:] == buf.shape[1:] and rel[-1] - rel[0] + 1 == rel.size:
        buf[rel[0]:rel[-1] + 1] = x
        continue
      cut = tuple(slice(0, d) for d in x.shape[1:])
      for i, r in enumerate(rel):   # a row at a time: numpy's fancy
        buf[(r,) + cut] = x[i]      # indexing is far slower here

  def _fresh_buffer(self, sp: SplitPlan, n: int) -> dict[str, np.ndarray]:
    """A part's buffer, all padding. The split's buffer is kept and
    refilled: writing fresh pages costs more than filling resident ones."""
    if self.kept is None or self.kept[0] != sp.name:
      self.kept = (sp.name, {
          name: np.empty((self.plan.part_rows,) + x.shape[1:], x.dtype)
          for name, x in _example_arrays(self.plan, sp).items()})
    out = {}
    for name, buf in self.kept[1].items():
      buf[:n] = zarr_store.fill_value(name)
      out[name] = buf[:n]
    return out

  def end_part(self, sp: SplitPlan, part: int) -> dict:
    group = self._group(sp)
    group.write(self.start, self.buffer)   # copied into the transaction
    self.buffer = None
    group.commit_part()
    return {}

  def close(self) -> None:
    for g in self.groups.values():
      g.abort()
    self.groups, self.buffer, self.kept = {}, None, None


@functools.lru_cache(maxsize=64)
def _example_shapes(tier: tiers.Tier, shapes: tiers.Shapes,
                    renders: tuple[str, ...]):
  return jax.eval_shape(
      lambda k: tiers.make_row(tier, k, axes=jnp.zeros(tier.num_axes,
                                                       jnp.int32),
                               shapes=shapes, renders=renders),
      jax.random.key(0, impl=keys_lib.IMPL))


def _example_arrays(plan: Plan, sp: SplitPlan) -> dict[str, np.ndarray]:
  """One all-zero row of the split at its own sizes, as zarr arrays (the
  names, trailing shapes and storage dtypes of the split's arrays)."""
  shape = _example_shapes(plan.tier, sp.shapes, plan.renders)
  rows = jax.tree.map(lambda x: np.zeros((1,) + x.shape, x.dtype), shape)
  return zarr_store.rows_to_arrays(rows)


def root_attributes(plan: Plan) -> dict:
  """The store's root attributes (under `zarr_store.ATTR_KEY`)."""
  return {zarr_store.ATTR_KEY: {
      "format_version": zarr_store.FORMAT_VERSION,
      "tier": plan.tier.name, "seed_base": plan.seed_base,
      "axis_names": list(plan.tier.axis_names),
      "renders": list(plan.renders),
      "part_rows": plan.part_rows, "chunk_rows": plan.chunk_rows,
      "groups": {s.name: s.num_rows for s in plan.splits}}}


def hub_readme(plan: Plan) -> str:
  """README.md whose YAML `configs` name the Parquet files of each split,
  so `datasets.load_dataset(dir)` reads them (and not the JSONL files)."""
  lines = ["---", "configs:", "- config_name: default", "  data_files:"]
  for s in plan.splits:
    lines += [f"  - split: {s.hf_split}",
              f"    path: {DATA_DIR}/{s.hf_split}-*.parquet"]
  lines += ["---", "", f"# Tiny-VM {plan.tier.name}", "",
            f"Rows of the Tiny-VM {plan.tier.name} dataset, seed base "
            f"{plan.seed_base}, written by tinyvm_jax "
            f"{manifest_lib.package_version()}. Columns: meta, program, "
            "trace, renders (the reference's JSONL row schema).", "",
            "| split | rows |", "|---|---:|"]
  lines += [f"| {s.hf_split} | {s.num_rows} |" for s in plan.splits]
  return "\n".join(lines) + "\n"


# ----------------------------------------------------------------- progress
# `.partial/fingerprint` names the settings the unfinished emit was started
# with; `.partial/progress/p<k>.json` records the parts process k made
# durable, {"<split name>:<part>": what its writers returned}. A run takes
# the union of every process's records, whatever the number of processes.
def _part_key(sp: SplitPlan, part: int) -> str:
  return f"{sp.name}:{part}"


class _Progress:
  """One process's progress file."""

  def __init__(self, work: Path, process_id: int, fingerprint: str):
    self.path = work / PROGRESS_DIR / f"p{process_id:05d}.json"
    self.data = {"fingerprint": fingerprint, "parts": {}}
    try:
      old = json.loads(self.path.read_bytes())
      if old.get("fingerprint") == fingerprint:
        self.data = old
    except (OSError, ValueError, AttributeError):
      pass

  def record(self, key: str, updates: dict) -> None:
    self.data["parts"][key] = updates
    self.path.parent.mkdir(parents=True, exist_ok=True)
    manifest_lib.write_atomic(self.path, json.dumps(self.data).encode())


def done_parts(work: Path, fingerprint: str) -> dict[str, dict]:
  """{part key: writers' records} of every part any process made durable."""
  out = {}
  for path in sorted((work / PROGRESS_DIR).glob("p*.json")):
    try:
      data = json.loads(path.read_bytes())
    except (OSError, ValueError):
      continue
    if isinstance(data, dict) and data.get("fingerprint") == fingerprint:
      out.update(data.get("parts", {}))
  return out


def part_assignment(plan: Plan, num_processes: int
                    ) -> list[list[tuple[SplitPlan, int]]]:
  """The parts of each process: the dataset's parts in order (splits in
  plan order, parts ascending), cut into `num_processes` contiguous runs of
  about equal work (rows times the split's `class_units`)."""
  parts = [(sp, k) for sp in plan.splits
           for k in range(sp.num_parts(plan.part_rows))]
  cost = np.array([np.diff(sp.part_range(k, plan.part_rows))[0]
                   * class_units(sp.shapes, plan.renders) for sp, k in parts])
  edges = np.cumsum(cost) - cost / 2     # a part goes where its middle is
  owner = np.minimum((edges / cost.sum() * num_processes).astype(int),
                     num_processes - 1)
  return [[p for p, o in zip(parts, owner) if o == i]
          for i in range(num_processes)]


# ----------------------------------------------------------------- the run
@dataclasses.dataclass
class Result:
  """What an emit did (in a run of several processes: what this process
  did; `files` and `bytes_by_format` are process 0's)."""
  tier_dir: Path
  rows: int                 # rows in the dataset
  generated: int            # rows generated by this process in this run
  seconds: float
  files: dict               # manifest["files"]
  bytes_by_format: dict     # format -> bytes on disk
  resumed: bool


def _remove(path: Path) -> None:
  if path.is_dir() and not path.is_symlink():
    shutil.rmtree(path)
  elif path.exists() or path.is_symlink():
    path.unlink()


def _format_of(rel: str) -> str:
  if rel.endswith(".jsonl"):
    return "jsonl"
  if rel.startswith(zarr_store.STORE_NAME + "/"):
    return "zarr"
  return "parquet"


def _zarr_files(plan: Plan, store: Path) -> dict:
  """Manifest entries of every file of the store: rows covered (an array's
  `zarr.json`: its length; a shard: its rows; a group's `zarr.json`: 0)."""
  rows = {s.name: s.num_rows for s in plan.splits}
  out = {}
  for path in sorted(p for p in store.rglob("*") if p.is_file()):
    rel = path.relative_to(store).as_posix()
    if not _is_zarr_file(rel):
      continue  # a crash's temporary file: removed with the strays
    parts = rel.split("/")
    n = 0
    if parts[-1] == "zarr.json":
      meta = json.loads(path.read_bytes())
      if meta.get("node_type") == "array":
        n = int(meta["shape"][0])
    elif "c" in parts:
      i = parts.index("c")
      part = int(parts[i + 1])
      group = next(g for g in sorted(rows, key=len, reverse=True)
                   if rel.startswith(g + "/"))
      n = min(plan.part_rows, rows[group] - part * plan.part_rows)
    digest, size, _ = manifest_lib.sha256_file(path)
    out[f"{zarr_store.STORE_NAME}/{rel}"] = {"rows": n, "sha256": digest,
                                             "bytes": size}
  return out


def _is_zarr_file(rel: str) -> bool:
  """A store's own file: a `zarr.json` or a chunk key `.../c/<i>/<j>...`."""
  parts = rel.split("/")
  if parts[-1] == "zarr.json":
    return True
  return "c" in parts and all(p.isdigit()
                              for p in parts[parts.index("c") + 1:])


def _remove_strays(work: Path, files: Mapping[str, Any]) -> None:
  """Deletes what `.partial` holds besides the dataset's files and the
  emit's own records (JSONL pieces, a crash's temporary files, a part
  written past the last recorded one), so the finished layout is exactly
  the uninterrupted one."""
  keep = {FINGERPRINT, FINALIZING}
  for path in sorted(work.rglob("*")):
    if path.is_file():
      rel = path.relative_to(work).as_posix()
      if rel not in files and rel not in keep and not rel.startswith(
          PROGRESS_DIR + "/"):
        path.unlink()


def _prepare(plan: Plan, tier_dir: Path, log) -> bool:
  """Keeps the `.partial` of an unfinished emit with the same settings
  (returns True), or starts afresh (removing the old manifest first, then
  every old output) and lays out the new `.partial`."""
  work = tier_dir / PARTIAL
  fp = plan.fingerprint()
  try:
    if (work / FINGERPRINT).read_text() == fp:
      return True
  except OSError:
    pass
  manifest_path = tier_dir / manifest_lib.MANIFEST
  if manifest_path.exists():
    manifest_path.unlink()
    manifest_lib.fsync_dir(tier_dir)
  if work.exists():
    log(f"discarding an unfinished emit with other settings in {work}")
  for name in (PARTIAL,) + OUTPUT_NAMES:
    _remove(tier_dir / name)
  work.mkdir(parents=True)
  if "zarr" in plan.formats:
    zarr_store.write_group(work / zarr_store.STORE_NAME,
                           root_attributes(plan))
  if "parquet" in plan.formats:
    (work / README).write_text(hub_readme(plan))
  manifest_lib.write_atomic(work / FINGERPRINT, fp.encode())
  return False


def _finalize(plan: Plan, work: Path, done: Mapping[str, dict]) -> dict:
  """The manifest's file entries of a finished `.partial` (concatenating
  each split's JSONL pieces into its file, in part order).

  Raises:
    EmitError: a part no process recorded (a process died).
  """
  missing = [_part_key(sp, k) for sp in plan.splits
             for k in range(sp.num_parts(plan.part_rows))
             if _part_key(sp, k) not in done]
  if missing:
    raise EmitError(f"{len(missing)} parts were not written (first: "
                    f"{missing[0]}); a process did not finish; rerun the "
                    "same command to resume")
  files = {}
  if "jsonl" in plan.formats:
    for sp in plan.splits:
      files[sp.jsonl] = _join_jsonl(plan, work, sp, done)
  if "parquet" in plan.formats:
    for sp in plan.splits:
      for k in range(sp.num_parts(plan.part_rows)):
        files.update(done[_part_key(sp, k)].get("files", {}))
    digest, size, _ = manifest_lib.sha256_file(work / README)
    files[README] = {"rows": 0, "sha256": digest, "bytes": size}
  if "zarr" in plan.formats:
    files.update(_zarr_files(plan, work / zarr_store.STORE_NAME))
  return files


def _join_jsonl(plan: Plan, work: Path, sp: SplitPlan,
                done: Mapping[str, dict]) -> dict:
  """Moves a split's JSONL pieces into `sp.jsonl` (a rename when it is one
  piece, else a copy in part order); returns its manifest entry."""
  recs = [done[_part_key(sp, k)]["jsonl"]
          for k in range(sp.num_parts(plan.part_rows))]
  rows = sum(int(r["rows"]) for r in recs)
  pieces = []   # (first part, bytes to take), in part order
  for r in recs:
    if pieces and pieces[-1][0] == int(r["piece"]):
      pieces[-1] = (pieces[-1][0], int(r["end"]))
    else:
      pieces.append((int(r["piece"]), int(r["end"])))
  path = work / sp.jsonl
  path.parent.mkdir(parents=True, exist_ok=True)
  if len(pieces) == 1:
    src = work / jsonl_piece(sp, pieces[0][0])
    if src.exists() or not path.exists():   # else moved by a crashed finish
      os.truncate(src, pieces[0][1])   # drops a torn write past the end
      os.replace(src, path)
    return {"rows": rows, "sha256": recs[-1]["sha256"],
            "bytes": pieces[0][1]}
  digest = hashlib.sha256()
  tmp = path.with_name(f".{path.name}.tmp")
  size = 0
  with open(tmp, "wb") as out:
    for first, take in pieces:
      with open(work / jsonl_piece(sp, first), "rb") as f:
        left = take
        while left:
          block = f.read(min(left, 1 << 22))
          if not block:
            raise EmitError(f"{f.name}: shorter than its recorded progress")
          digest.update(block)
          out.write(block)
          left -= len(block)
          size += len(block)
    out.flush()
    os.fsync(out.fileno())
  os.replace(tmp, path)
  return {"rows": rows, "sha256": digest.hexdigest(), "bytes": size}


class _Stop(Exception):
  """The writer thread stopped; its error (if any) is raised instead."""


class EmitInterrupted(RuntimeError):
  """The emit stopped before finishing; rerunning the same command
  resumes it."""


_BARRIER_TIMEOUT_MS = 7 * 24 * 3600 * 1000   # a dead peer fails it sooner


def _client():
  """The client of JAX's coordination service.

  Raises:
    EmitError: JAX's distributed runtime was not started.
  """
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  if distributed.global_state.client is None:
    raise EmitError("several processes need JAX's distributed runtime: "
                    "call jax.distributed.initialize first")
  return distributed.global_state.client


def global_barrier(name: str) -> None:
  """Waits until every process of JAX's distributed runtime reaches the
  barrier `name` (the coordination service's barrier: no collective; a
  process that died makes it fail once its heartbeats stop)."""
  _client().wait_at_barrier(f"tinyvm_jax/{name}", _BARRIER_TIMEOUT_MS)


def check_same_settings(fingerprint: str) -> None:
  """Every process of JAX's distributed runtime holds the same plan: each
  posts its fingerprint to the coordination service's key-value store and
  reads the others'."""
  client = _client()
  client.key_value_set(f"tinyvm_jax/plan/{jax.process_index()}", fingerprint)
  for i in range(jax.process_count()):
    other = client.blocking_key_value_get(f"tinyvm_jax/plan/{i}",
                                          _BARRIER_TIMEOUT_MS)
    if other != fingerprint:
      raise EmitError("the processes were started with different settings "
                      "(seed, sizes, formats, renders or layout); give "
                      "every process the same flags")


def run(plan: Plan, out_dir: str | os.PathLike, *,
        devices: Sequence[Any] | None = None,
        config: Mapping[str, Any] | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        log: Callable[[str], None] = lambda s: None,
        stop_after_parts: int | None = None,
        process_id: int | None = None, num_processes: int | None = None,
        barrier: Callable[[str], None] | None = None,
        max_classes: int = 8) -> Result:
  """Emits `plan` into `out_dir/<tier>/` (resuming an unfinished emit).

  Several processes (JAX's distributed runtime, one `run` each, same plan
  and `out_dir` on a shared file system) split the parts between them
  (`part_assignment`): process 0 lays out `.partial`, every process writes
  its parts (zarr shards, Parquet files, JSONL pieces), and after a
  barrier process 0 concatenates the JSONL pieces, hashes every file and
  writes the manifest. The bytes do not depend on the number of processes
  or devices.

  Args:
    plan: from `make_plan`.
    out_dir: the output root; the tier's files go to `out_dir/<tier>/`.
    devices: this process's devices to shard each batch over (default:
      every local device of JAX's default backend).
    config: the configuration recorded in the manifest.
    on_progress: called as (rows done, rows of this process) from a thread.
    log: receives one-line notes (resume, discarded state).
    stop_after_parts: testing aid: stop (as a crash would) after this many
      parts have been made durable by this run.
    process_id, num_processes: this process's place (default: JAX's
      `process_index()` and `process_count()`).
    barrier: `barrier(name)` waits for every process (default:
      `global_barrier` with several processes).
    max_classes: most row classes (`row_classes`; 0: every row at its
      split's sizes). Speed only.

  Returns:
    A `Result`; the dataset is complete when it returns.
  """
  t_start = time.perf_counter()
  pid = jax.process_index() if process_id is None else process_id
  nproc = jax.process_count() if num_processes is None else num_processes
  if not 0 <= pid < nproc:
    raise EmitError(f"process_id={pid} is not in [0, {nproc})")
  if barrier is None:
    barrier = global_barrier if nproc > 1 else (lambda name: None)
    if nproc > 1:
      check_same_settings(plan.fingerprint())
  devices = list(devices) if devices else jax.local_devices()
  tier_dir = Path(out_dir) / plan.tier.name
  work = tier_dir / PARTIAL
  fp = plan.fingerprint()
  resumed = False
  if pid == 0:
    tier_dir.mkdir(parents=True, exist_ok=True)
    resumed = _prepare(plan, tier_dir, log)
  barrier("prepared")
  try:
    ours = (work / FINGERPRINT).read_text() == fp
  except OSError:
    ours = False
  if not ours:
    raise EmitError(f"{work} is not laid out for these settings (do all "
                    "processes run the same command?)")
  done = done_parts(work, fp)
  generated = 0
  if not (work / FINALIZING).exists():
    if pid == 0 and done:
      rows_done = sum(int(v.get("rows", 0)) for v in done.values())
      log(f"resuming: {rows_done} of {plan.total_rows} rows already written")
      resumed = True
    mine = [(sp, k) for sp, k in part_assignment(plan, nproc)[pid]
            if _part_key(sp, k) not in done]
    classes = row_classes(plan, max_classes=max_classes) if mine else ()
    generated = _generate_all(plan, work, mine, classes, devices,
                              _Progress(work, pid, fp), done, on_progress,
                              stop_after_parts)
  barrier("generated")
  files, by_format = {}, {}
  if pid == 0:
    files = _finish(plan, tier_dir, devices[0].platform, config)
    for rel, entry in files.items():
      f = _format_of(rel)
      by_format[f] = by_format.get(f, 0) + int(entry.get("bytes", 0))
  barrier("finished")
  return Result(tier_dir=tier_dir, rows=plan.total_rows, generated=generated,
                seconds=time.perf_counter() - t_start, files=files,
                bytes_by_format=by_format, resumed=resumed)


def _finish(plan: Plan, tier_dir: Path, platform: str, config) -> dict:
  """Process 0, every part written: records the file entries, moves the
  files into place and writes the manifest (idempotent after a crash)."""
  work = tier_dir / PARTIAL
  fin = work / FINALIZING
  if fin.exists():
    files = json.loads(fin.read_bytes())
  else:
    files = _finalize(plan, work, done_parts(work, plan.fingerprint()))
    manifest_lib.write_atomic(fin, json.dumps(files).encode())
  _remove_strays(work, files)
  for name in OUTPUT_NAMES:
    src = work / name
    if src.exists():
      dst = tier_dir / name
      if dst.exists():
        _remove(dst)
      os.replace(src, dst)
  manifest_lib.fsync_dir(tier_dir)
  m = manifest_lib.build(
      tier=plan.tier.name, seed_base=plan.seed_base, files=files,
      formats=plan.formats, config=config or {}, device=platform)
  manifest_lib.write(tier_dir, m)
  shutil.rmtree(work)
  manifest_lib.fsync_dir(tier_dir)
  return files


def _put(q: queue.Queue, item, stop: threading.Event) -> None:
  """Blocking put that gives up (raising _Stop) once `stop` is set."""
  while not stop.is_set():
    try:
      q.put(item, timeout=0.05)
      return
    except queue.Full:
      continue
  raise _Stop()


def _get(q: queue.Queue, stop: threading.Event):
  while not stop.is_set():
    try:
      return q.get(timeout=0.05)
    except queue.Empty:
      continue
  raise _Stop()


def _batches(plan: Plan, sp: SplitPlan, part: int,
             classes: Sequence[tiers.Shapes], batch: int
             ) -> list[tuple[tiers.Shapes, np.ndarray]]:
  """A part's rows as (static sizes, [<= batch] ascending row indices)
  batches, grouped by row class."""
  lo, hi = sp.part_range(part, plan.part_rows)
  cls = np.full(hi - lo, -1)
  if classes:
    p, s = row_sizes(plan, sp, rows_axes(plan, sp, lo, hi))
    cls = assign_classes(classes, p, s)
  out = []
  for c in np.unique(cls):
    shapes = classes[c] if c >= 0 else sp.shapes
    rows = np.flatnonzero(cls == c) + lo
    out += [(shapes, rows[i:i + batch]) for i in range(0, len(rows), batch)]
  return out


def _generate_all(plan: Plan, work: Path, todo: Sequence[tuple[SplitPlan,
                                                               int]],
                  classes: Sequence[tiers.Shapes], devices: Sequence[Any],
                  progress: _Progress, done: Mapping[str, dict], on_progress,
                  stop_after_parts) -> int:
  """Generates the parts `todo` (`done`: the parts recorded before this
  run); returns the rows generated.

  Threads: the caller dispatches jitted batches (one row class each); a
  host thread copies each finished batch to the host and trims it; one
  thread a format serialises and writes it (numpy, Arrow, tensorstore and
  hashlib release the GIL, so the formats use the cores in parallel). A
  part is recorded in this process's progress file once every format has
  made it durable.
  """
  makers = {"zarr": _ZarrWriter, "jsonl": _JsonlWriter,
            "parquet": _ParquetWriter}
  writers = [makers[f](plan, work, done) for f in FORMATS
             if f in plan.formats]
  nd = len(devices)
  mesh = Mesh(np.asarray(devices), ("rows",)) if nd > 1 else None
  put = ((lambda x: jax.device_put(x, devices[0])) if nd == 1 else
         (lambda x: x))
  batch = -(-plan.batch_size // nd) * nd
  fns = {}

  def fn(shapes):
    if shapes not in fns:
      fns[shapes] = functools.partial(
          _rows_batch, plan.tier, shapes=shapes, renders=plan.renders,
          vmap_rows=plan.vmap_rows, mesh=mesh)
    return fns[shapes]

  stop = threading.Event()
  total = sum(np.diff(sp.part_range(k, plan.part_rows))[0] for sp, k in todo)
  state = {"error": None, "done": 0, "parts": 0}
  lock = threading.Lock()
  pending: dict = {}
  device_q: queue.Queue = queue.Queue(maxsize=2)
  host_qs = [queue.Queue(maxsize=2) for _ in writers]

  def fail(e: BaseException) -> None:
    with lock:
      if state["error"] is None:
        state["error"] = e
    stop.set()

  def part_done(sp: SplitPlan, part: int, updates: dict) -> None:
    """Called by each format's thread; the last one records the part."""
    with lock:
      got = pending.setdefault((sp.name, part), [])
      got.append(updates)
      if len(got) < len(writers):
        return
      del pending[(sp.name, part)]
      lo, hi = sp.part_range(part, plan.part_rows)
      record = {"rows": hi - lo}
      for u in got:   # the formats record under keys of their own
        record.update(u)
      progress.record(_part_key(sp, part), record)
      state["parts"] += 1
      if stop_after_parts is not None and state["parts"] >= stop_after_parts:
        raise EmitInterrupted(f"stopped after {state['parts']} parts "
                              "(testing aid)")

  def host_loop() -> None:
    try:
      while True:
        item = _get(device_q, stop)
        if item is not None:
          sp, part, shapes, rows_idx, rows_dev, last = item
          rows = trim(jax.device_get(rows_dev), _fit(shapes, sp),
                      len(rows_idx))
          del rows_dev
          item = (sp, part, rows_idx, rows, last)
        for q in host_qs:
          _put(q, item, stop)
        if item is None:
          return
        state["done"] += len(rows_idx)
        if on_progress is not None:
          on_progress(state["done"], total)
    except _Stop:
      pass
    except BaseException as e:
      fail(e)

  def format_loop(writer, q: queue.Queue) -> None:
    try:
      while True:
        item = _get(q, stop)
        if item is None:
          return
        sp, part, rows_idx, rows, last = item
        writer.write(sp, rows, rows_idx)
        if last:
          part_done(sp, part, writer.end_part(sp, part))
    except _Stop:
      pass
    except BaseException as e:
      fail(e)
    finally:
      writer.close()

  threads = [threading.Thread(target=host_loop, name="tinyvm-host",
                              daemon=True)]
  threads += [threading.Thread(target=format_loop, args=(w, q),
                               name=f"tinyvm-{type(w).__name__}", daemon=True)
              for w, q in zip(writers, host_qs)]
  for t in threads:
    t.start()

  generated = 0
  try:
    for sp, part in todo:
      key_data = put(keys_lib.split_key_data(plan.seed_base, sp.split, sp.bucket))
      fixed = put(np.asarray(sp.axes if sp.axes is not None else
                             (0,) * plan.tier.num_axes, np.int32))
      sample = put(np.asarray(sp.axes is None))
      batches = _batches(plan, sp, part, classes, batch)
      for i, (shapes, rows_idx) in enumerate(batches):
        idx = np.full(batch, rows_idx[-1], np.int32)
        idx[:len(rows_idx)] = rows_idx
        rows_dev = fn(shapes)(key_data, put(idx), put(np.int32(len(rows_idx))),
                              fixed, sample)
        _put(device_q, (sp, part, shapes, rows_idx, rows_dev,
                        i == len(batches) - 1), stop)
        generated += len(rows_idx)
    _put(device_q, None, stop)
    for t in threads:
      t.join()
  except _Stop:
    pass
  except BaseException as e:
    fail(e)
  finally:
    stop.set()
    for t in threads:
      t.join()
  if state["error"] is not None:
    raise state["error"]
  return generated
