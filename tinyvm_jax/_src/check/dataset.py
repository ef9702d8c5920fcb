"""Checks of emitted datasets: every file against the manifest (hash, row
count, missing and extra files), and replay of any PATH (a JSONL or Parquet
file, a zarr store, a dataset directory) through `replay`, `rebuild` and
`replay_zarr`. Problems are printed as `file:line: field: detail` lines and
counted in a `Report`."""

import concurrent.futures
import dataclasses
import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Iterator, Sequence

from tinyvm_jax._src.userop import api as userop
from tinyvm_jax._src.check import rebuild as rebuild_lib
from tinyvm_jax._src.check import replay
from tinyvm_jax._src.check import replay_zarr
from tinyvm_jax._src.io import loaders
from tinyvm_jax._src.io import manifest as manifest_lib
from tinyvm_jax._src.io import zarr_store

FORMATS = ("jsonl", "zarr", "parquet")


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


# ------------------------------------------------------------- manifest
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
  if (path / manifest_lib.PARTIAL).exists():
    report.bad_input(f"{path}: unfinished emit (no {manifest_lib.MANIFEST}); "
                     "rerun the emit to finish it")
  else:
    report.bad_input(f"{path}: no {manifest_lib.MANIFEST} (not a dataset)")
  return []


def _stored_rows(path: Path, rel: str, lines: int | None
                 ) -> tuple[int | None, list[str]]:
  """(rows the file holds by its own account or None, problems)."""
  if rel.endswith(".jsonl"):
    return lines, []
  if rel.endswith(".parquet"):
    try:
      import pyarrow.parquet as pq
      return pq.read_metadata(path).num_rows, []
    except ImportError:
      return None, []
    except Exception as e:  # pyarrow raises several types
      return None, [f"{path}: unreadable Parquet footer ({e})"]
  if rel.endswith("zarr.json"):
    try:
      meta = json.loads(path.read_bytes())
      if meta.get("node_type") == "array":
        return int(meta["shape"][0]), []
    except (ValueError, KeyError, TypeError, IndexError) as e:
      return None, [f"{path}: unreadable zarr metadata ({e})"]
  return None, []


def _check_file(root: Path, rel: str, entry: dict) -> list[str]:
  """Problems of one listed file (streamed: bounded memory)."""
  path = root / rel
  if not path.is_file():
    return [f"{path}: missing"]
  digest, _, lines = manifest_lib.sha256_file(
      path, count_lines=rel.endswith(".jsonl"))
  out = []
  if digest != entry["sha256"]:
    out.append(f"{path}: sha256 {digest} differs from the manifest's "
               f"{entry['sha256']}")
  rows, problems = _stored_rows(path, rel, lines)
  out += problems
  if rows is not None and rows != entry["rows"]:
    out.append(f"{path}: {rows} rows, the manifest says {entry['rows']}")
  return out


def _check_tier_dir(tier_dir: Path, files: dict, report: Report) -> None:
  workers = min(4, os.cpu_count() or 1)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    for lines in pool.map(lambda kv: _check_file(tier_dir, *kv),
                          files.items()):
      for line in lines:
        report.problem(line)
  listed = set(files) | {manifest_lib.MANIFEST}
  for p in sorted(tier_dir.rglob("*")):
    if p.is_file() or p.is_symlink():
      rel = p.relative_to(tier_dir).as_posix()
      if rel not in listed:
        report.problem(f"{p}: extra file (not in the manifest)")


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
    _check_tier_dir(tier_dir, files, report)
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


# ------------------------------------------------------------- replay
def _mismatches(source: Iterator, *, rebuild: bool, batch_size: int):
  """The mismatches of dict rows: Tier 4 userop rows (a file holds one
  kind of row) through userop's checker, the others through `replay`."""
  first = next(source, None)
  source = itertools.chain([first] if first is not None else [], source)
  meta = first[1].get("meta") if first and isinstance(first[1],
                                                      dict) else None
  if isinstance(meta, dict) and meta.get("tier") == userop.TIER:
    return userop.check_userop_rows(source, rebuild=rebuild,
                                    batch_size=batch_size)
  return replay.check_rows(
      source, batch_size=batch_size,
      rebuild=rebuild_lib.Rebuilder(batch_size) if rebuild else None)


def _replay_rows(name: str, rows: Iterator, report: Report, *,
                 rebuild: bool, batch_size: int) -> None:
  """Replays the dict rows of one JSONL or Parquet file, saying on stderr
  how far it got every `_NOTE_SECONDS` and when it is done."""
  counted = [0]
  t0 = last = time.perf_counter()

  def count(it):
    nonlocal last
    for item in it:
      counted[0] += 1
      now = time.perf_counter()
      if now - last > _NOTE_SECONDS:
        last = now
        _note(f"{name}: {counted[0]:,} rows replayed ({now - t0:.0f} s)")
      yield item
  try:
    for m in _mismatches(count(rows), rebuild=rebuild,
                         batch_size=batch_size):
      report.problem(f"{name}:{m.line}: {m.field}: {m.detail}")
  except loaders.RowError as e:
    report.bad_input(str(e))
  except OSError as e:
    report.bad_input(f"{name}: {e.strerror or e}")
  report.rows += counted[0]
  report.files += 1
  _note(f"{name}: {counted[0]:,} rows replayed in "
        f"{time.perf_counter() - t0:.1f} s")


_NOTE_SECONDS = 15.0


def _note(line: str) -> None:
  """A progress line on stderr (stdout holds the problems and the result)."""
  print(f"verify: {line}", file=sys.stderr, flush=True)


class _Progress:
  """`on_batch(group, rows)` of a zarr replay: a progress line every
  `_NOTE_SECONDS`."""

  def __init__(self, name: str):
    self.name, self.rows = name, 0
    self.t0 = self.last = time.perf_counter()

  def __call__(self, group: str, rows: int) -> None:
    self.rows += rows
    now = time.perf_counter()
    if now - self.last > _NOTE_SECONDS:
      self.last = now
      _note(f"{self.name}: {self.rows:,} rows replayed, now in {group} "
            f"({now - self.t0:.0f} s)")


def _replay_zarr(path: Path, report: Report, *, rebuild: bool,
                 batch_size: int) -> None:
  """Replays every group of a zarr store on arrays."""
  try:
    store = zarr_store.Store(path)
    on_batch = _Progress(str(path))
    if store.attrs.get("tier") == userop.TIER4.name:
      found = userop.check_userop_zarr(store, rebuild=rebuild,
                                       batch_size=batch_size,
                                       on_batch=on_batch)
    else:
      found = ((m.group, m) for m in replay_zarr.zarr_replay(
          store, rebuild=rebuild, batch_size=max(batch_size, 1024),
          on_batch=on_batch))
    t0 = time.perf_counter()
    rows = sum(store.groups.values())
    _note(f"{path}: replaying {rows:,} rows of {len(store.groups)} groups")
    for group, m in found:
      report.problem(f"{path}/{group}:{m.line}: {m.field}: {m.detail}")
    report.rows += rows
    _note(f"{path}: {rows:,} rows replayed in "
          f"{time.perf_counter() - t0:.1f} s")
  except (zarr_store.StoreError, ValueError, KeyError, OSError) as e:
    report.bad_input(f"{path}: unreadable zarr store ({e})")
  report.files += 1


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
    formats = formats or FORMATS
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
