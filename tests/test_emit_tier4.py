"""Tier 4 through the emit CLI: every format, the manifest, and verify's
dataset, replay and rebuild checks on the result.

One tiny emit (two splits, so two compilations of the Tier 4 kernel, which
are slow): Tier 4 is the same pipeline as Tiers 0-2 behind another
`sources.RowSource`, whose resume and crash paths `test_emit` covers.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from tinyvm_jax._src.io import manifest as manifest_lib
from tinyvm_jax._src.io import zarr_store
from tinyvm_jax._src.userop import formats
from tinyvm_jax._src.userop import tier as userop_tier

ROOT = Path(__file__).resolve().parents[1]


def _run(module, *args):
  return subprocess.run([sys.executable, "-m", module, *args],
                        capture_output=True, text=True, timeout=900, cwd=ROOT)


def test_tier4_emit_writes_every_format_and_verifies(tmp_path):
  r = _run("tinyvm_jax.emit", "--tier=tier4", f"--out={tmp_path}",
           "--config.train_size=16", "--config.eval_size=4",
           "--config.eval_buckets=double_k1", "--config.batch_size=8",
           "--config.part_rows=8", "--config.chunk_rows=4",
           f"--compile_cache={tmp_path / 'cache'}")
  assert r.returncode == 0, r.stderr
  assert r.stdout.startswith("tier4: 20 rows"), r.stdout
  tier_dir = tmp_path / "tier4"
  m = json.loads((tier_dir / manifest_lib.MANIFEST).read_bytes())
  assert m["tier"] == "tier4" and m["config"]["eval_buckets"] == "double_k1"
  files = m["files"]
  assert files["train.jsonl"]["rows"] == 16
  assert files["eval/double_k1.jsonl"]["rows"] == 4
  assert {"data/train-00000-of-00002.parquet",
          "data/train-00001-of-00002.parquet",
          "data/eval_double_k1-00000-of-00001.parquet"} <= set(files)
  assert "demos, target" in (tier_dir / "README.md").read_text()

  lines = (tier_dir / "eval/double_k1.jsonl").read_bytes().splitlines()
  rows = [json.loads(x) for x in lines]
  assert [r["meta"]["tier"] for r in rows] == [formats.TIER] * 4
  assert {(r["meta"]["split"], r["meta"]["bucket"]) for r in rows} == {
      ("eval", "double_k1")}
  assert {(r["meta"]["opcode_spec"]["name"], r["meta"]["k_demos"])
          for r in rows} == {("DOUBLE", 1)}
  # the JSONL rows are userop.tier.generate's, written by userop.formats
  want = userop_tier.generate(0, "eval", "double_k1", np.arange(4))
  assert formats.rows_to_jsonl(want, split="eval", bucket="double_k1") == (
      b"\n".join(lines) + b"\n")
  store = zarr_store.Store(tier_dir / zarr_store.STORE_NAME)
  assert store.attrs["tier"] == "tier4"
  assert store.groups == {"train": 16, "eval/double_k1": 4}
  got = formats.arrays_to_rows(store.read("eval/double_k1", 0, 4))
  assert formats.rows_to_jsonl(got, split="eval", bucket="double_k1") == (
      b"\n".join(lines) + b"\n")

  r = _run("tinyvm_jax.verify", f"--dataset={tier_dir}")
  assert r.returncode == 0, r.stdout + r.stderr
  r = _run("tinyvm_jax.verify", "--replay", "--rebuild", str(tier_dir),
           f"--compile_cache={tmp_path / 'cache'}")
  assert r.returncode == 0, r.stdout + r.stderr
