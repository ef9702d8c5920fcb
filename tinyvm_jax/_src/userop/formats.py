"""Tier 4 rows on the host: JSON row dicts (JSONL lines), Parquet tables and
zarr arrays, and back.

Row format (one JSON object a line, compact separators; the layout of the
reference-made file `userop_double_first300.jsonl.gz`):

    {"meta": {"tier": "tier4_userop",
              "split": "train"|"eval", "bucket": name|null,   # emitted rows
              "seed": <row key, unsigned 64-bit: hi << 32 | lo>,
              "opcode_spec": {"name": "MAX", "n_args": 3,
                              "decomposition": [<instruction>, ...]},
              "k_demos": 2, "n_target": 20, "use_stack": true,
              "renders": ["userop_direct", "userop_with_decomposition"]},
     "demos": [{"with_symbol": [<instruction>, ...],
                "base": [<instruction>, ...],
                "trace": {"steps": [...], "output": [...], "halted": true}},
               ...],                       # k_demos entries
     "target": {"with_symbol": ..., "base": ..., "trace": ...},
     "renders": {"userop_direct": {"input_ids", "target_ids", "input_text",
                                   "target_text"},
                 "userop_with_decomposition": {...}}}

`split` and `bucket` are written for rows of the Tier 4 dataset (`tier`),
and left out otherwise (`generate_userop_rows` rows, the reference's file).
Instructions are the reference's `{"op", "args", "label", "target"}`; a call
is `{"op": "USEROP_<slot - 16>", "args": [registers]}`. In `decomposition`,
register arguments are placeholder positions and label and target are null.
The slot is the one of the symbol `name`. Demo n values are not stored: they
are redrawn from `seed` (as are the programs) by `check_userop_rows(...,
rebuild=True)`.

Parquet: the same four top-level columns (meta, demos, target, renders),
integers int64, `seed` uint64; records read back equal the JSON rows.

zarr (one group a split, `[N, ...]` arrays in the storage dtypes of
`io.zarr_store`): `seed` [N] uint64, `axes` [N, 4], `n` [N, E],
`with_symbol/<field>` and `base/<field>` ([N, E, P] Program fields),
`trace/<field>` ([N, E, S] Trace fields), `renders/<name>/{input_ids,
input_length, target_ids, target_length}`.
"""

import json
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from tinyvm_jax._src import interpreter
from tinyvm_jax._src import isa
from tinyvm_jax._src import keys as keys_lib
from tinyvm_jax._src import program as program_lib
from tinyvm_jax._src import text as text_lib
from tinyvm_jax._src.io import parquet
from tinyvm_jax._src.io import zarr_store
from tinyvm_jax._src.types import Program, Render, Trace
from tinyvm_jax._src.userop import binding
from tinyvm_jax._src.userop.generate import UseropRow
from tinyvm_jax._src.userop.shapes import RENDER_NAMES

TIER = "tier4_userop"


def _take(tree, i):
  return jax.tree_util.tree_map(lambda x: x[i], tree)


def row_userops(axes: np.ndarray, userop, where: str
                ) -> list[binding.UserOp]:
  """The userop of each of [B, 4] rows: `userop` (one for all, or one a
  row), or None: the default userop named by axes[:, 0]."""
  b = axes.shape[0]
  if userop is None:
    names = isa.DEFAULT_USEROP_SYMBOLS
    return [binding.DEFAULT_USEROPS[names[int(i)]] for i in axes[:, 0]]
  if not isinstance(userop, (list, tuple)):
    return [binding.check_userop(userop, where)] * b
  if len(userop) != b:
    raise ValueError(f"{where}: {len(userop)} userops for {b} rows")
  return [binding.check_userop(u, where) for u in userop]


def _render_json(r: Render, where: str) -> dict[str, Any]:
  out = {}
  for part, tok in (("input", r.input), ("target", r.target)):
    n = int(tok.length)
    if n > tok.ids.shape[-1]:
      raise ValueError(f"{where}.{part}: {n} tokens overflow the static "
                       f"length {tok.ids.shape[-1]}")
    out[f"{part}_ids"] = np.asarray(tok.ids[:n]).tolist()
  for part in ("input", "target"):
    out[f"{part}_text"] = text_lib.detokenize(out[f"{part}_ids"])
  return out


