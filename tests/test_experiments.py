"""The experiments notebooks: committed without outputs, and every one runs
end to end in smoke mode (`experiments/run_notebooks.py`, nbclient); and
`explib`'s metric, decoding, predictions and checkpoint code, checked both
ways (a model that gives the truth scores 1, a constant model its baseline).

The smoke run takes a few minutes on a CPU; it needs the `experiments`
extra (optax, nbclient, nbformat, ipykernel, matplotlib) and is skipped,
with the reason, only when one of those is not installed. Everything is
written under pytest's tmp_path (the JAX compilation cache included).
"""

import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
import tinyvm_jax
import tinyvm_jax.data

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
SCRIPT = EXPERIMENTS / "run_notebooks.py"
NOTEBOOKS = sorted(EXPERIMENTS.glob("[0-9][0-9]_*.ipynb"))
EXTRA = ("optax", "nbclient", "nbformat", "ipykernel", "matplotlib")
MISSING = [m for m in EXTRA if importlib.util.find_spec(m) is None]


def test_the_experiments_extra_is_installed():
  """The README's test install has it: these tests fail, never skip."""
  assert not MISSING, (f"missing {', '.join(MISSING)}: pip install -e "
                       "'.[test,parquet,hub,experiments]'")

# Figures each notebook must render (by the names it gives them).
FIGURES = {
    "00_tour": {"trace_heatmap", "opcode_frequencies", "printed_values",
                "input_lengths"},
    "01_length_generalisation": {"direct_training", "cot_training",
                                 "exact_match_by_length"},
    "02_register_probes": {"probe_accuracy_by_layer",
                           "probe_accuracy_by_opcode"},
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


def test_experiments_use_the_public_api_only():
  offenders = [str(p.relative_to(ROOT)) for p in EXPERIMENTS.rglob("*")
               if p.suffix in (".py", ".ipynb") and "_src" in p.read_text()]
  assert offenders == []


def _run(*args, timeout=60):
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("JAX_COMPILATION_CACHE", "TINYVM_EXPERIMENTS"))}
  return subprocess.run([sys.executable, str(SCRIPT), *args],
                        capture_output=True, text=True, timeout=timeout,
                        env=env)


@pytest.mark.parametrize("args, message", [
    (["--mode", "bogus"], "invalid choice: 'bogus'"),
    (["--only", "07"], "--only names no notebook: ['07']"),
])
def test_run_notebooks_rejects_bad_arguments(tmp_path, args, message):
  proc = _run("--out", str(tmp_path), *args)
  assert proc.returncode == 2
  assert message in proc.stderr


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
  assert "without encryption" not in proc.stderr + proc.stdout
  results = summary["results"]
  buckets = {f"len_{n}" for n in (8, 16, 32, 48, 64, 96, 128)}
  direct = results["01_length_generalisation"]["direct"]["buckets"]
  assert set(direct) == buckets
  cot = results["01_length_generalisation"]["cot_modified"]["buckets"]
  for figs in list(direct.values()) + list(cot.values()):
    assert {"exact_match", "exact_match_teacher_forced", "baseline", "ci95",
            "rows"} <= set(figs)
    assert figs["rows"] > 0 and 0 <= figs["exact_match"] <= 1
    lo, hi = figs["ci95"]
    assert 0 <= lo <= figs["exact_match"] <= hi <= 1
    rows = tinyvm_jax.data.load_predictions(figs["predictions"])
    assert len(rows) == figs["rows"]
    assert np.mean([r["exact_match"] for r in rows]) == pytest.approx(
        figs["exact_match"])
  assert len(list((tmp_path / "checkpoints").glob("*.npz"))) == 2
  by_layer = results["02_register_probes"]["by_layer"]
  assert {(e["model"], e["position"]) for e in by_layer} == {
      ("direct", "instruction"), ("cot_modified", "before_value"),
      ("cot_modified", "instruction")}
  assert len(by_layer) == 3 * 3                # embedding + 2 blocks (smoke)
  for e in by_layer:
    assert {"model", "position", "layer", "trained", "trained_ci95",
            "control", "control_ci95", "majority"} <= set(e)
  assert 0 <= results["03_program_inference"]["success"]["ops"] <= 1


def _explib():
  if str(EXPERIMENTS) not in sys.path:
    sys.path.insert(0, str(EXPERIMENTS))
  import explib.configs
  import explib.decode
  import explib.evaluate
  import explib.metrics
  import explib.recover
  return explib


