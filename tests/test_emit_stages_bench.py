"""benchmarks/emit_stages.py: the dataset's split mix, the CPU floor's
arithmetic and its one-line refusal of a tier it does not measure (the
stages themselves are timed by running it, not here)."""

import importlib.util
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _bench():
  path = ROOT / "benchmarks" / "emit_stages.py"
  spec = importlib.util.spec_from_file_location("emit_stages_bench", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_dataset_mix_is_the_emits_splits():
  bench = _bench()
  splits = bench.dataset_splits("tier1", None, None, "dataset")
  assert splits[0] == ("train", None, 200_000)
  assert [b for _, b, _ in splits[1:]] == [
      "len_8", "len_16", "len_32", "len_48", "len_64", "len_96", "len_128"]
  assert sum(n for _, _, n in splits) == 340_000
  assert bench.dataset_splits("tier1", 100, 7, "train") == [
      ("train", None, 100)]
  assert sum(n for _, _, n in bench.dataset_splits(
      "tier1", 100, 7, "dataset")) == 100 + 7 * 7


def test_cpu_floor_sums_the_stages_without_workers():
  bench = _bench()
  stages = {k: (1.0, "") for k in bench._WHERE}     # 1 s a million rows each
  floor = bench.cpu_floor(stages, 2_000_000, 4)
  assert floor["cpu_seconds"] == 2.0 * len(bench._NO_WORKERS)
  assert floor["floor_wall_seconds"] == floor["cpu_seconds"] / 4
  assert "pickle_emit_side" not in bench._NO_WORKERS


def test_other_tiers_are_refused_in_one_line():
  proc = subprocess.run(
      [sys.executable, str(ROOT / "benchmarks" / "emit_stages.py"),
       "--tier=tier2", "--no_emits"], capture_output=True, text=True,
      timeout=120)
  assert proc.returncode != 0
  assert proc.stderr.strip().splitlines() == [
      "emit_stages.py: --tier must be tier1 (its stages are Tier 1's)"]