def _part_json(row: UseropRow, j: int) -> dict[str, Any]:
  base = _take(row.base, j)
  if int(base.length) > base.op.shape[0]:
    raise ValueError(f"program {j}: base form overflowed its "
                     f"{base.op.shape[0]} rows")
  trace = _take(row.trace, j)
  interpreter.raise_for_error(trace)
  return {"with_symbol": program_lib.to_json(_take(row.with_symbol, j)),
          "base": program_lib.to_json(base),
          "trace": interpreter.trace_to_json(trace)}


def row_to_json(row: UseropRow, userop=None, *, split: str | None = None,
                bucket: str | None = None) -> dict[str, Any]:
  """The row dict (layout in the module docstring) of one unbatched row.

  Args:
    row: an unbatched `UseropRow` (host or device arrays).
    userop: its `UserOp`; None: the default userop of its axes.
    split, bucket: written to meta when `split` is given (dataset rows).

  Raises:
    ValueError: the row is batched, a program or render overflowed its
      static size; `interpreter.VMError` if a base program failed to run.
  """
  row = jax.tree_util.tree_map(np.asarray, row)
  if row.n.ndim != 1:
    raise ValueError(f"row_to_json takes one row (n of rank 1), got n of "
                     f"shape {row.n.shape}; use rows_to_json for batches")
  userop = row_userops(row.axes[None], userop, "row_to_json")[0]
  e, k = row.n.shape[0], int(row.axes[1])
  parts = [_part_json(row, j) for j in list(range(k)) + [e - 1]]
  names = [r for r in RENDER_NAMES if r in row.renders]
  meta = {"tier": TIER}
  if split is not None:
    meta.update(split=split, bucket=bucket)
  meta.update(seed=int(keys_lib.seeds_from_key_data(row.key_data)),
              opcode_spec=userop.to_spec(), k_demos=k,
              n_target=int(row.axes[2]), use_stack=bool(row.axes[3]),
              renders=names)
  return {"meta": meta, "demos": parts[:-1], "target": parts[-1],
          "renders": {r: _render_json(row.renders[r], f"renders.{r}")
                      for r in names}}


def rows_to_json(rows: UseropRow, userop=None, *, split: str | None = None,
                 bucket: str | None = None) -> list[dict[str, Any]]:
  """`row_to_json` of each row of a batch (`userop`: one for all, a
  sequence of one a row, or None for the defaults of the rows' axes)."""
  rows = jax.tree_util.tree_map(np.asarray, rows)
  if rows.n.ndim != 2:
    raise ValueError(f"rows_to_json takes a batch (n of rank 2), got n of "
                     f"shape {rows.n.shape}")
  ops = row_userops(rows.axes, userop, "rows_to_json")
  return [row_to_json(_take(rows, i), ops[i], split=split, bucket=bucket)
          for i in range(rows.n.shape[0])]


def rows_to_jsonl(rows: UseropRow, userop=None, *, split: str | None = None,
                  bucket: str | None = None) -> bytes:
  """The JSONL bytes of a batch: one compact JSON row a line."""
  return b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n"
                  for r in rows_to_json(rows, userop, split=split,
                                        bucket=bucket))


# ----------------------------------------------------------------- Parquet
def schema(render_names: Sequence[str] = RENDER_NAMES):
  """The Arrow schema of Tier 4 rows with these renders."""
  pa = parquet.arrow()
  instr = pa.list_(parquet.instruction_type())
  spec = pa.struct([("name", pa.string()), ("n_args", pa.int64()),
                    ("decomposition", instr)])
  meta = pa.struct([
      ("tier", pa.string()), ("split", pa.string()), ("bucket", pa.string()),
      ("seed", pa.uint64()), ("opcode_spec", spec), ("k_demos", pa.int64()),
      ("n_target", pa.int64()), ("use_stack", pa.bool_()),
      ("renders", pa.list_(pa.string()))])
  part = pa.struct([("with_symbol", instr), ("base", instr),
                    ("trace", parquet.trace_type())])
  return pa.schema([("meta", meta), ("demos", pa.list_(part)),
                    ("target", part),
                    ("renders", parquet.renders_type(render_names))])


def _parts_column(rows: UseropRow, slots: np.ndarray, part_type):
  """The struct array {with_symbol, base, trace} of the programs at
  [N, 2] (row, slot) indices."""
  pa = parquet.arrow()
  pick = lambda tree: jax.tree_util.tree_map(
      lambda x: x[slots[:, 0], slots[:, 1]], tree)
  return pa.StructArray.from_arrays(
      [parquet.program_column(pick(rows.with_symbol)),
       parquet.program_column(pick(rows.base)),
       parquet.trace_column(pick(rows.trace))],
      fields=list(part_type))


