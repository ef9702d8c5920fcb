"""Parquet writer: every reference row read back equals its JSON line."""

import gzip
import json

import jax
import numpy as np
import pytest

from conftest import DATA, row_files
from tinyvm_jax._src.io import jsonl

import pyarrow as pa
import pyarrow.parquet as pq
from tinyvm_jax._src.io import parquet


def load(name):
  with gzip.open(DATA / f"{name}.jsonl.gz", "rb") as f:
    raw = f.read()
  return raw, jsonl.rows_from_json(jsonl.parse_rows(raw))


def table_of(batch, **kw):
  return parquet.rows_to_table(
      batch.rows, tier=batch.tier, split=batch.split, bucket=batch.bucket,
      axis_names=batch.axis_names, render_names=batch.render_names,
      probe_step=batch.probe_step, **kw)


def as_lines(rows):
  return [json.dumps(r, separators=(",", ":")).encode() for r in rows]


@pytest.mark.parametrize("name", row_files())
def test_read_back_equals_json_rows(tmp_path, name):
  raw, batch = load(name)
  path = tmp_path / "rows.parquet"
  parquet.write_parquet(table_of(batch), path)
  back = pq.read_table(path)
  rows = back.to_pylist()
  assert rows == [json.loads(line) for line in raw.splitlines()]
  # same keys in the same order, same values: the very same bytes
  assert as_lines(rows) == raw.splitlines()
  assert back.schema.field("meta").type.field("seed").type == pa.uint64()


def test_hub_schema_of_tier1():
  """Field names, order and types of the Hub copy of tinyvm-tier1."""
  _, batch = load("tier1_train")
  ints = pa.list_(pa.int64())
  want = pa.schema([
      ("meta", pa.struct([
          ("tier", pa.string()), ("split", pa.string()),
          ("bucket", pa.string()), ("seed", pa.uint64()),
          ("axes", pa.struct([("n", pa.int64()), ("k", pa.int64())])),
          ("renders", pa.list_(pa.string()))])),
      ("program", pa.list_(pa.struct([
          ("op", pa.string()), ("args", ints), ("label", pa.string()),
          ("target", pa.string())]))),
      ("trace", pa.struct([
          ("steps", pa.list_(pa.struct([
              ("pc", pa.int64()), ("regs", ints), ("stack", ints),
              ("emitted", pa.int64())]))),
          ("output", ints), ("halted", pa.bool_())])),
      ("renders", pa.struct([("direct", pa.struct([
          ("input_ids", ints), ("target_ids", ints),
          ("input_text", pa.string()), ("target_text", pa.string())]))])),
  ])
  assert table_of(batch).schema.equals(want)


@pytest.mark.parametrize("compression", ["zstd", "snappy"])
def test_compressions(tmp_path, compression):
  raw, batch = load("tier0_eval_all")
  path = tmp_path / "rows.parquet"
  parquet.write_parquet(table_of(batch), path, compression=compression,
                        row_group_size=7)
  meta = pq.ParquetFile(path).metadata
  assert meta.num_row_groups == -(-meta.num_rows // 7)
  assert meta.row_group(0).column(0).compression == compression.upper()
  assert as_lines(parquet.read_parquet(path).to_pylist()) == raw.splitlines()


def test_given_texts_and_empty_batch():
  raw, batch = load("tier1_eval_len_16")
  rows = jsonl.parse_rows(raw)
  texts = {"direct": ([r["renders"]["direct"]["input_text"] for r in rows],
                      [r["renders"]["direct"]["target_text"] for r in rows])}
  assert as_lines(table_of(batch, texts=texts).to_pylist()) == raw.splitlines()
  empty = batch._replace(rows=jax.tree_util.tree_map(lambda x: x[:0],
                                                     batch.rows))
  assert table_of(empty).num_rows == 0


def test_datasets_reads_it(tmp_path):
  import datasets   # the hub extra (the README's test install has it)
  raw, batch = load("tier2_eval_easy")
  path = tmp_path / "rows.parquet"
  parquet.write_parquet(table_of(batch), path)
  ds = datasets.load_dataset("parquet", data_files=str(path), split="train",
                             cache_dir=str(tmp_path / "cache"))
  assert as_lines(list(ds)) == raw.splitlines()


def test_bad_input_is_a_clear_error():
  _, batch = load("tier1_eval_len_8")
  with pytest.raises(TypeError, match="Rows batch"):
    parquet.rows_to_table({}, tier="t", split="s", bucket=None,
                          axis_names=(), render_names=())
  with pytest.raises(ValueError, match="axes has shape"):
    parquet.rows_to_table(batch.rows, tier="t", split="s", bucket=None,
                          axis_names=("n",), render_names=("direct",))
  with pytest.raises(ValueError, match="probe_step 99"):
    table_of(batch._replace(probe_step=np.full(50, 99)))
  with pytest.raises(ValueError, match="strings each"):
    table_of(batch, texts={"direct": (["a"], ["b"])})


@pytest.mark.parametrize("name", row_files())
def test_concat_consuming_joins_as_arrow_does(tmp_path, name):
  """Slices of a golden batch's columns joined a struct field at a time
  equal Arrow's own join and write the same Parquet bytes; the input list
  is emptied."""
  _, batch = load(name)
  table = table_of(batch)
  n = table.num_rows
  cuts = sorted({0, n, n // 3, n // 2})
  joined = []
  for name_ in table.column_names:
    col = table.column(name_).chunk(0)
    parts = [col.slice(a, b - a) for a, b in zip(cuts, cuts[1:])]
    expect = pa.concat_arrays(parts)
    got = parquet.concat_consuming(parts)
    assert parts == [] and got.equals(expect)
    joined.append(got)
  ours = pa.Table.from_arrays(joined, schema=table.schema)
  parquet.write_parquet(ours, tmp_path / "a.parquet")
  parquet.write_parquet(table.combine_chunks(), tmp_path / "b.parquet")
  assert (tmp_path / "a.parquet").read_bytes() == (
      tmp_path / "b.parquet").read_bytes()
