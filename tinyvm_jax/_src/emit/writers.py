"""The emit's writers: one a format, behind one `Writer` protocol.

A writer gets each part's rows in batches, in any order of rows (a batch
holds the rows of one row class: ascending positions, not contiguous), and
makes the part durable in `end_part`, returning what the part's progress
record keeps (under a key of its own). The run calls every writer from one
thread of its own; a part is recorded once every writer has made it durable.
The rows are the tier's (`sources.RowSource`), which turns them into each
format's bytes, table or arrays.
"""

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Mapping, Protocol

import numpy as np

from tinyvm_jax._src import batching
from tinyvm_jax._src.emit import layout
from tinyvm_jax._src.emit.plan import EmitError, FORMATS, Plan, SplitPlan
from tinyvm_jax._src.emit.sources import RowSource, row_bytes
from tinyvm_jax._src.io import manifest as manifest_lib
from tinyvm_jax._src.io import zarr_store


class Writer(Protocol):
  """Writes the parts of an emit in one format (or checks them)."""

  def write(self, sp: SplitPlan, rows, positions: np.ndarray) -> None:
    """Takes host `rows` [B] of split `sp` at its sizes (the source's);
    `positions` [B]: their ascending row indices in the split, all in one
    part."""

  def end_part(self, sp: SplitPlan, part: int) -> dict:
    """Makes part `part` (every row of it written) durable; returns what
    its progress record keeps."""

  def close(self) -> None:
    """Releases what is open (also after an error: nothing is committed)."""


# A writer whose `write` converts the rows with the source's method named
# by its `convert` ("to_jsonl", "to_table") also has `write_converted(sp,
# converted, positions)`, which takes that method's result instead: the run
# then converts in serialization workers (`convert.Pool`). A writer with
# `end_part_with(pool, sp, part)` also moves the part's encoding to them:
# it returns (the encoding in flight, a function of its result that makes
# the part durable and returns `end_part`'s record).


class JsonlWriter:
  """Orders each part's lines and appends them to the process's current
  piece of the split (`layout.jsonl_piece`), hashing as it goes. Progress
  records, a part, its piece, the piece's length and hash after it: a
  rerun continues a piece after its last recorded part (cutting off a torn
  write), and a finished split of one piece needs no copy."""

  def __init__(self, plan: Plan, work: Path, done: Mapping[str, dict],
               source: RowSource):
    self.plan, self.work, self.done, self.source = plan, work, done, source
    self.batches, self.positions = [], []   # the part's (bytes, line ends)
    self.file = None
    self.key = None   # (split name, piece's first part, last part written)

  convert = "to_jsonl"
  BLOCK_LINES = 256   # lines joined for a write

  def write(self, sp: SplitPlan, rows, positions: np.ndarray) -> None:
    self.write_converted(sp, self.source.to_jsonl(sp, rows), positions)

  def write_converted(self, sp: SplitPlan, data: bytes,
                      positions: np.ndarray) -> None:
    """`write` of the rows' JSONL bytes (`source.to_jsonl`), kept with the
    offsets [n] where its lines end (newline included)."""
    del sp
    ends = np.flatnonzero(np.frombuffer(data, np.uint8) == ord("\n")) + 1
    assert len(ends) == len(positions) and ends[-1:].sum() == len(data)
    self.batches.append((data, ends))
    self.positions.append(positions)

  def _blocks(self):
    """The part's bytes in row order, in blocks: its batches as they are
    when they came in row order, else `BLOCK_LINES` lines (views into the
    batches, no copy of a line) joined a block."""
    order = np.argsort(np.concatenate(self.positions), kind="stable")
    if (np.diff(order) == 1).all():
      yield from (data for data, _ in self.batches)
      return
    lines = []
    for data, ends in self.batches:
      view, ends = memoryview(data), ends.tolist()
      lines += [view[a:b] for a, b in zip([0] + ends[:-1], ends)]
    for i in range(0, len(order), self.BLOCK_LINES):  # no copy of the part
      yield b"".join([lines[k] for k in order[i:i + self.BLOCK_LINES]])

  def _open(self, sp: SplitPlan, part: int) -> None:
    """Makes the piece that part `part` goes to the open file."""
    if self.key is not None and self.key[0] == sp.name and (
        self.key[2] == part - 1):
      return
    self._close_file()
    first, end = layout.piece_to_continue(self.done, sp, part)
    path = self.work / layout.jsonl_piece(sp, first)
    path.parent.mkdir(parents=True, exist_ok=True)
    self.file = open(path, "r+b" if end else "wb")
    self.hash = hashlib.sha256()
    if end:
      self.file.truncate(end)
      left = end
      while left:
        block = self.file.read(min(left, 1 << 22))
        if not block:
          raise EmitError(f"{path}: shorter than its recorded "
                          "progress")
        self.hash.update(block)
        left -= len(block)
    self.file.seek(end)
    self.bytes = end
    self.key = (sp.name, first, part - 1)

  def end_part(self, sp: SplitPlan, part: int) -> dict:
    self._open(sp, part)
    rows = sum(len(x) for x in self.positions)
    for data in self._blocks():
      self.file.write(data)
      self.hash.update(data)
      self.bytes += len(data)
    self.batches, self.positions = [], []
    self.file.flush()
    os.fsync(self.file.fileno())
    self.key = (sp.name, self.key[1], part)
    return {"jsonl": {"rows": rows, "piece": self.key[1],
                      "end": self.bytes, "sha256": self.hash.hexdigest()}}

  def _close_file(self) -> None:
    if self.file is not None:
      self.file.close()
    self.file, self.key = None, None

  def close(self) -> None:
    self.batches, self.positions = [], []
    self._close_file()


