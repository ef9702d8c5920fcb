"""Random access to the rows of emitted datasets, for the viewer.

A dataset directory (`OUT/<tier>/`, as the emit writes it; or `OUT/` holding
several) offers each split ("group": `train`, `eval/len_8`, ...) in up to
three formats. Every source answers `row(i)` with the reference's row dict
(`meta`, `program`, `trace`, `renders`) and `summary()` with a few small
columns per row for filtering and paging. Nothing reads a whole split:

- zarr (the fast path): one indexed read of a row's arrays; the summary
  reads five narrow arrays in batches.
- JSONL: a line-offset index ([N] int64) built once by streaming the file,
  then one seek a row; the summary comes from the same pass.
- Parquet: the files' footers give each row group's rows; a row reads one
  row group (a small cache keeps the last few).

Summaries are built lazily (first use of a group) under a lock and cached.
"""

import collections
import json
import re
import threading
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from tinyvm_jax._src import interpreter
from tinyvm_jax._src import isa
from tinyvm_jax._src import program as program_lib
from tinyvm_jax._src import text as text_lib
from tinyvm_jax._src.io import manifest as manifest_lib
from tinyvm_jax._src.io import zarr_store
from tinyvm_jax._src.types import Rows

FORMATS = ("zarr", "jsonl", "parquet")
SHOWN_OUTPUTS = 4         # printed values a summary keeps per row
_BATCH = 16384            # rows a summary batch reads
_BLOCK_BYTES = 16 << 20   # bytes a JSONL index scan reads at a time
_FRAMES = "stack_frames"


class DatasetError(ValueError):
  """A dataset that cannot be opened or a row that cannot be read."""


class Summary(NamedTuple):
  """Small per-row columns of one group (N rows, A axes)."""
  seed: np.ndarray     # [N] uint64, meta.seed
  axes: np.ndarray     # [N, A] int32, in the dataset's axis order
  output: np.ndarray   # [N, SHOWN_OUTPUTS] int32, first printed values
  num_output: np.ndarray  # [N] int32
  error: np.ndarray    # [N] int32, the trace's ERR_* code (0: fine)


def _concat(parts: list[Summary], num_axes: int) -> Summary:
  if not parts:
    return Summary(np.zeros(0, np.uint64), np.zeros((0, num_axes), np.int32),
                   np.zeros((0, SHOWN_OUTPUTS), np.int32),
                   np.zeros(0, np.int32), np.zeros(0, np.int32))
  return Summary(*[np.concatenate(cols) for cols in zip(*parts)])


def _summary_from_rows(rows: list[dict], axis_names) -> Summary:
  """The summary of parsed rows (JSONL and Parquet sources)."""
  n = len(rows)
  out = Summary(np.zeros(n, np.uint64),
                np.zeros((n, len(axis_names)), np.int32),
                np.zeros((n, SHOWN_OUTPUTS), np.int32),
                np.zeros(n, np.int32), np.zeros(n, np.int32))
  for j, row in enumerate(rows):
    meta, trace = row.get("meta") or {}, row.get("trace") or {}
    out.seed[j] = int(meta.get("seed") or 0)
    axes = meta.get("axes") or {}
    out.axes[j] = [int(axes.get(a) or 0) for a in axis_names]
    values = list(trace.get("output") or [])
    out.num_output[j] = len(values)
    values = values[:SHOWN_OUTPUTS]
    out.output[j, :len(values)] = values
    out.error[j] = 0 if trace.get("halted", True) else isa.ERR_STEP_BUDGET
  return out


def rows_to_dicts(rows: Rows, *, tier: str, split: str, bucket: str | None,
                  axis_names, render_names) -> list[dict[str, Any]]:
  """Reference row dicts of a host `Rows` batch ([B, ...] numpy arrays).

  A trace that ended in an error carries it as `trace["error"]` (a message;
  the reference's rows have no such key since its runs raise instead).
  """
  out = []
  for j in range(rows.axes.shape[0]):
    take = lambda tree: jax.tree_util.tree_map(lambda x: np.asarray(x)[j],
                                               tree)
    trace = take(rows.trace)
    tj = interpreter.trace_to_json(trace)
    if int(trace.error):
      tj["error"] = isa.ERROR_MESSAGES.get(int(trace.error), "error")
    hi, lo = (int(x) for x in np.asarray(rows.key_data[j], np.uint64))
    renders = {}
    for name in render_names:
      rend = rows.renders[name]
      pair = {}
      for part, tok in (("input", rend.input), ("target", rend.target)):
        ids = np.asarray(tok.ids[j])[:int(tok.length[j])].tolist()
        pair[f"{part}_ids"] = ids
        pair[f"{part}_text"] = text_lib.detokenize(ids)
      renders[name] = {k: pair[k] for k in ("input_ids", "target_ids",
                                            "input_text", "target_text")}
    out.append({
        "meta": {"tier": tier, "split": split, "bucket": bucket,
                 "seed": hi << 32 | lo,
                 "axes": {a: bool(v) if a == "use_stack" else int(v)
                          for a, v in zip(axis_names, rows.axes[j])},
                 "renders": list(render_names)},
        "program": program_lib.to_json(take(rows.program)),
        "trace": tj, "renders": renders})
  return out


