"""The emit pipeline: rows generated in jitted batches on a device, written
by host threads to zarr, JSONL and Parquet, resumable after a crash.

Work is cut into *parts*: `part_rows` consecutive rows of one split (one zarr
shard, one Parquet file, one durable step of the JSONL file). The main thread
dispatches jitted batches of `batch_size` rows into a bounded queue (JAX
dispatch is asynchronous, so the device computes the next batches while the
host writes); a host thread copies each finished batch to the host and trims
it; one thread a format serialises and writes it. Memory is bounded by the
queues, one batch and one part, whatever the dataset size.

Crash safety. Everything is written under `<tier>/.partial/`, in the final
layout. When a part is written and fsynced, `.partial/progress.json` records
it (atomically). A rerun with the same settings (same fingerprint) keeps the
finished parts, truncates each JSONL file to its last recorded part, and
regenerates only what is missing: rows depend on (seed, split, bucket, index)
only, so the result is byte-identical to an uninterrupted run. When all parts
are done the hashes are recorded, the files are renamed into place and
`manifest.json` is written last (temporary name + `os.replace`): no manifest
means the emit did not finish.

Compilation. A row's content does not depend on the static sizes it is
computed at (programs, traces and renders are padding-independent), so splits
with similar sizes share one compiled function at their largest sizes, and
every batch is trimmed back to its split's own sizes before it is written.
`shape_classes` chooses the sharing with a small cost model (compile time
against the extra work of padding).
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
import numpy as np

from tinyvm_jax._src import keys as keys_lib
from tinyvm_jax._src import manifest as manifest_lib
from tinyvm_jax._src import render as render_lib
from tinyvm_jax._src import tiers
from tinyvm_jax._src import zarr_store
from tinyvm_jax._src.types import Program, Render, Rows, Tokens, Trace

FORMATS = ("zarr", "jsonl", "parquet")
PARTIAL = ".partial"
PROGRESS = "progress.json"
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


@functools.partial(jax.jit,
                   static_argnames=("tier", "shapes", "renders", "vmap_rows"))
def _rows_batch(tier, split_key_data, indices, fixed_axes, sample_axes, *,
                shapes, renders, vmap_rows):
  """[B] rows of one split at static `shapes` (a row is padding-free: the
  same as `tiers.generate`'s at the split's own sizes). Rows are computed
  `vmap_rows` at a time in a loop (`lax.map`): on a CPU, small vectorised
  blocks stay in cache and run about twice as fast as one [B] block."""
  split_key = jax.random.wrap_key_data(split_key_data, impl=keys_lib.IMPL)

  def one(index):
    key = jax.random.fold_in(split_key, index)
    drawn = tier.sample_axes(keys_lib.axes_key(key))
    axes = jnp.where(sample_axes, drawn, fixed_axes)
    return tiers.make_row(tier, key, axes=axes, shapes=shapes,
                          renders=renders)
  return jax.lax.map(one, indices, batch_size=min(vmap_rows,
                                                   indices.shape[0]))


def generate_rows(plan: Plan, sp: SplitPlan, start: int, count: int,
                  *, device=None) -> Rows:
  """Host rows `start:start + count` of split `sp`, at its own sizes (the
  rows an emit of `plan` writes there)."""
  put = (lambda x: jax.device_put(x, device)) if device is not None else (
      jnp.asarray)
  rows = _rows_batch(
      plan.tier, put(split_key_data(plan.seed_base, sp.split, sp.bucket)),
      put(np.arange(start, start + count, dtype=np.int32)),
      put(np.asarray(sp.axes if sp.axes is not None else
                     (0,) * plan.tier.num_axes, np.int32)),
      put(np.asarray(sp.axes is None)), shapes=sp.shapes,
      renders=plan.renders, vmap_rows=plan.vmap_rows)
  return trim(jax.device_get(rows), sp.shapes, count)


def split_key_data(seed_base: int, split: str, bucket: str | None
                   ) -> np.ndarray:
  """[2] uint32 key data of a split's key (as `tiers.generate` derives it)."""
  key = keys_lib.base_key(seed_base)
  key = jax.random.fold_in(key, keys_lib.split_id(split))
  key = jax.random.fold_in(key, keys_lib.bucket_id(bucket))
  return np.asarray(jax.random.key_data(key))


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
def probe_steps(plan: Plan, rows: Rows) -> np.ndarray | None:
  """[B] the step a probe_query render asks about: meta.seed % steps (as
  `tiers.render_row` chooses it); None without that render."""
  if "probe_query" not in plan.renders:
    return None
  kd = np.asarray(rows.key_data).astype(np.uint64)
  seed = (kd[:, 0] << np.uint64(32)) | kd[:, 1]
  steps = np.maximum(np.asarray(rows.trace.num_steps), 1).astype(np.uint64)
  return (seed % steps).astype(np.int32)


