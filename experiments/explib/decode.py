"""Greedy autoregressive decoding with a key/value cache, jitted.

`decode` runs the model over each row's input once (`model.prefill`), then
a fixed-length `lax.scan` over target positions twice from that cache:

- greedy: each step feeds the token the model chose at the step before
  (the first is the target's BOS) and takes the argmax; after the first EOS
  a row emits PAD;
- teacher forced: each step feeds the true target token and records the
  argmax, so token accuracy and teacher-forced exact match come from the
  same pass.

One compilation per (batch, input width, target width); the evaluation
pads both to a few fixed sizes so the same compiled function serves every
batch.
"""

import functools

import jax
import jax.numpy as jnp

from explib import data
from explib import model as model_lib


@functools.partial(jax.jit, static_argnames=("cfg",))
def decode(params: dict, input_ids: jax.Array, input_len: jax.Array,
           target_ids: jax.Array, *, cfg: model_lib.ModelConfig
           ) -> tuple[jax.Array, jax.Array]:
  """Greedy and teacher-forced predictions of a batch.

  Args:
    params: the model's parameters.
    input_ids: [B, T_in] int32, each row's input (BOS .. EOS) then PAD.
    input_len: [B] int32 input lengths (>= 1).
    target_ids: [B, T_out] int32 true targets (BOS first), PAD after EOS.
    cfg: the model's configuration (static).

  Returns:
    greedy [B, T_out] int32: BOS, then the greedy tokens up to and with the
    first EOS, then PAD; teacher [B, T_out] int32: BOS, then at each
    position the argmax given the true target before it.
  """
  b, t_in = input_ids.shape
  t_out = target_ids.shape[1]
  steps = t_out - 1
  _, cache = model_lib.prefill(params, input_ids, cfg, t_in + steps)
  bos = jnp.full((b,), data.BOS, jnp.int32)

  def greedy_step(carry, j):
    cache, token, done = carry
    logits, cache = model_lib.decode_step(params, cache, token,
                                          input_len + j, cfg)
    nxt = jnp.where(done, data.PAD, jnp.argmax(logits, -1).astype(jnp.int32))
    return (cache, nxt, done | (nxt == data.EOS)), nxt

  def teacher_step(cache, j):
    logits, cache = model_lib.decode_step(params, cache, target_ids[:, j],
                                          input_len + j, cfg)
    return cache, jnp.argmax(logits, -1).astype(jnp.int32)

  js = jnp.arange(steps)
  _, greedy = jax.lax.scan(greedy_step, (cache, bos, jnp.zeros(b, bool)), js)
  _, teacher = jax.lax.scan(teacher_step, cache, js)
  return (jnp.concatenate([bos[:, None], greedy.T], 1),
          jnp.concatenate([bos[:, None], teacher.T], 1))
