"""Training and evaluating the transformer on a render, batches in-graph.

A training sequence is a row's input followed directly by its target
(`BOS program EOS BOS answer EOS`, then PAD). The loss is next-token cross
entropy on the target's tokens after its BOS. Every train step samples its
own batch with `sampling.sample_batch` inside the jitted step (no host data
pipeline); a `lax.scan` runs `chunk` steps per call.

Exact match is measured with teacher forcing: every target token is the
argmax given the true prefix. For a deterministic target that is the same as
greedy decoding reproducing the whole target, so no decoding loop is needed.
"""

import collections
import dataclasses
import functools
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tinyvm_jax._src import isa
from tinyvm_jax._src import sampling
from tinyvm_jax._src import tiers as tiers_lib
from tinyvm_jax._src.types import Rows

from explib import model as model_lib


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  tier: str = "tier1"
  render: str = "direct"
  batch_size: int = 32
  steps: int = 200
  chunk: int = 50               # steps per jitted call (a lax.scan)
  lr: float = 1e-3
  warmup: int = 20
  weight_decay: float = 0.01
  max_input_len: int | None = None   # default: the train split's
  max_target_len: int | None = None  # default: the train split's
  seed: int = 0

  def __post_init__(self):
    if self.steps % self.chunk:
      raise ValueError(f"steps={self.steps} must be a multiple of "
                       f"chunk={self.chunk}")

  def token_lengths(self) -> tuple[int, int]:
    t_in, t_out = tiers_lib.get_tier(self.tier).shapes().token_lengths(
        self.render)
    return self.max_input_len or t_in, self.max_target_len or t_out


def cot_target_len(max_steps: int) -> int:
  """Longest `cot_modified` target of a straight-line (Tier 0/1) program of
  `max_steps` steps: per step an instruction (<= 6 tokens), the one register
  it changes (<= 7) and NEWLINE; then one output (<= 6), BOS and EOS."""
  return 14 * max_steps + 8


# ------------------------------------------------------------- sequences
def _pack_one(inp, n_in, tgt, n_out, size):
  j = jnp.arange(size)
  t = j - n_in
  seq = jnp.where(j < n_in, inp[jnp.clip(j, 0, inp.shape[0] - 1)],
                  jnp.where(t < n_out, tgt[jnp.clip(t, 0, tgt.shape[0] - 1)],
                            isa.TOK_PAD))
  labels = jnp.concatenate([seq[1:], jnp.full((1,), isa.TOK_PAD, seq.dtype)])
  # position j predicts token j + 1; score target tokens 1 .. n_out - 1
  mask = (j + 1 > n_in) & (j + 1 < n_in + n_out)
  return seq, labels, mask


def pack(input_ids, input_len, target_ids, target_len):
  """Input then target in one sequence.

  Args:
    input_ids: [B, T_in] int32; input_len: [B] int32.
    target_ids: [B, T_out] int32; target_len: [B] int32.

  Returns:
    seq [B, T], labels [B, T] (seq shifted left), mask [B, T] bool (the
    positions whose label is a scored target token), T = T_in + T_out.
  """
  size = input_ids.shape[1] + target_ids.shape[1]
  return jax.vmap(_pack_one, in_axes=(0, 0, 0, 0, None))(
      input_ids, input_len, target_ids, target_len, size)


def loss_and_metrics(params, cfg, seq, labels, mask):
  """Mean cross entropy over `mask`, token accuracy and per-row exact match."""
  logits, _ = model_lib.forward(params, seq, cfg)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  m = mask.astype(jnp.float32)
  loss = (ce * m).sum() / jnp.maximum(m.sum(), 1)
  hit = (jnp.argmax(logits, -1) == labels)
  token_acc = (hit * m).sum() / jnp.maximum(m.sum(), 1)
  exact = jnp.all(hit | ~mask, axis=-1)                              # [B]
  return loss, (token_acc, exact)


# ------------------------------------------------------------- training
def make_optimizer(tc: TrainConfig) -> optax.GradientTransformation:
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, tc.lr, warmup_steps=min(tc.warmup, tc.steps // 2),
      decay_steps=max(tc.steps, 2),
      end_value=tc.lr * 0.1)
  return optax.chain(optax.clip_by_global_norm(1.0),
                     optax.adamw(schedule, weight_decay=tc.weight_decay))


def make_chunk(cfg: model_lib.ModelConfig, tc: TrainConfig,
               opt: optax.GradientTransformation) -> Callable:
  """The jitted `chunk(params, opt_state, data_key_data, start)`: `tc.chunk`
  train steps, each sampling its batch in-graph from fold_in(key, step)."""
  t_in, t_out = tc.token_lengths()

  def step(carry, i):
    params, opt_state, key_data, start = carry
    key = jax.random.fold_in(jax.random.wrap_key_data(key_data), start + i)
    b = sampling.sample_batch(key, tc.tier, tc.batch_size, render=tc.render,
                              max_input_len=t_in, max_target_len=t_out)
    seq, labels, mask = pack(b.input_ids, b.input_mask.sum(-1),
                             b.target_ids, b.target_mask.sum(-1))
    mask = mask & b.valid[:, None]
    (loss, (acc, exact)), grads = jax.value_and_grad(
        loss_and_metrics, has_aux=True)(params, cfg, seq, labels, mask)
    updates, opt_state = opt.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    ok = b.valid.astype(jnp.float32)
    metrics = (loss, acc, (exact * ok).sum() / jnp.maximum(ok.sum(), 1))
    return (params, opt_state, key_data, start), metrics

  @jax.jit
  def chunk(params, opt_state, key_data, start):
    (params, opt_state, _, _), metrics = jax.lax.scan(
        step, (params, opt_state, key_data, start), jnp.arange(tc.chunk))
    return params, opt_state, metrics

  return chunk


