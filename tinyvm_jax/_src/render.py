"""Renders: programs and traces as token ids (spec sections 5-7), in JAX.

Every render is a per-example function of one `Program` ([P] arrays) and its
`Trace` ([S] arrays); `vmap` it for batches and `jit` it at the entry point,
passing the static token lengths as Python ints.

How a render is built: every piece of a sequence (an instruction, a register
file, an output value) is laid out in a fixed number of *slots*, each a token id
and a validity bit. The slots are flattened in reading order and `compact`
moves the valid ones to the front of a PAD-filled array of static length `T`.
The true count is returned as `length`; `length > T` means the render did not
fit (the tokens past `T` are dropped) and is for the host to check.

Programs without labels (Tier 0/1; `render_direct(..., label_digits=0)`)
take the *plain layout*, a dozen times cheaper on a CPU and equal token for
token: each instruction's tokens are built already compacted in a short
window, and the windows are added into place (see `place_windows`).
"""

import functools
from typing import Callable

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

COT_MODES = ("full", "modified")

# numpy constants (importing this module must not start a JAX backend)
_POW10 = np.array([10 ** i for i in range(_DIGITS)], np.int32)   # [4]


# ------------------------------------------------------------- building blocks
def compact(tokens: jax.Array, mask: jax.Array, size: int) -> Tokens:
  """Moves the valid tokens to the front, in order, of a PAD-filled array.

  Args:
    tokens: [N] int32 token ids (slots).
    mask: [N] bool, which slots hold a token.
    size: static output length `T`.

  Returns:
    `Tokens` with `ids` [T] (PAD after the valid tokens; tokens beyond `T`
    dropped) and `length` [] the number of valid tokens (may exceed `T`).
  """
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
  """Slots of numbers: MINUS if negative, then the decimal digits.

  Args:
    value: [...] int32, |value| < 10**4.

  Returns:
    tokens, mask: [..., 5] int32 / bool; 0 is the single digit `0`.
  """
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
  """Slots of every instruction, NEWLINE included (spec section 6).

  Returns:
    tokens, mask: [P, INSTRUCTION_SLOTS] int32 / bool; rows at or after
    `program.length` are all invalid.
  """
  p = program.op.shape[-1]
  op = jnp.clip(program.op, 0, isa.NUM_OPS - 1)                     # [P]
  lab_t, lab_m = _label_slots(program.label)                        # [P, 5]
  colon = jnp.full((p, 1), isa.TOK_COLON, jnp.int32)
  reg_m = jnp.arange(isa.MAX_REG_ARGS) < jnp.asarray(isa.N_REGS)[op][:, None]
  lit_t, lit_m = number_slots(program.lit)                          # [P, 5]
  lit_m = lit_m & (jnp.asarray(isa.N_LITS)[op] > 0)[:, None]
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
  """Slots of register files `R<i> EQUALS <value>` for i = 0..7.

  Args:
    regs: [..., R] int32 register values.
    show: [..., R] bool, which registers are written out.

  Returns:
    tokens, mask: [..., R * REGISTER_SLOTS].
  """
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


# ------------------------------------------------------------- plain layout
# Programs without labels (Tier 0/1) render through a cheaper path: each
# instruction's tokens are laid out already compacted in a window of
# `plain_width(literal_digits)` slots (zeros after its `count` tokens), and
# the windows are added into the output at their offsets (a scatter-add of
# P windows instead of a scatter of P * INSTRUCTION_SLOTS slots). Windows
# only overlap in their zero tails, so the sum is exact and order-free.


def plain_width(literal_digits: int) -> int:
  """Slots of one instruction's window in the plain layout: OP, the
  operands (registers, or a register and MINUS + digits), NEWLINE."""
  operands = max(int(r) + int(n) * (1 + literal_digits)
                 for r, n in zip(isa.N_REGS, isa.N_LITS))
  return 1 + operands + 1


