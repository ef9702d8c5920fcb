"""Rows as a zarr v3 store (tensorstore): one group per split, one array per
field of `Rows`, chunked by rows.

Layout of a store (`<tier>/rows.zarr`):

    zarr.json                      root group; attributes["tinyvm_jax"] names
                                   the tier, seed base, axes, renders, groups
    train/zarr.json                a group per split: attributes give its
    eval/len_8/zarr.json           split, bucket and number of rows
    <group>/seed                   [N] uint64, meta.seed (the row key's bits)
    <group>/axes                   [N, A] int16, in the tier's axis order
    <group>/program/<field>        Program fields, [N, P] (regs [N, P, 3])
    <group>/trace/<field>          Trace fields, [N, S] (regs [N, S, 8],
                                   stack [N, S, 16]); scalars [N]
    <group>/renders/<name>/{input_ids, input_length, target_ids, target_length}

Every array is `[N, ...]` with the split's own static sizes, stored in the
narrowest integer type that holds every value the machine can produce (token
ids uint8, register values int16, ...); readers get them back as int32 (bool
and uint64 stay). Arrays are sharded: one shard file per `part_rows` rows
(the emit's unit of work and of resume), holding inner chunks of
`chunk_rows` rows, each compressed on its own, so a reader of one row
decompresses `chunk_rows` rows, not a shard. Each array's fill value is its
padding value (`fill_value`: PAD for token ids, NOP for opcodes, -1 for jump
targets and labels, else 0), so a writer may write a row's unpadded prefix
only and the stored bytes are the same as for the padded row; chunks equal
to the fill value (the empty stack of Tier 0/1) are not stored at all.
"""

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from tinyvm_jax._src import isa
from tinyvm_jax._src import keys as keys_lib
from tinyvm_jax._src.types import Program, Render, Rows, Tokens, Trace

STORE_NAME = "rows.zarr"
ATTR_KEY = "tinyvm_jax"
FORMAT_VERSION = 2   # 2: fill values are the padding values

# Storage types: the narrowest that holds every value of a valid row.
_INT16_FIELDS = {"lit", "target", "target_label", "label", "length", "pc",
                 "regs", "stack", "emitted", "output"}
_STORE_DTYPES = {
    "seed": np.uint64, "axes": np.int16, "n": np.int16,
    "program/op": np.uint8, "program/regs": np.uint8,
    "trace/depth": np.uint8, "trace/emit_mask": np.bool_,
    "trace/halted": np.bool_, "trace/error": np.uint8,
    "trace/num_output": np.int32, "trace/num_steps": np.int32,
}
_TOKEN_DTYPE = np.uint8
assert isa.VOCAB_SIZE <= np.iinfo(_TOKEN_DTYPE).max + 1
_LENGTH_DTYPE = np.int32

# Compression of each inner chunk, chosen by measurement on Tier 1 rows
# (python benchmarks/emit.py --codecs, 20,000 rows of train and len_128):
# zstd level 1 stores the narrowed arrays (248 MB) 14.4x smaller (17.2 MB),
# within 5% of zstd 9 (16.4 MB) at a quarter of its CPU time, and beats blosc
# shuffle+zstd (18.4 MB) and lz4 (39.7 MB): the int8/int16 storage types
# already do what a byte shuffle would.
DEFAULT_CODEC_SPEC = "zstd:1"
_BLOSC_CNAMES = ("blosclz", "lz4", "lz4hc", "zlib", "zstd")


def parse_codec(spec: str) -> dict | None:
  """A zarr v3 compression codec from its short form.

  `zstd:<level>` (level -131072..22), `blosc:<cname>:<level>` (byte shuffle
  then cname at clevel 0..9), or `none`.

  Raises:
    ValueError: a form not of these.
  """
  parts = spec.strip().split(":") if isinstance(spec, str) else []
  try:
    if parts == ["none"]:
      return None
    if len(parts) == 2 and parts[0] == "zstd":
      level = int(parts[1])
      if -131072 <= level <= 22:
        return {"name": "zstd", "configuration": {"level": level,
                                                   "checksum": False}}
    if len(parts) == 3 and parts[0] == "blosc" and parts[1] in _BLOSC_CNAMES:
      level = int(parts[2])
      if 0 <= level <= 9:
        return {"name": "blosc", "configuration": {
            "cname": parts[1], "clevel": level, "shuffle": "shuffle"}}
  except ValueError:
    pass
  raise ValueError(f"unknown zarr codec {spec!r}; expected zstd:<level>, "
                   f"blosc:<{'|'.join(_BLOSC_CNAMES)}>:<0-9> or none")


