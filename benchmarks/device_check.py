"""One prepared run of the GPU figures: install, emit, throughput, interpreter.

On a machine with an NVIDIA GPU (as the device tool lends one):

  python benchmarks/device_check.py            # installs the cuda12 extra

installs `.[parquet,cuda12]` into the running Python, checks that JAX sees
the GPU, then runs, each in a fresh process with a time limit:
  1. `python -m tinyvm_jax.emit --tier=tier1 --device=gpu` (all formats,
     reference sizes) and `verify --dataset` on it;
  2. `python -m tinyvm_jax.emit --tier=tier2 --device=gpu --formats=zarr`
     with no compilation cache (a new user's first run);
  3. `benchmarks/throughput.py --tier=tier1` (in-graph rows/s);
  4. `benchmarks/interpreter.py` (interpreter steps/s);
and ends with one JSON line of figures. Sized to finish in under 8 minutes
on one H100; a step past its limit is reported as such and the rest go on.

On a machine without a GPU it says so in one line and exits 0.
`--device=cpu --tiny` runs the same steps on the CPU at small sizes, with no
install: the test suite uses it to check this script's own machinery.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _has_gpu() -> bool:
  smi = shutil.which("nvidia-smi")
  if smi is None:
    return False
  probe = subprocess.run([smi, "-L"], capture_output=True, text=True)
  return probe.returncode == 0 and "GPU" in probe.stdout


def _step(name: str, cmd: list[str], limit: float) -> dict:
  """Runs one step in a child process; its wall time, last line, status."""
  print(f"[{name}] {' '.join(cmd)}", flush=True)
  t0 = time.perf_counter()
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit,
                          cwd=REPO)
  except subprocess.TimeoutExpired:
    print(f"[{name}] over its {limit:.0f} s limit", flush=True)
    return {"ok": False, "seconds": round(time.perf_counter() - t0, 1),
            "error": f"over {limit:.0f} s"}
  wall = round(time.perf_counter() - t0, 1)
  lines = (proc.stdout.strip() or proc.stderr.strip()).splitlines()
  last = lines[-1] if lines else ""
  print(f"[{name}] {wall} s: {last}", flush=True)
  if proc.returncode:
    err = proc.stderr.strip().splitlines()
    return {"ok": False, "seconds": wall,
            "error": err[-1] if err else f"exit {proc.returncode}"}
  out = {"ok": True, "seconds": wall, "line": last}
  if last.startswith("{"):
    try:
      out["figures"] = json.loads(last)
    except ValueError:
      pass
  rate = re.search(r"\(([\d,]+) rows/s\)", last)
  if rate:
    out["rows_per_second"] = int(rate.group(1).replace(",", ""))
  return out


def _steps(device: str, tiny: bool, out: Path) -> list[tuple]:
  py = sys.executable
  sizes1 = (["--config.train_size=2000", "--config.eval_size=100"] if tiny
            else [])
  sizes2 = (["--config.train_size=200", "--config.eval_size=20"] if tiny
            else [])
  emit = [py, "-m", "tinyvm_jax.emit", f"--device={device}",
          "--progress=false", f"--out={out}"]
  small = ["--batch=512", "--repeats=2"] if tiny else []
  return [
      ("emit_tier1", emit + ["--tier=tier1"] + sizes1, 240),
      ("verify_tier1", [py, "-m", "tinyvm_jax.verify", "--dataset",
                        str(out / "tier1")], 60),
      ("emit_tier2_zarr", emit + ["--tier=tier2", "--formats=zarr",
                                  "--compile_cache="] + sizes2, 240),
      ("throughput_tier1", [py, "benchmarks/throughput.py", "--tier=tier1"]
       + small, 90),
      ("interpreter", [py, "benchmarks/interpreter.py"]
       + (["--batch=1024", "--repeats=2"] if tiny else []), 90),
  ]


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--device", default="gpu", choices=("gpu", "cpu"))
  ap.add_argument("--tiny", action="store_true",
                  help="small sizes (checks the script, not the device)")
  ap.add_argument("--no_install", action="store_true",
                  help="skip `pip install .[parquet,cuda12]`")
  ap.add_argument("--out", default=None, help="where the emits go "
                  "(default: a temporary folder, removed at the end)")
  args = ap.parse_args()
  if args.device == "gpu" and not _has_gpu():
    print("device_check: no NVIDIA GPU on this machine (nvidia-smi finds "
          "none); nothing to measure")
    return 0
  figures = {"device": args.device, "tiny": args.tiny}
  if args.device == "gpu" and not args.no_install:
    figures["install"] = _step("install", [
        sys.executable, "-m", "pip", "install", "-q", f"{REPO}[parquet,cuda12]"
    ], 300)
  out = Path(args.out or tempfile.mkdtemp(prefix="tinyvm-device-check-"))
  try:
    for name, cmd, limit in _steps(args.device, args.tiny, out):
      figures[name] = _step(name, cmd, limit)
  finally:
    if args.out is None:
      shutil.rmtree(out, ignore_errors=True)
  print(json.dumps(figures))
  return 0 if all(v.get("ok", True) for v in figures.values()
                  if isinstance(v, dict)) else 1


if __name__ == "__main__":
  sys.exit(main())
