"""Readers of emitted datasets: JSONL rows and prompts (as the reference
reads them), zarr batches of arrays, Parquet rows, and a grain data source.

JSONL and Parquet readers stream (one line or one record batch at a time);
`load_jsonl` and `load_prompts` return lists, like the reference's loaders.
"""

import functools
import gzip
import json
import os
import zlib
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import jax
import numpy as np

from tinyvm_jax._src import interpreter
from tinyvm_jax._src import program as program_lib
from tinyvm_jax._src import render as render_lib
from tinyvm_jax._src import text as text_lib
from tinyvm_jax._src.io import zarr_store

PROMPT_MODES = ("direct", "cot", "cot_modified", "probe_query")


class RowError(ValueError):
  """A row that cannot be read: `path` and 1-based `line` name it."""

  def __init__(self, path, line: int, msg: str):
    super().__init__(f"{path}:{line}: {msg}")
    self.path, self.line, self.msg = str(path), line, msg


def _open_bytes(path: str | os.PathLike):
  """A binary file object, gunzipping when the file starts with gzip's
  magic bytes."""
  raw = open(path, "rb")
  if raw.read(2) == b"\x1f\x8b":
    raw.seek(0)
    return gzip.GzipFile(fileobj=raw, mode="rb")
  raw.seek(0)
  return raw


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
  """Streams (line number, row) from a JSONL file, plain or gzip.

  Blank lines are skipped. Memory holds one line at a time.

  Raises:
    RowError: at the first line that is not a JSON object (or not UTF-8,
      or a truncated gzip stream), naming the file and line.
    OSError: when the file cannot be opened.
  """
  line = 0
  with _open_bytes(path) as f:
    try:
      for line, text in enumerate(f, start=1):
        if not text.strip():
          continue
        try:
          row = json.loads(text)
        except UnicodeDecodeError as e:
          raise RowError(path, line, f"unreadable (not UTF-8: {e})"
                         ) from None
        except ValueError as e:
          raise RowError(path, line, f"not JSON ({e})") from None
        if not isinstance(row, dict):
          raise RowError(path, line, "a row must be a JSON object")
        yield line, row
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
      raise RowError(path, line + 1, f"unreadable ({e})") from None


def load_jsonl(path: str | os.PathLike) -> list[dict]:
  """All rows of a JSONL file (plain or gzip) as dicts."""
  return [row for _, row in iter_jsonl(path)]


def load_prompts(path: str | os.PathLike, mode: str = "direct"
                 ) -> list[dict[str, Any]]:
  """The prompts of a JSONL file in render `mode`.

  Args:
    path: a JSONL file (plain or gzip) of dataset rows.
    mode: "direct", "cot" (full register files), "cot_modified" or
      "probe_query". A row that does not store this render gets it rendered
      from its program and trace (the probe step: the row's `probe.step_t`,
      else `meta.seed % steps`, as the reference chooses it).

  Returns:
    One dict a row: `input_ids`, `target_ids`, `input_text`, `target_text`
    and the row's `meta`.

  Raises:
    ValueError: an unknown mode; RowError: an unreadable row.
  """
  if mode not in PROMPT_MODES:
    raise ValueError(f"unknown prompt mode {mode!r}; expected one of "
                     f"{list(PROMPT_MODES)}")
  out, todo = [], []
  for line, row in iter_jsonl(path):
    rend = row.get("renders", {}).get(mode)
    if rend is None:
      todo.append((len(out), line, row))
      rend = {}
    out.append({"input_ids": rend.get("input_ids"),
                "target_ids": rend.get("target_ids"),
                "input_text": rend.get("input_text"),
                "target_text": rend.get("target_text"),
                "meta": row.get("meta")})
  for lo in range(0, len(todo), 512):
    _render_missing(path, mode, todo[lo:lo + 512], out)
  return out