def _fsync_file(path: Path) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


class _JsonlWriter:
  """Appends a split's rows to `.partial/<split>.jsonl`, hashing as it goes.

  Progress records the bytes and rows of the finished parts; a resume cuts
  the file back to them (dropping a torn write) and rehashes that prefix.
  """

  def __init__(self, plan: Plan, work: Path):
    from tinyvm_jax._src import jsonl
    self._jsonl = jsonl
    self.plan, self.work = plan, work
    self.file = None

  def begin(self, sp: SplitPlan, state: dict) -> None:
    path = self.work / sp.jsonl
    path.parent.mkdir(parents=True, exist_ok=True)
    done = int(state.get("jsonl_bytes", 0))
    self.hash = hashlib.sha256()
    self.rows = int(state.get("jsonl_rows", 0))
    self.file = open(path, "r+b" if done and path.exists() else "wb")
    if done:
      self.file.truncate(done)
      self.file.seek(0)
      left = done
      while left:
        block = self.file.read(min(left, 1 << 20))
        if not block:
          raise EmitError(f"{path}: shorter than its recorded progress")
        self.hash.update(block)
        left -= len(block)
    self.file.seek(done)
    self.bytes = done

  def write(self, sp: SplitPlan, rows: Rows, start: int) -> None:
    data = self._jsonl.rows_to_jsonl(
        rows, tier=self.plan.tier.name, split=sp.split, bucket=sp.bucket,
        axis_names=self.plan.tier.axis_names, render_names=self.plan.renders,
        probe_step=probe_steps(self.plan, rows))
    self.file.write(data)
    self.hash.update(data)
    self.bytes += len(data)
    self.rows += rows.key_data.shape[0]

  def end_part(self, sp: SplitPlan, part: int) -> dict:
    self.file.flush()
    os.fsync(self.file.fileno())
    return {"jsonl_bytes": self.bytes, "jsonl_rows": self.rows}

  def end_split(self, sp: SplitPlan) -> dict:
    self.file.close()
    self.file = None
    return {"files": {sp.jsonl: {"rows": self.rows,
                                 "sha256": self.hash.hexdigest(),
                                 "bytes": self.bytes}}}

  def close(self) -> None:
    if self.file is not None:
      self.file.close()
      self.file = None


class _ParquetWriter:
  """One Parquet file a part: `.partial/data/<split>-<part>-of-<n>.parquet`
  (written under a temporary name, then renamed)."""

  def __init__(self, plan: Plan, work: Path):
    from tinyvm_jax._src import parquet
    self._parquet = parquet
    self.plan, self.work = plan, work
    self.tables = []

  def begin(self, sp: SplitPlan, state: dict) -> None:
    (self.work / DATA_DIR).mkdir(parents=True, exist_ok=True)
    self.tables = []

  def write(self, sp: SplitPlan, rows: Rows, start: int) -> None:
    self.tables.append(self._parquet.rows_to_table(
        rows, tier=self.plan.tier.name, split=sp.split, bucket=sp.bucket,
        axis_names=self.plan.tier.axis_names, render_names=self.plan.renders,
        probe_step=probe_steps(self.plan, rows)))

  def end_part(self, sp: SplitPlan, part: int) -> dict:
    import pyarrow as pa
    rel = sp.parquet(part, self.plan.part_rows)
    path = self.work / rel
    tmp = path.with_name(path.name + ".tmp")
    table = pa.concat_tables(self.tables)
    self.tables = []
    self._parquet.write_parquet(table, tmp)
    _fsync_file(tmp)
    os.replace(tmp, path)
    manifest_lib.fsync_dir(path.parent)
    digest, size, _ = manifest_lib.sha256_file(path)
    return {"files": {rel: {"rows": table.num_rows, "sha256": digest,
                            "bytes": size}}}

  def end_split(self, sp: SplitPlan) -> dict:
    return {}

  def close(self) -> None:
    self.tables = []


