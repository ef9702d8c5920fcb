"""The emit's stages, each alone, and the emit with 0, 1, 2 serialization
workers: how the host side scales with cores.

Part 1 times each stage of the emit on rows of every split of the tier
(`--stage_rows` of each) through the public API, in CPU seconds of this
process (every thread) per million rows of the dataset: each split's cost a
row weighted by its share of the dataset's rows (`--mix=dataset`, the
default; `--mix=train`: train rows only, which are smaller than the
dataset's average). Core-seconds, which a machine shared with other jobs
disturbs less than wall time. It also prints the dataset's CPU floor: the
sum of the stages an emit without workers runs, times its rows, and that
over the machine's cores: no emit of these bytes on this machine is
faster (but for generation, timed at the split's full sizes, which the
emit's row classes undercut). Stages: generate (the jitted `tinyvm_jax.generate`, at the
split's full sizes: an upper bound of the emit's row-class kernel), device
-> host copy and row cut, zarr encode + write, JSONL serialization, Arrow
table, Parquet encode (zstd), pickling to and from a worker (the emit's
side and the worker's), sha256 of every file's bytes, and disk writes
(+ fsync). The `where` column says which thread or process runs each with
`--workers` >= 1.

Part 2 runs `python -m tinyvm_jax.emit` (all formats, a warm compilation
cache) once a `--workers` value, each into an empty folder; wall and CPU
time, ratio to the first value's wall time (the baseline, measured in the
same run), and whether the manifests' files are identical. Ends with one
JSON line holding the load average before and after.

  python benchmarks/emit_stages.py --train_size=40000 --eval_size=2000
  python benchmarks/emit_stages.py --tier=tier1 --workers=0,2   # full Tier 1
  python benchmarks/emit_stages.py --no_emits   # the stages and the floor
"""

import argparse
import hashlib
import importlib.util
import json
import os
import pickle
import shutil
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

import tinyvm_jax
from tinyvm_jax import formats

sys.path.insert(0, str(Path(__file__).resolve().parent))
import emit as emit_bench  # noqa: E402  (benchmarks/emit.py: _run, _size)

RENDERS = ("direct",)
_NO_WORKERS = ("generate", "copy_trim", "zarr", "jsonl_serialize",
               "arrow_table", "parquet_encode", "sha256", "disk_write")


def _cpu(fn, repeat: int = 3):
  """Least CPU seconds (every thread of this process) of `repeat` calls,
  and the last result."""
  best, out = float("inf"), None
  for _ in range(repeat):
    t0 = time.process_time()
    out = fn()
    best = min(best, time.process_time() - t0)
  return best, out


def _generate(split: str, bucket, batch: int, n: int):
  """Generation of `n` rows of a split, `batch` at a time, timed; the
  device batches."""
  gen = lambda idx: tinyvm_jax.generate("tier1", 0, split, bucket, idx,
                                        renders=RENDERS)   # jitted inside
  starts = range(0, n, batch)
  jax.block_until_ready(gen(np.arange(batch)))    # compile, untimed
  return _cpu(lambda: [jax.block_until_ready(gen(np.arange(s, s + batch)))
                       for s in starts])


def _to_host(device_batches, n: int):
  """Device -> host copy of every batch and the cut to `n` rows."""
  def copy():
    host = [jax.device_get(b) for b in device_batches]
    rows = jax.tree.map(lambda *xs: np.concatenate(xs), *host)
    return jax.tree.map(lambda x: x[:n], rows)
  return _cpu(copy)


def _zarr(rows, tmp: Path, n: int, split: str):
  """rows_to_arrays + one GroupWriter part (encode, compress, write)."""
  def write():
    arrays = formats.rows_to_arrays(rows)
    root = Path(tempfile.mkdtemp(dir=tmp))
    w = formats.GroupWriter(root, split, n, arrays, part_rows=n,
                            chunk_rows=1024,
                            codec=formats.parse_codec("zstd:1"))
    w.write(0, arrays)
    w.commit_part()
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
  return _cpu(write)


def _hash_and_disk(blob: bytes, tmp: Path):
  """sha256 of `blob`; writing it to a file with fsync."""
  h, _ = _cpu(lambda: hashlib.sha256(blob).hexdigest())

  def write():
    path = tmp / "blob"
    with open(path, "wb") as f:
      f.write(blob)
      f.flush()
      os.fsync(f.fileno())
    path.unlink()
  d, _ = _cpu(write)
  return h, d


