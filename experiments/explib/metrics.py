"""Figures of merit with their baselines and uncertainty (host, numpy).

- `wilson`: the 95% Wilson score interval of a proportion.
- `bootstrap_mean`: a percentile bootstrap interval of a mean over
  clusters (rows), for figures whose samples are not independent (probe
  samples: several steps of one program).
- `parse_output`, `answer_ids`: the printed values a target (direct) or the
  final answer of a chain of thought (cot) reads as; `None` when it does
  not parse.
- `constant_answer`, `baseline`: the constant model (always the most common
  target of the training distribution) and what it scores on a split.
- `score_rows`: exact match (whole target text) and `score_output` (the
  reward) of predicted against true target ids, per row.
"""

import collections
import math

import jax
import jax.numpy as jnp
import numpy as np
import tinyvm_jax

from explib import data

HALT = data.TOKEN_ID["HALT"]
Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
  """Wilson score interval of k successes in n trials ((nan, nan) if n=0)."""
  if n <= 0:
    return (float("nan"), float("nan"))
  p = k / n
  den = 1 + z * z / n
  mid = (p + z * z / (2 * n)) / den
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
  # exactly 0 (1) when no (every) trial succeeded, not a rounding error off
  return (0.0 if k == 0 else max(0.0, mid - half),
          1.0 if k == n else min(1.0, mid + half))


def bootstrap_mean(hits: np.ndarray, counts: np.ndarray, *,
                   samples: int = 2000, seed: int = 0
                   ) -> tuple[float, float]:
  """95% percentile interval of sum(hits) / sum(counts), resampling
  clusters: `hits`, `counts` [N] per cluster (e.g. per program)."""
  hits, counts = np.asarray(hits, float), np.asarray(counts, float)
  if counts.sum() <= 0:
    return (float("nan"), float("nan"))
  rng = np.random.default_rng(seed)
  pick = rng.integers(0, len(hits), (samples, len(hits)))
  ratio = hits[pick].sum(1) / np.maximum(counts[pick].sum(1), 1)
  lo, hi = np.quantile(ratio, [0.025, 0.975])
  return (float(lo), float(hi))


def trim(ids) -> list[int]:
  """Ids up to and with the first EOS (all of them if there is none)."""
  ids = [int(x) for x in ids]
  return ids[:ids.index(data.EOS) + 1] if data.EOS in ids else ids


def parse_output(ids) -> list[int] | None:
  """The values of `BOS (MINUS? digits NEWLINE)* EOS`, or None when the ids
  are not of that form (e.g. no EOS, a stray token)."""
  ids = trim(ids)
  if len(ids) < 2 or ids[0] != data.BOS or ids[-1] != data.EOS:
    return None
  values, cur = [], []
  for t in ids[1:-1]:
    if t == data.NEWLINE:
      body = cur[1:] if cur[:1] == [data.MINUS] else cur
      if not body or not all(data.DIGIT0 <= x < data.DIGIT0 + 10
                             for x in body):
        return None
      v = int("".join(str(x - data.DIGIT0) for x in body))
      values.append(-v if cur[0] == data.MINUS else v)
      cur = []
    else:
      cur.append(t)
  return values if not cur else None


def answer_ids(ids, render: str) -> list[int] | None:
  """The ids of the answer, `BOS values EOS`: the whole target for direct;
  for a Tier 0/1 chain of thought the part after the HALT step (its
  instruction line and its empty register line). None: no HALT line."""
  ids = trim(ids)
  if render == "direct":
    return ids
  if HALT not in ids:
    return None
  j = len(ids) - 1 - ids[::-1].index(HALT)
  rest = ids[j + 1:]
  if rest[:2] != [data.NEWLINE, data.NEWLINE]:
    return None
  return [data.BOS] + rest[2:]


_score = jax.jit(jax.vmap(tinyvm_jax.score_output))


def score_rows(pred: np.ndarray, target: np.ndarray, render: str
               ) -> dict[str, np.ndarray]:
  """Per row: `exact` (whole target text equal), `score` (`score_output` of
  the answers: the whole target for direct, the final answer of a cot) and
  `answer` (the answers' values equal and parse).

  Args:
    pred, target: [N, T] int id arrays (BOS first, PAD after EOS).
    render: "direct" or "cot_modified" / "cot".
  """
  pred, target = np.asarray(pred), np.asarray(target)
  texts = [(tinyvm_jax.detokenize(trim(p)), tinyvm_jax.detokenize(trim(t)))
           for p, t in zip(pred, target)]
  exact = np.array([p == t for p, t in texts], bool)
  width = max(pred.shape[1], target.shape[1]) + 1
  pa = np.full((len(pred), width), data.EOS, np.int32)
  ta = np.full((len(pred), width), data.EOS, np.int32)
  parsed = []
  for i, (p, t) in enumerate(zip(pred, target)):
    a, b = answer_ids(p, render), answer_ids(t, render)
    # an answer that cannot be found scores 0 (a register token hangs)
    a = a if a is not None else [data.BOS, data.R0, data.EOS]
    pa[i, :len(a)], ta[i, :len(b)] = a, b
    parsed.append((parse_output(a), parse_output(b)))
  score = np.asarray(_score(jnp.asarray(pa), jnp.asarray(ta))) if len(
      pred) else np.zeros(0, np.float32)
  answer = np.array([a is not None and a == b for a, b in parsed], bool)
  return {"exact": exact, "score": score, "answer": answer,
          "texts": texts, "parsed": [a for a, _ in parsed]}


def constant_answer(target_texts) -> tuple[str, float]:
  """The most common target text and its frequency."""
  counts = collections.Counter(target_texts)
  text, c = counts.most_common(1)[0]
  return text, c / max(len(target_texts), 1)


def baseline(constant: str, target_texts) -> float:
  """Exact match of the constant model answering `constant` every time."""
  texts = list(target_texts)
  return sum(t == constant for t in texts) / max(len(texts), 1)


def summary(hits: np.ndarray) -> dict:
  """{"value", "ci95", "rows"} of a [N] bool array."""
  hits = np.asarray(hits, bool)
  n, k = int(hits.size), int(hits.sum())
  return {"value": k / n if n else float("nan"), "ci95": list(wilson(k, n)),
          "rows": n}