class _ZarrWriter:
  """A group a split in `.partial/rows.zarr`, one shard a part."""

  def __init__(self, plan: Plan, work: Path):
    self.plan = plan
    self.root = work / zarr_store.STORE_NAME
    self.group = None

  def begin(self, sp: SplitPlan, state: dict) -> None:
    self.group = None

  def write(self, sp: SplitPlan, rows: Rows, start: int) -> None:
    arrays = zarr_store.rows_to_arrays(rows)
    if self.group is None:
      attrs = {"split": sp.split, "bucket": sp.bucket, "rows": sp.num_rows,
               "axis_names": list(self.plan.tier.axis_names),
               "renders": list(self.plan.renders),
               "shapes": dataclasses.asdict(sp.shapes)}
      self.group = zarr_store.GroupWriter(
          self.root, sp.name, sp.num_rows, arrays,
          part_rows=self.plan.part_rows, chunk_rows=self.plan.chunk_rows,
          codec=self.plan.codec, attributes=attrs)
    self.group.write(start, arrays)

  def end_part(self, sp: SplitPlan, part: int) -> dict:
    self.group.commit_part()
    return {}

  def end_split(self, sp: SplitPlan) -> dict:
    self.group = None
    return {}

  def close(self) -> None:
    if self.group is not None:
      self.group.abort()
      self.group = None


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
class _Progress:
  """`.partial/progress.json`: the fingerprint and, per split, the parts
  done and what the writers need to resume."""

  def __init__(self, path: Path, fingerprint: str, data: dict | None = None):
    self.path = path
    self.data = data or {"fingerprint": fingerprint, "splits": {}}

  @classmethod
  def load(cls, path: Path, fingerprint: str) -> "_Progress | None":
    try:
      data = json.loads(path.read_bytes())
    except (OSError, ValueError):
      return None
    if not isinstance(data, dict) or data.get("fingerprint") != fingerprint:
      return None
    return cls(path, fingerprint, data)

  def split(self, name: str) -> dict:
    return self.data["splits"].setdefault(name, {"parts": 0, "files": {}})

  def save(self) -> None:
    manifest_lib.write_atomic(self.path, json.dumps(self.data).encode())


# ----------------------------------------------------------------- the run
@dataclasses.dataclass
class Result:
  """What an emit did."""
  tier_dir: Path
  rows: int                 # rows in the dataset
  generated: int            # rows generated by this run (fewer on resume)
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
  """Deletes what a crash may have left in `.partial` that no manifest
  entry names (a temporary Parquet file, a part written past the last
  recorded one), so the finished layout is exactly the uninterrupted one."""
  for path in sorted(work.rglob("*")):
    if path.is_file() and path.name != PROGRESS:
      rel = path.relative_to(work).as_posix()
      if rel not in files:
        path.unlink()