class ParquetWriter:
  """One Parquet file a part: `.partial/data/<split>-<part>-of-<n>.parquet`
  (written under a temporary name, then renamed)."""

  def __init__(self, plan: Plan, work: Path, done: Mapping[str, dict],
               source: RowSource):
    from tinyvm_jax._src.io import parquet
    self._parquet = parquet
    self.plan, self.work, self.source = plan, work, source
    self.tables, self.positions = [], []

  convert = "to_table"

  def write(self, sp: SplitPlan, rows, positions: np.ndarray) -> None:
    self.write_converted(sp, self.source.to_table(sp, rows), positions)

  def write_converted(self, sp: SplitPlan, table,
                      positions: np.ndarray) -> None:
    """`write` of the rows' Arrow table (`source.to_table`)."""
    del sp
    self.schema = table.schema
    self.tables.append({name: table.column(name) for name in
                        table.column_names})
    self.positions.append(positions)

  def _part_table(self):
    """The part's rows in index order, one chunk a column (the writer's
    dictionary-page fallback on long string columns, Tier 2 cot text,
    depends on how the rows are chunked): slices of the batches' columns,
    a run of rows of one batch each (`take` changes how Arrow lays out the
    nested columns, and with it the file's bytes; slices do not), joined a
    column (and struct field) at a time, each freed once joined."""
    import pyarrow as pa
    pos = np.concatenate(self.positions)
    batch = np.concatenate([np.full(len(p), i) for i, p in
                            enumerate(self.positions)])
    row = np.concatenate([np.arange(len(p)) for p in self.positions])
    order = np.argsort(pos, kind="stable")
    b, r = batch[order], row[order]
    starts = np.flatnonzero(np.r_[True, (b[1:] != b[:-1])
                                  | (r[1:] != r[:-1] + 1)])
    ends = np.r_[starts[1:], len(order)]
    columns = []
    for name in self.schema.names:
      parts = [c for i, e in zip(starts, ends) for c in
               self.tables[b[i]][name].slice(r[i], e - i).chunks]
      for t in self.tables:
        del t[name]
      columns.append(self._parquet.concat_consuming(parts))
    self.tables, self.positions = [], []
    return pa.Table.from_arrays(columns, schema=self.schema)

  def end_part(self, sp: SplitPlan, part: int) -> dict:
    table = self._part_table()
    return self._commit(sp, part, table.num_rows,
                        lambda tmp: self._parquet.write_parquet(table, tmp))

  def end_part_with(self, pool, sp: SplitPlan, part: int):
    """`end_part` with the part's Parquet encoding in `pool`
    (`convert.Pool`): returns the encoding in flight and a function that
    takes its bytes and makes the part durable (returning its record)."""
    table = self._part_table()
    n = table.num_rows
    return pool.encode_parquet(table), lambda data: self._commit(
        sp, part, n, lambda tmp: tmp.write_bytes(data))

  def _commit(self, sp: SplitPlan, part: int, rows: int, write) -> dict:
    """`write(path)` writes the part's file under a temporary name; makes
    it durable under its own; returns its progress record."""
    rel = sp.parquet(part, self.plan.part_rows)
    path = self.work / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    manifest_lib.fsync_file(tmp)
    os.replace(tmp, path)
    manifest_lib.fsync_dir(path.parent)
    digest, size, _ = manifest_lib.sha256_file(path)
    return {"files": {rel: {"rows": rows, "sha256": digest, "bytes": size}}}

  def close(self) -> None:
    self.tables, self.positions = [], []


