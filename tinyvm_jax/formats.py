"""Serialising rows yourself: JSONL in the reference schema, Parquet tables
and zarr arrays (what `python -m tinyvm_jax.emit` writes, a batch at a time).

pyarrow and tensorstore are imported on first use of the Parquet and zarr
functions, not by importing this module.
"""

from tinyvm_jax._src.io import jsonl_chunks as _jsonl_chunks

# JSONL in the reference schema
from tinyvm_jax._src.io.jsonl import JsonBatch
from tinyvm_jax._src.io.jsonl import parse_rows
from tinyvm_jax._src.io.jsonl import rows_from_json
from tinyvm_jax._src.io.jsonl import rows_to_jsonl

# Parquet tables
from tinyvm_jax._src.io.parquet import rows_to_table
from tinyvm_jax._src.io.parquet import write_parquet

# zarr arrays
from tinyvm_jax._src.io.zarr_store import GroupWriter
from tinyvm_jax._src.io.zarr_store import parse_codec
from tinyvm_jax._src.io.zarr_store import rows_to_arrays


def prepare_tables() -> None:
  """Builds `rows_to_jsonl`'s static chunk tables now (once a process, about
  0.3 s), so that a timed or latency-bound first call does not pay for it."""
  _jsonl_chunks.tables()


__all__ = (
    # JSONL in the reference schema
    "JsonBatch",
    "parse_rows",
    "prepare_tables",
    "rows_from_json",
    "rows_to_jsonl",
    # Parquet tables
    "rows_to_table",
    "write_parquet",
    # zarr arrays
    "GroupWriter",
    "parse_codec",
    "rows_to_arrays",
)
