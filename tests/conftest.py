"""Shared fixtures: the reference rows copied into tests/data."""

import gzip
import json
import pathlib

import pytest

DATA = pathlib.Path(__file__).parent / "data"


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