DEFAULT_CODEC = parse_codec(DEFAULT_CODEC_SPEC)


class StoreError(ValueError):
  """A store that is missing, malformed or not written by tinyvm_jax."""


# Tier 4 rows (`userop.formats`) hold two programs a slot, stored as
# programs are: `with_symbol/<field>` and `base/<field>` (and `n`, [N, E]).
_PROGRAM_GROUPS = ("with_symbol", "base")


def _canonical(name: str) -> str:
  head, sep, rest = name.partition("/")
  return f"program/{rest}" if sep and head in _PROGRAM_GROUPS else name


def store_dtype(name: str) -> np.dtype:
  """The dtype an array named `name` (e.g. 'trace/regs') is stored in."""
  name = _canonical(name)
  if name in _STORE_DTYPES:
    return np.dtype(_STORE_DTYPES[name])
  leaf = name.rsplit("/", 1)[-1]
  if name.startswith("renders/"):
    return np.dtype(_TOKEN_DTYPE if leaf.endswith("_ids") else _LENGTH_DTYPE)
  if leaf in _INT16_FIELDS:
    return np.dtype(np.int16)
  raise StoreError(f"no storage type for array {name!r}")


_FILL_VALUES = {"program/op": isa.NOP, "program/target": -1,
                "program/target_label": -1, "program/label": -1}


def fill_value(name: str):
  """The padding value of array `name` (its zarr fill value): what every
  row holds past its own length (see `program.pad_to`, `render.compact`)."""
  name = _canonical(name)
  if store_dtype(name) == np.bool_:
    return False
  if name.startswith("renders/") and name.endswith("_ids"):
    return isa.TOK_PAD
  return _FILL_VALUES.get(name, 0)


def read_dtype(name: str) -> np.dtype:
  """The dtype a reader gets: bool and uint64 stay, integers become int32."""
  d = store_dtype(name)
  return d if d in (np.dtype(np.bool_), np.dtype(np.uint64)) else np.dtype(
      np.int32)


# ----------------------------------------------------------- Rows <-> arrays
def rows_to_arrays(rows: Rows) -> dict[str, np.ndarray]:
  """Flattens a host `Rows` batch to `{array name: [B, ...] ndarray}` in the
  storage dtypes.

  Raises:
    StoreError: when a value does not fit its storage type (a row that no
      valid program produces).
  """
  out = {"seed": keys_lib.seeds_from_key_data(rows.key_data),
         "axes": np.asarray(rows.axes)}
  for prefix, tree in (("program", rows.program), ("trace", rows.trace)):
    for f in tree.__dataclass_fields__:
      out[f"{prefix}/{f}"] = np.asarray(getattr(tree, f))
  for rname, render in rows.renders.items():
    for part, tok in (("input", render.input), ("target", render.target)):
      out[f"renders/{rname}/{part}_ids"] = np.asarray(tok.ids)
      out[f"renders/{rname}/{part}_length"] = np.asarray(tok.length)
  return {k: narrow(k, v) for k, v in out.items()}


def narrow(name: str, x: np.ndarray) -> np.ndarray:
  """`x` in array `name`'s storage dtype; StoreError if a value does not
  fit."""
  d = store_dtype(name)
  if x.dtype == d:
    return x
  if d != np.bool_ and x.size:
    info = np.iinfo(d)
    lo, hi = x.min(), x.max()
    if lo < info.min or hi > info.max:
      raise StoreError(f"{name}: values [{lo}, {hi}] do not fit {d}")
  return x.astype(d)