class _Source:
  """One group of a dataset in one format."""
  fmt = ""

  def __init__(self, group: str, num_rows: int, axis_names):
    self.group, self.num_rows = group, num_rows
    self.axis_names = tuple(axis_names)
    self._summary: Summary | None = None
    self._lock = threading.RLock()   # summary() may call _index()

  def check_index(self, i: int) -> int:
    if not 0 <= i < self.num_rows:
      raise IndexError(f"row {i} is out of range: {self.group} has "
                       f"{self.num_rows:,} rows")
    return i

  def summary(self) -> Summary:
    with self._lock:
      if self._summary is None:
        self._summary = self._build_summary()
      return self._summary

  def brief(self, start: int, stop: int) -> Summary:
    """The summary of rows start:stop (a slice of `summary()` unless the
    format reads a range faster)."""
    return Summary(*[col[start:stop] for col in self.summary()])

  def row(self, i: int) -> dict[str, Any]:
    raise NotImplementedError

  def _build_summary(self) -> Summary:
    raise NotImplementedError


class ZarrSource(_Source):
  """A group of a tinyvm_jax zarr store."""
  fmt = "zarr"

  def __init__(self, store: zarr_store.Store, group: str, axis_names,
               tier: str):
    super().__init__(group, store.num_rows(group), axis_names)
    self._store, self._tier = store, tier
    attrs = store.group_attributes(group)
    self._split, self._bucket = attrs.get("split"), attrs.get("bucket")
    self._renders = tuple(attrs.get("renders") or store.attrs["renders"])

  def row(self, i: int) -> dict[str, Any]:
    i = self.check_index(i)
    arrays = self._store.read(self.group, i, i + 1)
    rows = zarr_store.arrays_to_rows(arrays)
    return rows_to_dicts(rows, tier=self._tier, split=self._split,
                         bucket=self._bucket, axis_names=self.axis_names,
                         render_names=self._renders)[0]

  _NAMES = ("seed", "axes", "trace/output", "trace/num_output",
            "trace/error")

  @staticmethod
  def _summary_of(b: dict) -> Summary:
    out = np.zeros((len(b["seed"]), SHOWN_OUTPUTS), np.int32)
    width = min(SHOWN_OUTPUTS, b["trace/output"].shape[1])
    out[:, :width] = b["trace/output"][:, :width]
    return Summary(b["seed"].astype(np.uint64), b["axes"].astype(np.int32),
                   out, b["trace/num_output"].astype(np.int32),
                   b["trace/error"].astype(np.int32))

  def brief(self, start: int, stop: int) -> Summary:
    """Rows start:stop read directly (an unfiltered page needs no
    summary of the whole group)."""
    if self._summary is not None:
      return super().brief(start, stop)
    stop = min(max(start, stop), self.num_rows)
    start = min(start, stop)
    return self._summary_of(self._store.read(self.group, start, stop,
                                             names=self._NAMES))

  def _build_summary(self) -> Summary:
    parts = [self._summary_of(b) for _, b in self._store.iter_batches(
        self.group, _BATCH, names=self._NAMES)]
    return _concat(parts, len(self.axis_names))


_SEED_RE = re.compile(rb'"seed":\s*(\d+)')
_AXES_RE = re.compile(rb'"axes":\s*(\{[^}]*\})')
_OUTPUT_RE = re.compile(rb'"output":\s*(\[[^\]]*\])')
_HALTED_RE = re.compile(rb'"halted":\s*(true|false)')


