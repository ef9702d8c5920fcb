"""The emit pipeline and CLI: layout, manifest, determinism, resume, errors.

Emits are tiny (a few hundred rows, several parts each) and run in-process so
that the jitted row function compiles once a tier for the whole session.
"""

import gzip
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import wait_for_a_recorded_part

from tinyvm_jax._src.io import loaders
from tinyvm_jax._src.io import manifest as manifest_lib
from tinyvm_jax._src.emit import classes as classes_lib
from tinyvm_jax._src.emit import convert
from tinyvm_jax._src.emit import layout
from tinyvm_jax._src.emit import kernels
from tinyvm_jax._src.emit import plan as plan_lib
from tinyvm_jax._src.emit import sources
from tinyvm_jax._src.emit import writers as writers_lib
from tinyvm_jax._src.emit.run import emit_dataset
from tinyvm_jax._src import tiers

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parents[1]
FORMATS = ("zarr", "jsonl", "parquet")
SIZES = {"tier0": (300, 60), "tier1": (300, 40)}
REFERENCE_KEYS = ["tier", "seed_base", "tinyvm_version", "tinyvm_commit",
                  "generated_at", "files"]


def small_plan(tier: str, formats=FORMATS, seed: int = 0, **kw):
  train, ev = SIZES[tier]
  args = dict(tier=tier, seed_base=seed, train_size=train, eval_size=ev,
              renders=("direct",), formats=tuple(formats), batch_size=256,
              vmap_rows=64, part_rows=128, chunk_rows=64)
  args.update(kw)
  return plan_lib.make_plan(**args)


def data_files(tier_dir: Path) -> dict[str, bytes]:
  return {p.relative_to(tier_dir).as_posix(): p.read_bytes()
          for p in sorted(tier_dir.rglob("*"))
          if p.is_file() and p.name != manifest_lib.MANIFEST}


@pytest.fixture(scope="module")
def emitted(tmp_path_factory):
  """{tier: tier directory} of an uninterrupted all-formats emit."""
  out = {}
  for tier in SIZES:
    root = tmp_path_factory.mktemp(f"emit_{tier}")
    out[tier] = emit_dataset(small_plan(tier), root).tier_dir
  return out


# ------------------------------------------------------------ layout
@pytest.mark.parametrize("tier", sorted(SIZES))
def test_layout_and_manifest(emitted, tier):
  d = emitted[tier]
  t = tiers.get_tier(tier)
  train, ev = SIZES[tier]
  m = json.loads((d / "manifest.json").read_bytes())
  raw = (d / "manifest.json").read_text()
  assert not raw.endswith("\n") and raw.startswith('{\n  "tier"')
  assert list(m)[:6] == REFERENCE_KEYS
  assert {"formats", "config", "jax_version", "device"} <= set(m)
  assert m["tier"] == tier and m["seed_base"] == 0 and m["device"] == "cpu"
  files = m["files"]
  jsonl = [k for k in files if k.endswith(".jsonl")]
  assert jsonl == ["train.jsonl"] + [f"eval/{b}.jsonl"
                                     for b in t.bucket_names]
  assert files["train.jsonl"]["rows"] == train
  assert all(files[f"eval/{b}.jsonl"]["rows"] == ev for b in t.bucket_names)
  # every file of the tier directory is listed, with its hash
  assert set(data_files(d)) == set(files)
  for rel, entry in files.items():
    assert manifest_lib.sha256_file(d / rel)[0] == entry["sha256"]
  # Parquet as on the Hub: train and eval_<bucket> splits, 4 columns
  parquet = [k for k in files if k.endswith(".parquet")]
  splits = {Path(k).name.split("-")[0] for k in parquet}
  assert splits == {"train"} | {f"eval_{b}" for b in t.bucket_names}
  assert sum(files[k]["rows"] for k in parquet) == train + ev * len(
      t.bucket_names)
  readme = (d / "README.md").read_text()
  assert readme.startswith("---\nconfigs:\n") and "path: data/train-*.parquet" \
      in readme
  assert not (d / layout.PARTIAL).exists()


