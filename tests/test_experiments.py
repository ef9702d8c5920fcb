"""The experiments notebooks: committed without outputs, and every one runs
end to end in smoke mode (`experiments/run_notebooks.py`, nbclient).

The smoke run takes a few minutes on a CPU; it needs the `experiments`
extra (optax, nbclient, nbformat, ipykernel, matplotlib) and is skipped,
with the reason, only when one of those is not installed.
"""

import importlib.util
import json
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
SCRIPT = EXPERIMENTS / "run_notebooks.py"
NOTEBOOKS = sorted(EXPERIMENTS.glob("[0-9][0-9]_*.ipynb"))
EXTRA = ("optax", "nbclient", "nbformat", "ipykernel", "matplotlib")
MISSING = [m for m in EXTRA if importlib.util.find_spec(m) is None]
needs_extra = pytest.mark.skipif(
    bool(MISSING), reason=f"the experiments extra is not installed (missing "
    f"{', '.join(MISSING)}): pip install -e '.[experiments]'")

# Figures each notebook must render (by the names it gives them).
FIGURES = {
    "00_tour": {"trace_heatmap", "opcode_frequencies", "printed_values",
                "input_lengths"},
    "01_length_generalisation": {"direct_training", "cot_training",
                                 "exact_match_by_length"},
    "02_register_probes": {"probe_accuracy_heatmap",
                           "probe_accuracy_by_layer"},
    "03_program_inference": {"recovery_success_by_length"},
}


def test_the_four_notebooks_exist():
  assert [p.stem for p in NOTEBOOKS] == sorted(FIGURES)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebooks_have_no_outputs(path):
  nb = json.loads(path.read_text())
  cells = nb["cells"]
  assert cells[0]["cell_type"] == "markdown"
  assert "**Question.**" in "".join(cells[0]["source"])
  code = [c for c in cells if c["cell_type"] == "code"]
  assert "TINYVM_EXPERIMENTS_MODE" in "".join(code[0]["source"])
  for c in code:
    assert c["outputs"] == [] and c["execution_count"] is None, (
        f"{path.name} has outputs: strip them before committing")


def _run(*args, timeout=60):
  return subprocess.run([sys.executable, str(SCRIPT), *args],
                        capture_output=True, text=True, timeout=timeout)


@needs_extra
@pytest.mark.parametrize("args, message", [
    (["--mode", "bogus"], "invalid choice: 'bogus'"),
    (["--only", "07"], "--only names no notebook: ['07']"),
])
def test_run_notebooks_rejects_bad_arguments(tmp_path, args, message):
  proc = _run("--out", str(tmp_path), *args)
  assert proc.returncode == 2
  assert message in proc.stderr


@needs_extra
def test_every_notebook_runs_in_smoke_mode(tmp_path):
  proc = _run("--mode", "smoke", "--out", str(tmp_path), timeout=1800)
  assert proc.returncode == 0, proc.stdout + proc.stderr[-6000:]
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["mode"] == "smoke"
  for name, figures in FIGURES.items():
    assert summary["notebooks"][name]["status"] == "ok"
    written = {p.stem for p in (tmp_path / "figures" / name).glob("*.png")}
    assert figures <= written, (name, written)
    assert name in summary["results"]
  results = summary["results"]
  direct = results["01_length_generalisation"]["direct"]
  assert set(direct) == {f"len_{n}" for n in (8, 16, 32, 48, 64, 96, 128)}
  assert all(0 <= d["exact"] <= 1 and d["rows"] > 0 for d in direct.values())
  probes = results["02_register_probes"]
  assert len(probes["by_layer"]) == 3          # embedding + 2 blocks (smoke)
  assert 0 <= results["03_program_inference"]["success"]["ops"] <= 1


def _explib():
  if str(EXPERIMENTS) not in sys.path:
    sys.path.insert(0, str(EXPERIMENTS))
  import explib.configs
  import explib.recover
  return explib


@needs_extra
@pytest.mark.parametrize("call, message", [
    (lambda e: e.model.ModelConfig(d_model=30, n_heads=4),
     "must be a multiple of 2 * n_heads"),
    (lambda e: e.model.ModelConfig(n_layers=0), "n_layers must be a positive"),
    (lambda e: e.train.TrainConfig(steps=100, chunk=30),
     "must be a multiple of chunk"),
    (lambda e: e.configs.tier1("medium"), "mode must be one of"),
    (lambda e: e.data.dataset_rows("tier1", 0, ["len_7"], 4),
     "has no eval bucket 'len_7'"),
    (lambda e: e.data.dataset_rows("tier1", 0, [], 4), "at least one split"),
    (lambda e: e.data.dataset_rows("tier1", 0, ["train"], 0),
     "size must be a positive int"),
    (lambda e: e.recover.sweep(0, 4, hidden="ops"), "unknown settings"),
    (lambda e: e.recover.sweep(0, 4, n_min=5, n_max=3), "n_min <= n_max"),
])
def test_explib_rejects_bad_input(call, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    call(_explib())
