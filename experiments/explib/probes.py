"""Linear probes from the residual stream to the value a step writes.

A probe sample is one executed step that writes a register, read at a
named position of the sequence the model sees:

- `instruction` (any model, on its input): the NEWLINE that ends the
  step's instruction, the first position at which a causal model has seen
  the whole instruction;
- `before_value` (a chain-of-thought model, on input + teacher-forced
  target): the EQUALS of the step's register line (`R3=` ...), the last
  position before the model writes the value, so a probe there asks
  whether the value has been computed latently before it is spelled out.
  Steps whose register line is empty (the value did not change) have no
  such position and are left out.

The label is the value the step writes to its destination register, as a
class `clip(v, -C, C) + C` (2C + 1 classes, the end classes holding the
tails). Per layer (the embedding and each block) one multinomial logistic
regression is fitted with optax on standardised features of 75% of the
programs and scored on the rest; the interval is a bootstrap over the
held-out programs (their steps are not independent). The same probe on a
randomly initialised model of the same shape is the control, and
predicting the training samples' most common class is the majority bar.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from explib import data
from explib import metrics
from explib import model as model_lib

POSITIONS = ("instruction", "before_value")


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
  clip: int = 16          # C: classes -C .. C
  steps: int = 300
  lr: float = 3e-2
  l2: float = 1e-3        # penalty on the squared weights
  batch_size: int = 8192  # samples per probe step
  test_fraction: float = 0.25
  seed: int = 0

  @property
  def num_classes(self) -> int:
    return 2 * self.clip + 1


def _nth(mask: np.ndarray, width: int) -> np.ndarray:
  """[B, width] positions of the first `width` True entries of each row
  of [B, T] `mask` (0 where a row has fewer)."""
  order = np.argsort(~mask, axis=1, kind="stable")[:, :width]
  order = np.pad(order, ((0, 0), (0, width - order.shape[1])))
  have = np.arange(width)[None, :] < mask.sum(1)[:, None]
  return np.where(have, order, 0)


def samples(rows, position: str, render: str = "direct") -> dict:
  """Host: the probe samples of `rows` at `position`.

  Args:
    rows: `Rows` (numpy or device) of a straight-line tier with `render`.
    position: "instruction" (the input of `render`) or "before_value"
      (input + target of a chain-of-thought render).
    render: the render the model reads.

  Returns:
    {"seq": [B, T] int32 sequences, "pos": [B, K] positions, "valid":
     [B, K] bool, "value": [B, K] int32 written values, "op": [B, K] the
     step's opcode}; K samples per row at most.
  """
  if position not in POSITIONS:
    raise ValueError(f"position must be one of {POSITIONS}, got {position!r}")
  r = rows.renders[render]
  ids, n_in = np.asarray(r.input.ids), np.asarray(r.input.length)
  prog, trace = rows.program, rows.trace
  op, dest = np.asarray(prog.op), np.asarray(prog.regs)[..., 0]
  pc, regs = np.asarray(trace.pc), np.asarray(trace.regs)
  live = np.arange(pc.shape[1])[None] < np.asarray(trace.num_steps)[:, None]
  ok = (np.asarray(trace.error) == 0) & (n_in <= ids.shape[1])
  step_op = np.take_along_axis(op, pc, 1)                          # [B, S]
  step_dest = np.take_along_axis(dest, pc, 1)
  writes = live & np.isin(step_op, data.WRITING_OPS) & ok[:, None]
  written = np.take_along_axis(regs, step_dest[..., None], 2)[..., 0]
  b = ids.shape[0]
  if position == "instruction":
    t = int(n_in.max(initial=1))
    seq = ids[:, :t]
    newline = (seq == data.NEWLINE) & (np.arange(t)[None] < n_in[:, None])
    nl = _nth(newline, pc.shape[1])                                # [B, S]
    pos = np.take_along_axis(nl, np.minimum(pc, nl.shape[1] - 1), 1)
    return {"seq": seq, "pos": np.where(writes, pos, 0), "valid": writes,
            "value": written, "op": step_op}
  tgt, n_out = np.asarray(r.target.ids), np.asarray(r.target.length)
  ok &= n_out <= tgt.shape[1]
  t = int((n_in + n_out).max(initial=1))
  seq = np.full((b, t), data.PAD, np.int32)
  for i in range(b):
    k = min(n_in[i], ids.shape[1])
    seq[i, :k] = ids[i, :k]
    m = min(n_out[i], tgt.shape[1], t - k)
    seq[i, k:k + m] = tgt[i, :m]
  # each EQUALS of the target begins a register line; the step is the
  # number of NEWLINEs before it over 2 (an instruction line, then a
  # register line, per step)
  live_t = np.arange(tgt.shape[1])[None] < n_out[:, None]
  eq = (tgt == data.EQUALS) & live_t
  nl_before = np.cumsum(tgt == data.NEWLINE, 1) - (tgt == data.NEWLINE)
  k = int(eq.sum(1).max(initial=1))
  eq_pos = _nth(eq, k)                                             # [B, K]
  has = (np.arange(k)[None] < eq.sum(1)[:, None]) & ok[:, None]
  step = np.take_along_axis(nl_before, eq_pos, 1) // 2
  step = np.clip(step, 0, pc.shape[1] - 1)
  reg = np.take_along_axis(tgt, np.maximum(eq_pos - 1, 0), 1) - data.R0
  reg = np.clip(reg, 0, data.NUM_REGS - 1)
  value = np.take_along_axis(regs, step[..., None], 1)             # [B,K,R]
  value = np.take_along_axis(value, reg[..., None], 2)[..., 0]
  valid = has & np.take_along_axis(writes, step, 1)
  return {"seq": seq, "pos": np.where(valid, n_in[:, None] + eq_pos, 0),
          "valid": valid, "value": value,
          "op": np.take_along_axis(step_op, step, 1)}


@functools.partial(jax.jit, static_argnames=("cfg",))
def _residual_at(params, ids, positions, *, cfg):
  _, resid = model_lib.forward(params, ids, cfg)                 # [L+1,B,T,D]
  return jax.vmap(lambda r: jnp.take_along_axis(
      r, positions[..., None], axis=1))(resid)                   # [L+1,B,K,D]


def features(params, cfg: model_lib.ModelConfig, s: dict, *,
             batch_size: int = 64, multiple: int = 64) -> dict:
  """Residual features of `samples` output.

  Returns:
    {"x": [L + 1, N, D] float32, "y_value": [N] written values, "row": [N]
    row index, "op": [N] opcode}, N = valid samples.
  """
  seq, pos = s["seq"], s["pos"]
  extra = -seq.shape[1] % multiple
  seq = np.pad(seq, ((0, 0), (0, extra)), constant_values=data.PAD)
  n = seq.shape[0]
  pad = -n % batch_size
  take = np.concatenate([np.arange(n), np.zeros(pad, int)])
  feats = np.concatenate([
      np.asarray(_residual_at(params, seq[take[i:i + batch_size]],
                              pos[take[i:i + batch_size]], cfg=cfg))
      for i in range(0, n + pad, batch_size)], axis=1)[:, :n]
  bi, ki = np.nonzero(s["valid"])
  return {"x": feats[:, bi, ki].astype(np.float32),
          "value": s["value"][bi, ki].astype(np.int32), "row": bi,
          "op": s["op"][bi, ki]}


def _is_test(rows: np.ndarray, frac: float, seed: int) -> np.ndarray:
  ids = np.unique(rows)
  rng = np.random.default_rng(seed)
  test = rng.permutation(ids)[:max(1, int(round(frac * len(ids))))]
  return np.isin(rows, test)


def _logits(p, x):
  return jnp.einsum("lnd,ldc->lnc", x, p["w"]) + p["b"][:, None]


@functools.partial(jax.jit, static_argnames=("pc",))
def _train(xs, ys, *, pc: ProbeConfig):
  """Adam on every layer's probe at once; [L+1, N, D] features, [N]
  classes. Module-level, so probes of the same shapes (a trained model and
  its control) share one compilation."""
  l1, n, d = xs.shape
  bs = min(n, pc.batch_size)
  opt = optax.adam(pc.lr)

  def loss_fn(p, xb, yb):
    logits = _logits(p, xb)
    ce = optax.softmax_cross_entropy_with_integer_labels(
        logits, jnp.broadcast_to(yb, logits.shape[:2]))
    return (ce.mean(1) + pc.l2 * jnp.sum(p["w"] ** 2, (1, 2))).sum()

  def step(carry, i):
    p, s = carry
    idx = (jax.random.randint(jax.random.fold_in(key, i), (bs,), 0, n)
           if bs < n else jnp.arange(n))
    g = jax.grad(loss_fn)(p, xs[:, idx], ys[idx])
    u, s = opt.update(g, s, p)
    return (optax.apply_updates(p, u), s), None

  key = jax.random.key(pc.seed)
  p = {"w": jnp.zeros((l1, d, pc.num_classes)),
       "b": jnp.zeros((l1, pc.num_classes))}
  (p, _), _ = jax.lax.scan(step, (p, opt.init(p)), jnp.arange(pc.steps))
  return p


_predict = jax.jit(lambda p, xs: jnp.argmax(_logits(p, xs), -1))


def fit(feats: dict, pc: ProbeConfig) -> list[dict]:
  """One probe per layer on `features` output; split by program.

  Returns:
    Per layer {"layer", "acc", "ci95", "majority", "train_acc", "samples"
    (held-out), "programs" (held-out), "hits": [N_test] bool, "op":
    [N_test]}.
  """
  x = feats["x"]
  y = (np.clip(feats["value"], -pc.clip, pc.clip) + pc.clip).astype(np.int32)
  is_test = _is_test(feats["row"], pc.test_fraction, pc.seed)
  xtr, xte = x[:, ~is_test], x[:, is_test]
  ytr, yte = y[~is_test], y[is_test]
  mean = xtr.mean(1, keepdims=True)
  std = xtr.std(1, keepdims=True) + 1e-6
  xtr, xte = (xtr - mean) / std, (xte - mean) / std
  params = _train(jnp.asarray(xtr), jnp.asarray(ytr), pc=pc)
  hits = np.asarray(_predict(params, jnp.asarray(xte))) == yte[None]
  train_acc = (np.asarray(_predict(params, jnp.asarray(xtr)))
               == ytr[None]).mean(1)
  common = np.bincount(ytr, minlength=pc.num_classes).argmax()
  majority = float(np.mean(yte == common))
  _, cluster = np.unique(feats["row"][is_test], return_inverse=True)
  counts = np.bincount(cluster)
  out = []
  for layer in range(x.shape[0]):
    per_row = np.bincount(cluster, weights=hits[layer])
    out.append({"layer": layer, "acc": float(hits[layer].mean()),
                "ci95": list(metrics.bootstrap_mean(per_row, counts,
                                                    seed=pc.seed + layer)),
                "majority": majority, "train_acc": float(train_acc[layer]),
                "samples": int(hits.shape[1]), "programs": int(len(counts)),
                "hits": hits[layer], "op": feats["op"][is_test]})
  return out
