"""In-graph sampling: a training batch generated, run and rendered inside the
caller's jitted step, with no host round-trip."""

import chex

from tinyvm_jax._src import checks
import jax
import jax.numpy as jnp

from tinyvm_jax._src import render as render_lib
from tinyvm_jax._src import tiers as tiers_lib
from tinyvm_jax._src.types import Rows


@chex.dataclass(frozen=True, mappable_dataclass=False)
class Batch:
  """A padded training batch of one render, with per-step machine states."""
  input_ids: jax.Array    # [B, T_in] int32, PAD (42) after the input
  input_mask: jax.Array   # [B, T_in] bool, True on the input's tokens
  target_ids: jax.Array   # [B, T_out] int32, PAD after the target
  target_mask: jax.Array  # [B, T_out] bool
  regs: jax.Array         # [B, S, R] int32, register file after each step
  step_mask: jax.Array    # [B, S] bool, which steps were executed
  valid: jax.Array        # [B] bool, the run was error-free and the render fit
  rows: Rows              # the full rows (key data, axes, program, trace, ...)


def sample_batch(key: jax.Array, tier, batch_size: int, *,
                 render: str = "direct", bucket: str | None = None,
                 max_input_len: int | None = None,
                 max_target_len: int | None = None,
                 first_row: int | jax.Array = 0,
                 block_size: int | None = None) -> Batch:
  """Samples, runs and renders `batch_size` rows; call it inside `jit`.

  Row i's key is `fold_in(key, first_row + i)`, so a row does not depend on
  the batch size or on how the rows are split over devices; the row's axes
  and program come from that key as in the dataset (`tiers.make_row`).

  Args:
    key: a threefry key (consumed), e.g. `fold_in(base, step)`.
    tier: a `Tier` or its name (static).
    batch_size: static B.
    render: static render name: 'direct', 'cot', 'cot_modified' or
      'probe_query' (the step probed is `meta.seed % num_steps`, as in the
      reference's probe rows).
    bucket: static eval bucket name for fixed axes; None samples train axes.
    max_input_len, max_target_len: static token lengths; default the
      split's (they fit every row). Shorter ones truncate; `valid` says so.
    first_row: [] int32 (may be traced) index of the first row; e.g.
      `axis_index * batch_size` when each device samples its own share.
    block_size: static; build the rows `block_size` at a time (`lax.map`)
      instead of all at once. The rows are the same; on a CPU a block's
      intermediates stay in cache (Tier 1: 4096 is about 1.5x faster than
      one 65536-row block).

  Returns:
    A `Batch` with leading dimension B.
  """
  tier = tiers_lib.get_tier(tier)
  if not checks.is_int(batch_size) or (
      batch_size < 1):
    raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
  if render not in render_lib.RENDERS:
    raise ValueError(f"unknown render {render!r}; expected one of "
                     f"{render_lib.RENDER_NAMES}")
  t_in, t_out = tier.shapes(bucket).token_lengths(render)
  for name, value in (("max_input_len", max_input_len),
                      ("max_target_len", max_target_len)):
    if value is not None and (isinstance(value, bool) or
                              not isinstance(value, int) or value < 1):
      raise ValueError(f"{name} must be a positive int, got {value!r}")
  t_in, t_out = max_input_len or t_in, max_target_len or t_out
  if isinstance(first_row, bool) or (isinstance(first_row, int) and
                                     not 0 <= first_row < 2 ** 31):
    raise ValueError(f"first_row must be an int in [0, 2**31), got "
                     f"{first_row!r}")
  if block_size is not None and (isinstance(block_size, bool) or not
                                 isinstance(block_size, int) or block_size < 1):
    raise ValueError(f"block_size must be a positive int or None, got "
                     f"{block_size!r}")

  def one(index):
    return tiers_lib.make_row(tier, jax.random.fold_in(key, index),
                              bucket=bucket, renders=(render,),
                              token_lengths={render: (t_in, t_out)})

  index = first_row + jnp.arange(batch_size)
  if block_size is None or block_size >= batch_size:
    rows = jax.vmap(one)(index)
  else:
    rows = jax.lax.map(one, index, batch_size=block_size)
  r = rows.renders[render]
  input_mask = jnp.arange(t_in) < r.input.length[:, None]
  target_mask = jnp.arange(t_out) < r.target.length[:, None]
  valid = ((rows.trace.error == 0) & (r.input.length <= t_in)
           & (r.target.length <= t_out))
  return Batch(input_ids=r.input.ids, input_mask=input_mask,
               target_ids=r.target.ids, target_mask=target_mask,
               regs=rows.trace.regs, step_mask=rows.trace.step_mask,
               valid=valid, rows=rows)
