"""Evaluating a trained model on dataset rows: greedy decoding, exact match
with its baseline and interval, and a predictions file per split.

For each split, every row's input is decoded greedily (`explib.decode`,
one jitted function reused across batches: inputs are padded to a multiple
of `multiple` tokens, batches to `batch_size` rows) and the same pass gives
the teacher-forced predictions. Per split the figures are:

- `exact_match`: greedy decoding reproduces the whole target text, with its
  95% Wilson interval `ci95` over `rows` rows;
- `exact_match_teacher_forced`: every target token is the argmax given the
  true prefix (for a deterministic target the same rows as greedy, up to
  text that detokenizes alike), and `token_accuracy_teacher_forced`;
- `baseline`: the exact match of the constant model, which always answers
  the most common target of the training distribution (`constants`);
- `answer_match` / `answer_baseline`: the printed values right (for a chain
  of thought, its final answer), against the most common training answer;
- `score`: the mean of `tinyvm_jax.score_output` (the reward) on the
  answers.

The predictions file (`tinyvm_jax.data.write_predictions`, one row per
evaluated dataset row) adds per row: `teacher_forced_exact_match` and
`answer_match`.
"""

import dataclasses
import pathlib

import numpy as np
import tinyvm_jax
import tinyvm_jax.data

from explib import data
from explib import decode as decode_lib
from explib import metrics
from explib import model as model_lib


@dataclasses.dataclass(frozen=True)
class Constants:
  """The constant model's answers, from rows of the training distribution."""
  target: str        # most common whole target text of the render
  answer: str        # most common answer text (the direct target)
  rows: int          # training-distribution rows they were counted on


def constants(rows, render: str) -> Constants:
  """The most common target and answer texts of `rows` (which must hold
  `render` and the direct render)."""
  target = _texts(rows, render)
  answer = _texts(rows, "direct")
  return Constants(target=metrics.constant_answer(target)[0],
                   answer=metrics.constant_answer(answer)[0],
                   rows=len(target))


def _texts(rows, render: str) -> list[str]:
  r = rows.renders[render].target
  ids, n = np.asarray(r.ids), np.asarray(r.length)
  return [tinyvm_jax.detokenize(x[:k]) for x, k in zip(ids, n)]


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def _value_tokens(target: np.ndarray) -> np.ndarray:
  """[N, T] bool: tokens after an EQUALS up to the NEWLINE (register
  values of a chain of thought)."""
  out = np.zeros(target.shape, bool)
  for i, row in enumerate(target):
    inside = False
    for j, t in enumerate(row):
      if t == data.EQUALS:
        inside = True
      elif t == data.NEWLINE or t == data.EOS:
        inside = False
      elif inside:
        out[i, j] = True
  return out


