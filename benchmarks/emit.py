"""Emit benchmark: wall time, bytes on disk and peak memory per format.

Runs `python -m tinyvm_jax.emit` in a fresh subprocess for each format alone
and for all formats together (each into its own empty directory), then
`python -m tinyvm_jax.verify --dataset` on the all-formats output. Peak
memory and CPU time are each child's own (`os.wait4` rusage: ru_maxrss,
ru_utime + ru_stime). Prints a line a run and ends with one JSON line.

  python benchmarks/emit.py --tier=tier1                  # reference sizes
  python benchmarks/emit.py --tier=tier1 --train_size=20000 --eval_size=2000
  python benchmarks/emit.py --codecs                      # zarr codec choice
  python benchmarks/emit.py --tier=tier2 --runs=zarr --cold   # full Tier 2 zarr

When the reference package `tinyvm` is importable, its emit runs in the
same benchmark (`--reference_cmd`, a template with {python}, {tier}, {out},
{seed}, {train_size}, {eval_size}) and the JSON line holds
`reference_seconds` and `ratio` = reference seconds / our seconds (of the
`jsonl` run when timed, else of the last run; `ratio_run` names it). When it
is not, one line says so and both are null.

`--codecs` measures zarr compression instead: Tier 1 rows (train and
eval len_128) written with each candidate codec; bytes and write time.
"""

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REFERENCE = {"tier1": {"jsonl_seconds": 392.0, "jsonl_bytes": 1.9e9},
             "tier0": {"jsonl_seconds": 38.0}}
# the reference's emit command (an assumption: override with --reference_cmd)
REFERENCE_CMD = "{python} -m tinyvm.emit --tier={tier} --out={out} --seed={seed}"


def _size(path: Path) -> int:
  return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _run(cmd: list[str]) -> dict:
  """Runs a child; its wall time, CPU time and peak RSS (its own rusage,
  from `os.wait4`), and its last stdout line."""
  with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=out, stderr=err)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0)
    err.seek(0)
    text = out.read().decode().strip()
    if proc.returncode:
      sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n"
               f"{err.read().decode()}")
  return {"seconds": round(wall, 2),
          "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
          "peak_rss_bytes": usage.ru_maxrss * 1024,
          "line": text.splitlines()[-1] if text else ""}


def bench_formats(args) -> dict:
  root = Path(args.out or tempfile.mkdtemp(prefix="tinyvm-bench-"))
  overrides = []
  if args.train_size is not None:
    overrides.append(f"--config.train_size={args.train_size}")
  if args.eval_size is not None:
    overrides.append(f"--config.eval_size={args.eval_size}")
  cache = ["--compile_cache=" + args.compile_cache] if (
      args.compile_cache is not None) else []
  results = {}
  runs = [r.split("+") for r in args.runs.split(",")]
  if args.cold:  # an empty compilation cache: compile time included
    cache = ["--compile_cache=" + tempfile.mkdtemp(prefix="tinyvm-cache-")]
  if args.warm:  # fill the compilation cache first, untimed
    warm_dir = root / "warm"
    _run([sys.executable, "-m", "tinyvm_jax.emit", f"--tier={args.tier}",
          f"--out={warm_dir}", "--formats=zarr"] + overrides + cache)
    shutil.rmtree(warm_dir)
  for formats in runs:
    name = "+".join(formats) if len(formats) > 1 else formats[0]
    out = root / name
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "tinyvm_jax.emit", f"--tier={args.tier}",
           f"--out={out}", f"--seed={args.seed}",
           f"--formats={','.join(formats)}"] + overrides + cache
    r = _run(cmd)
    r["bytes"] = _size(out / args.tier)
    results[name] = r
    print(f"{name:>20}: {r['seconds']:7.1f} s ({r['cpu_seconds']:6.1f} s "
          f"CPU)  {r['bytes'] / 1e6:9.1f} MB  peak RSS "
          f"{r['peak_rss_bytes'] / 1e6:6.0f} MB   [{r['line']}]", flush=True)
  out = root / name   # the last run's dataset
  r = _run([sys.executable, "-m", "tinyvm_jax.verify",
            f"--dataset={out / args.tier}"])
  results["verify_dataset"] = r
  print(f"{'verify --dataset':>20}: {r['seconds']:7.1f} s "
        f"({r['cpu_seconds']:6.1f} s CPU)  peak RSS {r['peak_rss_bytes'] / 1e6:6.0f} MB   "
        f"[{r['line']}]", flush=True)
  reference = bench_reference(args, root, results, name)
  if not args.keep:
    shutil.rmtree(root)
  ref = REFERENCE.get(args.tier, {})
  summary = {"tier": args.tier, "load_average": os.getloadavg(),
             "train_size": args.train_size,
             "eval_size": args.eval_size, "runs": results,
             "reference": ref, **reference}
  if "jsonl_seconds" in ref and "zarr+jsonl+parquet" in results:
    summary["speedup_all_formats_vs_reference_jsonl"] = round(
        ref["jsonl_seconds"] / results["zarr+jsonl+parquet"]["seconds"], 1)
  return summary