def _digits(a: jax.Array, n: jax.Array, i) -> jax.Array:
  """Digit `i` (0: most significant) of `a` >= 0 written with `n` digits
  (`i` static or traced, 0 <= i < n <= 4); constant divisors only."""
  k = n - 1 - i                        # power of ten of the digit
  return jnp.where(k == 0, a % 10, jnp.where(
      k == 1, (a // 10) % 10, jnp.where(k == 2, (a // 100) % 10,
                                        (a // 1000) % 10)))


def _num_digits(a: jax.Array) -> jax.Array:
  """Decimal digits of `a` >= 0 (1 for 0), up to 4."""
  return (1 + (a >= 10).astype(jnp.int32) + (a >= 100).astype(jnp.int32)
          + (a >= 1000).astype(jnp.int32))


def _number_window(value: jax.Array, j: jax.Array, first: jax.Array
                   ) -> jax.Array:
  """Token `j - first` of a number's `MINUS? digits` (0 outside them)."""
  a = jnp.abs(value)
  neg = (value < 0).astype(jnp.int32)
  n = _num_digits(a)
  k = j - first
  i = k - neg
  tok = jnp.where(k < neg, isa.TOK_MINUS,
                  isa.TOK_DIGIT0 + _digits(a, n, jnp.clip(i, 0, 3)))
  return jnp.where((k >= 0) & (i < n), tok, 0)


@functools.cache
def _literal_table(literal_digits: int) -> np.ndarray:
  """[2 * 10**d - 1] int32: the tokens `MINUS? digits` of every literal v
  with at most d digits (at index v + 10**d - 1), 6 bits a token, first
  token lowest."""
  hi = 10 ** literal_digits - 1
  out = np.zeros(2 * hi + 1, np.int64)
  for v in range(-hi, hi + 1):
    toks = ([isa.TOK_MINUS] if v < 0 else []) + [
        isa.TOK_DIGIT0 + int(c) for c in str(abs(v))]
    out[v + hi] = sum(t << (6 * k) for k, t in enumerate(toks))
  assert out.max() < 2 ** 31
  return out.astype(np.int32)


def plain_instruction_windows(program: Program, *, literal_digits: int
                              ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Every instruction's tokens, compacted, in the plain layout.

  Args:
    program: one `Program` ([P] arrays) without labels.
    literal_digits: static, the most digits of a LOAD literal (1..4).

  Returns:
    toks [P, W] int32 (0 after each instruction's tokens), count [P] int32
    (0 at or after `program.length`), and ok [] bool: the program keeps the
    promise (no label defined or named, literals within `literal_digits`).
  """
  p = program.op.shape[-1]
  w = plain_width(literal_digits)
  hi = 10 ** literal_digits - 1
  op = jnp.clip(program.op, 0, isa.NUM_OPS - 1)[:, None]            # [P, 1]
  nregs = jnp.asarray(isa.N_REGS)[op]
  has_lit = jnp.asarray(isa.N_LITS)[op] > 0
  lit = program.lit[:, None]
  nlit = jnp.where(has_lit, (lit < 0).astype(jnp.int32)
                   + _num_digits(jnp.abs(lit)), 0)
  # the literal's tokens, packed 6 bits each, from a table
  packed = jnp.asarray(_literal_table(literal_digits))[
      jnp.clip(lit, -hi, hi) + hi]
  j = np.arange(w)[None, :]                                         # [1, W]
  k = j - 1 - nregs                      # token k of the literal at slot j
  r = program.regs
  reg = isa.TOK_R0 + jnp.where(j == 1, r[:, :1], jnp.where(j == 2, r[:, 1:2],
                                                           r[:, 2:3]))
  toks = jnp.where(
      j == 0, jnp.asarray(isa.OP_TOKEN)[op], jnp.where(
          j <= nregs, reg, jnp.where(
              k < nlit, (packed >> (6 * jnp.clip(k, 0, literal_digits))) & 63,
              jnp.where(k == nlit, isa.TOK_NEWLINE, 0))))
  live = jnp.arange(p) < program.length
  count = jnp.where(live, 2 + nregs[:, 0] + nlit[:, 0], 0)
  ok = ~jnp.any(live & ((program.label >= 0) | (program.target_label >= 0)))
  ok &= ~jnp.any(live & has_lit[:, 0] & (jnp.abs(program.lit) > hi))
  return jnp.where(live[:, None], toks, 0), count, ok


def place_windows(windows: jax.Array, count: jax.Array, size: int, *,
                  bos: bool = True, eos: bool = True) -> Tokens:
  """`BOS? + windows' tokens in order + EOS?` in a PAD-filled array.

  Args:
    windows: [N, W] int32, each row's tokens first, then zeros.
    count: [N] int32, the number of tokens of each row.
    size: static length `T`.

  Returns:
    `Tokens` ([T] ids; tokens past `T` dropped, `length` the true count).
  """
  w = windows.shape[-1]
  end = jnp.cumsum(count, dtype=jnp.int32)
  start = int(bos) + end - count
  total = end[-1] if count.shape[0] else jnp.int32(0)
  dims = jax.lax.ScatterDimensionNumbers(
      update_window_dims=(1,), inserted_window_dims=(),
      scatter_dims_to_operand_dims=(0,))
  body = jax.lax.scatter_add(
      jnp.zeros(size + w, jnp.int32), jnp.minimum(start, size)[:, None],
      windows.astype(jnp.int32), dims, indices_are_sorted=True,
      unique_indices=False, mode="promise_in_bounds")[:size]
  t = jnp.arange(size)
  last = int(bos) + total                    # one past the body
  ids = jnp.where(t < last, body, isa.TOK_PAD)
  if bos:
    ids = jnp.where(t == 0, isa.TOK_BOS, ids)
  if eos:
    ids = jnp.where(t == last, isa.TOK_EOS, ids)
  return Tokens(ids=ids, length=last + int(eos))


def plain_output_windows(trace: Trace, count: int
                         ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The first `count` output values as windows `MINUS? digits NEWLINE`.

  Returns:
    windows [count, OUTPUT_SLOTS] int32, their token counts [count], and
    the token count of the whole output stream [] (every value counted).
  """
  s = trace.output.shape[0]
  live = jnp.arange(s) < trace.num_output
  sizes = jnp.where(live, (trace.output < 0).astype(jnp.int32)
                    + _num_digits(jnp.abs(trace.output)) + 1, 0)     # [S]
  v = trace.output[:count, None]
  n = sizes[:count, None]
  j = np.arange(OUTPUT_SLOTS)[None, :]
  win = jnp.where(j == n - 1, isa.TOK_NEWLINE, _number_window(v, j, 0))
  win = jnp.where(j < n, win, 0)
  return win, sizes[:count], sizes.sum(dtype=jnp.int32)


def _plain_direct(program: Program, trace: Trace, *, literal_digits: int,
                  max_input_len: int, max_target_len: int) -> Render:
  """`render_direct` in the plain layout (no labels)."""
  win, count, ok = plain_instruction_windows(program,
                                             literal_digits=literal_digits)
  inp = place_windows(win, count, max_input_len)
  # a program breaking the promise reports an overflowing input
  inp = inp.replace(length=jnp.where(ok, inp.length, max_input_len + 1))
  # output k starts at or after 1 + 2k: only the first T_out // 2 show
  shown = min(trace.output.shape[0], max_target_len // 2)
  owin, ocount, total = plain_output_windows(trace, shown)
  target = place_windows(owin, ocount, max_target_len)
  target = target.replace(length=2 + total)
  return Render(input=inp, target=target)


# ------------------------------------------------------------- checks
def _check_size(name: str, value) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or (
      value < 1):
    raise ValueError(f"{name} must be a positive Python int (static), "
                     f"got {value!r}")


def _check_digits(**digits) -> None:
  for k, v in digits.items():
    hi = isa.MAX_LABEL_DIGITS if k == "label_digits" else (
        isa.MAX_LITERAL_DIGITS if k == "literal_digits" else
        isa.MAX_VALUE_DIGITS)
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= hi:
      raise ValueError(f"{k} must be an int in [0, {hi}], got {v!r}")


def _check_unbatched(x, cls, lead: str, wide: str, width: int) -> None:
  """One unbatched `cls` (Program or Trace): `lead` of rank 1, `wide` of
  shape [len(lead), width]."""
  name = cls.__name__
  if not isinstance(x, cls):
    raise ValueError(f"expected a {name}, got {type(x).__name__}")
  first = getattr(x, lead)
  if jnp.ndim(first) != 1:
    raise ValueError(
        f"expected one unbatched {name} ({lead} of rank 1), got {lead} of "
        f"shape {jnp.shape(first)}; vmap the render for batches")
  want = (first.shape[0], width)
  if jnp.shape(getattr(x, wide)) != want:
    raise ValueError(f"{name.lower()}.{wide} must have shape {want}, got "
                     f"{jnp.shape(getattr(x, wide))}")


def _check_program(program: Program) -> None:
  _check_unbatched(program, Program, "op", "regs", isa.MAX_REG_ARGS)


def _check_trace(trace: Trace) -> None:
  _check_unbatched(trace, Trace, "pc", "regs", isa.NUM_REGS)


# ------------------------------------------------------------- renders
def encode_program(program: Program, *, max_tokens: int) -> Tokens:
  """Token ids of a whole program, no BOS/EOS (spec section 6).

  Args:
    program: one `Program` ([P] arrays).
    max_tokens: static length `T` of the result.

  Returns:
    `Tokens` ([T] ids); equal to `program.encode` on the host.
  """
  _check_program(program)
  _check_size("max_tokens", max_tokens)
  toks, mask = instruction_slots(program)
  return compact(toks.ravel(), mask.ravel(), max_tokens)


def _program_input(program: Program, keep: jax.Array, query: bool,
                   size: int) -> Tokens:
  """`BOS + encode(instructions where keep) [+ ?] + EOS`."""
  toks, mask = instruction_slots(program)
  pieces = [_one(isa.TOK_BOS), (toks, mask & keep[:, None])]
  if query:
    pieces.append(_one(isa.TOK_QUERY))
  pieces.append(_one(isa.TOK_EOS))
  return compact(*_cat(*pieces), size)


def render_direct(program: Program, trace: Trace, *, max_input_len: int,
                  max_target_len: int, label_digits: int = isa.MAX_LABEL_DIGITS,
                  literal_digits: int = isa.MAX_LITERAL_DIGITS) -> Render:
  """The `direct` render: the program in, its output values out.

  Args:
    program: one `Program` ([P] arrays).
    trace: its `Trace` ([S] arrays).
    max_input_len, max_target_len: static lengths of input and target.
    label_digits, literal_digits: static promise on the program (as in
      `max_render_lengths`). With `label_digits == 0` (no labels, Tier 0/1)
      the render takes the cheaper plain layout, equal token for token; a
      program that breaks the promise (a label, or a literal of more digits)
      gets input length `max_input_len + 1`, an overflow the host rejects.

  Returns:
    `Render`: input `BOS + encode(program) + EOS`; target
    `BOS + (digits(v) NEWLINE for each output v) + EOS`.
  """
  _check_program(program)
  _check_trace(trace)
  _check_size("max_input_len", max_input_len)
  _check_size("max_target_len", max_target_len)
  _check_digits(label_digits=label_digits, literal_digits=literal_digits)
  if label_digits == 0 and literal_digits >= 1:
    return _plain_direct(program, trace, literal_digits=literal_digits,
                         max_input_len=max_input_len,
                         max_target_len=max_target_len)
  keep = jnp.ones(program.op.shape, bool)
  target = compact(*_cat(_one(isa.TOK_BOS), output_slots(trace),
                         _one(isa.TOK_EOS)), max_target_len)
  return Render(input=_program_input(program, keep, False, max_input_len),
                target=target)


def render_cot(program: Program, trace: Trace, *, mode: str,
               max_input_len: int, max_target_len: int) -> Render:
  """The chain-of-thought render (spec section 7).

  Args:
    program: one `Program` ([P] arrays).
    trace: its `Trace` ([S] arrays).
    mode: "full" (every register each step) or "modified" (only registers
      whose value differs from the previous step, the first step comparing
      with all zeros).
    max_input_len, max_target_len: static lengths of input and target.

  Returns:
    `Render`: input as in `render_direct`; target `BOS`, then per executed
    step the executed instruction's encoding, the register file after it and
    NEWLINE; then the output values as in `render_direct`; then `EOS`.
  """
  if mode not in COT_MODES:
    raise ValueError(f"cot mode must be one of {COT_MODES}, got {mode!r}")
  _check_program(program)
  _check_trace(trace)
  _check_size("max_input_len", max_input_len)
  _check_size("max_target_len", max_target_len)
  s = trace.pc.shape[0]
  live = jnp.arange(s) < trace.num_steps                            # [S]
  ins_t, ins_m = instruction_slots(program)                         # [P, I]
  pc = jnp.clip(trace.pc, 0, program.op.shape[0] - 1)
  step_t, step_m = ins_t[pc], ins_m[pc] & live[:, None]             # [S, I]
  if mode == "full":
    show = jnp.ones(trace.regs.shape, bool)
  else:
    prev = jnp.concatenate(
        [jnp.zeros((1, isa.NUM_REGS), trace.regs.dtype), trace.regs[:-1]])
    show = trace.regs != prev
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
  """The `probe_query` render at step `step` (spec section 7).

  Args:
    program: one `Program` ([P] arrays).
    trace: its `Trace` ([S] arrays).
    step: [] int32 (traced), the step t probed; 0 <= t < trace.num_steps.
    max_input_len, max_target_len: static lengths of input and target.

  Returns:
    `Render`: input `BOS + encode(instructions 0..pc_t) + ? + EOS`; target
    `BOS + R0=.. R7=.. (register file after step t) + NEWLINE + EOS`. When
    `step` is outside [0, num_steps) both sequences are empty: all PAD with
    `length` 0 (a valid render is never empty), for the host to check.
  """
  _check_program(program)
  _check_trace(trace)
  _check_size("max_input_len", max_input_len)
  _check_size("max_target_len", max_target_len)
  if jnp.ndim(step) != 0:
    raise ValueError(f"step must be a scalar, got shape {jnp.shape(step)}; "
                     f"vmap the render for batches")
  s = trace.pc.shape[0]
  ok = (step >= 0) & (step < trace.num_steps)
  t = jnp.clip(step, 0, s - 1)
  keep = (jnp.arange(program.op.shape[0]) <= trace.pc[t]) & ok
  inp = _program_input(program, keep, True, max_input_len)
  reg_t, reg_m = register_slots(trace.regs[t], jnp.ones(isa.NUM_REGS, bool))
  target = compact(*_cat(_one(isa.TOK_BOS), (reg_t, reg_m),
                         _one(isa.TOK_NEWLINE), _one(isa.TOK_EOS)),
                   max_target_len)
  def empty(x: Tokens) -> Tokens:
    return Tokens(ids=jnp.where(ok, x.ids, isa.TOK_PAD),
                  length=jnp.where(ok, x.length, 0))
  return Render(input=empty(inp), target=empty(target))


# ------------------------------------------------------------- by name
RENDERS: dict[str, Callable[..., Render]] = {
    "direct": render_direct,
    "cot": functools.partial(render_cot, mode="full"),
    "cot_modified": functools.partial(render_cot, mode="modified"),
    "probe_query": render_probe_query,
}
RENDER_NAMES = tuple(RENDERS)


def render(name: str, program: Program, trace: Trace, *, max_input_len: int,
           max_target_len: int, step: jax.Array | None = None,
           label_digits: int = isa.MAX_LABEL_DIGITS,
           literal_digits: int = isa.MAX_LITERAL_DIGITS) -> Render:
  """Renders by name: 'direct', 'cot' (mode full), 'cot_modified' or
  'probe_query' (which needs `step`, a [] int32; the others take none).
  `label_digits`, `literal_digits`: the static promise of `render_direct`
  (the other renders ignore it)."""
  if name not in RENDERS:
    raise ValueError(f"unknown render {name!r}; expected one of {RENDER_NAMES}")
  sizes = dict(max_input_len=max_input_len, max_target_len=max_target_len)
  if name == "probe_query":
    if step is None:
      raise ValueError("render 'probe_query' needs a step")
    return render_probe_query(program, trace, step, **sizes)
  if step is not None:
    raise ValueError(f"render {name!r} takes no step")
  if name == "direct":
    return render_direct(program, trace, label_digits=label_digits,
                         literal_digits=literal_digits, **sizes)
  return RENDERS[name](program, trace, **sizes)


def max_render_lengths(name: str, *, max_len: int, max_steps: int,
                       label_digits: int = isa.MAX_LABEL_DIGITS,
                       literal_digits: int = isa.MAX_LITERAL_DIGITS,
                       value_digits: int = isa.MAX_VALUE_DIGITS,
                       max_outputs: int | None = None,
                       ) -> tuple[int, int]:
  """Static (input, target) token lengths that no render can exceed.

  Args:
    name: a render name of `RENDERS`.
    max_len: the programs' static length `P`.
    max_steps: the traces' static step budget `S`.
    label_digits: the most digits of a label number; 0 when the programs
      define and name no labels (Tier 0/1).
    literal_digits: the most digits of a LOAD literal (3 for generated
      programs, whose literals are in [-127, 127]).
    value_digits: the most digits of a register value (4: [-1024, 1023]).
    max_outputs: the most values a trace prints; defaults to `max_steps`
      (Tier 0-2 programs print once).

  Returns:
    (max_input_len, max_target_len): safe for any program within the bounds
    (an instruction may both define a label and name a target).
  """
  if name not in RENDERS:
    raise ValueError(f"unknown render {name!r}; expected one of {RENDER_NAMES}")
  _check_size("max_len", max_len)
  _check_size("max_steps", max_steps)
  outputs = max_steps if max_outputs is None else max_outputs
  if isinstance(outputs, bool) or not isinstance(outputs, int) or not (
      0 <= outputs <= max_steps):
    raise ValueError(f"max_outputs must be an int in [0, max_steps], got "
                     f"{max_outputs!r}")
  _check_digits(label_digits=label_digits, literal_digits=literal_digits,
                value_digits=value_digits)
  label = 2 + label_digits if label_digits else 0          # L d.. COLON
  target = 1 + label_digits if label_digits else 0         # L d..
  operands = max(int(r) + int(l) * (1 + literal_digits)
                 for r, l in zip(isa.N_REGS, isa.N_LITS))
  instruction = label + 1 + operands + target + 1
  regfile = isa.NUM_REGS * (2 + 1 + value_digits)
  output = 1 + value_digits + 1
  program = max_len * instruction
  if name == "direct":
    return 2 + program, 2 + outputs * output
  if name in ("cot", "cot_modified"):
    return (2 + program,
            2 + max_steps * (instruction + regfile + 1) + outputs * output)
  return 3 + program, 3 + regfile  # probe_query
