"""The slot layout: the tests' reference implementation of the renders.

An independent, slower way to build every render (spec sections 6-7), kept
out of the package so that the package has one layout (the windows of
`tinyvm_jax._src.render`) and the tests have something to compare it with,
as tests/pyvm.py is for the interpreter. It takes no promise: every piece of
a sequence (an instruction, a register file, an output value) is laid out in
a fixed number of *slots*, each a token id and a validity bit; the slots are
flattened in reading order and `compact` moves the valid ones to the front
of a PAD-filled array of static length `T`, `length` the true count.

`render_direct`, `render_cot` and `render_probe_query` take the package
renders' arguments less the promise (`label_digits`, `literal_digits`).
"""

import jax
import jax.numpy as jnp
import numpy as np

from tinyvm_jax._src import isa
from tinyvm_jax._src.types import Program, Render, Tokens, Trace

# Slots of a number: MINUS, then up to 4 digits.
NUMBER_SLOTS = 1 + max(isa.MAX_LITERAL_DIGITS, isa.MAX_LABEL_DIGITS,
                       isa.MAX_VALUE_DIGITS)
_DIGITS = NUMBER_SLOTS - 1
# Slots of one instruction: [L d d d d COLON] OP R R R [- d d d d] [L d d d d] NEWLINE
INSTRUCTION_SLOTS = (2 + _DIGITS) + 1 + isa.MAX_REG_ARGS + NUMBER_SLOTS + (
    1 + _DIGITS) + 1
# Slots of a register file entry: R<i> EQUALS - d d d d
REGISTER_SLOTS = 2 + NUMBER_SLOTS
# Slots of an output value: - d d d d NEWLINE
OUTPUT_SLOTS = NUMBER_SLOTS + 1

_POW10 = np.array([10 ** i for i in range(_DIGITS)], np.int32)   # [4]


# ------------------------------------------------------------- building blocks
def compact(tokens: jax.Array, mask: jax.Array, size: int) -> Tokens:
  """The valid `tokens` [N] (`mask` [N] bool) in order at the front of a
  PAD-filled [size] array; `length` the number of valid tokens."""
  pos = jnp.cumsum(mask, dtype=jnp.int32) - 1
  index = jnp.where(mask, pos, size)  # out of bounds: dropped
  ids = jnp.full((size,), isa.TOK_PAD, jnp.int32).at[index].set(
      tokens.astype(jnp.int32), mode="drop")
  return Tokens(ids=ids, length=mask.sum(dtype=jnp.int32))


