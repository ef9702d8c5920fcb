r"""Verifies emitted datasets: `python -m tinyvm_jax.verify`.

  python -m tinyvm_jax.verify --dataset DIR
      Streams every file listed in DIR/manifest.json (DIR a tier directory,
      or a folder of them): sha256 and row count against the manifest, and
      reports missing and extra files.
  python -m tinyvm_jax.verify --replay [--rebuild] PATH...
      PATH: a JSONL file (plain or .gz), a Parquet file, a dataset directory
      or a zarr store. For every row: rebuild the program from the row, run
      it, render it and compare the trace and every stored render (ids and
      text) with what the row stores; --rebuild also rebuilds each program
      from meta.seed and meta.axes and requires it to equal the stored one.

Prints each problem as `file:line: field: detail` and one summary line.
Exit status: 0 when everything matches, 1 on mismatches (or bad hashes,
missing or extra files), 2 on unreadable input (named, with its line).
"""

import concurrent.futures
import dataclasses
import functools
import itertools
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Iterator, Sequence

from absl import app
from absl import flags
import jax
import numpy as np

from tinyvm_jax._src import interpreter
from tinyvm_jax._src import keys as keys_lib
from tinyvm_jax._src.io import loaders
from tinyvm_jax._src.io import manifest as manifest_lib
from tinyvm_jax._src.emit import pipeline
from tinyvm_jax._src import program as program_lib
from tinyvm_jax._src.check import replay
from tinyvm_jax._src import tiers
from tinyvm_jax._src import userop
from tinyvm_jax._src.io import zarr_store
from tinyvm_jax._src.types import Rows

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", None, "Dataset directory to check against its "
                    "manifest (a tier directory or a folder of them).")
flags.DEFINE_bool("replay", False, "Replay every row of the PATHs (or of "
                  "--dataset): run, render and compare.")
flags.DEFINE_bool("rebuild", False, "With --replay (implied): also rebuild "
                  "each program from meta.seed and meta.axes.")
flags.DEFINE_list("formats", [], "Formats of a dataset directory to replay "
                  "(jsonl, zarr, parquet); default all it holds.")
flags.DEFINE_integer("batch_size", 512, "Rows replayed a jitted call.",
                     lower_bound=1)
flags.DEFINE_string(
    "compile_cache", None, "Directory of JAX's persistent compilation cache "
    "(default ~/.cache/tinyvm_jax/jax; '' to disable).")

_FORMATS = ("jsonl", "zarr", "parquet")


def _fail(msg: str, code: int = 2):
  print(f"verify: error: {msg}", file=sys.stderr)
  sys.exit(code)


def _parse_flags(argv):
  try:
    return FLAGS(argv)
  except flags.Error as e:
    _fail(str(e).splitlines()[0])


@dataclasses.dataclass
class Report:
  """Counts and exit status of a verify run."""
  problems: int = 0
  unreadable: int = 0
  rows: int = 0
  files: int = 0

  def problem(self, line: str) -> None:
    self.problems += 1
    print(line)

  def bad_input(self, line: str) -> None:
    self.unreadable += 1
    print(line)

  @property
  def status(self) -> int:
    return 2 if self.unreadable else (1 if self.problems else 0)


# ------------------------------------------------------------- --dataset
def _tier_dirs(path: Path, report: Report) -> list[Path]:
  if not path.is_dir():
    report.bad_input(f"{path}: not a directory")
    return []
  if (path / manifest_lib.MANIFEST).exists():
    return [path]
  subs = sorted(p for p in path.iterdir()
                if (p / manifest_lib.MANIFEST).is_file())
  if subs:
    return subs
  if (path / pipeline.PARTIAL).exists():
    report.bad_input(f"{path}: unfinished emit (no {manifest_lib.MANIFEST}); "
                     "rerun the emit to finish it")
  else:
    report.bad_input(f"{path}: no {manifest_lib.MANIFEST} (not a dataset)")
  return []