@pytest.mark.parametrize("tier", sorted(SIZES))
def test_jsonl_rows_have_the_reference_schema(emitted, tier):
  ref = json.loads(gzip.open(DATA / f"{tier}_train.jsonl.gz").readline())
  lines = (emitted[tier] / "train.jsonl").read_bytes().splitlines()
  row = json.loads(lines[0])
  def keys(x):
    if isinstance(x, dict):
      return {k: keys(v) for k, v in x.items()}
    if isinstance(x, list) and x:
      return [keys(x[0])]
    return type(x).__name__
  assert json.dumps(keys(row)) == json.dumps(keys(ref))
  # compact separators, one row a line, no trailing spaces
  assert lines[0] == json.dumps(row, separators=(",", ":")).encode()
  ev = json.loads((emitted[tier] / "eval" /
                   f"{tiers.get_tier(tier).bucket_names[0]}.jsonl"
                   ).read_bytes().splitlines()[0])
  assert ev["meta"]["split"] == "eval" and ev["meta"]["bucket"]


@pytest.mark.parametrize("tier", sorted(SIZES))
@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_alone(emitted, tmp_path, tier, fmt):
  """A single-format emit writes exactly that format's files, identical to
  the same files of the all-formats emit."""
  d = emit_dataset(small_plan(tier, formats=(fmt,)), tmp_path).tier_dir
  m = json.loads((d / "manifest.json").read_bytes())
  assert m["formats"] == [fmt]
  full = json.loads((emitted[tier] / "manifest.json").read_bytes())["files"]
  want = {k: v for k, v in full.items() if layout.format_of(k) == fmt}
  if fmt == "parquet":
    want["README.md"] = full["README.md"]
  assert m["files"] == want


def test_rows_equal_tiers_generate(emitted):
  """Emitted rows are `tiers.generate`'s rows (shape classes and batch
  sizes change nothing)."""
  store = loaders.open_zarr(emitted["tier1"])
  t = tiers.get_tier("tier1")
  for sp_name, bucket in (("train", None), ("eval/len_8", "len_8")):
    idx = np.array([0, 1, 37, 39])
    want = tiers.generate(t, 0, "train" if bucket is None else "eval",
                          bucket, idx)
    got = store.read_rows(sp_name, indices=idx)
    want_leaves = jax.tree_util.tree_leaves_with_path(want)
    got_leaves = jax.tree_util.tree_leaves(got)
    assert len(want_leaves) == len(got_leaves)
    for (path, w), g in zip(want_leaves, got_leaves):
      w = np.asarray(w)
      assert w.shape == g.shape and np.array_equal(w, g), (sp_name, path)


def _group_sizes(plan):
  """{split name: the sizes verify's zarr replay computes it at}."""
  tops = classes_lib.group_sizes([(s.shapes, s.num_rows) for s in plan.splits],
                                 plan.renders)
  return {s.name: top for s, top in zip(plan.splits, tops)}


def test_group_sizes_group_small_splits():
  plan = small_plan("tier1")
  classes = _group_sizes(plan)
  assert set(classes) == {s.name for s in plan.splits}
  assert len(set(classes.values())) == 1  # tiny: one compilation
  big = plan_lib.make_plan(tier="tier1", seed_base=0, train_size=200_000,
                           eval_size=20_000, renders=("direct",),
                           formats=("zarr",), batch_size=4096,
                           part_rows=16384, chunk_rows=1024)
  classes = _group_sizes(big)
  assert 1 < len(set(classes.values())) < len(big.splits)
  for sp in big.splits:
    top = classes[sp.name]
    assert top.max_len >= sp.shapes.max_len
    assert top.max_steps >= sp.shapes.max_steps