def _render_missing(path, mode: str, todo: list, out: list) -> None:
  """Renders `mode` for rows that do not store it (batched, jitted)."""
  progs, steps, n_steps = [], [], []
  for _, line, row in todo:
    try:
      progs.append(program_lib.from_json(row["program"]))
      n = len(row["trace"]["steps"])
      seed = int(row["meta"]["seed"])
    except (KeyError, TypeError, ValueError) as e:
      raise RowError(path, line, f"cannot render {mode}: {e}") from None
    probe = row.get("probe") or {}
    steps.append(int(probe.get("step_t", seed % max(n, 1))))
    n_steps.append(n)
  p = -(-max(int(x.length) for x in progs) // 64) * 64
  s = -(-(max(n_steps) + 1) // 64) * 64
  t_in, t_out = render_lib.max_render_lengths(mode, max_len=p, max_steps=s)
  b = -(-len(progs) // 64) * 64
  progs = [program_lib.pad_to(x, p) for x in progs]
  progs += [progs[-1]] * (b - len(progs))
  steps = np.array(steps + [0] * (b - len(steps)), np.int32)
  rend = jax.device_get(_run_render(program_lib.stack(progs), steps,
                                    mode=mode, max_steps=s, t_in=t_in,
                                    t_out=t_out))
  for i, (j, _, _) in enumerate(todo):
    for part, tok in (("input", rend.input), ("target", rend.target)):
      ids = tok.ids[i, :int(tok.length[i])].tolist()
      out[j][f"{part}_ids"] = ids
      out[j][f"{part}_text"] = text_lib.detokenize(ids)


@functools.partial(jax.jit,
                   static_argnames=("mode", "max_steps", "t_in", "t_out"))
def _run_render(programs, steps, *, mode, max_steps, t_in, t_out):
  def one(program, step):
    trace = interpreter.run(program, max_steps=max_steps)
    return render_lib.render(mode, program, trace, max_input_len=t_in,
                             max_target_len=t_out,
                             step=step if mode == "probe_query" else None)
  return jax.vmap(one)(programs, steps)


# ----------------------------------------------------------------- Parquet
def iter_parquet(path: str | os.PathLike, *, batch_rows: int = 1024
                 ) -> Iterator[tuple[int, dict]]:
  """Streams (row number, row dict) from a Parquet file of dataset rows
  (columns meta, program, trace, renders), a record batch at a time.

  Raises:
    RowError: the file is not readable Parquet (row 0) or a row cannot be
      decoded.
  """
  try:
    import pyarrow.parquet as pq
  except ImportError:
    raise RowError(path, 0, "reading Parquet needs pyarrow: pip install "
                   "'tinyvm_jax[parquet]'") from None
  try:
    f = pq.ParquetFile(path)
  except Exception as e:  # pyarrow raises several types
    raise RowError(path, 0, f"not readable Parquet ({e})") from None
  n = 0
  try:
    for batch in f.iter_batches(batch_size=batch_rows):
      for row in batch.to_pylist():
        n += 1
        yield n, _row_from_record(row)
  except RowError:
    raise
  except Exception as e:
    raise RowError(path, n + 1, f"unreadable ({e})") from None


def _row_from_record(rec: dict) -> dict:
  """A Parquet record as the JSONL row dict (columns stored as JSON text
  are parsed; nested columns pass through)."""
  out = {}
  for k, v in rec.items():
    out[k] = json.loads(v) if isinstance(v, (str, bytes)) and k in (
        "meta", "program", "trace", "renders") else v
  return out


# ----------------------------------------------------------------- zarr
def open_zarr(path: str | os.PathLike, *, cache_bytes: int = 64 << 20
              ) -> zarr_store.Store:
  """Opens a tinyvm_jax zarr store (`<tier>/rows.zarr`, or the tier
  directory holding it) for reading; `cache_bytes` bounds the cache of
  decoded chunks."""
  path = Path(path)
  if not (path / "zarr.json").exists() and (
      path / zarr_store.STORE_NAME / "zarr.json").exists():
    path = path / zarr_store.STORE_NAME
  return zarr_store.Store(path, cache_bytes=cache_bytes)


def iter_zarr(path: str | os.PathLike, group: str, batch_size: int, *,
              names: Iterable[str] | None = None
              ) -> Iterator[dict[str, np.ndarray]]:
  """Batches of arrays `{name: [B, ...]}` of one group ("train",
  "eval/len_8", ...) of a zarr store, in row order; the last batch may be
  shorter."""
  store = open_zarr(path)
  for _, batch in store.iter_batches(group, batch_size, names=names):
    yield batch


class ZarrSource:
  """A grain `RandomAccessDataSource` over one group of a zarr store.

  `source[i]` is row i as `{array name: ndarray}` (e.g. 'trace/regs' [S, 8]);
  `_getitems(indices)` (grain's batched read) reads all the rows at once with
  one indexed read an array. Picklable (reopens the store in each worker).

  Example:
    source = ZarrSource("OUT/tier1/rows.zarr", "train",
                        names=["renders/direct/input_ids"])
    ds = grain.MapDataset.source(source).shuffle(seed=0).batch(32)
  """

  def __init__(self, path: str | os.PathLike, group: str, *,
               names: Sequence[str] | None = None,
               cache_bytes: int = 64 << 20):
    self._path = str(path)
    self._group = group
    self._cache_bytes = cache_bytes
    self._store = open_zarr(path, cache_bytes=cache_bytes)
    self._len = self._store.num_rows(group)
    self._names = list(names) if names is not None else (
        self._store.array_names(group))
    unknown = sorted(set(self._names) - set(self._store.array_names(group)))
    if unknown:
      raise zarr_store.StoreError(f"{path}: group {group!r} has no arrays "
                                  f"{unknown}")

  def __len__(self) -> int:
    return self._len

  def _index(self, i) -> int:
    if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
      raise TypeError(f"row index must be an integer, got {i!r}")
    i = int(i)
    if not -self._len <= i < self._len:
      raise IndexError(f"row {i} out of range for {self._len} rows")
    return i % self._len

  def __getitem__(self, i) -> dict[str, np.ndarray]:
    i = self._index(i)
    batch = self._store.read(self._group, i, i + 1, names=self._names)
    return {k: v[0] for k, v in batch.items()}

  def _getitems(self, indices: Sequence[int]) -> list[dict[str, np.ndarray]]:
    idx = [self._index(i) for i in indices]
    if not idx:
      return []
    batch = self._store.read(self._group, names=self._names, indices=idx)
    return [{k: v[j] for k, v in batch.items()} for j in range(len(idx))]

  def __repr__(self) -> str:
    return (f"ZarrSource(path={self._path!r}, group={self._group!r}, "
            f"names={self._names!r})")

  def __getstate__(self):
    return {"path": self._path, "group": self._group, "names": self._names,
            "cache_bytes": self._cache_bytes}

  def __setstate__(self, state):
    self.__init__(state["path"], state["group"], names=state["names"],
                  cache_bytes=state["cache_bytes"])