def bench_reference(args, root: Path, results: dict, last: str) -> dict:
  """Times the reference's emit in this run when `tinyvm` is importable:
  {reference_seconds, ratio (reference / ours), ratio_run}; nulls if not."""
  ours = "jsonl" if "jsonl" in results else last
  if importlib.util.find_spec("tinyvm") is None:
    print("reference package tinyvm not importable: no ratio", flush=True)
    return {"reference_seconds": None, "ratio": None, "ratio_run": None}
  out = root / "reference"
  shutil.rmtree(out, ignore_errors=True)
  cmd = args.reference_cmd.format(
      python=sys.executable, tier=args.tier, out=out, seed=args.seed,
      train_size=args.train_size, eval_size=args.eval_size).split()
  r = _run(cmd)
  r["bytes"] = _size(out) if out.exists() else None
  results["reference"] = r
  ratio = round(r["seconds"] / results[ours]["seconds"], 2)
  print(f"{'reference':>20}: {r['seconds']:7.1f} s ({r['cpu_seconds']:6.1f} "
        f"s CPU)  peak RSS {r['peak_rss_bytes'] / 1e6:6.0f} MB   ratio "
        f"{ratio} x {ours}   [{' '.join(cmd)}]", flush=True)
  return {"reference_seconds": r["seconds"], "ratio": ratio,
          "ratio_run": ours}


# ---------------------------------------------------------------- codecs
def _generate_rows(split: str, bucket: str | None, n: int, batch: int = 4096):
  """Host rows 0..n-1 of a Tier 1 split as an emit with seed 0 writes them
  (direct render), `batch` at a time (one compiled shape: the last batch is
  padded, then cut)."""
  import jax
  import numpy as np
  import tinyvm_jax
  parts = []
  for lo in range(0, n, batch):
    rows = jax.device_get(tinyvm_jax.generate(
        "tier1", 0, split, bucket, np.arange(lo, lo + batch),
        renders=("direct",)))
    m = min(batch, n - lo)
    parts.append(jax.tree.map(lambda x: x[:m], rows))
  return jax.tree.map(lambda *xs: np.concatenate(xs), *parts)


CODECS = ("none", "zstd:1", "zstd:3", "zstd:9", "blosc:lz4:5",
          "blosc:zstd:1", "blosc:zstd:3", "blosc:zstd:5")


def bench_codecs(args) -> dict:
  import tensorstore as ts
  from tinyvm_jax import formats
  samples = {}
  for group, split, bucket in (("train", "train", None),
                               ("eval/len_128", "eval", "len_128")):
    samples[group] = formats.rows_to_arrays(
        _generate_rows(split, bucket, args.codec_rows))
  raw = sum(a.nbytes for s in samples.values() for a in s.values())
  results = {}
  for spec in CODECS:
    codec = formats.parse_codec(spec)
    tmp = Path(tempfile.mkdtemp(prefix="tinyvm-codec-"))
    t0 = time.perf_counter()
    c0 = time.process_time()
    for group, arrays in samples.items():
      n = next(iter(arrays.values())).shape[0]
      w = formats.GroupWriter(tmp, group, n, arrays, part_rows=16384,
                                 chunk_rows=1024, codec=codec)
      for lo in range(0, n, 16384):
        w.write(lo, {k: v[lo:lo + 16384] for k, v in arrays.items()})
        w.commit_part()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    size = _size(tmp)
    t0 = time.perf_counter()
    for group, arrays in samples.items():
      for name in arrays:
        ts.open({"driver": "zarr3", "kvstore": {
            "driver": "file", "path": str(tmp / group / name) + "/"}}
                ).result().read().result()
    read = time.perf_counter() - t0
    shutil.rmtree(tmp)
    results[spec] = {"bytes": size, "ratio": round(raw / size, 1),
                     "write_s": round(wall, 2), "write_cpu_s": round(cpu, 2),
                     "read_s": round(read, 2)}
    print(f"{spec:>14}: {size / 1e6:8.2f} MB (x{raw / size:5.1f})  write "
          f"{wall:5.2f} s ({cpu:5.2f} s CPU)  read {read:5.2f} s", flush=True)
  return {"rows_per_split": args.codec_rows, "raw_bytes": raw,
          "codecs": results}


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--tier", default="tier1")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--train_size", type=int, default=None)
  ap.add_argument("--eval_size", type=int, default=None)
  ap.add_argument("--out", default=None, help="keep outputs here")
  ap.add_argument("--keep", action="store_true", help="keep the outputs")
  ap.add_argument("--warm", action="store_true",
                  help="fill the compilation cache before timing")
  ap.add_argument("--runs", default="zarr,parquet,jsonl,zarr+jsonl+parquet",
                  help="emits to time, comma-separated; formats of one "
                       "emit joined by +")
  ap.add_argument("--cold", action="store_true",
                  help="time with an empty compilation cache")
  ap.add_argument("--compile_cache", default=None,
                  help="passed to emit ('' disables the cache)")
  ap.add_argument("--reference_cmd", default=REFERENCE_CMD,
                  help="the reference's emit, run when the package tinyvm "
                       "is importable")
  ap.add_argument("--codecs", action="store_true",
                  help="measure zarr codecs instead")
  ap.add_argument("--codec_rows", type=int, default=20000)
  args = ap.parse_args()
  summary = bench_codecs(args) if args.codecs else bench_formats(args)
  print(json.dumps(summary))


if __name__ == "__main__":
  main()