# ------------------------------------------------------------ determinism
def test_same_command_twice_is_byte_identical(emitted, tmp_path):
  d = emit_dataset(small_plan("tier1"), tmp_path).tier_dir
  assert data_files(d) == data_files(emitted["tier1"])
  a = json.loads((d / "manifest.json").read_bytes())
  b = json.loads((emitted["tier1"] / "manifest.json").read_bytes())
  a.pop("generated_at"), b.pop("generated_at")
  assert a == b


def test_rerun_over_a_finished_emit_rewrites_it(emitted, tmp_path):
  shutil.copytree(emitted["tier0"], tmp_path / "tier0")
  (tmp_path / "tier0" / "eval" / "stale.jsonl").write_text("{}\n")
  d = emit_dataset(small_plan("tier0"), tmp_path).tier_dir
  assert data_files(d) == data_files(emitted["tier0"])


def test_other_seed_other_rows(emitted, tmp_path):
  d = emit_dataset(small_plan("tier0", formats=("jsonl",), seed=1),
                   tmp_path).tier_dir
  assert (d / "train.jsonl").read_bytes() != (
      emitted["tier0"] / "train.jsonl").read_bytes()


# ------------------------------------------------------------ crash safety
class Crash(Exception):
  """The fault `CrashAfter` injects."""


class CrashAfter:
  """A `Writer` that fails the emit as a crash would, once `parts` parts
  are recorded: its `end_part` of the next part waits until the formats'
  writers made the first `parts` durable and they were recorded, then
  raises (the formats may be further: their leftovers past the last
  recorded part are what a crash leaves)."""

  def __init__(self, plan, tier_dir, parts, timeout=120):
    self.plan, self.work = plan, tier_dir / layout.PARTIAL
    self.parts, self.timeout, self.ended = parts, timeout, 0

  def write(self, sp, rows, positions):
    pass

  def end_part(self, sp, part):
    if self.ended == self.parts:
      deadline = time.monotonic() + self.timeout
      while len(layout.done_parts(self.work, self.plan.fingerprint())) < (
          self.parts) and time.monotonic() < deadline:
        time.sleep(0.01)
      raise Crash(f"crashed after {self.parts} parts")
    self.ended += 1
    return {}

  def close(self):
    pass


def crash(plan, out, parts):
  with pytest.raises(Crash):
    emit_dataset(plan, out, extra_writers=[
        CrashAfter(plan, out / plan.tier.name, parts)])


@pytest.mark.parametrize("stop_after", [1, 2, 4, 6])
def test_interrupted_emit_resumes_byte_identical(emitted, tmp_path,
                                                 stop_after):
  plan = small_plan("tier1")
  crash(plan, tmp_path, stop_after)
  d = tmp_path / "tier1"
  # nothing passes for complete: no manifest, nothing under a final name
  assert not (d / "manifest.json").exists()
  assert sorted(p.name for p in d.iterdir()) == [layout.PARTIAL]
  # a crash's leftovers past the last durable part (a torn write at the end
  # of a JSONL piece, a temporary Parquet file) are cut off or removed
  work = d / layout.PARTIAL
  done = layout.done_parts(work, plan.fingerprint())
  assert 0 < len(done) < sum(sp.num_parts(plan.part_rows)
                             for sp in plan.splits)
  for sp in plan.splits:
    parts = sorted(int(k.rsplit(":", 1)[1]) for k in done
                   if k.rsplit(":", 1)[0] == sp.name)
    if parts and len(parts) < sp.num_parts(plan.part_rows):
      piece = done[f"{sp.name}:{parts[-1]}"]["jsonl"]["piece"]
      with open(work / layout.jsonl_piece(sp, piece), "ab") as f:
        f.write(b'{"torn": ')
  (work / "data" / ".stray.parquet.1.tmp").write_bytes(b"PAR1")
  result = emit_dataset(plan, tmp_path)
  assert result.resumed and result.generated < plan.total_rows
  assert data_files(d) == data_files(emitted["tier1"])


