"""Scale-out: the same dataset from 1 process x 1 device, 1 x 4 devices and
2 processes x 2 devices (JAX's distributed runtime on CPU: localhost
coordinator, forced host device counts; no collective is needed), a process that
dies, and the launcher's and emit's bad input."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import wait_for_a_recorded_part

from tinyvm_jax._src.emit import layout

ROOT = Path(__file__).resolve().parent.parent


def _settings(tier):
  train, ev = (1500, 100) if tier == "tier1" else (300, 20)
  return [f"--tier={tier}", "--formats=zarr,jsonl,parquet",
          f"--config.train_size={train}", f"--config.eval_size={ev}",
          "--config.batch_size=64", "--config.vmap_rows=16",
          "--config.part_rows=256", "--config.chunk_rows=64"]


def _env(devices=None):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  if devices:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return env


def _emit(args, devices=None, timeout=600):
  return subprocess.run([sys.executable, "-m", "tinyvm_jax.emit", *args],
                        capture_output=True, text=True, cwd=ROOT,
                        env=_env(devices), timeout=timeout)


def _launch(args, launcher=(), timeout=600):
  return subprocess.run([sys.executable, "-m", "tinyvm_jax.launch",
                         *launcher, "--", *args], capture_output=True,
                        text=True, cwd=ROOT, env=_env(), timeout=timeout)


def _files(tier_dir: Path) -> dict:
  """Every file's bytes, the manifest's file entries instead of the
  manifest (its config and time differ by run)."""
  out = {p.relative_to(tier_dir).as_posix(): p.read_bytes()
         for p in tier_dir.rglob("*") if p.is_file()
         and p.name != "manifest.json"}
  out["manifest files"] = json.loads(
      (tier_dir / "manifest.json").read_bytes())["files"]
  return out


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp("jax_cache")


@pytest.mark.parametrize("tier", ["tier1"])
def test_layouts_write_identical_bytes(tmp_path, cache, tier):
  base = _settings(tier) + [f"--compile_cache={cache}"]
  one = _emit(base + [f"--out={tmp_path / 'one'}", "--cpu_devices=1"])
  assert one.returncode == 0, one.stderr
  four = _emit(base + [f"--out={tmp_path / 'four'}"], devices=4)  # XLA_FLAGS
  assert four.returncode == 0, four.stderr
  assert "on 4 cpu devices" in four.stdout, four.stdout
  assert "on cpu;" in one.stdout, one.stdout
  two = _launch(base + [f"--out={tmp_path / 'two'}"],
                ["--num_processes=2", "--cpu_devices_per_process=2"])
  assert two.returncode == 0, two.stderr
  lines = two.stdout.strip().splitlines()
  assert len(lines) == 2 and any("2 cpu devices x 2 processes" in ln
                                 for ln in lines), lines
  want = _files(tmp_path / "one" / tier)
  assert len(want) > 20
  for other in ("four", "two"):
    got = _files(tmp_path / other / tier)
    assert sorted(got) == sorted(want), other
    bad = [k for k in want if got[k] != want[k]]
    assert not bad, (other, bad[:5])


def _children(marker: str) -> list[int]:
  """Pids of running emit processes whose command line holds `marker`."""
  out = []
  for d in Path("/proc").iterdir():
    if d.name.isdigit():
      try:
        cmd = (d / "cmdline").read_bytes().split(b"\0")
      except OSError:
        continue
      if b"tinyvm_jax.emit" in cmd and marker.encode() in cmd:
        out.append(int(d.name))
  return out


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
def test_dead_process_fails_the_run_and_a_rerun_resumes(tmp_path, cache):
  args = ["--tier=tier0", "--formats=zarr,jsonl,parquet",
          "--config.train_size=3000", "--config.eval_size=60",
          "--config.batch_size=16", "--config.vmap_rows=16",
          "--config.part_rows=128", "--config.chunk_rows=64",
          f"--compile_cache={cache}", f"--out={tmp_path / 'ds'}"]
  proc = subprocess.Popen([sys.executable, "-m", "tinyvm_jax.launch",
                           "--num_processes=2", "--", *args], cwd=ROOT,
                          env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  progress = (tmp_path / "ds" / "tier0" / layout.PARTIAL
              / layout.PROGRESS_DIR / "p00001.json")
  killed = False
  if wait_for_a_recorded_part(progress, proc, 300):
    for pid in _children("--process_id=1"):
      os.kill(pid, signal.SIGKILL)
      killed = True
  out, err = proc.communicate(timeout=300)
  assert killed, "process 1 finished before it could be killed"
  assert proc.returncode != 0
  assert "did not finish (no manifest)" in err, err
  assert "Traceback" not in err, err
  assert not (tmp_path / "ds" / "tier0" / "manifest.json").exists()
  again = _launch(args, ["--num_processes=2"])
  assert again.returncode == 0, again.stderr
  assert "resumed" in again.stdout, again.stdout
  clean = _emit(args[:-1] + [f"--out={tmp_path / 'clean'}"])
  assert clean.returncode == 0, clean.stderr
  assert _files(tmp_path / "ds" / "tier0") == _files(tmp_path / "clean" /
                                                     "tier0")


def test_processes_with_different_settings_fail_clearly(tmp_path, cache):
  import socket
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  procs = [subprocess.Popen(
      [sys.executable, "-m", "tinyvm_jax.emit", "--tier=tier0",
       f"--out={tmp_path}", f"--seed={i}", "--config.train_size=100",
       "--config.eval_size=10", "--num_processes=2", f"--process_id={i}",
       f"--coordinator_address=127.0.0.1:{port}", f"--compile_cache={cache}"],
      cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 1, err
    assert "started with different settings" in err and "Traceback" not in err
  assert not (tmp_path / "tier0" / "manifest.json").exists()


@pytest.mark.parametrize("launcher, emit_args, needle", [
    ([], [], "give the emit's flags after --"),
    ([], ["--tier=tier0", "--out=X", "--process_id=1"],
     "--process_id is set by the launcher"),
    (["--num_processes=0"], ["--tier=tier0", "--out=X"], "num_processes"),
    (["--gpus_per_process=1", "--cpu_devices_per_process=2"],
     ["--tier=tier0", "--out=X"], "exclude each other"),
])
def test_launcher_bad_input(launcher, emit_args, needle):
  r = subprocess.run([sys.executable, "-m", "tinyvm_jax.launch", *launcher,
                      "--", *emit_args], capture_output=True, text=True,
                     cwd=ROOT, env=_env(), timeout=120)
  assert r.returncode == 2
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and needle in lines[0], r.stderr


@pytest.mark.parametrize("args, needle", [
    (["--num_processes=2", "--process_id=2",
      "--coordinator_address=127.0.0.1:1"], "not below --num_processes"),
    (["--num_processes=2", "--process_id=0"], "needs --coordinator_address"),
    (["--num_processes=2"], "go together"),
    (["--num_processes=2", "--process_id=0",
      "--coordinator_address=nowhere"], "expected HOST:PORT"),
    (["--process_id=1"], "needs --num_processes"),
    (["--num_devices=99"], "has only"),
])
def test_emit_bad_distributed_flags(tmp_path, args, needle):
  r = _emit(["--tier=tier0", f"--out={tmp_path}", *args], timeout=120)
  assert r.returncode == 2, r.stderr
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and needle in lines[0], r.stderr
  assert not any(tmp_path.iterdir())
