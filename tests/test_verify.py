"""verify: manifest checks (flipped byte, truncation, missing and extra
files), replay and rebuild of JSONL, Parquet and zarr, exit statuses."""

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinyvm_jax import verify
from tinyvm_jax._src.emit import layout
from tinyvm_jax._src.emit import plan as plan_lib
from tinyvm_jax._src.emit.run import emit_dataset
from tinyvm_jax._src.check import dataset as check_dataset
from tinyvm_jax._src.io import zarr_store

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def emitted(tmp_path_factory):
  """A tiny Tier 1 emit in all formats (read-only: tests copy it)."""
  plan = plan_lib.make_plan(
      tier="tier1", seed_base=0, train_size=300, eval_size=40,
      renders=("direct",), formats=("zarr", "jsonl", "parquet"),
      batch_size=256, vmap_rows=64, part_rows=128, chunk_rows=64)
  return emit_dataset(plan, tmp_path_factory.mktemp("verify")).tier_dir


@pytest.fixture
def copy(emitted, tmp_path):
  dst = tmp_path / "tier1"
  shutil.copytree(emitted, dst)
  return dst


def _verify_dataset(path):
  report = verify.Report()
  verify.verify_dataset(Path(path), report)
  return report


def _replay(path, **kw):
  report = verify.Report()
  verify.replay_path(Path(path), report, **kw)
  return report


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "tinyvm_jax.verify", *args],
                        capture_output=True, text=True, timeout=300, cwd=ROOT)


def _shard(d: Path) -> Path:
  return next(p for p in sorted((d / "rows.zarr/train/trace/regs").rglob("*"))
              if p.is_file() and p.name != "zarr.json")


# ------------------------------------------------------------ --dataset
def test_dataset_ok(emitted, capsys):
  report = _verify_dataset(emitted)
  assert report.status == 0 and report.problems == 0
  out = capsys.readouterr().out.strip().splitlines()
  assert len(out) == 1 and out[0].endswith(": ok")
  # a folder of tier directories
  assert _verify_dataset(emitted.parent).status == 0