def _check_file(root: Path, rel: str, entry: dict) -> list[str]:
  """Problems of one listed file (streamed: bounded memory)."""
  path = root / rel
  if not path.is_file():
    return [f"{path}: missing"]
  digest, size, lines = manifest_lib.sha256_file(
      path, count_lines=rel.endswith(".jsonl"))
  out = []
  if digest != entry["sha256"]:
    out.append(f"{path}: sha256 {digest} differs from the manifest's "
               f"{entry['sha256']}")
  rows = None
  if rel.endswith(".jsonl"):
    rows = lines
  elif rel.endswith(".parquet"):
    try:
      import pyarrow.parquet as pq
      rows = pq.read_metadata(path).num_rows
    except ImportError:
      rows = None
    except Exception as e:  # pyarrow raises several types
      out.append(f"{path}: unreadable Parquet footer ({e})")
  elif rel.endswith("zarr.json"):
    try:
      meta = json.loads(path.read_bytes())
      if meta.get("node_type") == "array":
        rows = int(meta["shape"][0])
    except (ValueError, KeyError, TypeError, IndexError) as e:
      out.append(f"{path}: unreadable zarr metadata ({e})")
  if rows is not None and rows != entry["rows"]:
    out.append(f"{path}: {rows} rows, the manifest says {entry['rows']}")
  return out


