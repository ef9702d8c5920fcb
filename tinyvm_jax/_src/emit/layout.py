"""The crash-safety protocol of an emit's tier directory, stated once.

A tier directory goes through four states; each is recognised from the
files alone, so a process that dies anywhere leaves a state a rerun of the
same command continues from:

  fresh       no `.partial/fingerprint` of these settings (nothing, a
              finished dataset, or an unfinished emit of other settings):
              `prepare` removes the manifest first, then every old output,
              and lays out `.partial/` with the settings' fingerprint.
  parts       `.partial/` of these settings: processes write parts in the
              final layout under `.partial/` (JSONL as one piece a run of
              parts, `jsonl_piece`) and record each part made durable in
              every format in their progress file
              (`.partial/progress/p<k>.json`, `{"<split>:<part>": what the
              writers returned}`, written atomically); `done_parts` is the
              union of every process's records.
  finalizing  every part recorded: process 0 joins the JSONL pieces,
              hashes every file and records the manifest's file entries in
              `.partial/finalizing.json` (atomically).
  manifest    the files are renamed into place, `manifest.json` is written
              (temporary name + `os.replace`) and `.partial/` removed: no
              manifest means the emit did not finish.
"""

import datetime
import fcntl
import hashlib
import json
import os
import shutil
import socket
from pathlib import Path
from typing import Any, Callable, Mapping

from tinyvm_jax._src.emit.plan import DATA_DIR, EVAL_DIR, EmitError, Plan
from tinyvm_jax._src.emit.plan import SplitPlan
from tinyvm_jax._src.io import hub
from tinyvm_jax._src.io import manifest as manifest_lib
from tinyvm_jax._src.io import zarr_store

PARTIAL = manifest_lib.PARTIAL
FINGERPRINT = "fingerprint"      # in .partial: the settings' fingerprint
PROGRESS_DIR = "progress"        # in .partial: one progress file a process
FINALIZING = "finalizing.json"   # in .partial: the manifest's file entries
JSONL_PARTS = "jsonl-parts"      # in .partial: JSONL pieces (runs of parts)
README = "README.md"
# Every name an emit may create in the tier directory (removed before a
# fresh emit so that no stale file survives).
OUTPUT_NAMES = ("train.jsonl", EVAL_DIR, DATA_DIR, README,
                zarr_store.STORE_NAME)
_BLOCK = 1 << 22


# ----------------------------------------------------------------- lock
class EmitLock:
  """Process 0's exclusive hold on `out_dir/<tier>` for one emit.

  The lock is `out_dir/.<tier>.lock` (beside the tier directory, so it is
  never part of the dataset), held with `flock` while the emit runs and
  released by the kernel if the process dies. A second emit into the same
  folder refuses at once with an `EmitError` naming the holder (pid, host,
  start time), instead of wiping the first one's `.partial`.
  """

  def __init__(self, out_dir: Path, tier: str):
    self.path = Path(out_dir) / f".{tier}.lock"
    self.tier_dir = Path(out_dir) / tier
    self._fd: int | None = None

  def __enter__(self) -> "EmitLock":
    self.path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      holder = os.read(fd, 200).decode(errors="replace").strip()
      os.close(fd)
      raise EmitError(f"another emit is writing into {self.tier_dir} "
                      f"({holder or 'holder unknown'}); wait for it or stop "
                      "it first") from None
    now = datetime.datetime.now().isoformat(timespec="seconds")
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, started "
                 f"{now}".encode())
    self._fd = fd
    return self

  def __exit__(self, *exc) -> None:
    if self._fd is not None:
      os.close(self._fd)     # releases the flock
      self._fd = None


# ----------------------------------------------------------------- parts
def part_key(sp: SplitPlan, part: int) -> str:
  """A part's key in the progress records: "<split name>:<part>"."""
  return f"{sp.name}:{part}"


