"""The RL reward `score_output` (spec section 8), in JAX.

The reference reads each id list as integers with a loose parser: it strips
one leading BOS and one trailing EOS, skips NEWLINEs and reads a value as an
optional MINUS then digits (`MINUS MINUS 5` is [-5], a lone MINUS is ignored,
leading zeros are accepted), and scores 1.0 when the two lists are equal. It
loops forever on any other token. Here the arrays are padded, so everything
from the first EOS on is ignored; a sequence holding any other token (or an
id outside the vocabulary) before it scores 0.0, as does a sequence with no
EOS that is followed by PAD.

The integer lists are compared exactly, without overflow, as canonical token
streams: for each value its sign (only when negative and nonzero), its digits
without leading zeros, and a separator.
"""

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tinyvm_jax._src import checks
from tinyvm_jax._src import isa

_SEP = isa.TOK_NEWLINE  # separator after each value of a canonical stream


def _canonical(ids: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The canonical stream of one sequence's integer list.

  Args:
    ids: [T] int token ids (T >= 1).

  Returns:
    tokens [2T] (PAD-padded), length [], and whether the reference would
    hang (or the ids leave the vocabulary) [] bool.
  """
  t = ids.shape[0]
  i = jnp.arange(t)
  is_eos = ids == isa.TOK_EOS
  end = jnp.where(is_eos.any(), jnp.argmax(is_eos), t)
  begin = (ids[0] == isa.TOK_BOS).astype(jnp.int32)
  region = (i >= begin) & (i < end)                                 # [T]
  digit = (ids >= isa.TOK_DIGIT0) & (ids < isa.TOK_DIGIT0 + 10)
  minus = ids == isa.TOK_MINUS
  fine = digit | minus | (ids == isa.TOK_NEWLINE)
  hang = jnp.any(region & ~fine)

  d = region & digit                                                # [T]
  prev_d = jnp.concatenate([jnp.zeros(1, bool), d[:-1]])
  next_d = jnp.concatenate([d[1:], jnp.zeros(1, bool)])
  run_start = jax.lax.cummax(jnp.where(d & ~prev_d, i, -1))         # [T]
  last_nonzero = jax.lax.cummax(jnp.where(d & (ids != isa.TOK_DIGIT0), i, -1))
  significant = d & (last_nonzero >= run_start)
  first_significant = significant & ~jnp.concatenate(
      [jnp.zeros(1, bool), significant[:-1]])
  before = jnp.clip(run_start - 1, 0, t - 1)
  negative = (run_start > 0) & minus[before] & (before >= begin)
  toks = jnp.stack([jnp.full((t,), isa.TOK_MINUS), ids,
                    jnp.full((t,), _SEP)], axis=-1)                 # [T, 3]
  mask = jnp.stack([first_significant & negative, significant,
                    d & ~next_d], axis=-1)
  pos = jnp.cumsum(mask.ravel(), dtype=jnp.int32) - 1
  size = 2 * t
  out = jnp.full((size,), isa.TOK_PAD, jnp.int32).at[
      jnp.where(mask.ravel(), pos, size)].set(
          toks.ravel().astype(jnp.int32), mode="drop")
  return out, mask.sum(dtype=jnp.int32), hang


def score_output(pred_ids: jax.Array, target_ids: jax.Array) -> jax.Array:
  """1.0 when the two id sequences read as the same integer list, else 0.0.

  Args:
    pred_ids: [T1] int token ids, padded after an EOS (vmap for batches).
    target_ids: [T2] int token ids, padded after an EOS.

  Returns:
    [] float32: the reference's score wherever the reference returns; 0.0
    where it would loop forever (a token other than digits, MINUS, NEWLINE
    and the outer BOS/EOS before the first EOS) or an id is outside the
    vocabulary.
  """
  pred_ids, target_ids = jnp.asarray(pred_ids), jnp.asarray(target_ids)
  for name, x in (("pred_ids", pred_ids), ("target_ids", target_ids)):
    if x.ndim != 1:
      raise ValueError(f"{name} must be one [T] sequence, got shape {x.shape};"
                       f" vmap score_output for batches")
    if not jnp.issubdtype(x.dtype, jnp.integer):
      raise ValueError(f"{name} must hold integer ids, got {x.dtype}")
  # An empty list reads as []: the same as one EOS.
  empty = lambda x: x if x.shape[0] else jnp.full((1,), isa.TOK_EOS, x.dtype)
  p, p_len, p_hang = _canonical(empty(pred_ids))
  q, q_len, q_hang = _canonical(empty(target_ids))
  n = max(p.shape[0], q.shape[0])
  pad = lambda x: jnp.pad(x, (0, n - x.shape[0]), constant_values=isa.TOK_PAD)
  same = (p_len == q_len) & jnp.all(pad(p) == pad(q))
  return jnp.where(same & ~p_hang & ~q_hang, 1.0, 0.0).astype(jnp.float32)


_score_jit = jax.jit(score_output)


def _bucket(ids: Sequence[int]) -> np.ndarray:
  """Host ids as int32, EOS-padded to a power-of-two length (which does not
  change the score: everything from the first EOS on is ignored)."""
  arr = np.array([int(x) if 0 <= int(x) < isa.VOCAB_SIZE else -1
                  for x in ids], np.int32)
  n = max(8, 1 << max(len(arr), 1).bit_length())
  return np.concatenate([arr, np.full(n - len(arr), isa.TOK_EOS, np.int32)])


def score(pred_ids: Sequence[int], target_ids: Sequence[int]) -> float:
  """`score_output` of two Python id lists (host convenience, jitted)."""
  for name, x in (("pred_ids", pred_ids), ("target_ids", target_ids)):
    if isinstance(x, (str, bytes)) or not hasattr(x, "__len__"):
      raise ValueError(f"{name} must be a sequence of ints, got "
                       f"{type(x).__name__}")
    if any(not checks.is_int(v)
           for v in x):
      raise ValueError(f"{name} must hold only ints")
  return float(_score_jit(_bucket(pred_ids), _bucket(target_ids)))
