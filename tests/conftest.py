"""Shared fixtures: the reference rows copied into tests/data."""

import gzip
import json
import os
import pathlib
import time

import pytest

DATA = pathlib.Path(__file__).parent / "data"
ROOT = pathlib.Path(__file__).resolve().parent.parent

# Subprocesses (`python -m tinyvm_jax.emit`, ...) import this checkout's
# package, not another install's.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(
        os.pathsep) if p and p != str(ROOT)])


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
