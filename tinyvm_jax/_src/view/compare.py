"""A model's predictions against the truth, for the viewer's Compare page.

A predictions file (`tinyvm_jax.data.write_predictions`'s format) names each
dataset row it answers (tier, seed base, split, bucket, index, seed). The
truth is that row in a named dataset of the same tier and seed base (its
seed checked), or, without one, the row rebuilt from its seed with
`tiers.generate` (jitted once a split). A comparison lists the printed
values side by side, anchors the first divergence and the step that printed
the truth's value there; a cot prediction is also read step by step and the
first wrong register (or instruction line) is found.
"""

import re
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from tinyvm_jax._src import asm
from tinyvm_jax._src import tiers
from tinyvm_jax._src.io import loaders
from tinyvm_jax._src.io import predictions as predictions_lib
from tinyvm_jax._src.view import datasets as datasets_lib
from tinyvm_jax._src.view import model

_REGS_RE = re.compile(r"(?:R[0-7]=-?\d+)*")
_REG_RE = re.compile(r"R([0-7])=(-?\d+)")
_VALUE_RE = re.compile(r"-?\d+")


class PredictionsError(ValueError):
  """A predictions file that cannot be read."""


class Predictions:
  """The rows of one predictions file, checked, with accuracy per bucket."""

  def __init__(self, path: str | Path, number: int):
    self.path, self.number = Path(path), number
    self.name = self.path.name
    if not self.path.is_file():
      raise PredictionsError(f"{path}: no such file")
    try:
      self.rows = predictions_lib.load_predictions(self.path)
    except loaders.RowError as e:
      raise PredictionsError(str(e)) from None
    except OSError as e:
      raise PredictionsError(f"{path}: unreadable ({e.strerror})") from None
    if not self.rows:
      raise PredictionsError(f"{path}: no predictions in the file")

  def describe(self) -> dict[str, Any]:
    """{id, name, rows, models, renders, tiers, buckets: [{group, rows,
    exact, accuracy, mean_score}]}."""
    per: dict[str, list] = {}
    for r in self.rows:
      per.setdefault(group_name(r), []).append(r)
    buckets = []
    for g in sorted(per, key=lambda g: (g != "train", g)):
      rs = per[g]
      exact = sum(bool(r["exact_match"]) for r in rs)
      buckets.append({"group": g, "rows": len(rs), "exact": exact,
                      "accuracy": exact / len(rs),
                      "mean_score": float(np.mean([r["score"] for r in rs]))})
    uniq = lambda key: sorted({str(r[key]) for r in self.rows})
    return {"id": self.number, "name": self.name, "rows": len(self.rows),
            "models": uniq("model"), "renders": uniq("render"),
            "tiers": uniq("tier"), "buckets": buckets}

  def failures(self, group: str | None = None) -> list[int]:
    """Numbers of the rows that are not an exact match (of one group)."""
    return [k for k, r in enumerate(self.rows) if not r["exact_match"]
            and (group is None or group_name(r) == group)]

  def brief(self, k: int) -> dict[str, Any]:
    r = self.rows[k]
    return {"k": k, "group": group_name(r), "index": r["index"],
            "seed": str(r["seed"]), "model": r["model"],
            "target_text": r["target_text"][:200],
            "predicted_text": r["predicted_text"][:200],
            "exact_match": r["exact_match"], "score": r["score"]}


def group_name(pred: Mapping[str, Any]) -> str:
  return "train" if pred["split"] == "train" else f"eval/{pred['bucket']}"


class Truth:
  """Finds the true row of a prediction: in a dataset, else rebuilt."""

  def __init__(self, datasets: Sequence[datasets_lib.Dataset]):
    self._datasets = list(datasets)
    self._lock = threading.Lock()

  def row(self, pred: Mapping[str, Any]) -> tuple[dict, str]:
    """(row dict, where it came from). Raises LookupError when the row
    named does not exist or its seed differs from the prediction's."""
    group = group_name(pred)
    for ds in self._datasets:
      if ds.tier != pred["tier"] or ds.seed_base not in (None,
                                                         pred["seed_base"]):
        continue
      try:
        src = ds.source(group)
      except KeyError:
        continue
      if pred["index"] >= src.num_rows >= 0:
        raise LookupError(f"{group} of {ds.name} has {src.num_rows:,} rows; "
                          f"the prediction names row {pred['index']:,}")
      row = src.row(pred["index"])
      where = f"dataset {ds.name} ({src.fmt})"
      break
    else:
      row, where = self._rebuild(pred), "rebuilt from its seed"
    seed = int((row.get("meta") or {}).get("seed", -1))
    if seed != pred["seed"]:
      raise LookupError(f"seed mismatch: the prediction says {pred['seed']} "
                        f"but row {pred['index']} of {group} ({where}) has "
                        f"{seed}; a different seed base?")
    return row, where

  def _rebuild(self, pred: Mapping[str, Any]) -> dict:
    try:
      tier = tiers.get_tier(pred["tier"])
      bucket = pred["bucket"] if pred["split"] == "eval" else None
      if bucket is not None:
        tier.bucket(bucket)
      if pred["index"] >= 2 ** 31 or not 0 <= pred["seed_base"] < 2 ** 64:
        raise ValueError("index or seed_base out of range")
    except ValueError as e:
      raise LookupError(f"cannot rebuild the row: {e}") from None
    with self._lock:   # one compilation a split, one row at a time
      rows = tiers.generate(tier, pred["seed_base"], pred["split"], bucket,
                            np.array([pred["index"]]), renders=("direct",))
    rows = jax_to_numpy(rows)
    return datasets_lib.rows_to_dicts(
        rows, tier=tier.name, split=pred["split"], bucket=bucket,
        axis_names=tier.axis_names, render_names=("direct",))[0]