def test_crash_while_finalizing_resumes(emitted, tmp_path, monkeypatch):
  plan = small_plan("tier0")
  real = manifest_lib.write

  def boom(*a, **k):
    raise OSError("disk full")
  monkeypatch.setattr(manifest_lib, "write", boom)
  with pytest.raises(OSError):
    emit_dataset(plan, tmp_path)
  assert not (tmp_path / "tier0" / "manifest.json").exists()
  monkeypatch.setattr(manifest_lib, "write", real)
  result = emit_dataset(plan, tmp_path)
  assert result.generated == 0
  assert data_files(result.tier_dir) == data_files(emitted["tier0"])


def test_changed_settings_discard_an_unfinished_emit(emitted, tmp_path):
  crash(small_plan("tier0", seed=5), tmp_path, 1)
  notes = []
  result = emit_dataset(small_plan("tier0"), tmp_path, log=notes.append)
  assert not result.resumed and any("discarding" in n for n in notes)
  assert data_files(result.tier_dir) == data_files(emitted["tier0"])


def test_workers_write_the_same_bytes(tmp_path, monkeypatch):
  """Serialization workers (each batch cut into slices, a job each) write
  the bytes of the in-thread emit."""
  monkeypatch.setattr(convert, "IN_FLIGHT", 1)   # 2 workers: 2 slices
  monkeypatch.setattr(convert, "_MIN_SLICE", 16)
  plan = small_plan("tier1")
  inline = emit_dataset(plan, tmp_path / "w0", workers=0).tier_dir
  pooled = emit_dataset(plan, tmp_path / "w2", workers=2).tier_dir
  assert data_files(pooled) == data_files(inline)
  m0, m2 = (json.loads((d / "manifest.json").read_bytes())["files"]
            for d in (inline, pooled))
  assert m0 == m2


@pytest.mark.parametrize("slabs_a_commit", [1, 4])
def test_zarr_slabs_write_the_same_shards(emitted, tmp_path, monkeypatch,
                                          slabs_a_commit):
  """A part written a slab of one chunk at a time (the writer's path for
  parts larger than SLAB_BYTES), each slab committed into its shard or
  the part's slabs in one commit, gives the shards of a part written at
  once."""
  monkeypatch.setattr(writers_lib.ZarrWriter, "SLAB_BYTES", 1)
  monkeypatch.setattr(writers_lib.ZarrWriter, "SLABS_A_COMMIT",
                      slabs_a_commit)
  slabs = emit_dataset(small_plan("tier1"), tmp_path).tier_dir
  assert data_files(slabs) == data_files(emitted["tier1"])


def test_row_class_kernels_compile_once_each(tmp_path, monkeypatch):
  """The source compiles each row class's kernel once, ahead of its first
  batch, and every batch of the class runs that compiled kernel."""
  lowered = []
  real = kernels.rows_batch.lower
  monkeypatch.setattr(kernels.rows_batch, "lower",
                      lambda *a, **k: lowered.append(k["shapes"]) or
                      real(*a, **k), raising=False)
  plan = small_plan("tier1")
  source = sources.ProgramSource(plan)
  source.start(jax.local_devices(), max_classes=8)
  try:
    for sp in plan.splits:
      for shapes, positions in source.batches(sp, 0):
        source.dispatch(sp, shapes, positions)
  finally:
    source.close()
  assert sorted(map(str, lowered)) == sorted(map(str, source.classes))


def test_workers_setting_is_checked(tmp_path):
  with pytest.raises(plan_lib.EmitError, match="workers must be an integer"):
    emit_dataset(small_plan("tier0"), tmp_path, workers=-1)
  assert not (tmp_path / "tier0").exists()



@pytest.mark.parametrize("cores, processes, rows, workers", [
    (2, 1, 10 ** 6, 0), (3, 1, 10 ** 6, 0), (4, 1, 10 ** 6, 2),
    (16, 1, 10 ** 6, 14), (16, 1, 1000, 0), (16, 2, 10 ** 6, 6),
    (128, 1, 10 ** 6, 32)])
