"""The emit's heap settings (`_src/emit/heap.py`): which thresholds an
emit's plan gets, and that `bound` hands both to glibc."""

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