def _flip(p: Path):
  data = bytearray(p.read_bytes())
  data[len(data) // 2] ^= 0x01
  p.write_bytes(bytes(data))


def _truncate(p: Path):
  p.write_bytes(p.read_bytes()[:-7])


@pytest.mark.parametrize("target", [
    "train.jsonl", "eval/len_8.jsonl", "data/train-00001-of-00003.parquet",
    "README.md", "SHARD", "rows.zarr/train/trace/regs/zarr.json"])
@pytest.mark.parametrize("damage, needle", [
    (_flip, "sha256"), (_truncate, "sha256"),
    (lambda p: p.unlink(), "missing")])
def test_dataset_catches_damage(copy, capsys, target, damage, needle):
  path = _shard(copy) if target == "SHARD" else copy / target
  damage(path)
  report = _verify_dataset(copy)
  assert report.status == 1
  out = capsys.readouterr().out
  assert f"{path}: {needle}" in out, out


def test_dataset_catches_wrong_row_counts(copy, capsys):
  p = copy / "eval/len_16.jsonl"
  lines = p.read_bytes().splitlines(keepends=True)
  p.write_bytes(b"".join(lines[:-1]))
  assert _verify_dataset(copy).status == 1
  out = capsys.readouterr().out
  assert f"{p}: 39 rows, the manifest says 40" in out


@pytest.mark.parametrize("extra", ["eval/len_256.jsonl", "notes.txt",
                                   "rows.zarr/train/c/9",
                                   ".partial/progress.json"])
def test_dataset_catches_extra_files(copy, capsys, extra):
  p = copy / extra
  p.parent.mkdir(parents=True, exist_ok=True)
  p.write_text("{}\n")
  assert _verify_dataset(copy).status == 1
  assert f"{p}: extra file" in capsys.readouterr().out


def test_dataset_unfinished_or_not_a_dataset(copy, tmp_path, capsys):
  (copy / "manifest.json").unlink()
  (copy / layout.PARTIAL).mkdir()
  assert _verify_dataset(copy).status == 2
  assert "unfinished emit" in capsys.readouterr().out
  assert _verify_dataset(tmp_path / "nothing").status == 2
  (copy / layout.PARTIAL).rmdir()
  assert _verify_dataset(copy).status == 2
  assert "no manifest.json" in capsys.readouterr().out
  (copy / "manifest.json").write_text("{not json")
  assert _verify_dataset(copy).status == 2


# ------------------------------------------------------------ --replay
@pytest.mark.parametrize("formats", [("jsonl",), ("parquet",), ("zarr",)])
def test_replay_and_rebuild_every_format(emitted, capsys, formats):
  report = _replay(emitted, rebuild=True, batch_size=256, formats=formats)
  assert report.status == 0, capsys.readouterr().out
  assert report.rows == 300 + 7 * 40


def test_replay_zarr_store_path(emitted, capsys, monkeypatch):
  """Also says how far it got on stderr (here after every batch)."""
  monkeypatch.setattr(check_dataset, "_NOTE_SECONDS", -1.0)
  report = _replay(emitted / zarr_store.STORE_NAME, rebuild=False)
  assert report.status == 0 and report.rows == 580
  err = capsys.readouterr().err
  assert "rows.zarr: 300 rows replayed, now in train (" in err, err
  assert "rows.zarr: 580 rows replayed in " in err, err


def test_replay_reference_rows():
  report = _replay(DATA / "tier0_eval_all.jsonl.gz")
  assert report.status == 0 and report.rows == 100


def _edit_jsonl(path: Path, line: int, edit):
  lines = path.read_bytes().splitlines(keepends=True)
  row = json.loads(lines[line - 1])
  edit(row)
  lines[line - 1] = json.dumps(row, separators=(",", ":")).encode() + b"\n"
  path.write_bytes(b"".join(lines))


def _bump_register(row):
  row["trace"]["steps"][1]["regs"][0] += 1


def _bump_seed(row):
  row["meta"]["seed"] = (row["meta"]["seed"] + 1) % 2 ** 64


def _change_text(row):
  row["renders"]["direct"]["input_text"] = "HALT \n"


@pytest.mark.parametrize("edit, rebuild, field", [
    (_bump_register, False, "trace.steps"),
    (_change_text, False, "renders.direct.input_text"),
    (_bump_seed, True, "meta"),
])
def test_replay_names_file_line_and_field(copy, capsys, edit, rebuild,
                                          field):
  p = copy / "train.jsonl"
  _edit_jsonl(p, 17, edit)
  report = _replay(p, rebuild=rebuild)
  assert report.status == 1
  out = capsys.readouterr().out
  assert f"{p}:17: {field}" in out, out
  assert report.problems == out.count(f"{p}:17:")


def test_seed_change_passes_replay_but_not_rebuild(copy):
  p = copy / "eval/len_8.jsonl"
  _edit_jsonl(p, 3, _bump_seed)
  assert _replay(p, rebuild=False).status == 0
  assert _replay(p, rebuild=True).status == 1


def test_replay_unreadable_row_exits_2(copy, capsys):
  p = copy / "eval/len_32.jsonl"
  lines = p.read_bytes().splitlines(keepends=True)
  lines[4] = b'{"meta": oops\n'
  p.write_bytes(b"".join(lines))
  report = _replay(p)
  assert report.status == 2
  assert f"{p}:5: not JSON" in capsys.readouterr().out
  assert _replay(copy / "nope.jsonl").status == 2


def _write_zarr(d: Path, group: str, name: str, row: int, fn):
  import tensorstore as ts
  arr = ts.open({"driver": "zarr3", "kvstore": {
      "driver": "file", "path": str(d / "rows.zarr" / group / name) + "/"}}
                ).result()
  x = arr[row].read().result()
  arr[row].write(fn(x)).result()


@pytest.mark.parametrize("name, fn, rebuild, field", [
    ("trace/regs", lambda x: np.where(np.arange(x.shape[0])[:, None] == 2,
                                      x + 1, x), False, "trace.regs"),
    ("renders/direct/input_ids", lambda x: np.where(
        np.arange(x.shape[0]) == 1, (x + 1) % 40, x), False,
     "renders.direct.input_ids"),
    ("seed", lambda x: x + np.uint64(1), True, "meta.seed"),
    ("program/lit", lambda x: x, True, None),
])
def test_zarr_replay_names_group_row_and_field(copy, capsys, name, fn,
                                               rebuild, field):
  _write_zarr(copy, "eval/len_16", name, 4, fn)
  report = _replay(copy / "rows.zarr", rebuild=rebuild)
  out = capsys.readouterr().out
  if field is None:  # rewriting the same values changes nothing
    assert report.status == 0, out
    return
  assert report.status == 1
  assert f"rows.zarr/eval/len_16:5: {field}" in out, out


# ------------------------------------------------------------ CLI
def test_cli_exit_statuses(copy, tmp_path):
  r = _cli(f"--dataset={copy}")
  assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr
  _flip(copy / "eval/len_64.jsonl")
  r = _cli(f"--dataset={copy}")
  assert r.returncode == 1 and "eval/len_64.jsonl: sha256" in r.stdout
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"meta": {}}\nnot json\n')
  r = _cli("--replay", str(bad))
  assert r.returncode == 2 and f"{bad}:2: not JSON" in r.stdout, r.stdout


@pytest.mark.parametrize("args, needle", [
    ([], "nothing to do"),
    (["--replay"], "--replay needs PATHs"),
    (["stray.jsonl"], "unexpected arguments"),
    (["--replay", "--formats=csv", "x"], "unknown format 'csv'"),
    (["--batch_size=0", "--replay", "x"], "--batch_size"),
    (["--nope"], "nope"),
])
def test_cli_usage_errors_are_one_line(args, needle):
  r = _cli(*args)
  assert r.returncode == 2
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
  assert lines[0].startswith("verify: error: ") and needle in lines[0]


# ------------------------------------------------------------ Tier 4 rows
def test_replay_userop_rows_and_a_corrupted_one(tmp_path):
  src = ROOT / "tests" / "data" / "userop_double.jsonl.gz"
  assert _replay(src).status == 0
  with gzip.open(src, "rt") as f:
    lines = f.readlines()[:5]
  row = json.loads(lines[2])
  row["renders"]["userop_direct"]["target_ids"][1] += 1
  lines[2] = json.dumps(row, separators=(",", ":")) + "\n"
  bad = tmp_path / "userop.jsonl"
  bad.write_text("".join(lines))
  res = _cli("--replay", str(bad))
  assert res.returncode == 1
  assert f"{bad}:3: renders.userop_direct" in res.stdout + res.stderr


def test_cli_replay_says_how_far_it_got_on_stderr():
  path = DATA / "tier0_eval_all.jsonl.gz"
  r = _cli("--replay", str(path))
  assert r.returncode == 0, r.stdout + r.stderr
  assert r.stdout.strip().endswith("ok")
  assert f"verify: {path}: 100 rows replayed in " in r.stderr