def _cat(*pieces: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
  """Concatenates (tokens, mask) slot pieces, flattening each, in order."""
  toks = jnp.concatenate([jnp.ravel(t).astype(jnp.int32) for t, _ in pieces])
  mask = jnp.concatenate([jnp.ravel(m) for _, m in pieces])
  return toks, mask


def _one(token: int, valid=True) -> tuple[jax.Array, jax.Array]:
  return (jnp.full((1,), token, jnp.int32),
          jnp.broadcast_to(jnp.asarray(valid, bool), (1,)))


def number_slots(value: jax.Array) -> tuple[jax.Array, jax.Array]:
  """[..., 5] slots (tokens, mask) of numbers |value| < 10**4: MINUS if
  negative, then the decimal digits; 0 is the single digit `0`."""
  a = jnp.abs(value)
  pow10 = jnp.asarray(_POW10)
  n = 1 + jnp.sum(a[..., None] >= 10 * pow10[:-1], axis=-1)        # [...] digits
  j = jnp.arange(_DIGITS)
  shift = jnp.clip(n[..., None] - 1 - j, 0, _DIGITS - 1)            # [..., 4]
  digit = (a[..., None] // pow10[shift]) % 10
  toks = jnp.concatenate(
      [jnp.full(value.shape + (1,), isa.TOK_MINUS, jnp.int32),
       isa.TOK_DIGIT0 + digit], axis=-1)
  mask = jnp.concatenate([(value < 0)[..., None], j < n[..., None]], axis=-1)
  return toks, mask


def _label_slots(label: jax.Array) -> tuple[jax.Array, jax.Array]:
  """[..., 5] slots `L d d d d` of label numbers; all invalid where label < 0."""
  toks, mask = number_slots(jnp.maximum(label, 0))
  toks = toks.at[..., 0].set(isa.TOK_L)
  mask = mask.at[..., 0].set(True) & (label >= 0)[..., None]
  return toks, mask


def instruction_slots(program: Program) -> tuple[jax.Array, jax.Array]:
  """[P, INSTRUCTION_SLOTS] slots of every instruction, NEWLINE included
  (spec section 6); rows at or after `program.length` all invalid."""
  p = program.op.shape[-1]
  op = jnp.clip(program.op, 0, isa.NUM_OPS - 1)                     # [P]
  lab_t, lab_m = _label_slots(program.label)                        # [P, 5]
  colon = jnp.full((p, 1), isa.TOK_COLON, jnp.int32)
  reg_m = jnp.arange(isa.MAX_REG_ARGS) < jnp.asarray(isa.REG_ARGS)[op][:, None]
  lit_t, lit_m = number_slots(program.lit)                          # [P, 5]
  lit_m = lit_m & (jnp.asarray(isa.LIT_ARGS)[op] > 0)[:, None]
  tgt_t, tgt_m = _label_slots(program.target_label)                 # [P, 5]
  toks = jnp.concatenate([
      lab_t, colon, jnp.asarray(isa.OP_TOKEN)[op][:, None],
      isa.TOK_R0 + program.regs,
      lit_t, tgt_t, jnp.full((p, 1), isa.TOK_NEWLINE, jnp.int32)], axis=-1)
  live = (jnp.arange(p) < program.length)[:, None]
  ones = jnp.ones((p, 1), bool)
  mask = jnp.concatenate([lab_m, lab_m[:, :1], ones, reg_m, lit_m, tgt_m,
                          ones], axis=-1) & live
  return toks, mask


def register_slots(regs: jax.Array, show: jax.Array
                   ) -> tuple[jax.Array, jax.Array]:
  """[..., R * REGISTER_SLOTS] slots of register files `R<i> EQUALS
  <value>` for i = 0..7 of `regs` [..., R], the registers `show` [..., R]."""
  num_t, num_m = number_slots(regs)                                 # [..., R, 5]
  shape = regs.shape + (1,)
  name = jnp.broadcast_to(
      (isa.TOK_R0 + jnp.arange(isa.NUM_REGS))[:, None], shape)
  eq = jnp.full(shape, isa.TOK_EQUALS, jnp.int32)
  toks = jnp.concatenate([name, eq, num_t], axis=-1)
  mask = jnp.concatenate([jnp.ones(shape, bool), jnp.ones(shape, bool),
                          num_m], axis=-1) & show[..., None]
  return (toks.reshape(regs.shape[:-1] + (-1,)),
          mask.reshape(regs.shape[:-1] + (-1,)))


def output_slots(trace: Trace) -> tuple[jax.Array, jax.Array]:
  """[S, OUTPUT_SLOTS] slots of the output stream: `digits(v) NEWLINE` each."""
  s = trace.output.shape[-1]
  num_t, num_m = number_slots(trace.output)                         # [S, 5]
  toks = jnp.concatenate(
      [num_t, jnp.full((s, 1), isa.TOK_NEWLINE, jnp.int32)], axis=-1)
  mask = jnp.concatenate([num_m, jnp.ones((s, 1), bool)], axis=-1)
  return toks, mask & (jnp.arange(s) < trace.num_output)[:, None]


# ------------------------------------------------------------- renders
def _program_input(program: Program, keep: jax.Array, query: bool,
                   size: int) -> Tokens:
  """`BOS + encode(instructions where keep) [+ ?] + EOS`."""
  toks, mask = instruction_slots(program)
  pieces = [_one(isa.TOK_BOS), (toks, mask & keep[:, None])]
  if query:
    pieces.append(_one(isa.TOK_QUERY))
  pieces.append(_one(isa.TOK_EOS))
  return compact(*_cat(*pieces), size)


def encode_program(program: Program, *, max_tokens: int) -> Tokens:
  """Token ids of a whole program, no BOS/EOS."""
  toks, mask = instruction_slots(program)
  return compact(toks.ravel(), mask.ravel(), max_tokens)


def render_direct(program: Program, trace: Trace, *, max_input_len: int,
                  max_target_len: int) -> Render:
  """The `direct` render."""
  keep = jnp.ones(program.op.shape, bool)
  target = compact(*_cat(_one(isa.TOK_BOS), output_slots(trace),
                         _one(isa.TOK_EOS)), max_target_len)
  return Render(input=_program_input(program, keep, False, max_input_len),
                target=target)


def _shown_registers(trace: Trace, mode: str) -> jax.Array:
  """[S, R] bool: all registers ("full"), or those whose value differs from
  the step before ("modified"; the first step compares with zeros)."""
  if mode == "full":
    return jnp.ones(trace.regs.shape, bool)
  prev = jnp.concatenate(
      [jnp.zeros((1, isa.NUM_REGS), trace.regs.dtype), trace.regs[:-1]])
  return trace.regs != prev


def render_cot(program: Program, trace: Trace, *, mode: str,
               max_input_len: int, max_target_len: int) -> Render:
  """The chain-of-thought render, mode "full" or "modified"."""
  s = trace.pc.shape[0]
  live = jnp.arange(s) < trace.num_steps                            # [S]
  ins_t, ins_m = instruction_slots(program)                         # [P, I]
  pc = jnp.clip(trace.pc, 0, program.op.shape[0] - 1)
  step_t, step_m = ins_t[pc], ins_m[pc] & live[:, None]             # [S, I]
  show = _shown_registers(trace, mode)                              # [S, R]
  reg_t, reg_m = register_slots(trace.regs, show & live[:, None])   # [S, 8*7]
  nl = jnp.full((s, 1), isa.TOK_NEWLINE, jnp.int32)
  steps_t = jnp.concatenate([step_t, reg_t, nl], axis=-1)
  steps_m = jnp.concatenate([step_m, reg_m, live[:, None]], axis=-1)
  target = compact(*_cat(_one(isa.TOK_BOS), (steps_t, steps_m),
                         output_slots(trace), _one(isa.TOK_EOS)),
                   max_target_len)
  keep = jnp.ones(program.op.shape, bool)
  return Render(input=_program_input(program, keep, False, max_input_len),
                target=target)


def render_probe_query(program: Program, trace: Trace, step: jax.Array, *,
                       max_input_len: int, max_target_len: int) -> Render:
  """The `probe_query` render at step `step`; both sequences all PAD with
  length 0 when `step` is outside [0, num_steps)."""
  in_range = (step >= 0) & (step < trace.num_steps)
  t = jnp.clip(step, 0, trace.pc.shape[0] - 1)
  keep = (jnp.arange(program.op.shape[0]) <= trace.pc[t]) & in_range
  inp = _program_input(program, keep, True, max_input_len)
  reg_t, reg_m = register_slots(trace.regs[t], jnp.ones(isa.NUM_REGS, bool))
  target = compact(*_cat(_one(isa.TOK_BOS), (reg_t, reg_m),
                         _one(isa.TOK_NEWLINE), _one(isa.TOK_EOS)),
                   max_target_len)
  def empty(x: Tokens) -> Tokens:
    return Tokens(ids=jnp.where(in_range, x.ids, isa.TOK_PAD),
                  length=jnp.where(in_range, x.length, 0))
  return Render(input=empty(inp), target=empty(target))