def jax_to_numpy(tree):
  import jax
  return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


def value_divergence(truth: Sequence[int], predicted: Sequence[int] | None
                     ) -> int | None:
  """Index of the first printed value that differs (a missing or extra
  value counts); 0 when the prediction is unparseable; None if equal."""
  if predicted is None:
    return 0
  for i, (a, b) in enumerate(zip(truth, predicted)):
    if a != b:
      return i
  return None if len(truth) == len(predicted) else min(len(truth),
                                                       len(predicted))


def parse_cot(text: str) -> tuple[list[dict], list[int], list[str]]:
  """Reads a cot target text: ([{instruction, regs: {i: v} | None}],
  output values, lines that are neither)."""
  steps, values, junk = [], [], []
  for line in text.split("\n"):
    s = line.strip()
    if steps and steps[-1]["regs"] is None and _REGS_RE.fullmatch(s):
      steps[-1]["regs"] = {int(i): int(v) for i, v in _REG_RE.findall(s)}
    elif _VALUE_RE.fullmatch(s):
      values.append(int(s))
    elif s:
      try:
        asm.parse_asm_lines(s)
        steps.append({"instruction": s, "regs": None})
      except ValueError:
        junk.append(line)
  return steps, values, junk


def cot_divergence(view: Mapping[str, Any], text: str, *, full: bool
                   ) -> dict[str, Any]:
  """The first step where a predicted cot text leaves the truth.

  Returns:
    {"steps": [{instruction, regs}] predicted, "values": printed values,
    "junk": unreadable lines, "first": None or {step, kind ("instruction",
    "register", "missing step", "extra step"), register, predicted, truth}}.
  """
  steps, values, junk = parse_cot(text)
  truth = view["steps"]
  first = None
  for t in range(max(len(truth), len(steps))):
    if t >= len(steps) or t >= len(truth):
      first = {"step": min(t, len(truth) - 1), "kind": "missing step"
               if t >= len(steps) else "extra step"}
      break
    want_line = view["lines"][truth[t]["pc"]]["text"]
    if steps[t]["instruction"].rstrip() != want_line:
      first = {"step": t, "kind": "instruction",
               "predicted": steps[t]["instruction"], "truth": want_line}
      break
    regs = steps[t]["regs"] or {}
    prev = truth[t - 1]["regs"] if t else [0] * len(truth[t]["regs"])
    for r, want in enumerate(truth[t]["regs"]):
      shown = full or want != prev[r]
      if r in regs and regs[r] != want or (shown and r not in regs):
        first = {"step": t, "kind": "register", "register": r,
                 "predicted": regs.get(r), "truth": want}
        break
    if first:
      break
  return {"steps": steps, "values": values, "junk": junk[:20],
          "first": first}


def compare(pred: Mapping[str, Any], row: Mapping[str, Any], *,
            where: str, **meta) -> dict[str, Any]:
  """The comparison of one prediction with its true row.

  Returns:
    {"kind": "compare", "prediction", "view" (the truth's row view),
    "truth_values", "predicted_values", "divergence": None or {index,
    step}, "cot": None or `cot_divergence`'s dict, "anchor_step"}.
  """
  view = model.row_view(row, **meta)
  truth_values = list(view["output"])
  cot = None
  predicted = pred["predicted_output"]
  if pred["render"] in ("cot", "cot_modified"):
    cot = cot_divergence(view, pred["predicted_text"],
                         full=pred["render"] == "cot")
    if predicted is None and cot["values"]:
      predicted = cot["values"]
  idx = value_divergence(truth_values, predicted)
  divergence, anchor = None, None
  if idx is not None:
    printed = [t for t, s in enumerate(view["steps"])
               if s["emitted"] is not None]
    step = printed[idx] if idx < len(printed) else len(view["steps"]) - 1
    divergence = {"index": idx, "step": step,
                  "unparseable": predicted is None}
    anchor = step
  if cot and cot["first"]:
    anchor = cot["first"]["step"]
  keep = ("tier", "seed_base", "split", "bucket", "index", "render", "model",
          "predicted_text", "target_text", "exact_match", "score",
          "predicted_ids")
  p = {k: pred.get(k) for k in keep}
  p["seed"] = str(pred["seed"])
  return {"kind": "compare", "prediction": p, "truth_source": where,
          "view": view, "truth_values": truth_values,
          "predicted_values": predicted, "divergence": divergence,
          "cot": cot, "anchor_step": anchor}