def widen_array(arrays: Mapping[str, np.ndarray], name: str) -> np.ndarray:
  """Array `name` of a read batch at its wide (int32) dtype."""
  return np.asarray(arrays[name]).astype(read_dtype(name), copy=False)


def struct_from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str):
  """A `Program` or `Trace` (`cls`) from the arrays `<prefix>/<field>`."""
  return cls(**{f: widen_array(arrays, f"{prefix}/{f}")
                for f in cls.__dataclass_fields__})


def renders_from_arrays(arrays: Mapping[str, np.ndarray]
                        ) -> dict[str, Render]:
  """{render name: `Render`} from the arrays `renders/<name>/...`."""
  renders = {}
  for name in sorted({k.split("/")[1] for k in arrays
                      if k.startswith("renders/")}):
    tok = lambda part: Tokens(
        ids=widen_array(arrays, f"renders/{name}/{part}_ids"),
        length=widen_array(arrays, f"renders/{name}/{part}_length"))
    renders[name] = Render(input=tok("input"), target=tok("target"))
  return renders


def arrays_to_rows(arrays: Mapping[str, np.ndarray]) -> Rows:
  """The inverse of `rows_to_arrays` (int32 leaves, key_data from seeds)."""
  return Rows(key_data=keys_lib.key_data_from_seeds(arrays["seed"]),
              axes=widen_array(arrays, "axes"),
              program=struct_from_arrays(Program, arrays, "program"),
              trace=struct_from_arrays(Trace, arrays, "trace"),
              renders=renders_from_arrays(arrays))


# ----------------------------------------------------------- metadata
def _ts():
  import tensorstore
  return tensorstore


def write_group(path: str | os.PathLike, attributes: Mapping[str, Any]
                ) -> None:
  """Writes a zarr v3 group's `zarr.json` (deterministic bytes)."""
  path = Path(path)
  path.mkdir(parents=True, exist_ok=True)
  meta = {"zarr_format": 3, "node_type": "group",
          "attributes": dict(attributes)}
  data = json.dumps(meta, indent=2).encode()
  tmp = path / f".zarr.json.{os.getpid()}.tmp"   # processes may race
  tmp.write_bytes(data)
  os.replace(tmp, path / "zarr.json")


def _array_spec(path: Path, name: str, shape: Sequence[int], *,
                part_rows: int, chunk_rows: int,
                codec: Mapping[str, Any] | None) -> dict:
  dtype = store_dtype(name)
  inner = [{"name": "bytes", "configuration": {"endian": "little"}}]
  if dtype.itemsize == 1:
    inner = [{"name": "bytes", "configuration": {}}]
  if codec is not None:
    codec = json.loads(json.dumps(codec))
    if codec.get("name") == "blosc":
      codec["configuration"].setdefault("typesize", dtype.itemsize)
      codec["configuration"].setdefault("blocksize", 0)
      if dtype.itemsize == 1:
        codec["configuration"]["shuffle"] = "noshuffle"
    inner.append(codec)
  rest = list(shape[1:])
  return {
      "driver": "zarr3",
      "kvstore": {"driver": "file", "path": str(path / name) + "/"},
      "metadata": {
          "shape": list(shape),
          "data_type": "bool" if dtype == np.bool_ else dtype.name,
          "chunk_grid": {"name": "regular",
                         "configuration": {"chunk_shape": [part_rows] + rest}},
          "chunk_key_encoding": {"name": "default"},
          "fill_value": fill_value(name),
          "codecs": [{"name": "sharding_indexed", "configuration": {
              "chunk_shape": [chunk_rows] + rest,
              "codecs": inner,
              "index_codecs": [
                  {"name": "bytes", "configuration": {"endian": "little"}},
                  {"name": "crc32c"}],
              "index_location": "end"}}],
      },
  }


