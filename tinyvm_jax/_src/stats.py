"""Distribution figures of generated rows, in the format of the reference's
`stats.json`, and their comparison with it within sampling error (host,
numpy).

`summarize(rows)` reduces a batch of `Rows` to small per-row arrays (opcode
counts, destination counts, literal signs, the printed values, lengths);
`figures` turns the concatenated summaries into the stats.json figures and
`compare` checks every figure against a stats.json entry with a tolerance of
`z` standard errors of the difference of two independent samples of sizes N
(ours) and N_ref (the reference's):

- frequencies over rows (axes, printed-value buckets, zero fraction):
  binomial, sigma^2 = p (1 - p) (1/N + 1/N_ref), p pooled, with Bernstein's
  bound (tolerance b + sqrt(b^2 + z^2 sigma^2), b = z^2 / (6 min(N, N_ref)))
  so that rare values are not held to the normal approximation;
- frequencies over instructions (opcodes, literal signs, destinations): ratio
  estimators sum(c) / sum(L) over rows, sigma^2 = var(c - f L) / mean(L)^2
  (1/N + 1/N_ref), with the per-row variance measured on our rows;
- means: sigma^2 = var(x) (1/N + 1/N_ref) (+ the reference's rounding);
- medians: the reference's median must lie between our sample's quantiles
  0.5 -+ z sqrt(0.25 (1/N + 1/N_ref));
- min and max of program length and trace steps: equal (they are the support);
  the max of input tokens (a tail figure): no more of our rows may exceed the
  reference's max than a Poisson bound allows.

Two sets of figures are compared with exact values instead of the
reference's, because the reference's axes/program seeding (spec section 15)
skews them:
- destination-register frequencies, with the uniform distribution over the
  registers a generator can write (R0 alone for Tier 0, R0..R7 for Tier 1);
- Tier 0 train's printed values (`exact_outputs`): the reference's first
  program draw, the literal K, repeats the draw of n, so K and n are
  correlated and the printed-value histogram differs; with independent
  streams it is `counter_output_distribution`, computed exactly.
"""

import dataclasses
import math
from typing import Sequence

import jax
import numpy as np

from tinyvm_jax._src import isa
from tinyvm_jax._src.types import Rows

BUCKET_KEY = "output_bucket_freq(value//100)"


def summarize(rows: Rows, axis_names: Sequence[str]) -> dict[str, np.ndarray]:
  """Per-row summary arrays of a batch of rows (needs the direct render)."""
  prog = jax.tree_util.tree_map(np.asarray, rows.program)
  trace = jax.tree_util.tree_map(np.asarray, rows.trace)
  b, p = prog.op.shape
  live = np.arange(p)[None, :] < prog.length[:, None]                 # [B, P]
  op = np.where(live, prog.op, isa.NUM_OPS)
  op_counts = np.stack([(op == o).sum(1) for o in range(isa.NUM_BASE_OPS)],
                       axis=1)
  writes = live & isa.WRITES_REG[np.clip(prog.op, 0, isa.NUM_OPS - 1)]
  dest = np.where(writes, prog.regs[..., 0], -1)
  dst_counts = np.stack([(dest == r).sum(1) for r in range(isa.NUM_REGS)], 1)
  load = live & (prog.op == isa.LOAD)
  lit_counts = np.stack([(load & (prog.lit > 0)).sum(1),
                         (load & (prog.lit < 0)).sum(1),
                         (load & (prog.lit == 0)).sum(1)], axis=1)
  return {
      "axes": {name: np.asarray(rows.axes)[:, i]
               for i, name in enumerate(axis_names)},
      "op_counts": op_counts, "dst_counts": dst_counts,
      "lit_counts": lit_counts,
      "output": trace.output, "num_output": trace.num_output,
      "program_len": prog.length, "trace_steps": trace.num_steps,
      "input_tokens": np.asarray(rows.renders["direct"].input.length),
      "error": trace.error,
  }


def concat(summaries: Sequence[dict]) -> dict:
  """Concatenates summaries along the row axis."""
  return jax.tree_util.tree_map(lambda *x: np.concatenate(x), *summaries)


def _outputs(s) -> np.ndarray:
  out = s["output"]
  mask = np.arange(out.shape[1])[None, :] < s["num_output"][:, None]
  return out[mask]


def _ratio(num: np.ndarray, den: np.ndarray):
  """Ratio estimator sum(num)/sum(den) and its per-row variance term."""
  f = num.sum() / max(den.sum(), 1)
  var = np.mean((num - f * den) ** 2) / max(np.mean(den), 1e-12) ** 2
  return float(f), float(var)


