"""The Tier 4 few-shot renders, built from `render`'s slot helpers.

Ids as in spec sections 5-7; `E` programs a row, the demos then the target:
- `userop_direct`: input `BOS`, then for each demo its with-symbol program
  and its output values (`digits NEWLINE` each), then the target's
  with-symbol program, `EOS`; target `BOS`, the target's outputs, `EOS`
  (the direct render's target, `render.output_target`).
- `userop_with_decomposition`: the same, but every call of the userop in a
  demo program is followed by `DECOMP` and then the concrete decomposition
  instructions (its placeholders replaced by the call's registers), each
  with its NEWLINE; as text, `"DOUBLE R2 R0 \\nDECOMP ADD R2 R0 R0 \\n"`.
  The target program is shown without decompositions.

A demo slot of length 0 (a row with fewer demos than its split's most, see
`tier`) renders to nothing.
"""

import chex
import jax
import jax.numpy as jnp

from tinyvm_jax._src import checks
from tinyvm_jax._src import isa
from tinyvm_jax._src import render as render_lib
from tinyvm_jax._src.types import Program, Render, Trace
from tinyvm_jax._src.userop import binding
from tinyvm_jax._src.userop.shapes import RENDER_NAMES

_NONE = -1


def _decomposition_slots(program: Program, dec: binding.Decomposition):
  """[P, 1 + M * I] slots `DECOMP` + the concrete decomposition of each
  instruction, valid only on live calls of the userop."""
  m = dec.op.shape[0]
  p = program.op.shape[0]
  regs = program.regs[jnp.arange(p)[:, None, None], dec.regs[None]]  # [P,M,3]
  none = jnp.full(p * m, _NONE, jnp.int32)
  rows = Program(op=jnp.tile(dec.op, p), regs=regs.reshape(p * m, 3),
                 lit=jnp.tile(dec.lit, p), target=none, target_label=none,
                 label=none, length=jnp.asarray(p * m, jnp.int32))
  toks, mask = render_lib.instruction_slots(rows)                 # [P*M, I]
  mask = mask.reshape(p, m, -1) & (jnp.arange(m) < dec.size)[None, :, None]
  show = (program.op == dec.slot) & (jnp.arange(p) < program.length)
  toks = jnp.concatenate([jnp.full((p, 1), isa.TOK_DECOMP, jnp.int32),
                          toks.reshape(p, -1)], axis=1)
  mask = jnp.concatenate([jnp.ones((p, 1), bool), mask.reshape(p, -1)],
                         axis=1) & show[:, None]
  return toks, mask


def _check_few_shot(with_symbol, trace, where: str) -> None:
  if not isinstance(with_symbol, Program) or not isinstance(trace, Trace):
    raise ValueError(f"{where}: expected a Program and a Trace, got "
                     f"{type(with_symbol).__name__} and "
                     f"{type(trace).__name__}")
  if jnp.ndim(with_symbol.op) != 2 or jnp.ndim(trace.pc) != 2:
    raise ValueError(
        f"{where}: expected the programs [E, P] and traces [E, S] of one row "
        f"(demos, then the target); got op {jnp.shape(with_symbol.op)} and "
        f"pc {jnp.shape(trace.pc)}; vmap over rows")
  if with_symbol.op.shape[0] != trace.pc.shape[0]:
    raise ValueError(f"{where}: {with_symbol.op.shape[0]} programs but "
                     f"{trace.pc.shape[0]} traces")
  chex.assert_shape(with_symbol.regs, (*with_symbol.op.shape,
                                       isa.MAX_REG_ARGS))


def few_shot(with_symbol: Program, trace: Trace,
             dec: binding.Decomposition | None, *, max_input_len: int,
             max_target_len: int) -> Render:
  """A few-shot render of one row ([E, P] programs, [E, S] traces), with
  decompositions when `dec` is given (unchecked arguments)."""
  e = with_symbol.op.shape[0]
  checks.check_int("max_input_len", max_input_len, lo=1)
  checks.check_int("max_target_len", max_target_len, lo=1)
  demo = jnp.arange(e) < e - 1                                     # [E]
  toks, mask = jax.vmap(render_lib.instruction_slots)(with_symbol)  # [E,P,I]
  if dec is not None:
    d_t, d_m = jax.vmap(lambda pr: _decomposition_slots(pr, dec))(
        with_symbol)                                                # [E,P,X]
    toks = jnp.concatenate([toks, d_t], axis=2)
    mask = jnp.concatenate([mask, d_m & demo[:, None, None]], axis=2)
  out_t, out_m = jax.vmap(render_lib.output_slots)(trace)           # [E,S,6]
  body = (jnp.concatenate([toks.reshape(e, -1), out_t.reshape(e, -1)], 1),
          jnp.concatenate([mask.reshape(e, -1),
                           out_m.reshape(e, -1) & demo[:, None]], 1))
  bos, eos = (jnp.full((1,), t, jnp.int32) for t in (isa.TOK_BOS,
                                                      isa.TOK_EOS))
  yes = jnp.ones((1,), bool)
  inp = render_lib.compact(
      jnp.concatenate([bos, body[0].ravel(), eos]),
      jnp.concatenate([yes, body[1].ravel(), yes]), max_input_len)
  last = jax.tree_util.tree_map(lambda x: x[e - 1], trace)
  return Render(input=inp,
                target=render_lib.direct_target(last, max_target_len))


def render_userop_direct(with_symbol: Program, trace: Trace, *,
                         max_input_len: int, max_target_len: int) -> Render:
  """The `userop_direct` few-shot render of one row.

  Args:
    with_symbol: [E, P] programs, the demos then the target (E = k + 1).
    trace: [E, S] their base forms' traces.
    max_input_len, max_target_len: static token lengths.

  Returns:
    `Render`: input `BOS`, each demo's program and outputs, the target's
    program, `EOS`; target `BOS`, the target's outputs, `EOS`.
  """
  _check_few_shot(with_symbol, trace, "render_userop_direct")
  return few_shot(with_symbol, trace, None, max_input_len=max_input_len,
                  max_target_len=max_target_len)


def render_userop_with_decomposition(with_symbol: Program, trace: Trace,
                                     userop, *, max_input_len: int,
                                     max_target_len: int) -> Render:
  """The `userop_with_decomposition` render: as `render_userop_direct`,
  with each demo call of the userop followed by `DECOMP` and its concrete
  decomposition instructions. Args as there, plus `userop`: a `UserOp` or
  its `Decomposition` table (which may be traced)."""
  _check_few_shot(with_symbol, trace, "render_userop_with_decomposition")
  dec = binding.as_table(userop, "render_userop_with_decomposition")
  return few_shot(with_symbol, trace, dec, max_input_len=max_input_len,
                  max_target_len=max_target_len)


def render_userop(name: str, with_symbol: Program, trace: Trace,
                  userop, *, max_input_len: int,
                  max_target_len: int) -> Render:
  """A few-shot render by name (one of `RENDER_NAMES`)."""
  sizes = dict(max_input_len=max_input_len, max_target_len=max_target_len)
  if name == "userop_direct":
    return render_userop_direct(with_symbol, trace, **sizes)
  if name == "userop_with_decomposition":
    return render_userop_with_decomposition(with_symbol, trace, userop,
                                            **sizes)
  raise ValueError(f"unknown userop render {name!r}; expected one of "
                   f"{RENDER_NAMES}")
