"""Scale-out benchmark: one emit with several layouts of processes x devices.

Runs the same emit (default: full Tier 1, all formats) as 1 process x 1
device, 1 x D devices (`XLA_FLAGS` host device count) and P processes x
D devices (`python -m tinyvm_jax.launch`), each into its own directory
after untimed runs that fill the compilation cache, and checks that
every layout wrote the same files (the manifests' hashes). Prints a line a
layout and ends with one JSON line.

  python benchmarks/scale_out.py                      # tier1, 1x1 1x2 2x1 2x2
  python benchmarks/scale_out.py --layouts=1x1,2x1 --formats=zarr
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _run(cmd, env) -> dict:
  t0 = time.perf_counter()
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  _, status, usage = os.wait4(proc.pid, 0)
  wall = time.perf_counter() - t0
  out, err = proc.stdout.read(), proc.stderr.read()
  code = os.waitstatus_to_exitcode(status)
  if code:
    sys.exit(f"failed ({code}): {' '.join(cmd)}\n{err}")
  return {"seconds": round(wall, 2), "line": out.strip().splitlines()[0]
          if out.strip() else ""}


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--tier", default="tier1")
  ap.add_argument("--formats", default="zarr,jsonl,parquet")
  ap.add_argument("--layouts", default="1x1,1x2,2x1,2x2",
                  help="processes x devices per process, comma-separated")
  ap.add_argument("--train_size", type=int, default=None)
  ap.add_argument("--eval_size", type=int, default=None)
  ap.add_argument("--keep", default=None, help="keep the outputs here")
  args = ap.parse_args()
  root = Path(args.keep or tempfile.mkdtemp(prefix="tinyvm-scale-"))
  cache = root / "cache"
  flags = [f"--tier={args.tier}", f"--formats={args.formats}",
           f"--compile_cache={cache}"]
  if args.train_size is not None:
    flags.append(f"--config.train_size={args.train_size}")
  if args.eval_size is not None:
    flags.append(f"--config.eval_size={args.eval_size}")
  layouts = [tuple(int(x) for x in l.split("x")) for l in
             args.layouts.split(",")]
  results, manifests = {}, {}
  warm = [(1, d) for d in sorted({d for _, d in layouts})]
  for i, (procs, devs) in enumerate(warm + layouts):
    name = f"{procs}x{devs}"
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devs}"
    out = root / (name if i >= len(warm) else "warm")
    shutil.rmtree(out, ignore_errors=True)
    if procs == 1:
      cmd = [sys.executable, "-m", "tinyvm_jax.emit", *flags, f"--out={out}"]
    else:
      env.pop("XLA_FLAGS")
      cmd = [sys.executable, "-m", "tinyvm_jax.launch",
             f"--num_processes={procs}", f"--cpu_devices_per_process={devs}",
             "--", *flags, f"--out={out}"]
    r = _run(cmd, env)
    if i < len(warm):   # warm-up runs fill the compilation cache
      shutil.rmtree(out)
      continue
    files = json.loads((out / args.tier / "manifest.json").read_bytes())
    manifests[name] = files["files"]
    results[name] = r
    print(f"{name:>5} (processes x devices): {r['seconds']:7.1f} s  "
          f"[{r['line']}]", flush=True)
    if not args.keep:
      shutil.rmtree(out)
  first = next(iter(manifests.values()))
  same = all(m == first for m in manifests.values())
  print(f"identical manifests (file hashes) across layouts: {same}")
  summary = {"tier": args.tier, "formats": args.formats,
             "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
             "seconds": {k: v["seconds"] for k, v in results.items()},
             "identical": same, "files": len(first)}
  if not args.keep:
    shutil.rmtree(root, ignore_errors=True)
  print(json.dumps(summary))


if __name__ == "__main__":
  main()