def train(cfg: model_lib.ModelConfig, tc: TrainConfig, *, params=None,
          log: Callable | None = print) -> tuple[dict, dict]:
  """Trains from `params` (default: a fresh init from `tc.seed`).

  Returns:
    (params, history) with history arrays "step", "loss", "token_acc",
    "exact" (per step, on the step's own batch) and "seconds".
  """
  key = jax.random.key(tc.seed)
  if params is None:
    params = model_lib.init(jax.random.fold_in(key, 0), cfg)
  data_key = jax.random.key_data(jax.random.fold_in(key, 1))
  opt = make_optimizer(tc)
  opt_state = opt.init(params)
  chunk = make_chunk(cfg, tc, opt)
  hist = {"loss": [], "token_acc": [], "exact": []}
  t0 = time.time()
  for start in range(0, tc.steps, tc.chunk):
    params, opt_state, (loss, acc, exact) = chunk(
        params, opt_state, data_key, jnp.int32(start))
    for name, v in zip(("loss", "token_acc", "exact"), (loss, acc, exact)):
      hist[name].append(np.asarray(v))
    if log:
      log(f"step {start + tc.chunk:6d}  loss {float(loss[-1]):.4f}  "
          f"token acc {float(acc[-1]):.3f}  exact {float(exact[-1]):.3f}  "
          f"({time.time() - t0:.0f} s)")
  out = {k: np.concatenate(v) for k, v in hist.items()}
  out["step"] = np.arange(1, tc.steps + 1)
  out["seconds"] = time.time() - t0
  return params, out


# ------------------------------------------------------------- evaluation
@functools.partial(jax.jit, static_argnames=("cfg",))
def _eval_batch(params, seq, labels, mask, *, cfg):
  _, (acc, exact) = loss_and_metrics(params, cfg, seq, labels, mask)
  return exact


def _sequences(rows: Rows, render: str):
  """Host: packed sequences of a split's rows, trimmed to its longest row."""
  r = rows.renders[render]
  n_in, n_out = np.asarray(r.input.length), np.asarray(r.target.length)
  t_in, t_out = r.input.ids.shape[1], r.target.ids.shape[1]
  valid = ((np.asarray(rows.trace.error) == 0) & (n_in <= t_in)
           & (n_out <= t_out))
  inp = np.asarray(r.input.ids)[:, :max(1, int(n_in.max(initial=1)))]
  tgt = np.asarray(r.target.ids)[:, :max(1, int(n_out.max(initial=1)))]
  return inp, np.minimum(n_in, t_in), tgt, np.minimum(n_out, t_out), valid


def evaluate(params, cfg: model_lib.ModelConfig, rows_by_split: dict,
             render: str, *, batch_size: int = 64, multiple: int = 1
             ) -> dict[str, dict]:
  """Exact match per split (teacher forced, whole target).

  Args:
    params, cfg: the model.
    rows_by_split: {name: Rows} (e.g. from `data.dataset_rows`).
    render: the render scored (its input in, its target out).
    batch_size: rows per forward pass.
    multiple: sequence lengths are padded up to a multiple of this (fewer
      distinct lengths, fewer compilations).

  Returns:
    {name: {"exact": fraction of valid rows fully right, "rows": valid rows,
    "constant": the fraction a constant model scores, one always giving
    that split's most common target, "tokens": sequence length}}.
  """
  out = {}
  for name, rows in rows_by_split.items():
    inp, n_in, tgt, n_out, valid = _sequences(rows, render)
    seq, labels, mask = jax.tree_util.tree_map(
        np.asarray, pack(jnp.asarray(inp), jnp.asarray(n_in),
                         jnp.asarray(tgt), jnp.asarray(n_out)))
    extra = -seq.shape[1] % multiple
    if extra:
      widen = lambda x, v: np.pad(x, ((0, 0), (0, extra)), constant_values=v)
      seq, labels, mask = (widen(seq, isa.TOK_PAD), widen(labels, isa.TOK_PAD),
                           widen(mask, False))
    n = seq.shape[0]
    pad = -n % batch_size
    if pad:
      seq, labels, mask = (np.concatenate([x, x[:pad]]) for x in
                           (seq, labels, mask))
    exact = np.concatenate([
        np.asarray(_eval_batch(params, seq[i:i + batch_size],
                         labels[i:i + batch_size], mask[i:i + batch_size],
                         cfg=cfg))
        for i in range(0, seq.shape[0], batch_size)])[:n]
    answers = collections.Counter(
        tuple(t[:k].tolist()) for t, k, v in zip(tgt, n_out, valid) if v)
    out[name] = {"exact": float(exact[valid].mean()) if valid.any() else
                 float("nan"),
                 "rows": int(valid.sum()),
                 "constant": max(answers.values(), default=0) / max(
                     int(valid.sum()), 1),
                 "tokens": int(seq.shape[1])}
  return out