@pytest.mark.parametrize("call, message", [
    (lambda e: e.model.ModelConfig(d_model=30, n_heads=4),
     "must be a multiple of 2 * n_heads"),
    (lambda e: e.model.ModelConfig(n_layers=0), "n_layers must be a positive"),
    (lambda e: e.train.TrainConfig(steps=100, chunk=30),
     "must be a multiple of chunk"),
    (lambda e: e.configs.tier1("medium"), "mode must be one of"),
    (lambda e: e.probes.samples(None, "middle"), "position must be one of"),
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


# ---------------------------------------------------------------- explib
@pytest.fixture(scope="module")
def len8_rows():
  """48 dataset rows of Tier 1 len_8, direct and cot_modified (host)."""
  if MISSING:
    pytest.skip(f"the experiments extra is not installed: {MISSING}")
  e = _explib()
  rows = e.data.dataset_rows("tier1", 0, ["len_8"], 48,
                             renders=("direct", "cot_modified"),
                             token_lengths={"cot_modified": (72, 148)})
  return jax.tree_util.tree_map(np.asarray, rows["len_8"])


def _targets(rows, render):
  return np.asarray(rows.renders[render].target.ids)


def test_wilson_interval():
  m = _explib().metrics
  assert m.wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
  assert m.wilson(0, 10)[0] == 0
  assert m.wilson(10, 10)[1] == 1
  lo, hi = m.bootstrap_mean(np.ones(20), np.full(20, 2.0))
  assert lo == hi == 0.5


@pytest.mark.parametrize("render", ["direct", "cot_modified"])
def test_the_truth_scores_one(len8_rows, render):
  m = _explib().metrics
  tgt = _targets(len8_rows, render)
  res = m.score_rows(tgt, tgt, render)
  assert res["exact"].all() and res["answer"].all()
  assert (res["score"] == 1).all()
  # the answer read from the target is what the program printed
  printed = np.asarray(len8_rows.trace.output)[:, 0]
  assert [p for p in res["parsed"]] == [[int(v)] for v in printed]


@pytest.mark.parametrize("render", ["direct", "cot_modified"])
def test_a_constant_model_scores_its_baseline(len8_rows, render):
  m = _explib().metrics
  tgt = _targets(len8_rows, render)
  texts = [tinyvm_jax.detokenize(t) for t in tgt]
  constant, freq = m.constant_answer(texts)
  pred = np.repeat(tgt[texts.index(constant)][None], len(tgt), 0)
  res = m.score_rows(pred, tgt, render)
  assert res["exact"].mean() == pytest.approx(m.baseline(constant, texts))
  assert res["exact"].mean() == pytest.approx(freq)
  if render == "direct":
    assert 0.3 < freq < 0.9          # len_8 prints 0 about 60% of the time


def _answering(cfg, answer_ids):
  """Parameters of a model that predicts, after each token of the chain
  `answer_ids`, the next one (and EOS after the last): the embedding is the
  identity, every block adds nothing, the head maps a token to its
  successor. Greedy decoding then answers `answer_ids` on any input."""
  e = _explib()
  params = jax.tree_util.tree_map(np.asarray,
                                  e.model.init(jax.random.key(0), cfg))
  params["embed"] = np.eye(cfg.vocab, cfg.d_model, dtype=np.float32)
  params["blocks"]["wo"] = np.zeros_like(params["blocks"]["wo"])
  params["blocks"]["w2"] = np.zeros_like(params["blocks"]["w2"])
  head = np.zeros((cfg.d_model, cfg.vocab), np.float32)
  for a, b in zip(answer_ids[:-1], answer_ids[1:]):
    head[a, b] = 1.0
  params["head"] = head
  return params


def test_greedy_decoding_of_a_model_that_gives_the_answer(len8_rows,
                                                          tmp_path):
  e = _explib()
  cfg = e.model.ModelConfig(d_model=64, n_layers=1, n_heads=2, d_ff=8)
  zero = [e.data.BOS, e.data.DIGIT0, e.data.NEWLINE, e.data.EOS]
  params = _answering(cfg, zero)
  const = e.evaluate.Constants(target="0\n", answer="0\n", rows=1)
  figs, per_row = e.evaluate.evaluate(
      params, cfg, {"len_8": len8_rows}, "direct", constant=const,
      batch_size=16, multiple=64, model="answers-zero",
      predictions_dir=tmp_path)
  f = figs["len_8"]
  # on all rows it is the constant model; on the rows whose answer is 0 it
  # gives the truth
  assert f["rows"] == 48
  assert f["exact_match"] == pytest.approx(f["baseline"])
  assert f["exact_match_teacher_forced"] == pytest.approx(f["baseline"])
  zeros = np.array([t == "0\n" for _, t in per_row["len_8"]["texts"]])
  assert zeros.any() and per_row["len_8"]["exact"][zeros].all()
  assert not per_row["len_8"]["exact"][~zeros].any()
  assert (per_row["len_8"]["greedy"][:, :4] == zero).all()
  # the predictions file round-trips through the public reader
  rows = tinyvm_jax.data.load_predictions(tmp_path / "len_8.jsonl")
  assert len(rows) == 48
  for r, z in zip(rows, zeros):
    assert r["exact_match"] == bool(z) and r["score"] == float(z)
    assert r["predicted_ids"] == zero and r["predicted_text"] == "0\n"
    assert r["predicted_output"] == [0]
    assert r["seed"] == tinyvm_jax.key_to_seed(
        tinyvm_jax.row_key(0, "eval", "len_8", r["index"]))
  assert [r["index"] for r in rows] == list(range(48))


def test_cached_decoding_equals_the_full_forward_pass():
  e = _explib()
  cfg = e.model.ModelConfig(d_model=16, n_layers=2, n_heads=2, d_ff=32)
  params = e.model.init(jax.random.key(3), cfg)
  rng = np.random.default_rng(0)
  n_in = np.array([5, 12, 8, 1], np.int32)
  inp = rng.integers(0, 40, (4, 12)).astype(np.int32)
  inp[np.arange(12)[None] >= n_in[:, None]] = e.data.PAD
  tgt = rng.integers(0, 40, (4, 6)).astype(np.int32)
  tgt[:, 0] = e.data.BOS
  greedy, teacher = (np.asarray(x) for x in e.decode.decode(
      params, inp, n_in, tgt, cfg=cfg))
  for i in range(4):
    for pred, fed in ((teacher, tgt), (greedy, greedy)):
      seq = np.concatenate([inp[i, :n_in[i]], fed[i]])[None]
      logits, _ = e.model.forward(params, seq, cfg)
      argmax = np.asarray(logits.argmax(-1))[0, n_in[i]:n_in[i] + 5]
      stop = list(fed[i]).index(e.data.EOS) if e.data.EOS in fed[i] else 5
      assert (pred[i, 1:stop + 1] == argmax[:stop]).all()


def test_checkpoints_round_trip_and_training_resumes(tmp_path):
  e = _explib()
  import explib.checkpoint as ckpt
  cfg = e.model.ModelConfig(d_model=8, n_layers=1, n_heads=1, d_ff=8)
  tc = e.train.TrainConfig(bucket="len_8", batch_size=2, steps=4, chunk=2,
                           max_input_len=64)
  opt = e.train.make_optimizer(tc)
  params = e.model.init(jax.random.key(0), cfg)
  tree = {"params": params, "opt_state": opt.init(params)}
  path = ckpt.save(tmp_path / "a.npz", tree, meta={"step": 3})
  back, meta = ckpt.load(path, like=tree)
  assert meta == {"step": 3}
  assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(
      tree)
  for a, b in zip(jax.tree_util.tree_leaves(back),
                  jax.tree_util.tree_leaves(tree)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="leaves differ"):
    ckpt.load(path, like={"params": params})

  class Interrupted(Exception):
    pass

  def stop(line):
    if line.startswith("step"):    # logged after the chunk was saved
      raise Interrupted(line)

  path = e.train.checkpoint_path(tmp_path, "m", cfg, tc)
  with pytest.raises(Interrupted):
    e.train.train(cfg, tc, checkpoint=path, log=stop)   # 2 of 4 steps
  assert ckpt.load(path)[1]["step"] == 2
  once, h1 = e.train.train(cfg, tc, checkpoint=path, log=None)
  assert h1["resumed_from"] == 2 and len(h1["loss"]) == 4
  again, h2 = e.train.train(cfg, tc, checkpoint=path, log=None)
  assert h2["resumed_from"] == 4                  # finished: loaded
  straight, h3 = e.train.train(cfg, tc, log=None)   # no checkpoint
  np.testing.assert_allclose(h3["loss"], h1["loss"], rtol=1e-5)
  for a, b, c in zip(*(jax.tree_util.tree_leaves(x)
                       for x in (once, again, straight))):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6)