def _serialize(rows, tmp: Path, split: str, bucket):
  """JSONL bytes, Arrow table, Parquet encode: (seconds, result) each."""
  kw = dict(tier="tier1", split=split, bucket=bucket, render_names=RENDERS,
            axis_names=tinyvm_jax.get_tier("tier1").axis_names,
            probe_step=None)
  formats.prepare_tables()   # once a process (a worker: once at start)
  jsonl = _cpu(lambda: formats.rows_to_jsonl(rows, **kw))
  table = _cpu(lambda: formats.rows_to_table(rows, **kw))
  path = tmp / "part.parquet"
  encode = _cpu(lambda: formats.write_parquet(table[1], path))
  return jsonl, table, (encode[0], path.read_bytes())


def _pickling(rows, blob: bytes, table, parquet: bytes):
  """Moving work to the workers and back: a batch's rows out, its JSONL
  bytes and table back, a part's table out and its Parquet bytes back.
  (The emit's side: dumps out, loads back; the worker's side: the
  others), the least of 5 tries each."""
  dump = lambda x: pickle.dumps(x, protocol=pickle.HIGHEST_PROTOCOL)
  out, back = (rows, table), (blob, table, parquet)
  out_p, back_p = [dump(x) for x in out], [dump(x) for x in back]
  emit_side = _cpu(lambda: ([dump(x) for x in out],
                            [pickle.loads(x) for x in back_p]), 5)[0]
  worker_side = _cpu(lambda: ([pickle.loads(x) for x in out_p],
                              [dump(x) for x in back]), 5)[0]
  return emit_side, worker_side


def split_stages(split: str, bucket, rows_n: int, batch: int) -> dict:
  """{stage: CPU seconds a row} of `rows_n` rows of one split."""
  tmp = Path(tempfile.mkdtemp(prefix="tinyvm-stages-"))
  try:
    g, device = _generate(split, bucket, batch, rows_n)
    c, rows = _to_host(device, rows_n)
    del device
    z, zarr_bytes = _zarr(rows, tmp, rows_n, split)
    (j, blob), (t, table), (p, parquet) = _serialize(rows, tmp, split, bucket)
    ipc, ipc_worker = _pickling(rows, blob, table, parquet)
    written = blob + parquet   # zarr's own writes are in its stage
    h, d = _hash_and_disk(written, tmp)
    h *= (len(written) + zarr_bytes) / len(written)   # every file's hash
  finally:
    shutil.rmtree(tmp)
  costs = dict(generate=g, copy_trim=c, zarr=z, jsonl_serialize=j,
               arrow_table=t, parquet_encode=p, pickle_emit_side=ipc,
               pickle_worker_side=ipc_worker, sha256=h, disk_write=d)
  out = {k: v / rows_n for k, v in costs.items()}
  out["jsonl_bytes"] = len(blob) / rows_n
  return out


_WHERE = {
    "generate": "device (the jitted kernel)",
    "copy_trim": "host thread (serial)",
    "zarr": "zarr writer thread (serial; tensorstore threads)",
    "jsonl_serialize": "workers (parallel)",
    "arrow_table": "workers (parallel)",
    "parquet_encode": ("workers (parallel; in-thread: parquet writer "
                       "thread)"),
    "pickle_emit_side": "pool threads of the emit (serial)",
    "pickle_worker_side": "workers (parallel)",
    "sha256": "writer threads + finish (serial)",
    "disk_write": "writer threads (serial, I/O)",
}


def dataset_splits(tier: str, train_size, eval_size, mix: str):
  """[(split, bucket, rows in the dataset)] of the emit's settings
  (`configs/<tier>.py` unless sizes are given); train only for
  `mix="train"`."""
  path = Path(__file__).resolve().parents[1] / "configs" / f"{tier}.py"
  spec = importlib.util.spec_from_file_location("config", path)
  config = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(config)
  c = config.get_config()
  train = c.train_size if train_size is None else train_size
  ev = c.eval_size if eval_size is None else eval_size
  out = [("train", None, train)]
  if mix == "dataset":
    out += [("eval", b.name, ev)
            for b in tinyvm_jax.get_tier(tier).eval_buckets]
  return out


def measure_stages(splits, rows_n: int, batch: int) -> dict:
  """{stage: (seconds a million dataset rows a core, where it runs)}, and
  the dataset's rows and JSONL bytes a row, from each split's costs
  weighted by its rows."""
  total = sum(n for _, _, n in splits)
  mixed = {}
  for split, bucket, n in splits:
    got = split_stages(split, bucket, min(rows_n, n), batch)
    print(f"  {split}/{bucket or '-'}: {n:,} rows, "
          f"{got['jsonl_bytes']:,.0f} JSONL bytes a row", flush=True)
    for k, v in got.items():
      mixed[k] = mixed.get(k, 0.0) + v * n / total
  out = {k: (round(v * 1e6, 2), _WHERE[k]) for k, v in mixed.items()
         if k in _WHERE}
  out["bytes_per_row"] = (round(mixed["jsonl_bytes"]), "JSONL")
  return out, total


