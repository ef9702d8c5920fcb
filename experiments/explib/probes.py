"""Linear probes from the residual stream to the machine's registers.

For each executed step t of a row, the probe reads the residual stream at
the NEWLINE that ends the instruction executed at step t (`trace.pc[t]`), the
first position at which a causal model has seen the whole instruction, and
predicts every register's value after the step (`trace.regs[t]`).

Values are classes: `clip(v, -C, C) + C`, 2C + 1 classes, the two end classes
holding the tails. One multinomial logistic regression per (layer, register),
all fitted at once with optax on standardised features; accuracy is measured
on held-out programs.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tinyvm_jax._src import isa
from tinyvm_jax._src.types import Rows

from explib import model as model_lib


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


def step_positions(input_ids: np.ndarray, input_len: np.ndarray,
                   pc: np.ndarray, num_steps: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
  """Host: the input position that ends the instruction of each step.

  Args:
    input_ids: [B, T] int, the program input (BOS, instructions, EOS).
    input_len: [B] int.
    pc: [B, S] int, instruction executed at each step.
    num_steps: [B] int.

  Returns:
    positions [B, S] int (0 where invalid) and valid [B, S] bool.
  """
  b, t = input_ids.shape
  s = pc.shape[1]
  live = np.arange(t)[None, :] < input_len[:, None]
  newline = (input_ids == isa.TOK_NEWLINE) & live                  # [B, T]
  count = newline.sum(1)
  # nl_pos[b, j]: position of the j-th NEWLINE of row b
  order = np.argsort(~newline, axis=1, kind="stable")
  width = max(int(count.max(initial=0)), 1)
  nl_pos = order[:, :width]
  valid = (np.arange(s)[None, :] < num_steps[:, None]) & (pc < count[:, None])
  safe = np.clip(pc, 0, width - 1)
  positions = np.where(valid, np.take_along_axis(nl_pos, safe, 1), 0)
  return positions, valid


@functools.partial(jax.jit, static_argnames=("cfg",))
def _residual_at(params, ids, positions, *, cfg):
  _, resid = model_lib.forward(params, ids, cfg)                   # [L+1,B,T,D]
  return jax.vmap(lambda r: jnp.take_along_axis(
      r, positions[..., None], axis=1), in_axes=0)(resid)          # [L+1,B,S,D]


def collect(params, cfg: model_lib.ModelConfig, rows: Rows, *,
            render: str = "direct", batch_size: int = 64, clip: int = 16
            ) -> dict[str, np.ndarray]:
  """Residual features at each step and the register classes after it.

  Returns:
    {"x": [L + 1, N, D] float32 features, "y": [N, R] int32 classes,
     "values": [N, R] int32 raw values, "row": [N] int row index,
     "step": [N] int step index}, N = executed steps of error-free rows.
  """
  r = rows.renders[render]
  ids = np.asarray(r.input.ids)
  n_in = np.asarray(r.input.length)
  ids = ids[:, :max(int(n_in.max()), 1)]
  trace = rows.trace
  positions, valid = step_positions(ids, n_in, np.asarray(trace.pc),
                                    np.asarray(trace.num_steps))
  valid &= (np.asarray(trace.error) == 0)[:, None]
  valid &= (n_in <= r.input.ids.shape[1])[:, None]
  n = ids.shape[0]
  pad = -n % batch_size
  ids_p = np.concatenate([ids, ids[:pad]]) if pad else ids
  pos_p = np.concatenate([positions, positions[:pad]]) if pad else positions
  feats = np.concatenate([
      np.asarray(_residual_at(params, ids_p[i:i + batch_size],
                              pos_p[i:i + batch_size], cfg=cfg))
      for i in range(0, ids_p.shape[0], batch_size)], axis=1)[:, :n]
  bi, si = np.nonzero(valid)
  values = np.asarray(trace.regs)[bi, si]                           # [N, R]
  return {"x": feats[:, bi, si].astype(np.float32),
          "y": (np.clip(values, -clip, clip) + clip).astype(np.int32),
          "values": values.astype(np.int32), "row": bi, "step": si}


def _split(n_rows: int, frac: float, seed: int):
  rng = np.random.default_rng(seed)
  test = rng.permutation(n_rows)[:max(1, int(round(frac * n_rows)))]
  is_test = np.zeros(n_rows, bool)
  is_test[test] = True
  return is_test


def fit(feats: dict, pc: ProbeConfig) -> dict[str, np.ndarray]:
  """Fits one linear probe per (layer, register); splits by row.

  Args:
    feats: from `collect` (with classes of clip `pc.clip`).
    pc: the probe configuration.

  Returns:
    {"acc": [L + 1, R] held-out accuracy, "acc_nonzero": [L + 1, R] the
    same over the samples whose value is not 0, "majority" and
    "majority_nonzero": [R] those of always predicting the train split's
    most common class, "train_acc": [L + 1, R]}.
  """
  x, y = feats["x"], feats["y"]
  is_test = _split(int(feats["row"].max()) + 1, pc.test_fraction,
                   pc.seed)[feats["row"]]
  xtr, ytr, xte, yte = x[:, ~is_test], y[~is_test], x[:, is_test], y[is_test]
  mean = xtr.mean(1, keepdims=True)
  std = xtr.std(1, keepdims=True) + 1e-6
  xtr, xte = (xtr - mean) / std, (xte - mean) / std
  l1, _, d = x.shape
  r, c = y.shape[1], pc.num_classes
  params = {"w": jnp.zeros((l1, r, d, c)), "b": jnp.zeros((l1, r, c))}
  opt = optax.adam(pc.lr)

  def loss_fn(p, xb, yb):
    logits = jnp.einsum("lnd,lrdc->lnrc", xb, p["w"]) + p["b"][:, None]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, yb[None])
    penalty = pc.l2 * jnp.sum(p["w"] ** 2, axis=(2, 3))           # [L+1, R]
    return (ce.mean(axis=1) + penalty).sum()

  n = xtr.shape[1]
  bs = min(n, pc.batch_size)

  @jax.jit
  def train(p, xs, ys, key):
    def step(carry, i):
      p, s = carry
      idx = (jax.random.randint(jax.random.fold_in(key, i), (bs,), 0, n)
             if bs < n else jnp.arange(n))
      g = jax.grad(loss_fn)(p, xs[:, idx], ys[idx])
      u, s = opt.update(g, s, p)
      return (optax.apply_updates(p, u), s), None
    (p, _), _ = jax.lax.scan(step, (p, opt.init(p)), jnp.arange(pc.steps))
    return p

  @jax.jit
  def accuracy(p, xs, ys):
    """[L+1, R] accuracy over all samples and over nonzero values only."""
    logits = jnp.einsum("lnd,lrdc->lnrc", xs, p["w"]) + p["b"][:, None]
    hit = jnp.argmax(logits, -1) == ys[None]                      # [L+1,N,R]
    nonzero = (ys != pc.clip)[None]
    return hit.mean(1), (hit & nonzero).sum(1) / jnp.maximum(
        nonzero.sum(1), 1)

  xtr, ytr = jnp.asarray(xtr), jnp.asarray(ytr)
  params = train(params, xtr, ytr, jax.random.key(pc.seed))
  ytr_np = np.asarray(ytr)
  common = [np.bincount(ytr_np[:, j], minlength=c).argmax() for j in range(r)]
  majority = np.array([np.mean(yte[:, j] == common[j]) for j in range(r)])
  nz = yte != pc.clip
  majority_nz = np.array([np.mean(yte[nz[:, j], j] == common[j])
                          if nz[:, j].any() else np.nan for j in range(r)])
  acc, acc_nz = (np.asarray(a) for a in accuracy(params, xte, yte))
  return {"acc": acc, "acc_nonzero": acc_nz,
          "train_acc": np.asarray(accuracy(params, xtr, ytr)[0]),
          "majority": majority, "majority_nonzero": majority_nz}