def figures(s: dict) -> dict:
  """The stats.json figures of a summary."""
  n = len(s["program_len"])
  out = {"rows": n, "axes_freq": {}}
  for name, vals in s["axes"].items():
    for v, c in zip(*np.unique(vals, return_counts=True)):
      out["axes_freq"][f"{name}={int(v)}"] = c / n
  total = s["op_counts"].sum()
  out["op_freq"] = {isa.OP_NAMES[o]: s["op_counts"][:, o].sum() / total
                    for o in range(isa.NUM_BASE_OPS)
                    if s["op_counts"][:, o].any()}
  dst = s["dst_counts"].sum(0)
  out["dst_reg_freq"] = {f"R{r}": dst[r] / dst.sum()
                         for r in range(isa.NUM_REGS) if dst[r]}
  lit = s["lit_counts"].sum(0)
  out["load_literal_sign"] = dict(zip(("pos", "neg", "zero"),
                                      lit / max(lit.sum(), 1)))
  vals = _outputs(s)
  out["output_zero_frac"] = float(np.mean(vals == 0))
  buckets, counts = np.unique(vals // 100, return_counts=True)
  out[BUCKET_KEY] = {str(int(b)): c / len(vals)
                     for b, c in zip(buckets, counts)}
  pl, ts, it = s["program_len"], s["trace_steps"], s["input_tokens"]
  out["program_len"] = {"mean": pl.mean(), "min": int(pl.min()),
                        "max": int(pl.max())}
  out["trace_steps"] = {"mean": ts.mean(), "median": float(np.median(ts)),
                        "max": int(ts.max())}
  out["direct_input_tokens"] = {"mean": it.mean(),
                                "median": float(np.median(it)),
                                "max": int(it.max())}
  return out


@dataclasses.dataclass
class Check:
  name: str
  ours: float
  ref: float
  tol: float
  ok: bool

  def __str__(self):
    mark = "ok  " if self.ok else "FAIL"
    return (f"{mark} {self.name:45s} ours {self.ours:10.5f}  ref "
            f"{self.ref:10.5f}  |d| {abs(self.ours - self.ref):.5f} "
            f"<= {self.tol:.5f}")


def counter_output_distribution(n_values: Sequence[int]) -> dict[int, float]:
  """Exact distribution of the value `gen_counter(n)` prints, n uniform over
  `n_values`: K uniform in [-127, 127], then n - 1 ops each uniform over
  ADD (v = clamp(2v)), SUB (0), NEG (clamp(-v)), MOV (v)."""
  lo, hi = isa.VALUE_MIN, isa.VALUE_MAX
  v = np.arange(lo, hi + 1)
  targets = [np.clip(2 * v, lo, hi), np.zeros_like(v), np.clip(-v, lo, hi), v]
  total = np.zeros(v.size)
  for n in n_values:
    dist = ((v >= isa.LITERAL_MIN) & (v <= isa.LITERAL_MAX)).astype(float)
    dist /= dist.sum()
    for _ in range(n - 1):
      dist = sum(np.bincount(t - lo, weights=dist, minlength=v.size)
                 for t in targets) / len(targets)
    total += dist / len(n_values)
  return {int(x): float(p) for x, p in zip(v, total) if p > 0}


class _Checker:
  """Collects `Check`s at `z` standard errors for `n` rows of ours against
  `n_ref` of the reference."""

  def __init__(self, z: float, n: int, n_ref: int):
    self.z, self.n, self.n_ref, self.checks = z, n, n_ref, []
    self.inv = 1 / n + 1 / n_ref
    self.half = 0.5 / n + 0.5 / n_ref

  def binom(self, name, p_ours, p_ref, count=None, count_ref=None):
    count = self.n if count is None else count
    count_ref = self.n_ref if count_ref is None else count_ref
    p = (p_ours * count + p_ref * count_ref) / (count + count_ref)
    var = p * (1 - p) * (1 / count + 1 / count_ref)
    # Bernstein: t = z^2 / (6N) + sqrt((z^2 / (6N))^2 + z^2 var) holds for
    # rare values too, where the normal approximation is too tight
    b = self.z * self.z / (6 * min(count, count_ref))
    tol = b + math.sqrt(b * b + self.z * self.z * var)
    self.checks.append(Check(name, p_ours, p_ref, tol,
                             abs(p_ours - p_ref) <= tol))

  def ratio(self, name, num, den, p_ref, ref_inv=None):
    f, var = _ratio(num, den)
    ref_inv = self.inv if ref_inv is None else ref_inv
    tol = self.z * math.sqrt(var * ref_inv) + self.half + 5e-6
    self.checks.append(Check(name, f, p_ref, tol, abs(f - p_ref) <= tol))


def _check_programs(c: _Checker, s: dict, ours: dict, ref: dict,
                    dst_support: Sequence[int]) -> None:
  """Axes, opcodes, destination registers and LOAD literal signs."""
  for key in sorted(set(ours["axes_freq"]) | set(ref["axes_freq"])):
    c.binom(f"axes_freq[{key}]", ours["axes_freq"].get(key, 0.0),
            ref["axes_freq"].get(key, 0.0))
  length = s["program_len"]
  for name in sorted(set(ours["op_freq"]) | set(ref["op_freq"])):
    o = isa.OP_IDS[name]
    c.ratio(f"op_freq[{name}]", s["op_counts"][:, o], length,
            ref["op_freq"].get(name, 0.0))
  writes = s["dst_counts"].sum(1)
  for r in range(isa.NUM_REGS):
    expect = 1 / len(dst_support) if r in dst_support else 0.0
    c.ratio(f"dst_reg_freq[R{r}] (uniform)", s["dst_counts"][:, r], writes,
            expect, ref_inv=1 / c.n)
  loads = s["lit_counts"].sum(1)
  for i, name in enumerate(("pos", "neg", "zero")):
    c.ratio(f"load_literal_sign[{name}]", s["lit_counts"][:, i], loads,
            ref["load_literal_sign"].get(name, 0.0))


def _check_outputs(c: _Checker, s: dict, ours: dict, ref: dict,
                   exact_outputs: dict[int, float] | None) -> None:
  """The zero fraction and the bucket histogram of printed values."""
  n_out = len(_outputs(s))
  zero, buckets, tag, n_exp = (ref["output_zero_frac"], ref[BUCKET_KEY], "",
                               c.n_ref)
  if exact_outputs is not None:
    zero, buckets = exact_outputs.get(0, 0.0), {}
    for v, p in exact_outputs.items():
      key = str(v // 100)
      buckets[key] = buckets.get(key, 0.0) + p
    tag, n_exp = " (exact)", 10 ** 12
  c.binom("output_zero_frac" + tag, ours["output_zero_frac"], zero,
          count=n_out, count_ref=n_exp)
  for key in sorted(set(ours[BUCKET_KEY]) | set(buckets), key=int):
    c.binom(f"output_bucket[{key}]{tag}", ours[BUCKET_KEY].get(key, 0.0),
            buckets.get(key, 0.0), count=n_out, count_ref=n_exp)


def _check_moments(c: _Checker, fig: str, arr: np.ndarray, ref: dict
                   ) -> None:
  """Mean, median and extremes of one per-row figure."""
  z, inv = c.z, c.inv
  tol = z * math.sqrt(arr.var() * inv) + 5e-4
  m = float(arr.mean())
  c.checks.append(Check(f"{fig}.mean", m, ref[fig]["mean"], tol,
                        abs(m - ref[fig]["mean"]) <= tol))
  if "median" in ref[fig]:
    d = z * math.sqrt(0.25 * inv)
    lo, hi = np.quantile(arr, [max(0.0, 0.5 - d), min(1.0, 0.5 + d)])
    med = float(np.median(arr))
    c.checks.append(Check(f"{fig}.median", med, ref[fig]["median"],
                          (hi - lo) / 2, lo <= ref[fig]["median"] <= hi))
  for ext in ("min", "max"):
    if ext not in ref[fig]:
      continue
    v = float(arr.min() if ext == "min" else arr.max())
    if fig == "direct_input_tokens":
      # tail figure: rows of ours above the reference's max
      above = int(np.sum(arr > ref[fig]["max"]))
      lam = 3.0 * c.n / c.n_ref
      allowed = math.floor(lam + z * math.sqrt(lam) + 1)
      c.checks.append(Check(f"{fig}.max (rows above ref max)", above, 0,
                            allowed, above <= allowed))
    else:
      c.checks.append(Check(f"{fig}.{ext}", v, ref[fig][ext], 0.0,
                            v == ref[fig][ext]))


def compare(s: dict, ref: dict, *, z: float = 5.0,
            dst_support: Sequence[int] = tuple(range(8)),
            exact_outputs: dict[int, float] | None = None) -> list[Check]:
  """Checks every figure of a stats.json entry against our summary.

  Args:
    s: our summary (`summarize`/`concat`).
    ref: one entry of stats.json (with its "rows").
    z: tolerance in standard errors.
    dst_support: registers a generator writes; destinations are compared
      with the uniform distribution over them.
    exact_outputs: {value: probability}; when given, the zero fraction and
      the bucket histogram are compared with it instead of the reference.

  Returns:
    One `Check` per figure.
  """
  c = _Checker(z, len(s["program_len"]), int(ref["rows"]))
  ours = figures(s)
  _check_programs(c, s, ours, ref, dst_support)
  _check_outputs(c, s, ours, ref, exact_outputs)
  for fig, arr in (("program_len", s["program_len"]),
                   ("trace_steps", s["trace_steps"]),
                   ("direct_input_tokens", s["input_tokens"])):
    _check_moments(c, fig, arr, ref)
  return c.checks