class JsonlSource(_Source):
  """A plain (not gzip) JSONL file of rows, read by byte offsets."""
  fmt = "jsonl"

  def __init__(self, path: Path, group: str, axis_names,
               rows: int | None = None):
    super().__init__(group, -1 if rows is None else rows, axis_names)
    self.path = path
    self._offsets: np.ndarray | None = None

  def _index(self) -> np.ndarray:
    """[N + 1] int64 start offsets of the non-blank lines (and the end)."""
    with self._lock:
      if self._offsets is None:
        self._offsets = self._scan_offsets()
        self.num_rows = len(self._offsets) - 1
      return self._offsets

  def _scan_offsets(self) -> np.ndarray:
    """Streams the file once in blocks, finding its newlines (numpy)."""
    ends, base = [], 0
    with open(self.path, "rb") as f:
      head = f.read(2)
      if head == b"\x1f\x8b":
        raise DatasetError(f"{self.path}: gzip JSONL has no random access; "
                           "decompress it (gunzip) to view it")
      f.seek(0)
      while block := f.read(_BLOCK_BYTES):
        nl = np.flatnonzero(np.frombuffer(block, np.uint8) == 10)
        ends.append(nl.astype(np.int64) + base + 1)
        base += len(block)
        last = block
    ends = np.concatenate(ends) if ends else np.zeros(0, np.int64)
    if base and not last.endswith(b"\n"):
      ends = np.append(ends, base)          # a last line without newline
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    keep = (ends - starts) > 2                # drop blank lines
    short = np.flatnonzero(~keep)
    if short.size:
      with open(self.path, "rb") as f:
        for j in short:
          f.seek(int(starts[j]))
          keep[j] = bool(f.read(int(ends[j] - starts[j])).strip())
    return np.append(starts[keep], ends[keep][-1] if keep.any() else 0)

  def _line_summary(self, line: bytes, number: int) -> dict:
    """The summary fields of one line, found without parsing the row."""
    try:
      seed, axes = _SEED_RE.search(line), _AXES_RE.search(line)
      out, halted = _OUTPUT_RE.search(line), _HALTED_RE.search(line)
      return {"meta": {"seed": int(seed.group(1)) if seed else 0,
                       "axes": json.loads(axes.group(1)) if axes else {}},
              "trace": {"output": json.loads(out.group(1)) if out else [],
                        "halted": halted is None or halted.group(1) ==
                        b"true"}}
    except (ValueError, TypeError) as e:
      raise DatasetError(f"{self.path}:{number}: malformed row ({e})"
                         ) from None

  def _build_summary(self) -> Summary:
    """The summary from one more pass over the lines (regular
    expressions, no JSON parse of whole rows)."""
    self._index()
    parts, pending = [], []
    with open(self.path, "rb") as f:
      for number, line in enumerate(f, start=1):
        if not line.strip():
          continue
        pending.append(self._line_summary(line, number))
        if len(pending) == _BATCH:
          parts.append(_summary_from_rows(pending, self.axis_names))
          pending = []
    parts.append(_summary_from_rows(pending, self.axis_names))
    return _concat(parts, len(self.axis_names))

  def row(self, i: int) -> dict[str, Any]:
    offsets = self._index()
    i = self.check_index(i)
    with open(self.path, "rb") as f:
      f.seek(int(offsets[i]))
      line = f.read(int(offsets[i + 1] - offsets[i]))
    try:
      row = json.loads(line)
    except ValueError as e:
      raise DatasetError(f"{self.path}:{i + 1}: not JSON ({e})") from None
    if not isinstance(row, dict):
      raise DatasetError(f"{self.path}:{i + 1}: a row must be an object")
    return row


def _record(rec: dict) -> dict:
  """A Parquet record as the row dict (JSON-text columns parsed)."""
  return {k: json.loads(v) if isinstance(v, (str, bytes)) else v
          for k, v in rec.items()}


