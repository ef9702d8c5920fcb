"""benchmarks/device_check.py: its CPU-only answer and its own machinery."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "device_check.py"


def _run(*args, env=None):
  return subprocess.run([sys.executable, str(SCRIPT), *args],
                        capture_output=True, text=True, cwd=REPO,
                        env={**os.environ, **(env or {})}, timeout=900)


def test_without_a_gpu_it_says_so_in_one_line():
  # PATH without nvidia-smi: the machine has no GPU as far as it can tell
  proc = _run(env={"PATH": "/nonexistent"})
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip().splitlines() == [
      "device_check: no NVIDIA GPU on this machine (nvidia-smi finds none);"
      " nothing to measure"]


def test_tiny_cpu_run_ends_with_one_json_line_of_figures(tmp_path):
  proc = _run("--device=cpu", "--tiny", f"--out={tmp_path / 'out'}")
  assert proc.returncode == 0, proc.stdout + proc.stderr
  figures = json.loads(proc.stdout.strip().splitlines()[-1])
  steps = ("emit_tier1", "verify_tier1", "emit_tier2_zarr",
           "throughput_tier1", "interpreter")
  for step in steps:
    assert figures[step]["ok"], (step, figures[step])
  assert figures["emit_tier1"]["rows_per_second"] > 0
  assert "figures" in figures["throughput_tier1"]
  assert (tmp_path / "out" / "tier1" / "manifest.json").is_file()
