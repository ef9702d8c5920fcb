"""An emit that meets another emit or a full disk: one line, no damage, and
the rerun resumes to the same bytes."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SIZES = ["--config.train_size=20000", "--config.eval_size=1000"]


def _emit(out, *args, wait=True, sizes=SIZES):
  cmd = [sys.executable, "-m", "tinyvm_jax.emit", "--tier=tier1",
         f"--out={out}", "--progress=false", "--cpu_devices=1", *sizes, *args]
  if not wait:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
  return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                        timeout=600)


def _files(tier_dir: Path) -> dict:
  return json.loads((tier_dir / "manifest.json").read_text())["files"]


def test_a_second_emit_into_the_folder_refuses_at_once(tmp_path):
  # long enough that the second starts while the first still runs
  first = _emit(tmp_path, "--seed=1", wait=False,
                sizes=["--config.train_size=80000", "--config.eval_size=100"])
  lock = tmp_path / ".tier1.lock"
  deadline = time.time() + 300
  while time.time() < deadline and first.poll() is None and not (
      lock.exists() and lock.read_text()):
    time.sleep(0.05)
  second = _emit(tmp_path, "--seed=2")
  assert first.poll() is None, "the first emit ended too soon for the test"
  out, err = first.communicate(timeout=600)
  assert first.returncode == 0, err              # the first one finishes
  assert second.returncode == 1
  lines = second.stderr.strip().splitlines()
  assert len(lines) == 1, second.stderr
  assert lines[0].startswith("emit: error: another emit is writing into")
  assert f"pid {first.pid}" in lines[0]
  verify = subprocess.run([sys.executable, "-m", "tinyvm_jax.verify",
                           "--dataset", str(tmp_path / "tier1")],
                          capture_output=True, text=True, cwd=ROOT)
  assert verify.returncode == 0, verify.stdout
  manifest = json.loads((tmp_path / "tier1" / "manifest.json").read_text())
  assert manifest["seed_base"] == 1


@pytest.fixture
def small_disk(tmp_path):
  """A 40 MB tmpfs (root only), grown to 400 MB by calling the result."""
  mnt = tmp_path / "disk"
  mnt.mkdir()
  if os.geteuid() != 0 or subprocess.run(
      ["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mnt)],
      capture_output=True).returncode:
    pytest.skip("mounting a small tmpfs needs root")
  grow = lambda: subprocess.run(["mount", "-o", "remount,size=400m",
                                 str(mnt)], check=True)
  yield mnt, grow
  subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_full_disk_is_one_line_and_the_rerun_resumes(small_disk, tmp_path):
  mnt, grow = small_disk
  full = _emit(mnt / "out")
  assert full.returncode == 1
  lines = full.stderr.strip().splitlines()
  assert len(lines) == 1 and "Traceback" not in full.stderr, full.stderr
  assert lines[0].startswith("emit: error: no space left on the device of "
                             f"{mnt / 'out' / 'tier1'} (about ")
  assert "MB more needed" in lines[0] and "run the same command" in lines[0]
  grow()
  again = _emit(mnt / "out")
  assert again.returncode == 0, again.stderr
  assert "resuming" in again.stderr
  clean = _emit(tmp_path / "clean")
  assert clean.returncode == 0, clean.stderr
  assert _files(mnt / "out" / "tier1") == _files(tmp_path / "clean" / "tier1")