def jsonl_piece(sp: SplitPlan, part: int) -> str:
  """The JSONL piece whose first part is `part`, under `.partial/`: a
  process appends the consecutive parts it writes of a split to one piece;
  when the emit finishes, a split written as one piece is renamed into
  place, several are concatenated in part order."""
  return f"{JSONL_PARTS}/{sp.name}/{part:05d}.jsonl"


def piece_to_continue(done: Mapping[str, dict], sp: SplitPlan, part: int
                      ) -> tuple[int, int]:
  """(first part, bytes to keep) of the JSONL piece that part `part` goes
  to: the piece whose last recorded part is `part - 1`, continued after its
  recorded end (cutting off a torn write); else a new piece at `part`.
  (A piece's recorded parts are a run from its first part: parts are
  recorded in order.)"""
  prev = done.get(part_key(sp, part - 1), {}).get("jsonl")
  if prev is None:
    return part, 0
  after = done.get(part_key(sp, part), {}).get("jsonl")
  if after is not None and after["piece"] == prev["piece"]:
    return part, 0    # the piece goes on past part - 1: start a new one
  return int(prev["piece"]), int(prev["end"])


class Progress:
  """One process's progress file: the parts it made durable."""

  def __init__(self, work: Path, process_id: int, fingerprint: str):
    self.path = work / PROGRESS_DIR / f"p{process_id:05d}.json"
    self.data = {"fingerprint": fingerprint, "parts": {}}
    try:
      old = json.loads(self.path.read_bytes())
      if old.get("fingerprint") == fingerprint:
        self.data = old
    except (OSError, ValueError, AttributeError):
      pass

  def record(self, sp: SplitPlan, part: int, updates: dict) -> None:
    self.data["parts"][part_key(sp, part)] = updates
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


# ----------------------------------------------------------------- fresh
def root_attributes(plan: Plan) -> dict:
  """The store's root attributes (under `zarr_store.ATTR_KEY`)."""
  return {zarr_store.ATTR_KEY: {
      "format_version": zarr_store.FORMAT_VERSION,
      "tier": plan.tier.name, "seed_base": plan.seed_base,
      "axis_names": list(plan.tier.axis_names),
      "renders": list(plan.renders),
      "part_rows": plan.part_rows, "chunk_rows": plan.chunk_rows,
      "groups": {s.name: s.num_rows for s in plan.splits}}}


_COLUMNS = "meta, program, trace, renders (the reference's JSONL row schema)"


def hub_readme(plan: Plan, files: Mapping[str, Mapping[str, Any]],
               columns: str = _COLUMNS) -> str:
  """The dataset card of the Parquet files (`io/hub.py`): YAML `configs`
  naming each split's files, so `datasets.load_dataset(dir)` reads them
  (and not the JSONL files), and `dataset_info` with every split's rows
  and bytes (from the Parquet file entries `files`); `columns`: the row
  source's (`sources.RowSource.columns`)."""
  splits = []
  for s in plan.splits:
    prefix = f"{DATA_DIR}/{s.hf_split}-"
    size = sum(int(e["bytes"]) for rel, e in files.items()
               if rel.startswith(prefix))
    splits.append(hub.CardSplit(s.hf_split, s.num_rows, size))
  fingerprint = hub.rows_fingerprint(
      tier=plan.tier.name, seed_base=plan.seed_base, renders=plan.renders,
      splits=[(s.name, s.num_rows) for s in plan.splits])
  return hub.dataset_card(tier=plan.tier.name, seed_base=plan.seed_base,
                          fingerprint=fingerprint, splits=splits,
                          version=manifest_lib.package_version(),
                          columns=columns)


def _remove(path: Path) -> None:
  if path.is_dir() and not path.is_symlink():
    shutil.rmtree(path)
  elif path.exists() or path.is_symlink():
    path.unlink()


def is_prepared(plan: Plan, tier_dir: Path) -> bool:
  """Whether `.partial/` holds an unfinished emit of these settings."""
  try:
    return (tier_dir / PARTIAL / FINGERPRINT).read_text() == (
        plan.fingerprint())
  except OSError:
    return False