def _prepare(plan: Plan, tier_dir: Path, log) -> tuple[_Progress, bool]:
  """Opens the progress of a matching unfinished emit, or starts afresh
  (removing the old manifest first, then every old output)."""
  work = tier_dir / PARTIAL
  progress = _Progress.load(work / PROGRESS, plan.fingerprint())
  if progress is not None:
    return progress, True
  manifest_path = tier_dir / manifest_lib.MANIFEST
  if manifest_path.exists():
    manifest_path.unlink()
    manifest_lib.fsync_dir(tier_dir)
  if work.exists():
    log(f"discarding an unfinished emit with other settings in {work}")
  for name in (PARTIAL,) + OUTPUT_NAMES:
    _remove(tier_dir / name)
  work.mkdir(parents=True)
  progress = _Progress(work / PROGRESS, plan.fingerprint())
  progress.save()
  return progress, False


class _Stop(Exception):
  """The writer thread stopped; its error (if any) is raised instead."""


class EmitInterrupted(RuntimeError):
  """The emit stopped before finishing; rerunning the same command
  resumes it."""


def run(plan: Plan, out_dir: str | os.PathLike, *, device=None,
        config: Mapping[str, Any] | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        log: Callable[[str], None] = lambda s: None,
        stop_after_parts: int | None = None) -> Result:
  """Emits `plan` into `out_dir/<tier>/` (resuming an unfinished emit).

  Args:
    plan: from `make_plan`.
    out_dir: the output root; the tier's files go to `out_dir/<tier>/`.
    device: the `jax.Device` to generate on (default: JAX's default).
    config: the configuration recorded in the manifest.
    on_progress: called as (rows done, total rows) from the writer thread.
    log: receives one-line notes (resume, discarded state).
    stop_after_parts: testing aid: stop (as a crash would) after this many
      parts have been made durable by this run.

  Returns:
    A `Result`; the dataset is complete when it returns.
  """
  t_start = time.perf_counter()
  tier_dir = Path(out_dir) / plan.tier.name
  tier_dir.mkdir(parents=True, exist_ok=True)
  work = tier_dir / PARTIAL
  progress, resumed = _prepare(plan, tier_dir, log)
  done_rows = 0
  for sp in plan.splits:
    st = progress.split(sp.name)
    done_rows += min(sp.num_rows, st["parts"] * plan.part_rows)
  if resumed:
    log(f"resuming: {done_rows} of {plan.total_rows} rows already written")
  generated = 0
  if "finalizing" not in progress.data:
    if "zarr" in plan.formats:
      zarr_store.write_group(work / zarr_store.STORE_NAME,
                             root_attributes(plan))
    if "parquet" in plan.formats:
      (work / README).write_text(hub_readme(plan))
    generated = _generate_all(plan, work, progress, device, done_rows,
                              on_progress, stop_after_parts)
    files = {}
    for fmt in ("jsonl", "parquet"):
      for sp in plan.splits:
        for rel, entry in progress.split(sp.name)["files"].items():
          if _format_of(rel) == fmt:
            files[rel] = entry
    if "parquet" in plan.formats:
      digest, size, _ = manifest_lib.sha256_file(work / README)
      files[README] = {"rows": 0, "sha256": digest, "bytes": size}
    if "zarr" in plan.formats:
      files.update(_zarr_files(plan, work / zarr_store.STORE_NAME))
    _remove_strays(work, files)
    progress.data["finalizing"] = files
    progress.save()
  files = progress.data["finalizing"]
  # Rename every output into place (idempotent after a crash here).
  for name in OUTPUT_NAMES:
    src = work / name
    if src.exists():
      dst = tier_dir / name
      if dst.exists():
        _remove(dst)
      os.replace(src, dst)
  manifest_lib.fsync_dir(tier_dir)
  platform = (device.platform if device is not None
              else jax.devices()[0].platform)
  m = manifest_lib.build(
      tier=plan.tier.name, seed_base=plan.seed_base, files=files,
      formats=plan.formats, config=config or {}, device=platform)
  manifest_lib.write(tier_dir, m)
  shutil.rmtree(work)
  manifest_lib.fsync_dir(tier_dir)
  by_format = {}
  for rel, entry in files.items():
    f = _format_of(rel)
    by_format[f] = by_format.get(f, 0) + int(entry.get("bytes", 0))
  return Result(tier_dir=tier_dir, rows=plan.total_rows, generated=generated,
                seconds=time.perf_counter() - t_start, files=files,
                bytes_by_format=by_format, resumed=resumed)


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