class GroupWriter:
  """Writes the arrays of one split's group, one part (shard) at a time.

  Writes go into a tensorstore transaction (which holds a copy of them);
  `commit_part` writes the shards they touched durably. A part may be
  written in several commits (slabs of whole chunks): a shard committed
  again with more chunks has the bytes it would have had from one commit.
  """

  def __init__(self, root: str | os.PathLike, group: str, num_rows: int,
               example: Mapping[str, np.ndarray], *, part_rows: int,
               chunk_rows: int,
               codec: Mapping[str, Any] | None = DEFAULT_CODEC,
               attributes: Mapping[str, Any] | None = None):
    """Creates (or reopens, for a resume) the group's arrays.

    Args:
      root: the store directory.
      group: the group path, e.g. "train" or "eval/len_8".
      num_rows: N, the split's number of rows.
      example: a batch from `rows_to_arrays` giving names and trailing shapes.
      part_rows: rows a shard holds; a multiple of `chunk_rows`.
      chunk_rows: rows an inner (compressed) chunk holds.
      codec: the zarr v3 compression codec of inner chunks (None: raw).
      attributes: the group's attributes.

    Several processes may open the same group at once (each writes its own
    parts): the metadata they write is identical.
    """
    if part_rows % chunk_rows:
      raise StoreError(f"part_rows={part_rows} is not a multiple of "
                       f"chunk_rows={chunk_rows}")
    ts = _ts()
    self.path = Path(root) / group
    parts = group.split("/")
    for i in range(1, len(parts)):  # intermediate groups (e.g. "eval")
      sub = Path(root).joinpath(*parts[:i])
      if not (sub / "zarr.json").exists():
        write_group(sub, {})
    write_group(self.path, attributes or {})
    self.num_rows = num_rows
    self._arrays = {}
    for name, x in example.items():
      spec = _array_spec(self.path, name, (num_rows,) + x.shape[1:],
                         part_rows=part_rows,
                         chunk_rows=min(chunk_rows, part_rows), codec=codec)
      spec.update(create=True, open=True)
      self._arrays[name] = ts.open(spec).result()
    self._txn = None

  def write(self, start: int, arrays: Mapping[str, np.ndarray]) -> None:
    """Writes rows `start:start + B` (B the batch length) of every array."""
    ts = _ts()
    if self._txn is None:
      self._txn = ts.Transaction()
    futures = []
    for name, arr in self._arrays.items():
      x = arrays[name]
      futures.append(arr.with_transaction(self._txn)[
          start:start + x.shape[0]].write(x))
    for f in futures:
      f.result()

  def commit_part(self) -> None:
    """Writes the shards of the rows written since the last commit
    durably (and frees the transaction's copy of them)."""
    if self._txn is not None:
      self._txn.commit_async().result()
      self._txn = None

  def abort(self) -> None:
    if self._txn is not None:
      self._txn.abort()
      self._txn = None


# ----------------------------------------------------------- reading
def _read_json(path: Path) -> dict:
  try:
    return json.loads(path.read_bytes())
  except (OSError, ValueError) as e:
    raise StoreError(f"{path}: unreadable zarr metadata: {e}") from None


def is_store(path: str | os.PathLike) -> bool:
  """Whether `path` is a zarr store written by tinyvm_jax."""
  meta = Path(path) / "zarr.json"
  if not meta.is_file():
    return False
  try:
    m = json.loads(meta.read_bytes())
  except (OSError, ValueError):
    return False
  return ATTR_KEY in m.get("attributes", {})