class ParquetSource(_Source):
  """The Parquet files of one split (`data/<split>-*.parquet`)."""
  fmt = "parquet"
  _CACHED_GROUPS = 2

  def __init__(self, files: list[Path], group: str, axis_names):
    import pyarrow.parquet as pq   # the 'parquet' extra; imported on use
    self._files = []
    self._starts = [0]             # first row of each (file, row group)
    self._where = []               # (file number, row group)
    for k, path in enumerate(files):
      try:
        meta = pq.ParquetFile(path).metadata
      except Exception as e:  # pyarrow raises several types
        raise DatasetError(f"{path}: not readable Parquet ({e})") from None
      self._files.append(path)
      for g in range(meta.num_row_groups):
        self._where.append((k, g))
        self._starts.append(self._starts[-1] + meta.row_group(g).num_rows)
    super().__init__(group, self._starts[-1], axis_names)
    self._cache: collections.OrderedDict = collections.OrderedDict()

  def _read(self, g: int, columns=None):
    import pyarrow.parquet as pq
    k, rg = self._where[g]
    try:
      return pq.ParquetFile(self._files[k]).read_row_group(rg,
                                                          columns=columns)
    except Exception as e:  # pyarrow raises several types
      raise DatasetError(f"{self._files[k]}: unreadable row group {rg} "
                         f"({e})") from None

  def row(self, i: int) -> dict[str, Any]:
    i = self.check_index(i)
    g = int(np.searchsorted(self._starts, i, side="right")) - 1
    with self._lock:
      table = self._cache.pop(g, None)
    if table is None:
      table = self._read(g)
    with self._lock:
      self._cache[g] = table
      while len(self._cache) > self._CACHED_GROUPS:
        self._cache.popitem(last=False)
    return _record(table.slice(i - self._starts[g], 1).to_pylist()[0])

  def _build_summary(self) -> Summary:
    parts = []
    for g in range(len(self._where)):
      table = self._read(g, ["meta", "trace.output", "trace.halted"])
      parts.append(_summary_from_rows([_record(r) for r in table.to_pylist()],
                                      self.axis_names))
    return _concat(parts, len(self.axis_names))


# ------------------------------------------------------------ datasets
def _group_of_jsonl(rel: str) -> str | None:
  """'train.jsonl' -> 'train', 'eval/len_8.jsonl' -> 'eval/len_8'."""
  if rel == "train.jsonl":
    return "train"
  m = re.fullmatch(r"eval/([A-Za-z0-9_]+)\.jsonl", rel)
  return f"eval/{m.group(1)}" if m else None


def _group_of_parquet(name: str) -> str | None:
  """'train-00000-of-00025.parquet' -> 'train', 'eval_len_8-...' ->
  'eval/len_8'."""
  m = re.fullmatch(r"(train|eval_[A-Za-z0-9_]+?)-\d+-of-\d+\.parquet", name)
  if m is None:
    return None
  split = m.group(1)
  return "train" if split == "train" else "eval/" + split[len("eval_"):]


def _first_meta(path: Path) -> dict:
  with open(path, "rb") as f:
    for line in f:
      if line.strip():
        try:
          return json.loads(line).get("meta") or {}
        except (ValueError, AttributeError):
          raise DatasetError(f"{path}:1: not a JSON row") from None
  return {}