def prepare(plan: Plan, tier_dir: Path, log: Callable[[str], None]) -> bool:
  """fresh -> parts. Keeps the `.partial` of an unfinished emit with the
  same settings (returns True), or starts afresh (removing the old
  manifest first, then every old output) and lays out the new `.partial`."""
  if is_prepared(plan, tier_dir):
    return True
  work = tier_dir / PARTIAL
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
  manifest_lib.write_atomic(work / FINGERPRINT, plan.fingerprint().encode())
  return False


def is_finalizing(tier_dir: Path) -> bool:
  """Whether every part was written and process 0 began finishing."""
  return (tier_dir / PARTIAL / FINALIZING).exists()


# ----------------------------------------------------------------- finalizing
def format_of(rel: str) -> str:
  """The format a dataset file (path relative to the tier directory) is
  written in."""
  if rel.endswith(".jsonl"):
    return "jsonl"
  if rel.startswith(zarr_store.STORE_NAME + "/"):
    return "zarr"
  return "parquet"


def _is_zarr_file(rel: str) -> bool:
  """A store's own file: a `zarr.json` or a chunk key `.../c/<i>/<j>...`."""
  parts = rel.split("/")
  if parts[-1] == "zarr.json":
    return True
  return "c" in parts and all(p.isdigit()
                              for p in parts[parts.index("c") + 1:])


def _zarr_rows(plan: Plan, path: Path, rel: str) -> int:
  """Rows a store file covers: an array's `zarr.json`: its length; a
  shard: its rows; a group's `zarr.json`: 0."""
  parts = rel.split("/")
  if parts[-1] == "zarr.json":
    meta = json.loads(path.read_bytes())
    return int(meta["shape"][0]) if meta.get("node_type") == "array" else 0
  if "c" not in parts:
    return 0
  rows = {s.name: s.num_rows for s in plan.splits}
  part = int(parts[parts.index("c") + 1])
  group = next(g for g in sorted(rows, key=len, reverse=True)
               if rel.startswith(g + "/"))
  return min(plan.part_rows, rows[group] - part * plan.part_rows)


def _zarr_files(plan: Plan, store: Path) -> dict:
  """Manifest entries of every file of the store."""
  out = {}
  for path in sorted(p for p in store.rglob("*") if p.is_file()):
    rel = path.relative_to(store).as_posix()
    if not _is_zarr_file(rel):
      continue  # a crash's temporary file: removed with the strays
    digest, size, _ = manifest_lib.sha256_file(path)
    out[f"{zarr_store.STORE_NAME}/{rel}"] = {
        "rows": _zarr_rows(plan, path, rel), "sha256": digest, "bytes": size}
  return out


def _copy_prefix(src: Path, out, take: int, digest) -> None:
  """Appends the first `take` bytes of `src` to the open file `out`."""
  with open(src, "rb") as f:
    left = take
    while left:
      block = f.read(min(left, _BLOCK))
      if not block:
        raise EmitError(f"{f.name}: shorter than its recorded progress")
      digest.update(block)
      out.write(block)
      left -= len(block)


def _join_jsonl(plan: Plan, work: Path, sp: SplitPlan,
                done: Mapping[str, dict]) -> dict:
  """Moves a split's JSONL pieces into `sp.jsonl` (a rename when it is one
  piece, else a copy in part order); returns its manifest entry."""
  recs = [done[part_key(sp, k)]["jsonl"]
          for k in range(sp.num_parts(plan.part_rows))]
  rows = sum(int(r["rows"]) for r in recs)
  pieces = {}   # first part -> bytes to take, in part order
  for r in recs:
    pieces[int(r["piece"])] = int(r["end"])
  path = work / sp.jsonl
  path.parent.mkdir(parents=True, exist_ok=True)
  if len(pieces) == 1:
    (first, end), = pieces.items()
    src = work / jsonl_piece(sp, first)
    if src.exists() or not path.exists():   # else moved by a crashed finish
      os.truncate(src, end)   # drops a torn write past the end
      os.replace(src, path)
    return {"rows": rows, "sha256": recs[-1]["sha256"], "bytes": end}
  digest = hashlib.sha256()
  tmp = path.with_name(f".{path.name}.tmp")
  with open(tmp, "wb") as out:
    for first, take in pieces.items():
      _copy_prefix(work / jsonl_piece(sp, first), out, take, digest)
    out.flush()
    os.fsync(out.fileno())
  os.replace(tmp, path)
  return {"rows": rows, "sha256": digest.hexdigest(),
          "bytes": sum(pieces.values())}