def verify_dataset(path: Path, report: Report) -> None:
  """Checks every tier directory under `path` against its manifest."""
  for tier_dir in _tier_dirs(path, report):
    t0 = time.perf_counter()
    try:
      m = manifest_lib.read(tier_dir)
    except manifest_lib.ManifestError as e:
      report.bad_input(str(e))
      continue
    files = m["files"]
    before = report.problems
    workers = min(4, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      results = pool.map(lambda kv: _check_file(tier_dir, *kv),
                         files.items())
      for lines in results:
        for line in lines:
          report.problem(line)
    listed = set(files) | {manifest_lib.MANIFEST}
    for p in sorted(tier_dir.rglob("*")):
      if p.is_file() or p.is_symlink():
        rel = p.relative_to(tier_dir).as_posix()
        if rel not in listed:
          report.problem(f"{p}: extra file (not in the manifest)")
    report.files += len(files)
    rows = sum(e["rows"] for k, e in files.items()
               if k.endswith(".jsonl")) or sum(
                   e["rows"] for k, e in files.items()
                   if k.endswith(".parquet"))
    size = sum(int(e.get("bytes", 0)) for e in files.values())
    bad = report.problems - before
    print(f"{tier_dir}: {len(files)} files, {rows:,} rows, "
          f"{size / 1e6:,.1f} MB checked in {time.perf_counter() - t0:.1f} s: "
          + ("ok" if not bad else f"{bad} problems"))


# ------------------------------------------------------------- --replay
_REBUILT = "\0rebuilt"


class _Rebuilder:
  """Rebuilds programs from meta.seed and meta.axes, a chunk of rows at a
  time in one jitted call (the per-row callable of `replay.check_rows`
  then only looks the result up)."""

  def __init__(self, chunk: int):
    self.chunk = chunk

  def feed(self, rows):
    it = iter(rows)
    while chunk := list(itertools.islice(it, self.chunk)):
      self._prepare(chunk)
      yield from chunk

  def __call__(self, row: dict) -> list:
    value = row.pop(_REBUILT, None)
    if value is None:
      raise ValueError("no meta to rebuild from")
    if isinstance(value, str):
      raise ValueError(value)
    return value

  def _prepare(self, chunk) -> None:
    groups: dict[str, list] = {}
    for _, row in chunk:
      try:
        meta = row["meta"]
        tier = tiers.get_tier(meta["tier"])
        seed = int(meta["seed"])
        if not 0 <= seed < 2 ** 64:
          raise ValueError(f"meta.seed {seed} is not a 64-bit seed")
        axes = tiers.row_axes(tier, seed, meta["axes"])
        if meta.get("split") == "eval":
          fixed = np.asarray(tier.bucket(meta.get("bucket")).axes)
          if not np.array_equal(fixed, axes):
            raise ValueError(f"meta.axes {meta['axes']} are not bucket "
                             f"{meta.get('bucket')!r}'s {fixed.tolist()}")
        elif meta.get("split") != "train":
          raise ValueError(f"meta.split {meta.get('split')!r} is neither "
                           "train nor eval")
        if tier.shapes_fn(axes).max_len > tier.max_shapes.max_len:
          raise ValueError(f"meta.axes {meta['axes']} are outside tier "
                           f"{tier.name!r}'s range")
      except (KeyError, TypeError, ValueError) as e:
        if isinstance(row, dict):
          row[_REBUILT] = f"bad meta: {e}"
        continue
      groups.setdefault(tier.name, []).append((row, seed, axes, meta))
    for name, items in groups.items():
      self._rebuild(tiers.get_tier(name), items)

  def _rebuild(self, tier, items) -> None:
    # One compilation a tier: programs do not depend on their padding.
    p = tier.max_shapes.max_len
    b = max(self.chunk, len(items))
    seeds = [s for _, s, _, _ in items]
    key_data = np.array([[s >> 32, s & 0xFFFFFFFF] for s in seeds], np.uint32)
    axes = np.stack([a for _, _, a, _ in items]).astype(np.int32)
    pad = lambda x: np.concatenate([x, np.repeat(x[-1:], b - len(x), 0)])
    drawn, progs = jax.device_get(_rebuild_batch(
        tier, pad(key_data), pad(axes), max_len=p))
    for i, (row, _, ax, meta) in enumerate(items):
      if meta.get("split") == "train" and not np.array_equal(drawn[i], ax):
        row[_REBUILT] = (f"meta.axes {meta['axes']} differ from the axes "
                         f"drawn from meta.seed "
                         f"{dict(zip(tier.axis_names, drawn[i].tolist()))}")
        continue
      prog = type(progs)(**{f: getattr(progs, f)[i]
                            for f in progs.__dataclass_fields__})
      row[_REBUILT] = program_lib.to_json(prog)


@functools.partial(jax.jit, static_argnames=("tier", "max_len"))
def _rebuild_batch(tier, key_data, axes, *, max_len):
  """[B] train axes drawn from each seed, and [B] programs rebuilt from each
  seed and the given axes."""
  def one(kd, ax):
    key = jax.random.wrap_key_data(kd, impl=keys_lib.IMPL)
    drawn = tier.sample_axes(keys_lib.axes_key(key))
    return drawn, tier.program(keys_lib.program_key(key), ax,
                               max_len=max_len)
  return jax.vmap(one)(key_data, axes)


def _replay_rows(name: str, rows: Iterator, report: Report, *,
                 rebuild: bool, batch_size: int) -> None:
  """Replays dict rows (JSONL or Parquet) through `replay.check_rows`."""
  counted = [0]

  def count(it):
    for item in it:
      counted[0] += 1
      yield item
  source = count(rows)
  try:
    # A file holds one kind of row: Tier 4 userop rows have their own layout.
    first = next(source, None)
    source = itertools.chain([first] if first is not None else [], source)
    meta = first[1].get("meta") if first and isinstance(first[1], dict) else None
    if isinstance(meta, dict) and meta.get("tier") == userop.TIER:
      mismatches = userop.check_userop_rows(source, rebuild=rebuild,
                                            batch_size=batch_size)
    else:
      rebuilder = _Rebuilder(batch_size) if rebuild else None
      if rebuilder is not None:
        source = rebuilder.feed(source)
      mismatches = replay.check_rows(source, rebuild=rebuilder,
                                     batch_size=batch_size)
    for m in mismatches:
      report.problem(f"{name}:{m.line}: {m.field}: {m.detail}")
  except loaders.RowError as e:
    report.bad_input(str(e))
  except OSError as e:
    report.bad_input(f"{name}: {e.strerror or e}")
  report.rows += counted[0]
  report.files += 1


def _replay_zarr(path: Path, report: Report, *, rebuild: bool,
                 batch_size: int) -> None:
  """Replays every group of a zarr store on arrays (see `zarr_replay`)."""
  try:
    store = zarr_store.Store(path)
    if store.attrs.get("tier") == userop.TIER4.name:
      found = userop.check_userop_zarr(store, rebuild=rebuild,
                                       batch_size=batch_size)
    else:
      found = ((m.group, m) for m in zarr_replay(
          store, rebuild=rebuild, batch_size=max(batch_size, 1024)))
    for group, m in found:
      report.problem(f"{path}/{group}:{m.line}: {m.field}: {m.detail}")
    report.rows += sum(store.groups.values())
  except (zarr_store.StoreError, ValueError, KeyError, OSError) as e:
    report.bad_input(f"{path}: unreadable zarr store ({e})")
  report.files += 1


@dataclasses.dataclass(frozen=True)
class ZarrMismatch:
  """A disagreement in a zarr store: row `line` (1-based) of `group`."""
  group: str
  line: int
  field: str
  detail: str


def zarr_replay(store, *, rebuild: bool, batch_size: int
                ) -> Iterator[ZarrMismatch]:
  """Yields the mismatches of every group of a zarr store.

  Runs every stored program, renders it and compares trace and token arrays
  with the stored ones; with `rebuild`, also regenerates each program (and a
  train row's axes) from its seed and checks that the seed is the one of its
  row index. Vectorised: one jitted call a batch; groups of similar sizes
  share a compilation (as in the emit).
  """
  attrs = store.attrs
  tier = tiers.get_tier(attrs["tier"])
  plans = []
  for group, n in store.groups.items():
    g = store.group_attributes(group)
    axes = None if g["bucket"] is None else tuple(
        tier.bucket(g["bucket"]).axes)
    plans.append((pipeline.SplitPlan(g["split"], g["bucket"], int(n),
                                     tiers.Shapes(**g["shapes"]), axes),
                  tuple(g["renders"])))
  classes = pipeline.shape_classes([sp for sp, _ in plans])
  for sp, renders in plans:
    yield from _zarr_group(store, tier, sp, renders, classes[sp.name],
                           int(attrs["seed_base"]), rebuild, batch_size)


def _zarr_group(store, tier, sp, renders, top, seed_base, rebuild,
                batch_size):
  """Yields the mismatches of one group (see `zarr_replay`)."""
  split_kd = keys_lib.split_key_data(seed_base, sp.split, sp.bucket)
  p = sp.shapes.max_len
  for start in range(0, sp.num_rows, batch_size):
    stored = store.read(sp.name, start, min(sp.num_rows, start + batch_size))
    rows = zarr_store.arrays_to_rows(stored)
    b = rows.key_data.shape[0]
    rb = -(-b // 256) * 256
    fill = {"op": 14, "target": -1, "target_label": -1, "label": -1}
    prog = type(rows.program)(**{
        f: (_pad_rows(getattr(rows.program, f), rb) if f == "length" else
            _pad_rows(_pad_cols(getattr(rows.program, f), top.max_len,
                                fill.get(f, 0)), rb))
        for f in rows.program.__dataclass_fields__})
    got = jax.device_get(_check_zarr_batch(
        tier, prog, _pad_rows(rows.key_data, rb), _pad_rows(rows.axes, rb),
        np.arange(start, start + rb, dtype=np.int32), split_kd,
        shapes=top, renders=renders))
    got_rows = pipeline.trim(_as_rows(got, rows), sp.shapes, b,
                             check=False)
    trace, rend = got_rows.trace, got_rows.renders
    fields = {f"trace.{f}": (getattr(trace, f), getattr(rows.trace, f))
              for f in rows.trace.__dataclass_fields__}
    for name in renders:
      for part in ("input", "target"):
        g, t = getattr(rend[name], part), getattr(rows.renders[name], part)
        fields[f"renders.{name}.{part}_ids"] = (g.ids, t.ids)
        fields[f"renders.{name}.{part}_length"] = (g.length, t.length)
    if rebuild:
      extra = got[2]
      for f in rows.program.__dataclass_fields__:
        x = getattr(extra["program"], f)[:b]
        fields[f"program.{f}"] = (x if f == "length" else x[:, :p],
                                  getattr(rows.program, f))
      fields["meta.seed"] = (extra["key_data"][:b], rows.key_data)
      want = (extra["axes"][:b] if sp.axes is None else
              np.broadcast_to(np.asarray(sp.axes, np.int32), rows.axes.shape))
      fields["meta.axes"] = (want, rows.axes)
    bad = set()
    for field, (g, t) in fields.items():
      g, t = np.asarray(g), np.asarray(t)
      diff = (np.ones(b, bool) if g.shape != t.shape else
              (g != t).reshape(b, -1).any(axis=1))
      bad.update((int(i), field) for i in np.flatnonzero(diff))
    for i, field in sorted(bad):
      yield ZarrMismatch(sp.name, start + i + 1, field,
                         "differs from the replayed value")


def _pad_rows(x, rows):
  return np.concatenate([x, np.repeat(x[-1:], rows - x.shape[0], 0)])


def _pad_cols(x, cols, fill):
  widths = [(0, 0), (0, cols - x.shape[1])] + [(0, 0)] * (x.ndim - 2)
  return np.pad(x, widths, constant_values=fill)


def _as_rows(got, stored):
  """The replayed (trace, renders) as a `Rows` for `pipeline.trim`."""
  trace, renders, _ = got
  return Rows(key_data=stored.key_data, axes=stored.axes,
              program=stored.program, trace=trace, renders=renders)


# The rebuilt program is always computed (it is cheap beside the run and the
# render), so replay and rebuild share one compilation.
@functools.partial(jax.jit, static_argnames=("tier", "shapes", "renders"))
def _check_zarr_batch(tier, program, key_data, axes, indices, split_kd, *,
                      shapes, renders):
  """Replays [B] stored rows: (trace, renders, {axes, program, key_data}
  rebuilt from the seeds and row indices)."""
  split_key = jax.random.wrap_key_data(split_kd, impl=keys_lib.IMPL)

  def one(prog, kd, ax, index):
    trace = interpreter.run(prog, max_steps=shapes.max_steps)
    out = {}
    for name in renders:
      t_in, t_out = shapes.token_lengths(name)
      out[name] = tiers.render_row(name, prog, trace, kd,
                                   max_input_len=t_in, max_target_len=t_out)
    key = jax.random.wrap_key_data(kd, impl=keys_lib.IMPL)
    extra = {"axes": tier.sample_axes(keys_lib.axes_key(key)),
             "program": tier.program(keys_lib.program_key(key), ax,
                                     max_len=shapes.max_len),
             "key_data": jax.random.key_data(
                 jax.random.fold_in(split_key, index))}
    return trace, out, extra
  return jax.vmap(one)(program, key_data, axes, indices)


def _replay_dataset(path: Path, report: Report, *, rebuild: bool,
                    batch_size: int, formats: Sequence[str]) -> None:
  for tier_dir in _tier_dirs(path, report):
    try:
      m = manifest_lib.read(tier_dir)
    except manifest_lib.ManifestError as e:
      report.bad_input(str(e))
      continue
    files = list(m["files"])
    kw = dict(rebuild=rebuild, batch_size=batch_size)
    formats = formats or _FORMATS
    if "jsonl" in formats:
      for rel in (f for f in files if f.endswith(".jsonl")):
        p = tier_dir / rel
        _replay_rows(str(p), loaders.iter_jsonl(p), report, **kw)
    if "zarr" in formats and any(
        f.startswith(zarr_store.STORE_NAME + "/") for f in files):
      _replay_zarr(tier_dir / zarr_store.STORE_NAME, report, **kw)
    if "parquet" in formats:
      for rel in (f for f in files if f.endswith(".parquet")):
        p = tier_dir / rel
        _replay_rows(str(p), loaders.iter_parquet(p), report, **kw)


def replay_path(path: Path, report: Report, *, rebuild: bool = False,
                batch_size: int = 512, formats: Sequence[str] = ()) -> None:
  """Replays one PATH: a JSONL or Parquet file, a zarr store or a dataset
  directory (its files of `formats`, default all)."""
  kw = dict(rebuild=rebuild, batch_size=batch_size)
  if path.is_dir():
    if zarr_store.is_store(path):
      _replay_zarr(path, report, **kw)
    else:
      _replay_dataset(path, report, formats=formats, **kw)
  elif path.is_file():
    if path.suffix == ".parquet":
      _replay_rows(str(path), loaders.iter_parquet(path), report, **kw)
    else:
      _replay_rows(str(path), loaders.iter_jsonl(path), report, **kw)
  else:
    report.bad_input(f"{path}: no such file or directory")


def main(argv) -> int:
  logging.getLogger("jax").setLevel(logging.WARNING)
  paths = [Path(p) for p in argv[1:]]
  replay = FLAGS.replay or FLAGS.rebuild
  bad = sorted(set(FLAGS.formats) - set(_FORMATS))
  if bad:
    _fail(f"unknown format {bad[0]!r}; expected some of {list(_FORMATS)}")
  if paths and not replay:
    _fail(f"unexpected arguments {' '.join(map(str, paths))} (PATHs go "
          "with --replay)")
  if not FLAGS.dataset and not replay:
    _fail("nothing to do: pass --dataset DIR and/or --replay PATH...")
  if replay and not paths and not FLAGS.dataset:
    _fail("--replay needs PATHs (JSONL files, dataset directories or zarr "
          "stores)")
  if replay:
    pipeline.enable_compile_cache(pipeline.default_compile_cache()
                                  if FLAGS.compile_cache is None
                                  else FLAGS.compile_cache)
  report = Report()
  t0 = time.perf_counter()
  if FLAGS.dataset:
    verify_dataset(Path(FLAGS.dataset), report)
  if replay:
    rows_before = report.rows
    for p in paths or [Path(FLAGS.dataset)]:
      replay_path(p, report, rebuild=FLAGS.rebuild,
                  batch_size=FLAGS.batch_size, formats=FLAGS.formats)
    what = "replayed and rebuilt" if FLAGS.rebuild else "replayed"
    print(f"{what} {report.rows - rows_before:,} rows in "
          f"{time.perf_counter() - t0:.1f} s: "
          + ("ok" if report.status == 0 else
             f"{report.problems} mismatches, {report.unreadable} unreadable"))
  return report.status


def run() -> None:
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