class ZarrWriter:
  """A group a split in `.partial/rows.zarr`, one shard a part. A part's
  rows arrive in batches of one row class each (scattered positions, the
  class's sizes). They are placed into a buffer at the split's sizes,
  filled with each array's padding value, which is written in one
  contiguous write (tensorstore writes contiguous boxes far faster than
  index arrays). The buffer holds a slab of whole chunks of at most about
  `SLAB_BYTES` (at least one chunk): when a part fits one slab, rows are
  placed as they arrive; otherwise the part's batches are kept (cut to the
  entries their rows use) and placed a slab at a time when the part ends,
  committed every `SLABS_A_COMMIT` slabs (the transaction holds a copy of
  what it has not committed; each commit rewrites the part's shards so
  far), so memory does not grow with the part size. The shard's bytes do
  not depend on the slabs."""

  SLAB_BYTES = 64 << 20
  # Each commit rewrites the part's shards so far; the full Tier 2 zarr emit
  # measured 332.6 s and 1.31 GB committing every slab, 337.6 s and 1.46 GB
  # every 4 (BUILD.md, "Memory").
  SLABS_A_COMMIT = 1

  def __init__(self, plan: Plan, work: Path, done: Mapping[str, dict],
               source: RowSource):
    self.plan, self.source = plan, source
    self.root = work / zarr_store.STORE_NAME
    self.groups = {}
    self.batches = []   # the part's (positions [n], arrays), not yet placed
    self.filled = None  # the part's slab, when rows are placed on arrival
    self.kept = None    # (split name, rows a slab, slab buffer)

  def _group(self, sp: SplitPlan) -> zarr_store.GroupWriter:
    if sp.name not in self.groups:
      attrs = {"split": sp.split, "bucket": sp.bucket, "rows": sp.num_rows,
               "axis_names": list(self.plan.tier.axis_names),
               "renders": list(self.plan.renders),
               "shapes": dataclasses.asdict(sp.shapes)}
      self.groups[sp.name] = zarr_store.GroupWriter(
          self.root, sp.name, sp.num_rows,
          self.source.example_arrays(sp), part_rows=self.plan.part_rows,
          chunk_rows=self.plan.chunk_rows, codec=self.plan.codec,
          attributes=attrs)
    return self.groups[sp.name]

  def write(self, sp: SplitPlan, rows, positions: np.ndarray) -> None:
    batch = (np.asarray(positions), self.source.to_arrays(rows))
    lo, hi = sp.part_range(positions[0] // self.plan.part_rows,
                           self.plan.part_rows)
    slab, buffer = self._slab(sp)
    if hi - lo > slab:
      self.batches.append((batch[0], _cut_padding(batch[1])))
      return
    if self.filled is None:
      self.filled = _padding(buffer, hi - lo)
    _place(self.filled, lo, *batch)

  def _slab(self, sp: SplitPlan) -> tuple[int, dict[str, np.ndarray]]:
    """The split's rows a slab and slab buffer (kept and refilled: writing
    fresh pages costs more than filling resident ones)."""
    if self.kept is None or self.kept[0] != sp.name:
      example = self.source.example_arrays(sp)
      chunk = self.plan.chunk_rows
      slab = max(chunk, self.SLAB_BYTES // max(1, row_bytes(example))
                 // chunk * chunk)
      slab = min(slab, batching.round_up(self.plan.part_rows, chunk))
      self.kept = (sp.name, slab, {
          name: np.empty((slab,) + x.shape[1:], x.dtype)
          for name, x in example.items()})
    return self.kept[1:]

  def end_part(self, sp: SplitPlan, part: int) -> dict:
    group = self._group(sp)
    lo, hi = sp.part_range(part, self.plan.part_rows)
    if self.filled is not None:
      group.write(lo, self.filled)
      group.commit_part()
    slab, buffer = self._slab(sp)
    for start in range(lo, hi, slab) if self.batches else ():
      stop = min(hi, start + slab)
      filled = _padding(buffer, stop - start)
      for positions, arrays in self.batches:
        i, j = np.searchsorted(positions, (start, stop))
        if i < j:
          _place(filled, start, positions[i:j],
                 {name: x[i:j] for name, x in arrays.items()})
      group.write(start, filled)   # copied into the transaction
      if stop == hi or (stop - lo) // slab % self.SLABS_A_COMMIT == 0:
        group.commit_part()
    self.batches, self.filled = [], None
    return {}

  def close(self) -> None:
    for g in self.groups.values():
      g.abort()
    self.groups, self.batches, self.filled, self.kept = {}, [], None, None


def _padding(buffer: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
  """The first `n` rows of each of `buffer`'s arrays, set to its padding."""
  out = {}
  for name, buf in buffer.items():
    buf[:n] = zarr_store.fill_value(name)
    out[name] = buf[:n]
  return out


def _cut_padding(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Copies of a batch's arrays [B, L, ...] cut along L to the entries some
  row uses (the rest is padding): a kept batch holds its rows, not its row
  class's sizes (a Tier 2 class's cot targets are up to 124,357 tokens)."""
  out = {}
  for name, x in arrays.items():
    if x.ndim > 1 and x.shape[0] and x[0].size >= 256:
      fill = zarr_store.fill_value(name)
      lo, hi = x.min(axis=0), x.max(axis=0)                    # [L, ...]
      used = ((lo != fill) | (hi != fill)).reshape(x.shape[1], -1).any(1)
      x = x[:, :int(used.nonzero()[0][-1]) + 1 if used.any() else 0]
    out[name] = np.ascontiguousarray(x)
  return out


def _place(out: dict[str, np.ndarray], start: int, positions: np.ndarray,
           arrays: Mapping[str, np.ndarray]) -> None:
  """Places rows `arrays` [n] (at any sizes up to `out`'s) at rows
  `positions - start` of `out`."""
  rel = positions - start
  rows = (slice(rel[0], rel[-1] + 1) if rel[-1] - rel[0] + 1 == rel.size
          else rel)
  for name, x in arrays.items():
    out[name][(rows,) + tuple(slice(0, d) for d in x.shape[1:])] = x


_MAKERS = {"zarr": ZarrWriter, "jsonl": JsonlWriter, "parquet": ParquetWriter}


def make_writers(plan: Plan, work: Path, done: Mapping[str, dict],
                 source: RowSource) -> list[Writer]:
  """The writers of the plan's formats, in `FORMATS` order, writing under
  `work` (`.partial`) the rows of `source`; `done`: the parts recorded
  before this run."""
  return [_MAKERS[f](plan, work, done, source) for f in FORMATS
          if f in plan.formats]