def rows_to_table(rows: UseropRow, *, split: str, bucket: str | None,
                  userop=None, render_names: Sequence[str] = RENDER_NAMES):
  """An Arrow table of a batch of rows, equal to their JSON rows (built
  column by column from the arrays, as `io.parquet.rows_to_table`)."""
  pa = parquet.arrow()
  rows = jax.tree_util.tree_map(np.asarray, rows)
  b, e = rows.n.shape
  ops = row_userops(rows.axes, userop, "rows_to_table")
  want = schema(render_names)
  k = rows.axes[:, 1].astype(np.int64)
  uniq = sorted(set(ops), key=ops.index)
  specs = pa.array([u.to_spec() for u in uniq],
                   want.field("meta").type.field("opcode_spec").type)
  meta = pa.StructArray.from_arrays(
      [pa.repeat(pa.scalar(TIER), b), pa.repeat(pa.scalar(split), b),
       pa.repeat(pa.scalar(bucket, pa.string()), b),
       pa.array(keys_lib.seeds_from_key_data(rows.key_data), pa.uint64()),
       specs.take(pa.array([uniq.index(u) for u in ops])), pa.array(k),
       pa.array(rows.axes[:, 2].astype(np.int64)),
       pa.array(rows.axes[:, 3] != 0),
       parquet.list_array(pa.array(list(render_names) * b),
                          np.full(b, len(render_names)))],
      fields=list(want.field("meta").type))
  part_type = want.field("target").type
  demo_slots = np.array([(i, j) for i in range(b) for j in range(k[i])],
                        np.int64).reshape(-1, 2)
  target_slots = np.stack([np.arange(b), np.full(b, e - 1)], -1)
  renders = [pa.StructArray.from_arrays(
      [parquet.token_ids_column(r.input), parquet.token_ids_column(r.target),
       parquet.token_texts_column(r.input),
       parquet.token_texts_column(r.target)],
      names=["input_ids", "target_ids", "input_text", "target_text"])
             for r in (rows.renders[n] for n in render_names)]
  columns = [meta,
             parquet.list_array(_parts_column(rows, demo_slots, part_type), k),
             _parts_column(rows, target_slots, part_type),
             pa.StructArray.from_arrays(renders, names=list(render_names))]
  return pa.Table.from_arrays(columns, schema=want)


# ----------------------------------------------------------------- zarr
def rows_to_arrays(rows: UseropRow) -> dict[str, np.ndarray]:
  """A batch as `{array name: [B, ...] ndarray}` in the storage dtypes
  (`io.zarr_store`, whose `GroupWriter` writes them).

  Raises:
    zarr_store.StoreError: a value does not fit its storage type.
  """
  out = {"seed": keys_lib.seeds_from_key_data(rows.key_data),
         "axes": np.asarray(rows.axes), "n": np.asarray(rows.n)}
  for prefix in ("with_symbol", "base", "trace"):
    tree = getattr(rows, prefix)
    for f in tree.__dataclass_fields__:
      out[f"{prefix}/{f}"] = np.asarray(getattr(tree, f))
  for name, render in rows.renders.items():
    for part, tok in (("input", render.input), ("target", render.target)):
      out[f"renders/{name}/{part}_ids"] = np.asarray(tok.ids)
      out[f"renders/{name}/{part}_length"] = np.asarray(tok.length)
  return {k: zarr_store.narrow(k, v) for k, v in out.items()}


def arrays_to_rows(arrays: Mapping[str, np.ndarray]) -> UseropRow:
  """The inverse of `rows_to_arrays` (int32 leaves, key_data from seeds),
  e.g. of `zarr_store.Store.read(group, start, stop)`."""
  seed = np.asarray(arrays["seed"], np.uint64)
  key_data = keys_lib.key_data_from_seeds(seed)
  wide = lambda k: zarr_store.widen_array(arrays, k)
  programs = {p: zarr_store.struct_from_arrays(Program, arrays, p)
              for p in ("with_symbol", "base")}
  trace = zarr_store.struct_from_arrays(Trace, arrays, "trace")
  renders = zarr_store.renders_from_arrays(arrays)
  renders = {r: renders[r] for r in RENDER_NAMES if r in renders}
  return UseropRow(key_data=key_data, axes=wide("axes"), n=wide("n"),
                   trace=trace, renders=renders, **programs)
