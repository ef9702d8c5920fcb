"""Readers: JSONL rows and prompts, zarr batches, grain source, Parquet, and
every format of one tiny emit reading back the same rows."""

import gzip
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from tinyvm_jax._src.io import jsonl
from tinyvm_jax._src.io import loaders
from tinyvm_jax._src.emit import plan as plan_lib
from tinyvm_jax._src.emit.run import emit_dataset
from tinyvm_jax._src.io import zarr_store

DATA = Path(__file__).parent / "data"
SIZES = {"tier0": (300, 60), "tier1": (300, 40)}


def small_plan(tier: str):
  train, ev = SIZES[tier]
  return plan_lib.make_plan(
      tier=tier, seed_base=0, train_size=train, eval_size=ev,
      renders=("direct",), formats=("zarr", "jsonl", "parquet"),
      batch_size=256, vmap_rows=64, part_rows=128, chunk_rows=64)


@pytest.fixture(scope="module", params=sorted(SIZES))
def emitted(request, tmp_path_factory):
  root = tmp_path_factory.mktemp(f"loaders_{request.param}")
  plan = small_plan(request.param)
  return plan, emit_dataset(plan, root).tier_dir


def _first_rows(src: Path, dst: Path, n: int) -> Path:
  with gzip.open(src, "rt") as f:
    dst.write_text("".join(next(f) for _ in range(n)))
  return dst


# ------------------------------------------------------------ JSONL
def test_load_jsonl_plain_and_gzip(emitted):
  plan, d = emitted
  rows = loaders.load_jsonl(d / "train.jsonl")
  assert len(rows) == plan.splits[0].num_rows
  assert rows[0]["meta"]["split"] == "train"
  ref = loaders.load_jsonl(DATA / "tier1_eval_len_8.jsonl.gz")
  assert len(ref) == 50 and ref[0]["meta"]["bucket"] == "len_8"
  lines = [n for n, _ in loaders.iter_jsonl(d / "train.jsonl")]
  assert lines == list(range(1, len(rows) + 1))


@pytest.mark.parametrize("content, line, needle", [
    (b'{"a": 1}\n{"b": \n', 2, "not JSON"),
    (b'{"a": 1}\n\n[1, 2]\n', 3, "JSON object"),
    (b'{"a": 1}\n\xff\xfe\n', 2, "unreadable"),
])
def test_iter_jsonl_names_the_bad_line(tmp_path, content, line, needle):
  p = tmp_path / "bad.jsonl"
  p.write_bytes(content)
  with pytest.raises(loaders.RowError, match=needle) as e:
    list(loaders.iter_jsonl(p))
  assert e.value.line == line and e.value.path == str(p)