def test_default_workers(monkeypatch, cores, processes, rows, workers):
  monkeypatch.setattr(convert, "usable_cores", lambda: cores)
  assert convert.default_workers(rows, processes) == workers


def test_a_plan_pickles():
  """Serialization workers are sent the plan: its tier goes by name."""
  for tier in ("tier0", "tier1", "tier2", "tier4"):
    t = plan_lib.get_tier(tier)
    plan = plan_lib.make_plan(
        tier=tier, seed_base=3, train_size=10, eval_size=2,
        renders=t.renders if tier == "tier4" else ("direct",),
        formats=FORMATS, batch_size=8, part_rows=8, chunk_rows=8)
    back = pickle.loads(pickle.dumps(plan))
    assert back == plan and back.tier is plan.tier


def _cli(*args, timeout=300, **kw):
  return subprocess.run([sys.executable, "-m", "tinyvm_jax.emit", *args],
                        capture_output=True, text=True, timeout=timeout,
                        cwd=ROOT, **kw)


def _tagged_processes(tag: str) -> list[int]:
  """Pids of the processes whose environment holds TINYVM_TEST_TAG=tag."""
  found = []
  for d in Path("/proc").iterdir():
    try:
      if d.name.isdigit() and f"TINYVM_TEST_TAG={tag}".encode() in (
          d / "environ").read_bytes().split(b"\0"):
        found.append(int(d.name))
    except OSError:
      pass
  return found


@pytest.mark.parametrize("workers", [None, 2])
def test_killed_cli_emit_resumes_byte_identical(tmp_path, workers):
  """SIGKILL a real emit process mid-way; the same command finishes it, with
  the same bytes as an uninterrupted in-process emit (at another batch
  size). With serialization workers, none outlives the killed emit."""
  train, ev = 3000, 60
  args = ["--tier=tier0", f"--out={tmp_path}", "--formats=jsonl,zarr,parquet",
          f"--config.train_size={train}", f"--config.eval_size={ev}",
          "--config.batch_size=16", "--config.vmap_rows=16",
          "--config.part_rows=128", "--config.chunk_rows=64",
          f"--compile_cache={tmp_path / 'cache'}"]
  args += [f"--workers={workers}"] if workers is not None else []
  tag = str(tmp_path)
  proc = subprocess.Popen([sys.executable, "-m", "tinyvm_jax.emit", *args],
                          cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL,
                          env=dict(os.environ, TINYVM_TEST_TAG=tag))
  progress = (tmp_path / "tier0" / layout.PARTIAL / layout.PROGRESS_DIR
              / "p00000.json")
  killed = wait_for_a_recorded_part(progress, proc, 240)
  if killed:
    os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert killed, "the emit finished before it could be killed"
  deadline = time.monotonic() + 20
  while _tagged_processes(tag) and time.monotonic() < deadline:
    time.sleep(0.1)
  assert not _tagged_processes(tag), "processes outlived the killed emit"
  assert not (tmp_path / "tier0" / "manifest.json").exists()
  r = _cli(*args)
  assert r.returncode == 0, r.stderr
  summary = r.stdout.strip().splitlines()
  assert len(summary) == 1, summary
  assert summary[0].startswith(f"tier0: {train + ev:,} rows") and (
      "resumed" in summary[0]), summary
  clean = emit_dataset(small_plan("tier0", train_size=train, eval_size=ev),
                       tmp_path / "clean").tier_dir
  assert data_files(tmp_path / "tier0") == data_files(clean)
  m = json.loads((tmp_path / "tier0" / "manifest.json").read_bytes())
  assert m["config"]["batch_size"] == 16 and m["config"]["train_size"] == train


