"""Training the transformer on a render, batches in-graph, with checkpoints.

A training sequence is a row's input followed directly by its target
(`BOS program EOS BOS answer EOS`, then PAD). The loss is next-token cross
entropy on the target's tokens after its BOS. Every train step samples its
own batch with `tinyvm_jax.sample_batch` inside the jitted step (no host
data pipeline), from the train split's axes or, with `TrainConfig.bucket`,
an eval bucket's fixed axes; a `lax.scan` runs `chunk` steps per call.

With a checkpoint path, `train` saves the parameters, the optimiser state
and the history after every chunk (`explib.checkpoint`, `.npz`) and resumes
from the file when it exists: the batches are a function of the step, so a
resumed run continues exactly as an uninterrupted one would, and a finished
run is loaded instead of trained again.

Evaluation (greedy decoding, exact match, predictions files) is in
`explib.evaluate`.
"""

import dataclasses
import pathlib
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tinyvm_jax

from explib import checkpoint as ckpt_lib
from explib import data
from explib import model as model_lib


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  tier: str = "tier1"
  render: str = "direct"
  bucket: str | None = None     # train on this eval bucket's axes; None:
                                # the train split's sampled axes
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
    t_in, t_out = tinyvm_jax.get_tier(self.tier).shapes(
        self.bucket).token_lengths(self.render)
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
                            data.PAD))
  labels = jnp.concatenate([seq[1:], jnp.full((1,), data.PAD, seq.dtype)])
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
    b = tinyvm_jax.sample_batch(key, tc.tier, tc.batch_size,
                                render=tc.render, bucket=tc.bucket,
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


def checkpoint_path(folder, name: str, cfg: model_lib.ModelConfig,
                    tc: TrainConfig) -> pathlib.Path:
  """`folder/<name>-<hash of both configurations>.npz`."""
  config = {"model": dataclasses.asdict(cfg), "train": dataclasses.asdict(tc)}
  return pathlib.Path(folder) / f"{name}-{ckpt_lib.fingerprint(config)}.npz"


def train(cfg: model_lib.ModelConfig, tc: TrainConfig, *, params=None,
          checkpoint=None, log: Callable | None = print
          ) -> tuple[dict, dict]:
  """Trains from `params` (default: a fresh init from `tc.seed`).

  Args:
    cfg, tc: the model and training configurations.
    params: initial parameters; default `model.init(fold_in(key(seed), 0))`.
    checkpoint: a `.npz` path (see `checkpoint_path`): resumed from when it
      exists, written after every chunk.
    log: called with a progress line per chunk (None: silent).

  Returns:
    (params, history) with history arrays "step", "loss", "token_acc",
    "exact" (per step, on the step's own batch), "seconds" (training time,
    all runs together) and "resumed_from" (the step a checkpoint gave).
  """
  key = jax.random.key(tc.seed)
  if params is None:
    params = model_lib.init(jax.random.fold_in(key, 0), cfg)
  data_key = jax.random.key_data(jax.random.fold_in(key, 1))
  opt = make_optimizer(tc)
  opt_state = opt.init(params)
  hist = {"loss": [], "token_acc": [], "exact": []}
  done, seconds = 0, 0.0
  if checkpoint is not None and pathlib.Path(checkpoint).exists():
    state, meta = ckpt_lib.load(checkpoint, like={"params": params,
                                                   "opt_state": opt_state})
    params, opt_state = state["params"], state["opt_state"]
    done, seconds = meta["step"], meta["seconds"]
    hist = {k: [np.asarray(v, np.float32)] for k, v in meta["history"].items()}
    if log:
      log(f"resumed from {checkpoint} at step {done}")
  resumed_from = done
  chunk = make_chunk(cfg, tc, opt) if done < tc.steps else None
  t0 = time.time()
  for start in range(done, tc.steps, tc.chunk):
    params, opt_state, (loss, acc, exact) = chunk(
        params, opt_state, data_key, jnp.int32(start))
    for name, v in zip(("loss", "token_acc", "exact"), (loss, acc, exact)):
      hist[name].append(np.asarray(v))
    if checkpoint is not None:
      ckpt_lib.save(checkpoint, {"params": params, "opt_state": opt_state},
                    meta={"step": start + tc.chunk,
                          "seconds": seconds + time.time() - t0,
                          "model": dataclasses.asdict(cfg),
                          "train": dataclasses.asdict(tc),
                          "history": {k: np.concatenate(v).tolist()
                                      for k, v in hist.items()}})
    if log:
      log(f"step {start + tc.chunk:6d}  loss {float(loss[-1]):.4f}  "
          f"token acc {float(acc[-1]):.3f}  exact {float(exact[-1]):.3f}  "
          f"({time.time() - t0:.0f} s)")
  out = {k: np.concatenate(v) if v else np.zeros(0, np.float32)
         for k, v in hist.items()}
  out["step"] = np.arange(1, len(out["loss"]) + 1)
  out["seconds"] = seconds + time.time() - t0
  out["resumed_from"] = resumed_from
  return params, out