def _file_entries(plan: Plan, work: Path, done: Mapping[str, dict],
                  columns: str) -> dict:
  """parts -> finalizing: the manifest's file entries of a finished
  `.partial` (joining each split's JSONL pieces into its file).

  Raises:
    EmitError: a part no process recorded (a process died).
  """
  missing = [part_key(sp, k) for sp, k in plan.parts()
             if part_key(sp, k) not in done]
  if missing:
    raise EmitError(f"{len(missing)} parts were not written (first: "
                    f"{missing[0]}); a process did not finish; rerun the "
                    "same command to resume")
  files = {}
  if "jsonl" in plan.formats:
    for sp in plan.splits:
      files[sp.jsonl] = _join_jsonl(plan, work, sp, done)
  if "parquet" in plan.formats:
    for sp, k in plan.parts():
      files.update(done[part_key(sp, k)].get("files", {}))
    manifest_lib.write_atomic(work / README,
                              hub_readme(plan, files, columns).encode())
    digest, size, _ = manifest_lib.sha256_file(work / README)
    files[README] = {"rows": 0, "sha256": digest, "bytes": size}
  if "zarr" in plan.formats:
    files.update(_zarr_files(plan, work / zarr_store.STORE_NAME))
  return files


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


# ----------------------------------------------------------------- manifest
def finish(plan: Plan, tier_dir: Path, platform: str,
           config: Mapping[str, Any] | None, *, columns: str = _COLUMNS
           ) -> dict:
  """parts -> finalizing -> manifest (process 0, every part written):
  records the file entries (`columns`: the Parquet columns, for the dataset
  card), moves the files into place and writes the manifest; idempotent
  after a crash. Returns the manifest's files."""
  work = tier_dir / PARTIAL
  fin = work / FINALIZING
  if fin.exists():
    files = json.loads(fin.read_bytes())
  else:
    files = _file_entries(plan, work, done_parts(work, plan.fingerprint()),
                          columns)
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


def is_disk_full(error: BaseException) -> bool:
  """Whether `error` (an OSError, or tensorstore's ValueError) says the
  device ran out of space."""
  import errno
  if isinstance(error, OSError) and error.errno in (errno.ENOSPC,
                                                    errno.EDQUOT):
    return True
  return "No space left on device" in str(error) or (
      "RESOURCE_EXHAUSTED" in str(error) and "space" in str(error))


def space_report(plan: Plan, tier_dir: Path) -> str:
  """'about X more needed, Y free': X estimated from the bytes a row took
  so far (the recorded parts) times the rows still to write."""
  work = tier_dir / PARTIAL
  free = shutil.disk_usage(tier_dir if tier_dir.exists()
                           else tier_dir.parent).free
  written = sum(f.stat().st_size for f in work.rglob("*") if f.is_file()
                ) if work.exists() else 0
  rows = sum(int(v.get("rows", 0)) for v in done_parts(
      work, plan.fingerprint()).values()) if work.exists() else 0
  free_text = f"{free / 1e6:,.0f} MB free"
  if not rows:
    return free_text
  need = written / rows * (plan.total_rows - rows)
  return f"about {need / 1e6:,.0f} MB more needed, {free_text}"


def bytes_by_format(files: Mapping[str, Mapping[str, Any]]) -> dict:
  """{format: bytes on disk} of manifest file entries."""
  out = {}
  for rel, entry in files.items():
    f = format_of(rel)
    out[f] = out.get(f, 0) + int(entry.get("bytes", 0))
  return out