def test_iter_jsonl_truncated_gzip(tmp_path):
  data = (DATA / "tier0_train.jsonl.gz").read_bytes()
  p = tmp_path / "cut.jsonl.gz"
  p.write_bytes(data[:len(data) // 2])
  with pytest.raises(loaders.RowError, match="unreadable"):
    list(loaders.iter_jsonl(p))
  with pytest.raises(FileNotFoundError):
    list(loaders.iter_jsonl(tmp_path / "missing.jsonl"))


def test_load_prompts_direct_is_the_stored_render(emitted):
  _, d = emitted
  rows = loaders.load_jsonl(d / "train.jsonl")
  prompts = loaders.load_prompts(d / "train.jsonl", "direct")
  assert len(prompts) == len(rows)
  for p, r in zip(prompts, rows):
    assert p == dict(r["renders"]["direct"], meta=r["meta"])


@pytest.mark.parametrize("mode, ref_file", [
    ("cot", "tier1_cot_full"), ("cot_modified", "tier1_cot_modified"),
    ("probe_query", "tier1_probe_query")])
def test_load_prompts_renders_a_missing_mode_as_the_reference(
    tmp_path, mode, ref_file):
  """Direct-only reference rows, asked for another mode, give the
  reference's own rows of that mode (same programs)."""
  src = _first_rows(DATA / "tier1_train.jsonl.gz", tmp_path / "t.jsonl", 64)
  prompts = loaders.load_prompts(src, mode)
  ref = loaders.load_jsonl(DATA / f"{ref_file}.jsonl.gz")[:64]
  for p, r in zip(prompts, ref, strict=True):
    assert p["meta"]["seed"] == r["meta"]["seed"]
    want = r["renders"][mode]
    for key in ("input_ids", "target_ids", "input_text", "target_text"):
      assert p[key] == want[key], key


def test_load_prompts_bad_input(tmp_path):
  with pytest.raises(ValueError, match="unknown prompt mode"):
    loaders.load_prompts(DATA / "tier0_train.jsonl.gz", "sideways")
  p = tmp_path / "noprog.jsonl"
  p.write_text(json.dumps({"meta": {"seed": 1}, "renders": {}}) + "\n")
  with pytest.raises(loaders.RowError, match=":1: cannot render cot"):
    loaders.load_prompts(p, "cot")


# ------------------------------------------------------------ every format
def _jsonl_of(plan, sp, rows) -> bytes:
  return jsonl.rows_to_jsonl(
      rows, tier=plan.tier.name, split=sp.split, bucket=sp.bucket,
      axis_names=plan.tier.axis_names, render_names=plan.renders)


def test_zarr_holds_the_jsonl_rows(emitted):
  """Every group of the store, written back as JSONL, is byte for byte the
  emitted JSONL file."""
  plan, d = emitted
  store = loaders.open_zarr(d)
  assert store.groups == {sp.name: sp.num_rows for sp in plan.splits}
  assert store.attrs["tier"] == plan.tier.name
  for sp in plan.splits:
    rows = store.read_rows(sp.name)
    assert _jsonl_of(plan, sp, rows) == (d / sp.jsonl).read_bytes(), sp.name


def test_parquet_holds_the_jsonl_rows(emitted):
  plan, d = emitted
  for sp in plan.splits:
    want = [r for _, r in loaders.iter_jsonl(d / sp.jsonl)]
    got = []
    for part in range(sp.num_parts(plan.part_rows)):
      got += [r for _, r in loaders.iter_parquet(
          d / sp.parquet(part, plan.part_rows), batch_rows=50)]
    assert got == want, sp.name


def test_parquet_unreadable(tmp_path):
  p = tmp_path / "x.parquet"
  p.write_bytes(b"PAR1 not really")
  with pytest.raises(loaders.RowError, match="not readable Parquet"):
    list(loaders.iter_parquet(p))


def test_hub_layout_loads_with_datasets(emitted):
  import datasets   # the hub extra (the README's test install has it)
  plan, d = emitted
  ds = datasets.load_dataset(str(d))
  assert set(ds) == {sp.hf_split for sp in plan.splits}
  for sp in plan.splits:
    split = ds[sp.hf_split]
    assert split.num_rows == sp.num_rows
    assert split.column_names == ["meta", "program", "trace", "renders"]
  first = next(iter(loaders.iter_jsonl(d / "train.jsonl")))[1]
  assert ds["train"][0] == first


# ------------------------------------------------------------ zarr reader
def test_iter_zarr_batches(emitted):
  plan, d = emitted
  sp = plan.splits[0]
  names = ["seed", "trace/regs", "renders/direct/input_ids"]
  batches = list(loaders.iter_zarr(d, sp.name, 128, names=names))
  assert [b["seed"].shape[0] for b in batches] == [128, 128, 44]
  assert all(set(b) == set(names) for b in batches)
  whole = loaders.open_zarr(d / zarr_store.STORE_NAME).read(sp.name,
                                                            names=names)
  for name in names:
    assert np.array_equal(np.concatenate([b[name] for b in batches]),
                          whole[name])
  assert whole["trace/regs"].dtype == np.int32
  assert whole["seed"].dtype == np.uint64
  assert whole["trace/regs"].shape[1:] == (sp.shapes.max_steps, 8)


def test_zarr_reader_errors(emitted, tmp_path):
  _, d = emitted
  with pytest.raises(zarr_store.StoreError, match="not a zarr store"):
    loaders.open_zarr(tmp_path)
  store = loaders.open_zarr(d)
  with pytest.raises(zarr_store.StoreError, match="no group"):
    store.read("nope")
  with pytest.raises(IndexError):
    store.read("train", 0, 10 ** 6)
  with pytest.raises(IndexError):
    store.read("train", indices=[10 ** 6])
  with pytest.raises(ValueError):
    next(loaders.iter_zarr(d, "train", 0))


# ------------------------------------------------------------ grain source
def test_zarr_source_random_access(emitted):
  plan, d = emitted
  sp = plan.splits[-1]
  src = loaders.ZarrSource(d / zarr_store.STORE_NAME, sp.name)
  assert len(src) == sp.num_rows
  whole = loaders.open_zarr(d).read(sp.name)
  for i in (0, 7, sp.num_rows - 1, -1):
    row = src[i]
    assert set(row) == set(whole)
    for k, v in row.items():
      assert np.array_equal(v, whole[k][i]), k
  idx = [5, 0, 5, sp.num_rows - 1]
  batch = src._getitems(idx)
  assert len(batch) == 4
  for j, i in enumerate(idx):
    assert np.array_equal(batch[j]["program/op"], whole["program/op"][i])
  assert src._getitems([]) == []
  with pytest.raises(IndexError):
    src[sp.num_rows]
  with pytest.raises(TypeError):
    src["3"]
  with pytest.raises(zarr_store.StoreError, match="no arrays"):
    loaders.ZarrSource(d, sp.name, names=["trace/nope"])
  clone = pickle.loads(pickle.dumps(src))
  assert len(clone) == len(src) and "ZarrSource(" in repr(clone)
  assert np.array_equal(clone[3]["seed"], src[3]["seed"])


def test_zarr_source_with_grain(emitted):
  import grain   # the test extra
  plan, d = emitted
  src = loaders.ZarrSource(d, "train",
                           names=["seed", "renders/direct/input_ids"])
  ds = grain.MapDataset.source(src).batch(8)
  first = ds[0]
  assert first["seed"].shape == (8,)
  assert first["renders/direct/input_ids"].shape[0] == 8
  whole = loaders.open_zarr(d).read("train", 0, 8, names=["seed"])
  assert np.array_equal(first["seed"], whole["seed"])
  shuffled = list(grain.MapDataset.source(src).shuffle(seed=1)[:16])
  assert len({int(r["seed"]) for r in shuffled}) == 16


def test_grain_data_loader_over_the_zarr_source(emitted):
  """grain's DataLoader (sampler, batch transform) yields every row once,
  in batches, through the public `tinyvm_jax.data.ZarrSource`."""
  import grain   # the test extra
  from tinyvm_jax.data import ZarrSource
  plan, d = emitted
  src = ZarrSource(d, "train", names=["seed", "renders/direct/target_ids"])
  loader = grain.DataLoader(
      data_source=src,
      sampler=grain.samplers.IndexSampler(num_records=len(src), shuffle=True,
                                          seed=0, num_epochs=1),
      operations=[grain.transforms.Batch(batch_size=16, drop_remainder=False)],
      worker_count=0)
  batches = list(loader)
  assert all(b["seed"].shape[0] == 16 for b in batches[:-1])
  assert batches[0]["renders/direct/target_ids"].shape[0] == 16
  seeds = np.concatenate([b["seed"] for b in batches])
  whole = loaders.open_zarr(d).read("train", names=["seed"])["seed"]
  assert sorted(seeds.tolist()) == sorted(whole.tolist())