class Dataset:
  """One emitted tier directory: its groups in each format it has."""

  def __init__(self, path: Path, number: int):
    self.path, self.number = path, number
    self.name = path.name
    self.sources: dict[str, dict[str, _Source]] = {}
    self._manifest = self._read_manifest()
    self.tier = self._manifest.get("tier")
    self.seed_base = self._manifest.get("seed_base")
    self.axis_names: tuple[str, ...] = ()
    self.renders: tuple[str, ...] = ()
    self._open_zarr()
    self._open_jsonl()
    self._open_parquet()
    if not self.sources:
      raise DatasetError(f"{path}: not a dataset directory (no rows.zarr, "
                         "train.jsonl, eval/*.jsonl or data/*.parquet)")

  def _read_manifest(self) -> dict:
    if not (self.path / manifest_lib.MANIFEST).is_file():
      return {}
    try:
      m = json.loads((self.path / manifest_lib.MANIFEST).read_bytes())
    except (OSError, ValueError) as e:
      raise DatasetError(f"{self.path}: unreadable manifest.json ({e})"
                         ) from None
    if not isinstance(m, dict):
      raise DatasetError(f"{self.path}: manifest.json is not an object")
    return m

  def _set_tier(self, tier, seed_base, axis_names, renders) -> None:
    self.tier = self.tier or tier
    self.seed_base = self.seed_base if self.seed_base is not None else (
        seed_base)
    self.axis_names = self.axis_names or tuple(axis_names)
    self.renders = self.renders or tuple(renders)

  def _open_zarr(self) -> None:
    path = self.path / zarr_store.STORE_NAME
    if not zarr_store.is_store(path):
      return
    try:
      store = zarr_store.Store(path, cache_bytes=32 << 20)
      a = store.attrs
      self._set_tier(a["tier"], a["seed_base"], a["axis_names"],
                     a["renders"])
      self.sources["zarr"] = {g: ZarrSource(store, g, self.axis_names,
                                            self.tier)
                              for g in store.groups}
    except (KeyError, TypeError, zarr_store.StoreError) as e:
      raise DatasetError(f"{path}: unreadable zarr store ({e})") from None

  def _open_jsonl(self) -> None:
    files = {}
    for p in sorted(self.path.glob("*.jsonl")) + sorted(
        self.path.glob("eval/*.jsonl")):
      group = _group_of_jsonl(p.relative_to(self.path).as_posix())
      if group is not None:
        files[group] = p
    if not files:
      return
    meta = _first_meta(next(iter(files.values())))
    axes = meta.get("axes") if isinstance(meta.get("axes"), dict) else {}
    self._set_tier(meta.get("tier"), None, list(axes),
                   meta.get("renders") or [])
    listed = self._manifest.get("files") or {}
    self.sources["jsonl"] = {
        g: JsonlSource(p, g, self.axis_names,
                       (listed.get(p.relative_to(self.path).as_posix())
                        or {}).get("rows"))
        for g, p in files.items()}

  def _open_parquet(self) -> None:
    groups: dict[str, list[Path]] = {}
    for p in sorted(self.path.glob("data/*.parquet")):
      g = _group_of_parquet(p.name)
      if g is not None:
        groups.setdefault(g, []).append(p)
    if not groups:
      return
    try:
      import pyarrow  # noqa: F401  (the 'parquet' extra)
    except ImportError:
      return
    self.sources["parquet"] = {g: ParquetSource(files, g, self.axis_names)
                               for g, files in groups.items()}

  @property
  def groups(self) -> list[str]:
    """Group names in emit order (train first), over every format."""
    seen: dict[str, None] = {}
    for fmt in FORMATS:
      for g in self.sources.get(fmt, {}):
        seen.setdefault(g, None)
    return sorted(seen, key=lambda g: (g != "train",))

  def source(self, group: str, fmt: str | None = None) -> _Source:
    """The group in `fmt`, or in the fastest format that has it."""
    for f in ([fmt] if fmt else FORMATS):
      if group in self.sources.get(f, {}):
        return self.sources[f][group]
    have = [f for f in FORMATS if group in self.sources.get(f, {})]
    if fmt and have:
      raise KeyError(f"group {group!r} has no {fmt} files; it has "
                     f"{', '.join(have)}")
    raise KeyError(f"dataset {self.name!r} has no group {group!r}; it has "
                   f"{', '.join(self.groups)}")

  def describe(self) -> dict[str, Any]:
    """A JSON summary: tier, seed base, axes, renders, groups, formats."""
    groups = []
    for g in self.groups:
      fmts = [f for f in FORMATS if g in self.sources.get(f, {})]
      rows = self.source(g).num_rows
      groups.append({"name": g, "rows": rows if rows >= 0 else None,
                     "formats": fmts})
    return {"id": self.number, "name": self.name, "tier": self.tier,
            "seed_base": self.seed_base, "axis_names": list(self.axis_names),
            "renders": list(self.renders), "groups": groups,
            "formats": [f for f in FORMATS if f in self.sources]}


def _is_tier_dir(p: Path) -> bool:
  return any((p / name).exists() for name in (
      manifest_lib.MANIFEST, zarr_store.STORE_NAME, "train.jsonl", "eval",
      "data"))


def open_datasets(paths) -> list[Dataset]:
  """Datasets from directories: a tier directory (`OUT/tier1`), or an emit
  root (`OUT`) whose tier directories are all taken, or a `rows.zarr`.

  Raises:
    DatasetError: naming the path that is not a readable dataset.
  """
  out: list[Dataset] = []
  for raw in paths:
    p = Path(raw).expanduser().resolve()
    if not p.is_dir():
      raise DatasetError(f"{raw}: no such directory")
    if p.name == zarr_store.STORE_NAME:
      p = p.parent
    if _is_tier_dir(p):
      out.append(Dataset(p, len(out)))
      continue
    tiers = sorted(c for c in p.iterdir() if c.is_dir() and _is_tier_dir(c))
    if not tiers:
      raise DatasetError(f"{raw}: not a dataset directory (no rows.zarr, "
                         "train.jsonl, eval/*.jsonl or data/*.parquet)")
    for c in tiers:
      out.append(Dataset(c, len(out)))
  return out
