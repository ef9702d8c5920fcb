"""Tier 2 in the tiers table: rows from gen_branched run, render, replay and
rebuild exactly, and go through the emit pipeline."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinyvm_jax._src.io import jsonl
from tinyvm_jax._src import program as program_lib
from tinyvm_jax._src.check import replay
from tinyvm_jax._src import tiers

ROOT = Path(__file__).resolve().parent.parent
TIER = tiers.get_tier("tier2")


def test_tier2_table_matches_spec():
  assert TIER.train_size == 500_000
  assert TIER.axis_names == ("n", "k", "b", "l", "use_stack", "stack_frames")
  assert TIER.renders == ("direct", "cot")
  assert {b.name: (b.axes, b.size) for b in TIER.eval_buckets} == {
      "easy": ((32, 4, 1, 0, 0, 0), 10_000),
      "medium": ((64, 4, 2, 4, 0, 0), 10_000),
      "hard": ((128, 6, 4, 8, 1, 1), 10_000),
      "ood_len_256": ((256, 4, 2, 4, 0, 0), 10_000)}


def _rebuild(row):
  meta = row["meta"]
  axes = tiers.row_axes(TIER, meta["seed"], meta["axes"])
  return program_lib.to_json(tiers.build(TIER, meta["seed"], axes))


@pytest.mark.parametrize("split, bucket", [("train", None), ("eval", "easy"),
                                           ("eval", "hard")])
def test_generated_rows_replay_and_rebuild(split, bucket):
  rows = tiers.generate(TIER, 0, split, bucket, np.arange(6),
                        renders=("direct", "cot"))
  assert int(np.max(rows.trace.error)) == 0
  assert bool(np.all(rows.trace.halted))
  axes = np.asarray(rows.axes)
  assert np.all((16 <= axes[:, 0]) & (axes[:, 0] <= 256))
  assert set(axes[:, 1].tolist()) <= {4, 6, 8}
  text = jsonl.rows_to_jsonl(rows, tier="tier2", split=split, bucket=bucket,
                             axis_names=TIER.axis_names,
                             render_names=("direct", "cot"))
  lines = text.decode().splitlines()
  parsed = [(i + 1, json.loads(line)) for i, line in enumerate(lines)]
  assert parsed[0][1]["meta"]["axes"].keys() == set(TIER.axis_names)
  assert list(replay.check_rows(
      parsed, rebuild=lambda rows: [_rebuild(r) for r in rows])) == []


def test_tiny_tier2_emit_verifies(tmp_path):
  run = lambda *a: subprocess.run([sys.executable, "-m", *a], cwd=ROOT,
                                  capture_output=True, text=True, timeout=600)
  res = run("tinyvm_jax.emit", "--tier=tier2", f"--out={tmp_path}",
            "--formats=zarr,jsonl", "--config.train_size=24",
            "--config.eval_size=4")
  assert res.returncode == 0, res.stderr
  res = run("tinyvm_jax.verify", "--dataset", str(tmp_path / "tier2"))
  assert res.returncode == 0, res.stdout + res.stderr
  res = run("tinyvm_jax.verify", "--replay", "--rebuild", "--formats=jsonl",
            str(tmp_path / "tier2"))
  assert res.returncode == 0, res.stdout + res.stderr