def _generate_all(plan: Plan, work: Path, progress: _Progress, device,
                  done_rows: int, on_progress, stop_after_parts) -> int:
  """Generates every missing part; returns the rows generated.

  Threads: the caller dispatches jitted batches; a host thread copies each
  finished batch to the host and trims it; one thread a format serialises
  and writes it (numpy, Arrow, tensorstore and hashlib release the GIL, so
  the formats use the cores in parallel). A part is recorded in the
  progress file once every format has made it durable.
  """
  makers = {"zarr": _ZarrWriter, "jsonl": _JsonlWriter,
            "parquet": _ParquetWriter}
  writers = [makers[f](plan, work) for f in FORMATS if f in plan.formats]
  classes = shape_classes(plan.splits)
  put = (lambda x: jax.device_put(x, device)) if device is not None else (
      jnp.asarray)
  fns = {shapes: functools.partial(_rows_batch, plan.tier, shapes=shapes,
                                   renders=plan.renders,
                                   vmap_rows=plan.vmap_rows)
         for shapes in set(classes.values())}

  stop = threading.Event()
  state = {"error": None, "done": done_rows, "parts": 0}
  lock = threading.Lock()
  pending: dict = {}
  device_q: queue.Queue = queue.Queue(maxsize=2)
  host_qs = [queue.Queue(maxsize=2) for _ in writers]
  total = plan.total_rows

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
      st = progress.split(sp.name)
      for u in got:
        for k, v in u.items():
          if k == "files":
            st["files"].update(v)
          else:
            st[k] = v
      st["parts"] = part + 1
      progress.save()
      state["parts"] += 1
      if stop_after_parts is not None and state["parts"] >= stop_after_parts:
        raise EmitInterrupted(f"stopped after {state['parts']} parts "
                              "(testing aid)")

  def host_loop() -> None:
    try:
      while True:
        item = _get(device_q, stop)
        if item is not None:
          sp, part, start, count, rows_dev, last = item
          rows = trim(jax.device_get(rows_dev), sp.shapes, count)
          del rows_dev
          item = (sp, part, start, rows, last)
        for q in host_qs:
          _put(q, item, stop)
        if item is None:
          return
        state["done"] += count
        if on_progress is not None:
          on_progress(state["done"], total)
    except _Stop:
      pass
    except BaseException as e:
      fail(e)

  def format_loop(writer, q: queue.Queue) -> None:
    current = None
    try:
      while True:
        item = _get(q, stop)
        if item is None:
          return
        sp, part, start, rows, last = item
        if current is not sp:
          writer.begin(sp, progress.split(sp.name))
          current = sp
        writer.write(sp, rows, start)
        if last:
          updates = writer.end_part(sp, part)
          if part + 1 == sp.num_parts(plan.part_rows):
            updates.update(writer.end_split(sp))
            current = None
          part_done(sp, part, updates)
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
    for sp in plan.splits:
      st = progress.split(sp.name)
      n_parts = sp.num_parts(plan.part_rows)
      if st["parts"] >= n_parts:
        continue
      fn = fns[classes[sp.name]]
      key_data = put(split_key_data(plan.seed_base, sp.split, sp.bucket))
      fixed = put(np.asarray(sp.axes if sp.axes is not None else
                             (0,) * plan.tier.num_axes, np.int32))
      sample = put(np.asarray(sp.axes is None))
      b = plan.batch_size
      for part in range(st["parts"], n_parts):
        lo, hi = sp.part_range(part, plan.part_rows)
        for start in range(lo, hi, b):
          count = min(b, hi - start)
          idx = put(np.arange(start, start + b, dtype=np.int32))
          rows_dev = fn(key_data, idx, fixed, sample)
          _put(device_q, (sp, part, start, count, rows_dev,
                          start + b >= hi), stop)
          generated += count
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
