"""Speed of the row writers: rows/s and MB/s of `rows_to_jsonl` and
`rows_to_table` (+ `write_parquet`) on Tier 1 shaped rows.

The rows are the reference's Tier 1 train rows of tests/data, tiled to
`--rows`. Times are the best of `--repeat` runs in CPU seconds of this
process (on a shared machine wall time mostly measures the neighbours).
Parquet file sizes are measured on the rows untiled, as repeated rows
compress unrealistically well. Prints one line per measurement, then a JSON
summary line.

  python benchmarks/serialize.py --rows 20000
  python benchmarks/serialize.py --tier1-mix   # the full Tier 1 emit's JSONL
"""

import argparse
import gzip
import json
import os
import pathlib
import tempfile
import time

import numpy as np

from tinyvm_jax import formats

DATA = pathlib.Path(__file__).resolve().parents[1] / "tests" / "data"


def tile(batch: formats.JsonBatch, n: int) -> formats.JsonBatch:
  """`batch` repeated to `n` rows."""
  reps = -(-n // batch.rows.key_data.shape[0])

  def rep(x):
    x = np.asarray(x)
    return np.concatenate([x] * reps)[:n]

  import jax
  rows = jax.tree_util.tree_map(rep, batch.rows)
  return batch._replace(rows=rows)


def best_of(fn, repeat: int) -> tuple[float, object]:
  """Best CPU time of `repeat` calls (this process's CPU seconds, which a
  machine shared with other jobs disturbs less than wall time), and the
  result."""
  best, out = float("inf"), None
  for _ in range(repeat):
    t0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    best = min(best, time.process_time() - t0)
    best_of.wall = min(best_of.wall, time.perf_counter() - w0)
  return best, out


best_of.wall = float("inf")  # best wall time of the last measurement


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--rows", type=int, default=20000)
  ap.add_argument("--file", default="tier1_train",
                  help="tests/data file to tile")
  ap.add_argument("--repeat", type=int, default=3)
  ap.add_argument("--no-parquet", action="store_true")
  ap.add_argument("--tier1-mix", action="store_true",
                  help="estimate rows_to_jsonl over the full Tier 1 emit "
                  "(200,000 train rows, 20,000 of each eval bucket)")
  args = ap.parse_args()
  if args.tier1_mix:
    return tier1_mix(args.repeat)

  with gzip.open(DATA / f"{args.file}.jsonl.gz", "rb") as f:
    raw = f.read()
  untiled = formats.rows_from_json(formats.parse_rows(raw))
  batch = tile(untiled, args.rows)
  kw = dict(tier=batch.tier, split=batch.split, bucket=batch.bucket,
            axis_names=batch.axis_names, render_names=batch.render_names,
            probe_step=batch.probe_step)
  n = args.rows
  t0 = time.process_time()
  formats.prepare_tables()  # one-off, not part of the per-batch cost
  build = time.process_time() - t0
  formats.rows_to_jsonl(untiled.rows, **kw)  # warm up
  print(f"chunk tables: built once in {build:.2f} s")
  result = {"rows": n, "file": args.file, "tables_s": round(build, 3)}

  best_of.wall = float("inf")
  dt, blob = best_of(lambda: formats.rows_to_jsonl(batch.rows, **kw),
                     args.repeat)
  mb = len(blob) / 1e6
  print(f"rows_to_jsonl: {dt:.3f} s CPU, {n / dt:,.0f} rows/s, "
        f"{mb / dt:,.0f} MB/s ({mb:.1f} MB); best wall {best_of.wall:.3f} s")
  result.update(jsonl_s=round(dt, 4), jsonl_rows_per_s=round(n / dt),
                jsonl_mb_per_s=round(mb / dt, 1), jsonl_mb=round(mb, 2),
                jsonl_wall_s=round(best_of.wall, 4))

  if not args.no_parquet:
    best_of.wall = float("inf")
    dt, table = best_of(lambda: formats.rows_to_table(batch.rows, **kw),
                        args.repeat)
    print(f"rows_to_table: {dt:.3f} s CPU, {n / dt:,.0f} rows/s, "
          f"{mb / dt:,.0f} MB/s of JSONL-equivalent; best wall "
          f"{best_of.wall:.3f} s")
    result.update(table_s=round(dt, 4), table_rows_per_s=round(n / dt),
                  table_wall_s=round(best_of.wall, 4))
    small = formats.rows_to_table(untiled.rows, **kw)
    per_row = small.num_rows
    with tempfile.TemporaryDirectory() as tmp:
      for comp in ("zstd", "snappy"):
        path = os.path.join(tmp, f"x.{comp}.parquet")
        dt, _ = best_of(lambda: formats.write_parquet(
            table, path, compression=comp), args.repeat)
        formats.write_parquet(small, path, compression=comp)
        size = os.path.getsize(path) / per_row
        print(f"write_parquet[{comp}]: {dt:.3f} s, {n / dt:,.0f} rows/s; "
              f"{size:,.0f} bytes/row ({per_row} untiled rows)")
        result[f"parquet_{comp}_s"] = round(dt, 4)
        result[f"parquet_{comp}_bytes_per_row"] = round(size)
  print(json.dumps(result))


def tier1_mix(repeat: int, rows: int = 4096) -> None:
  """rows_to_jsonl's time for the full Tier 1 emit, from `rows` tiled rows
  of each split's reference file."""
  sizes = {"tier1_train": 200_000}
  sizes.update({f"tier1_eval_len_{n}": 20_000
                for n in (8, 16, 32, 48, 64, 96, 128)})
  formats.prepare_tables()
  total_s = total_bytes = 0.0
  for name, count in sizes.items():
    with gzip.open(DATA / f"{name}.jsonl.gz", "rb") as f:
      batch = tile(formats.rows_from_json(formats.parse_rows(f.read())), rows)
    kw = dict(tier=batch.tier, split=batch.split, bucket=batch.bucket,
              axis_names=batch.axis_names, render_names=batch.render_names)
    dt, blob = best_of(lambda: formats.rows_to_jsonl(batch.rows, **kw), repeat)
    total_s += dt / rows * count
    total_bytes += len(blob) / rows * count
    print(f"{name:20s} {rows / dt:9,.0f} rows/s {len(blob) / dt / 1e6:5.0f} "
          f"MB/s  -> {dt / rows * count:5.2f} s for {count:,} rows")
  n = sum(sizes.values())
  print(f"full Tier 1: {total_s:.2f} s CPU for {n:,} rows "
        f"({total_bytes / 1e9:.2f} GB): {n / total_s:,.0f} rows/s, "
        f"{total_bytes / total_s / 1e6:.0f} MB/s")
  print(json.dumps({"tier1_jsonl_s": round(total_s, 2),
                    "tier1_rows_per_s": round(n / total_s),
                    "tier1_gb": round(total_bytes / 1e9, 3)}))


if __name__ == "__main__":
  main()
