"""The emit's heap settings (`_src/emit/heap.py`): which thresholds an
emit's plan gets, that `bound` hands both to glibc, and pyarrow's pool."""

import os
import subprocess
import sys

from tinyvm_jax._src.emit import heap


class _FakeLibc:
  def __init__(self):
    self.calls = []

  def mallopt(self, param, value):
    self.calls.append((param, value))
    return 1

  def malloc_trim(self, pad):
    self.calls.append(("trim", pad))
    return 1


def test_thresholds_follow_the_row_size_and_formats():
  small, large = 10 << 10, 236 << 10
  assert heap.mmap_threshold(small, ["zarr"]) == 16 << 20
  assert heap.mmap_threshold(large, ["zarr", "jsonl"]) == 4 << 20
  assert heap.mmap_threshold(large, ["parquet"]) == 4 << 20
  assert heap.mmap_threshold(large, ["zarr"]) is None   # glibc's own
  assert heap.trim_threshold(16 << 20) == 256 << 20
  assert heap.trim_threshold(4 << 20) == 32 << 20


def test_bound_sets_both_thresholds_or_none(monkeypatch):
  fake = _FakeLibc()
  monkeypatch.setattr(heap, "_libc", lambda: fake)
  heap.bound(10 << 10, ["jsonl"])
  assert fake.calls == [(heap._M_MMAP_THRESHOLD, 16 << 20),
                        (heap._M_TRIM_THRESHOLD, 256 << 20)]
  fake.calls.clear()
  heap.bound(236 << 10, ["zarr"])           # Tier 2 zarr alone: untouched
  assert fake.calls == []
  heap.release()
  assert fake.calls == [("trim", 0)]


def test_without_glibc_nothing_happens(monkeypatch):
  monkeypatch.setattr(heap, "_libc", lambda: None)
  heap.bound(10 << 10, ["jsonl"])
  heap.release()


def test_arrow_pool_is_the_systems_unless_the_environment_names_one(
    monkeypatch):
  # setenv first so that the test's end restores the environment as it was
  monkeypatch.setenv("ARROW_DEFAULT_MEMORY_POOL", "")
  monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL")
  heap.arrow_pool()
  assert os.environ["ARROW_DEFAULT_MEMORY_POOL"] == heap.ARROW_POOL
  monkeypatch.setenv("ARROW_DEFAULT_MEMORY_POOL", "mimalloc")
  heap.arrow_pool()
  assert os.environ["ARROW_DEFAULT_MEMORY_POOL"] == "mimalloc"


def test_pyarrow_takes_the_pool_from_the_environment():
  code = ("import pyarrow; "
          "print(pyarrow.default_memory_pool().backend_name)")
  out = subprocess.run(
      [sys.executable, "-c", code], capture_output=True, text=True,
      check=True, env={**os.environ, "ARROW_DEFAULT_MEMORY_POOL":
                       heap.ARROW_POOL})
  assert out.stdout.strip() == heap.ARROW_POOL
