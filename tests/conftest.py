"""Shared fixtures: the reference rows copied into tests/data."""

import atexit
import gc
import gzip
import json
import os
import pathlib
import shutil
import tempfile
import time

import pytest

DATA = pathlib.Path(__file__).parent / "data"
ROOT = pathlib.Path(__file__).resolve().parent.parent

# Subprocesses (`python -m tinyvm_jax.emit`, ...) import this checkout's
# package, not another install's.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(
        os.pathsep) if p and p != str(ROOT)])

# Caches the code under test (and the processes it starts) would write into
# the user's home go to a temporary folder for the session instead: JAX's
# compilation cache of the CLIs (under XDG_CACHE_HOME) and Hugging Face
# `datasets`' cache. Set before `datasets` is imported anywhere.
_CACHES = tempfile.mkdtemp(prefix="tinyvm_jax_tests_")
atexit.register(shutil.rmtree, _CACHES, ignore_errors=True)
os.environ["XDG_CACHE_HOME"] = os.path.join(_CACHES, "xdg")
os.environ["HF_HOME"] = os.path.join(_CACHES, "hf")
os.environ["HF_DATASETS_CACHE"] = os.path.join(_CACHES, "hf", "datasets")
# No persistent JAX compilation cache in the test process (nor the user's):
# the CLIs the tests start get theirs under XDG_CACHE_HOME above.
os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)

import jax  # noqa: E402  (after the environment above)

# ... and none even if a CLI's main() run in-process sets a cache directory:
# in-process compiles writing to it crashed a long test session.
jax.config.update("jax_enable_compilation_cache", False)

# Every compiled XLA executable holds a few memory mappings. One process
# running the whole suite compiles thousands of them and neared Linux's
# vm.max_map_count (65,530 by default), where the next compile segfaulted
# (CI, tests/test_userop_tier.py). After a test module, JAX's caches are
# dropped once the process holds this many mappings.
_MAX_MAPPINGS = 20_000


def _mappings() -> int:
  try:
    with open("/proc/self/maps", "rb") as f:
      return sum(1 for _ in f)
  except OSError:      # not Linux
    return 0


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_code():
  yield
  if _mappings() > _MAX_MAPPINGS:
    jax.clear_caches()
    gc.collect()


def load_rows(name):
  """Rows of tests/data/<name>.jsonl.gz as dicts."""
  with gzip.open(DATA / f"{name}.jsonl.gz", "rt") as f:
    return [json.loads(line) for line in f]


def row_files():
  """Names of the copied reference files holding program/trace rows."""
  return sorted(p.name[:-len(".jsonl.gz")] for p in DATA.glob("*.jsonl.gz")
                if not p.name.startswith("userop"))


def golden():
  with gzip.open(DATA / "golden.json.gz", "rt") as f:
    return json.load(f)


@pytest.fixture(scope="session")
def stats():
  return json.loads((DATA / "stats.json").read_text())


def wait_for_a_recorded_part(progress: pathlib.Path, proc, timeout: float
                             ) -> bool:
  """Waits until the emit progress file `progress` records a part while
  `proc` runs; False if `proc` ended or `timeout` passed first."""
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    try:
      if json.loads(progress.read_bytes())["parts"]:
        return True
    except (OSError, ValueError, KeyError):
      pass
    time.sleep(0.02)
  return False


@pytest.fixture(scope="session")
def view_root(tmp_path_factory):
  """An emit root holding a tiny Tier 1 (zarr, JSONL, Parquet) and Tier 2
  (zarr, JSONL) dataset, for the viewer's tests (two emits in parallel)."""
  import os
  import subprocess
  import sys
  root = tmp_path_factory.mktemp("view_data")
  env = dict(os.environ, PYTHONPATH=str(pathlib.Path(__file__).parents[1]))
  cmd = [sys.executable, "-m", "tinyvm_jax.emit", f"--out={root}",
         "--compile_cache=", "--cpu_devices=1"]
  procs = [subprocess.Popen(cmd + args, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
           for args in (["--tier=tier1", "--config.train_size=200",
                         "--config.eval_size=20"],
                        ["--tier=tier2", "--formats=zarr,jsonl",
                         "--config.train_size=16", "--config.eval_size=4"])]
  for p in procs:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
  return root