class Store:
  """A tinyvm_jax zarr store, opened for reading.

  `attrs` holds the root attributes (tier, seed_base, axis_names, renders,
  groups: {group: rows}); `read(group, start, stop)` returns a batch of
  arrays; `read_rows` the same as a `Rows` pytree.
  """

  def __init__(self, path: str | os.PathLike, *,
               cache_bytes: int = 64 << 20):
    self.path = Path(path)
    meta = self.path / "zarr.json"
    if not meta.is_file():
      raise StoreError(f"{self.path}: not a zarr store (no zarr.json)")
    attrs = _read_json(meta).get("attributes", {}).get(ATTR_KEY)
    if not isinstance(attrs, dict) or not isinstance(attrs.get("groups"),
                                                     dict):
      raise StoreError(f"{self.path}: not a tinyvm_jax store (no "
                       f"'{ATTR_KEY}' attributes)")
    self.attrs = attrs
    self._cache_bytes = cache_bytes
    self._context = None
    self._open: dict[tuple[str, str], Any] = {}

  @property
  def groups(self) -> dict[str, int]:
    """{group path: number of rows}, in emit order."""
    return dict(self.attrs["groups"])

  def group_attributes(self, group: str) -> dict:
    """A group's attributes: split, bucket, rows, axis_names, renders and
    shapes (the split's static sizes)."""
    self._check_group(group)
    return _read_json(self.path / group / "zarr.json").get("attributes", {})

  def num_rows(self, group: str) -> int:
    self._check_group(group)
    return int(self.attrs["groups"][group])

  def _check_group(self, group: str) -> None:
    if group not in self.attrs["groups"]:
      raise StoreError(f"{self.path}: no group {group!r}; expected one of "
                       f"{sorted(self.attrs['groups'])}")

  def array_names(self, group: str) -> list[str]:
    """Names of the group's arrays (e.g. 'trace/regs'), sorted."""
    self._check_group(group)
    base = self.path / group
    names = []
    for meta in sorted(base.rglob("zarr.json")):
      m = _read_json(meta)
      if m.get("node_type") == "array":
        names.append(meta.parent.relative_to(base).as_posix())
    return names

  def _array(self, group: str, name: str):
    key = (group, name)
    if key not in self._open:
      ts = _ts()
      if self._context is None:
        self._context = ts.Context({"cache_pool": {
            "total_bytes_limit": self._cache_bytes}})
      path = self.path / group / name
      if not (path / "zarr.json").is_file():
        raise StoreError(f"{self.path}: group {group!r} has no array "
                         f"{name!r}")
      self._open[key] = ts.open(
          {"driver": "zarr3",
           "kvstore": {"driver": "file", "path": str(path) + "/"},
           "recheck_cached_data": False},
          context=self._context, read=True).result()
    return self._open[key]

  def read(self, group: str, start: int = 0, stop: int | None = None, *,
           names: Iterable[str] | None = None, indices=None
           ) -> dict[str, np.ndarray]:
    """Rows `start:stop` (or the rows at `indices`) of a group's arrays.

    Args:
      group: e.g. "train" or "eval/len_8".
      start, stop: a row range (stop defaults to the end).
      names: the arrays to read (default all).
      indices: [B] row indices to read instead of a range (any order).

    Returns:
      {name: [B, ...] ndarray} in the readers' dtypes (int32, bool, uint64).
    """
    n = self.num_rows(group)
    names = list(names) if names is not None else self.array_names(group)
    if indices is not None:
      idx = np.asarray(indices, np.int64)
      if idx.ndim != 1 or (idx.size and (idx.min() < -n or idx.max() >= n)):
        raise IndexError(f"row indices out of range for {n} rows")
      sel = lambda a: a[np.where(idx < 0, idx + n, idx)]
    else:
      stop = n if stop is None else stop
      if not 0 <= start <= stop <= n:
        raise IndexError(f"rows {start}:{stop} out of range for {n} rows")
      sel = lambda a: a[start:stop]
    futures = {name: sel(self._array(group, name)).read() for name in names}
    return {name: f.result().astype(read_dtype(name), copy=False)
            for name, f in futures.items()}

  def read_rows(self, group: str, start: int = 0, stop: int | None = None,
                *, indices=None) -> Rows:
    """Like `read`, as a host `Rows` pytree."""
    return arrays_to_rows(self.read(group, start, stop, indices=indices))

  def iter_batches(self, group: str, batch_size: int, *,
                   names: Iterable[str] | None = None):
    """Yields (start, {name: array}) over the group in order; the last batch
    may be shorter."""
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = self.num_rows(group)
    names = list(names) if names is not None else self.array_names(group)
    for start in range(0, n, batch_size):
      yield start, self.read(group, start, min(n, start + batch_size),
                             names=names)
