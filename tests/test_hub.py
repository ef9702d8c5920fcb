"""Hugging Face `datasets` loads each emitted folder's own rows: two emits
into folders of the same name (other seeds, other or the same sizes) never
share a cache entry, and the card's row counts are checked on load."""

import subprocess
import sys

import pytest

from tinyvm_jax import data

import datasets   # the hub extra (the README's test install has it)

EMITS = {"a": (0, 400, 30), "b": (5, 300, 20), "c": (7, 400, 30)}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  """{name: (seed, train rows, eval rows, <root>/<name>/tier1)}: each emit in
  a folder named tier1, Parquet only."""
  root = tmp_path_factory.mktemp("hub")
  procs = {}
  for name, (seed, train, ev) in EMITS.items():
    procs[name] = subprocess.Popen(
        [sys.executable, "-m", "tinyvm_jax.emit", "--tier=tier1",
         f"--out={root / name}", f"--seed={seed}", "--formats=parquet",
         "--progress=false", "--cpu_devices=1",
         f"--config.train_size={train}", f"--config.eval_size={ev}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  for name, proc in procs.items():
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()
  return {name: (*EMITS[name], root / name / "tier1") for name in EMITS}


def _first_seed(folder):
  path = sorted((folder / "data").glob("train-*.parquet"))[0]
  return next(data.iter_parquet(path))[1]["meta"]["seed"]


def test_each_folder_loads_its_own_rows(folders, tmp_path):
  cache = tmp_path / "hf-cache"
  for name, (seed, train, ev, folder) in folders.items():
    ds = datasets.load_dataset(str(folder), cache_dir=str(cache))
    assert ds["train"].num_rows == train, name
    assert ds["eval_len_8"].num_rows == ev, name
    assert ds["train"][0]["meta"]["seed"] == _first_seed(folder), name
  seeds = {n: _first_seed(f) for n, (*_, f) in folders.items()}
  assert len(set(seeds.values())) == 3


def test_the_card_row_counts_are_checked(folders, tmp_path):
  *_, folder = folders["b"]
  card = folder / "README.md"
  text = card.read_text()
  assert "num_examples: 300" in text and "rows " in text   # fingerprint
  card.write_text(text.replace("num_examples: 300", "num_examples: 299", 1))
  try:
    with pytest.raises(Exception, match="299"):
      datasets.load_dataset(str(folder), cache_dir=str(tmp_path / "c"))
  finally:
    card.write_text(text)