@pytest.mark.parametrize("args, needle", [
    (["--out=X"], "--tier is required"),
    (["--tier=tier9", "--out=X"], "unknown tier 'tier9'"),
    (["--tier=tier1"], "--out is required"),
    (["--tier=tier1", "--out=X", "--config.train_size=abc"], "train_size"),
    (["--tier=tier1", "--out=X", "--config.nope=1"], "--config.nope"),
    (["--tier=tier1", "--out=X", "--config.renders=direct,bogus"],
     "unknown render 'bogus'"),
    (["--tier=tier1", "--out=X", "--config.part_rows=100"], "part_rows"),
    (["--tier=tier1", "--out=X", "--formats=zarr,csv"], "unknown format"),
    (["--tier=tier1", "--out=X", "--seed=-3"], "--seed"),
    (["--tier=tier1", "--out=X", "--workers=-1"], "--workers"),
    (["--tier=tier1", "--out=X", "--workers=two"], "--workers"),
    (["--tier=tier1", "--out=X", "stray"], "unexpected arguments"),
    (["--tier=tier1", "--out=X", "--config=/nonexistent.py"],
     "cannot load the config"),
    (["--tier=tier0", "--out=UNWRITABLE"], "cannot write to --out"),
])
def test_cli_errors_are_one_line(tmp_path, args, needle):
  blocker = tmp_path / "file"
  blocker.write_text("")
  args = [a.replace("UNWRITABLE", str(blocker / "sub")).replace(
      "--out=X", f"--out={tmp_path / 'out'}") for a in args]
  r = _cli(*args, timeout=120)
  assert r.returncode == 2, (r.stdout, r.stderr)
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
  assert lines[0].startswith("emit: error: ") and needle in lines[0], lines
  assert not (tmp_path / "out" / "tier1").exists()


@pytest.mark.parametrize("device", ["gpu", "tpu"])
def test_cli_missing_accelerator_is_one_line(tmp_path, device):
  try:
    jax.devices(device)
    pytest.skip(f"this machine has a {device}")
  except RuntimeError:
    pass
  r = _cli("--tier=tier0", f"--out={tmp_path / 'out'}", f"--device={device}",
           timeout=120)
  assert r.returncode != 0
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and f"no {device.upper()} is available" in lines[0]
  assert ("tinyvm_jax[cuda12]" if device == "gpu" else "jax[tpu]") in lines[0]
  assert not (tmp_path / "out").exists()      # nothing written


# ------------------------------------------------------------ settings
@pytest.mark.parametrize("tier", sorted(SIZES))
def test_config_files_have_the_reference_sizes(tier):
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      f"cfg_{tier}", ROOT / "configs" / f"{tier}.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  t = tiers.get_tier(tier)
  assert c.tier == tier
  assert c.train_size == t.train_size
  assert {b.size for b in t.eval_buckets} == {c.eval_size}
  assert c.renders == ",".join(t.renders)
  assert c.part_rows % c.chunk_rows == 0


@pytest.mark.parametrize("override, needle", [
    (dict(tier="tier7"), "unknown tier"),
    (dict(train_size=-1), "train_size"),
    (dict(train_size=0, eval_size=0), "nothing to emit"),
    (dict(batch_size=0), "batch_size"),
    (dict(part_rows=100, chunk_rows=64), "multiple of chunk_rows"),
    (dict(renders=()), "at least one render"),
    (dict(renders=("direct", "direct")), "twice"),
    (dict(renders=("sideways",)), "unknown render"),
    (dict(formats=()), "at least one"),
    (dict(formats=("zarr", "zarr")), "twice"),
    (dict(formats=("xml",)), "unknown format"),
    (dict(seed=2 ** 64), "seed"),
    (dict(codec="zstd:99"), "zarr codec"),
])
def test_make_plan_rejects_bad_settings(override, needle):
  kw = dict(override)
  seed = kw.pop("seed", 0)
  tier = kw.pop("tier", "tier0")
  with pytest.raises(plan_lib.EmitError, match=needle):
    small_plan(tier, seed=seed, **kw) if tier in SIZES else (
        plan_lib.make_plan(tier=tier, seed_base=0, train_size=1, eval_size=1,
                           renders=("direct",), formats=("zarr",),
                           batch_size=1, part_rows=1, chunk_rows=1))