def cpu_floor(stages: dict, rows: int, cores: int) -> dict:
  """The dataset's CPU seconds in the stages an emit without workers runs,
  and that over `cores`: the least wall any emit of it could take here
  (start-up and compilation not counted)."""
  cpu = sum(stages[k][0] for k in _NO_WORKERS) * rows / 1e6
  return {"rows": rows, "cpu_seconds": round(cpu, 1), "cores": cores,
          "floor_wall_seconds": round(cpu / cores, 1)}


def print_stages(stages: dict) -> None:
  print(f"{'stage':>16}  {'s / 1M rows / core':>18}  where")
  for name, (cost, where) in stages.items():
    print(f"{name:>16}  {cost:>18,.1f}  {where}", flush=True)


def run_emits(args) -> dict:
  """One all-formats emit a --workers value; wall, CPU, manifest."""
  root = Path(tempfile.mkdtemp(prefix="tinyvm-emit-w-"))
  sizes = [f"--config.{k}={v}" for k, v in (("train_size", args.train_size),
                                            ("eval_size", args.eval_size))
           if v is not None]
  cmd = [sys.executable, "-m", "tinyvm_jax.emit", f"--tier={args.tier}",
         f"--seed={args.seed}"] + sizes
  emit_bench._run(cmd + [f"--out={root / 'warm'}", "--formats=zarr",
                         "--config.train_size=2048", "--config.eval_size=64"])
  out, files = {}, {}
  try:
    for w in [int(x) for x in args.workers.split(",")]:
      r = emit_bench._run(cmd + [f"--out={root / str(w)}", f"--workers={w}"])
      m = json.loads((root / str(w) / args.tier / "manifest.json").read_bytes())
      files[w] = m["files"]
      r["same_files_as_first"] = files[w] == next(iter(files.values()))
      r["ratio_to_first"] = round(next(iter(out.values()))["seconds"]
                                  / r["seconds"], 2) if out else 1.0
      out[w] = r
      print(f"workers={w}: {r['seconds']:7.1f} s wall ({r['cpu_seconds']:6.1f}"
            f" s CPU), x{r['ratio_to_first']} vs workers="
            f"{next(iter(out))}, same files: {r['same_files_as_first']}, "
            f"load {os.getloadavg()[0]:.2f}", flush=True)
      shutil.rmtree(root / str(w))
  finally:
    shutil.rmtree(root, ignore_errors=True)
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--tier", default="tier1")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--train_size", type=int, default=None)
  ap.add_argument("--eval_size", type=int, default=None)
  ap.add_argument("--workers", default="0,1,2",
                  help="--workers values to emit with; the first is the "
                       "baseline")
  ap.add_argument("--stage_rows", type=int, default=2048,
                  help="rows of each split timed")
  ap.add_argument("--mix", choices=("dataset", "train"), default="dataset",
                  help="the dataset's splits in proportion, or train rows")
  ap.add_argument("--batch", type=int, default=2048,
                  help="rows a generated batch (the emit's on a CPU)")
  ap.add_argument("--no_emits", action="store_true")
  args = ap.parse_args()
  load = os.getloadavg()
  if args.tier != "tier1":
    sys.exit("emit_stages.py: --tier must be tier1 (its stages are Tier 1's)")
  splits = dataset_splits(args.tier, args.train_size, args.eval_size,
                          args.mix)
  stages, rows = measure_stages(splits, args.stage_rows, args.batch)
  print_stages(stages)
  floor = cpu_floor(stages, rows, len(os.sched_getaffinity(0)))
  print(f"CPU floor of the {rows:,} rows without workers: "
        f"{floor['cpu_seconds']:.1f} CPU-s, {floor['floor_wall_seconds']:.1f}"
        f" s on {floor['cores']} cores (start-up and compilation not "
        "counted)", flush=True)
  emits = {} if args.no_emits else run_emits(args)
  print(json.dumps({
      "tier": args.tier, "train_size": args.train_size,
      "eval_size": args.eval_size, "stage_rows": args.stage_rows,
      "mix": args.mix, "cpu_floor": floor,
      "cores": len(os.sched_getaffinity(0)),
      "stages_s_per_million_rows_per_core": {
          k: v[0] for k, v in stages.items()},
      "emits": emits, "load_average_start": load,
      "load_average_end": os.getloadavg()}))


if __name__ == "__main__":
  main()