def evaluate_split(params, cfg: model_lib.ModelConfig, rows, render: str, *,
                   constant: Constants, batch_size: int, multiple: int,
                   target_margin: int = 8) -> dict:
  """Greedy and teacher-forced figures of one split, and per-row results.

  Returns:
    {"figures": {...} (see the module doc), "rows": per-row lists
    (index, seed, predicted ids, ...) for the predictions file}.
  """
  r = rows.renders[render]
  n_in, n_out = np.asarray(r.input.length), np.asarray(r.target.length)
  valid = ((np.asarray(rows.trace.error) == 0) & (n_in <= r.input.ids.shape[1])
           & (n_out <= r.target.ids.shape[1]))
  t_in = _round_up(int(n_in[valid].max(initial=1)), multiple)
  t_out = _round_up(int(n_out[valid].max(initial=2)) + target_margin, 8)
  inp = np.full((len(n_in), t_in), data.PAD, np.int32)
  tgt = np.full((len(n_in), t_out), data.PAD, np.int32)
  w_in = min(t_in, r.input.ids.shape[1])
  w_out = min(t_out, r.target.ids.shape[1])
  inp[:, :w_in] = np.asarray(r.input.ids)[:, :w_in]
  tgt[:, :w_out] = np.asarray(r.target.ids)[:, :w_out]
  idx = np.flatnonzero(valid)
  inp, tgt, lens, n_out = inp[idx], tgt[idx], n_in[idx], n_out[idx]
  n = len(idx)
  pad = -n % batch_size
  take = np.concatenate([np.arange(n), np.zeros(pad, int)])
  greedy, teacher = [], []
  for i in range(0, n + pad, batch_size):
    sel = take[i:i + batch_size]
    g, t = decode_lib.decode(params, inp[sel], lens[sel].astype(np.int32),
                             tgt[sel], cfg=cfg)
    greedy.append(np.asarray(g))
    teacher.append(np.asarray(t))
  greedy = np.concatenate(greedy)[:n]
  teacher = np.concatenate(teacher)[:n]
  # teacher forced: target tokens 1 .. n_out - 1
  scored = (np.arange(t_out)[None] >= 1) & (np.arange(t_out)[None]
                                            < n_out[:, None])
  hit = teacher == tgt
  tf_exact = np.all(hit | ~scored, 1)
  res = metrics.score_rows(greedy, tgt, render)
  target_texts = [t for _, t in res["texts"]]
  answers = [tinyvm_jax.detokenize(metrics.answer_ids(t, render))
             for t in tgt]
  figures = {
      "exact_match": float(res["exact"].mean()) if n else float("nan"),
      "ci95": list(metrics.wilson(int(res["exact"].sum()), n)),
      "rows": n,
      "baseline": metrics.baseline(constant.target, target_texts),
      "exact_match_teacher_forced": float(tf_exact.mean()) if n else
      float("nan"),
      "token_accuracy_teacher_forced": float(hit[scored].mean()) if n else
      float("nan"),
      "answer_match": float(res["answer"].mean()) if n else float("nan"),
      "answer_ci95": list(metrics.wilson(int(res["answer"].sum()), n)),
      "answer_baseline": metrics.baseline(constant.answer, answers),
      "score": float(res["score"].mean()) if n else float("nan"),
  }
  if render != "direct":
    values = _value_tokens(tgt) & scored
    figures["value_token_accuracy_teacher_forced"] = (
        float(hit[values].mean()) if values.any() else float("nan"))
  key_data = np.asarray(rows.key_data)[idx].astype(np.uint64)
  per_row = {
      "row": idx, "seed": (key_data[:, 0] << np.uint64(32)) | key_data[:, 1],
      "greedy": greedy, "target": tgt, "exact": res["exact"],
      "teacher_exact": tf_exact, "answer": res["answer"],
      "score": res["score"], "texts": res["texts"], "parsed": res["parsed"],
  }
  return {"figures": figures, "rows": per_row}


def prediction_rows(per_row: dict, *, tier: str, seed_base: int, bucket,
                    render: str, model: str, start: int = 0):
  """The predictions-file rows (`tinyvm_jax.data` format) of a split."""
  for i in range(len(per_row["row"])):
    pred_text, target_text = per_row["texts"][i]
    yield {
        "tier": tier, "seed_base": seed_base,
        "split": "train" if bucket is None else "eval", "bucket": bucket,
        "index": int(start + per_row["row"][i]),
        "seed": int(per_row["seed"][i]), "render": render, "model": model,
        "predicted_ids": metrics.trim(per_row["greedy"][i]),
        "predicted_text": pred_text,
        "predicted_output": per_row["parsed"][i],
        "target_text": target_text,
        "exact_match": bool(per_row["exact"][i]),
        "score": float(per_row["score"][i]),
        "teacher_forced_exact_match": bool(per_row["teacher_exact"][i]),
        "answer_match": bool(per_row["answer"][i]),
    }


def evaluate(params, cfg: model_lib.ModelConfig, rows_by_split: dict,
             render: str, *, constant: Constants, batch_size: int = 64,
             multiple: int = 64, model: str = "", tier: str = "tier1",
             seed_base: int = 0, start: int = 0,
             predictions_dir=None) -> tuple[dict, dict]:
  """`evaluate_split` over {bucket name: Rows}; writes
  `predictions_dir/<bucket>.jsonl` per split when given.

  Returns:
    ({bucket: figures (with "predictions": the file's path)},
     {bucket: per-row results}).
  """
  figures, per_row = {}, {}
  for name, rows in rows_by_split.items():
    out = evaluate_split(params, cfg, rows, render, constant=constant,
                         batch_size=batch_size, multiple=multiple)
    figures[name], per_row[name] = out["figures"], out["rows"]
    if predictions_dir is not None:
      folder = pathlib.Path(predictions_dir)
      folder.mkdir(parents=True, exist_ok=True)
      path = folder / f"{name}.jsonl"
      bucket = None if name == data.TRAIN else name
      tinyvm_jax.data.write_predictions(path, prediction_rows(
          out["rows"], tier=tier, seed_base=seed_base, bucket=bucket,
          render=render, model=model or render, start=start))
      figures[name]["predictions"] = str(path)
  return figures, per_row
