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

The renders themselves take a cheaper *windowed layout*, equal token for
token (the slot path stays as their reference, `_render_*_slots`): each
instruction's tokens are built already compacted in a short window (the
*plain layout* for programs without labels, Tier 0/1), each step's register
file likewise, and the windows are added into place (see `place_windows`),
about 5 times cheaper on a CPU. The window widths come from a static promise
on the programs (`label_digits`, `literal_digits`); a program that breaks it
gets an overflowing length for the host to reject.
"""

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from tinyvm_jax._src import checks
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


def cat_slots(*pieces: tuple[jax.Array, jax.Array]
              ) -> tuple[jax.Array, jax.Array]:
  """Concatenates (tokens, mask) slot pieces, flattening each, in order."""
  toks = jnp.concatenate([jnp.ravel(t).astype(jnp.int32) for t, _ in pieces])
  mask = jnp.concatenate([jnp.ravel(m) for _, m in pieces])
  return toks, mask


def one_slot(token: int, valid=True) -> tuple[jax.Array, jax.Array]:
  """The slot piece of a single token (valid unless told)."""
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


def output_target(trace: Trace, size: int) -> Tokens:
  """`BOS + (digits(v) NEWLINE for each output v) + EOS` from slots: the
  target of the direct and the userop renders (`size`: static `T`)."""
  return compact(*cat_slots(one_slot(isa.TOK_BOS), output_slots(trace),
                            one_slot(isa.TOK_EOS)), size)


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
                 for r, n in zip(isa.REG_ARGS, isa.LIT_ARGS))
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
def _number_table(lo: int, hi: int) -> np.ndarray:
  """[hi - lo + 1] int32: the tokens `MINUS? digits` of every v in [lo, hi]
  (at index v - lo), 6 bits a token, first token lowest (at most 5 tokens,
  so every entry is below 2**30)."""
  out = np.zeros(hi - lo + 1, np.int64)
  for v in range(lo, hi + 1):
    toks = ([isa.TOK_MINUS] if v < 0 else []) + [
        isa.TOK_DIGIT0 + int(c) for c in str(abs(v))]
    out[v - lo] = sum(t << (6 * k) for k, t in enumerate(toks))
  assert out.max() < 2 ** 30
  return out.astype(np.int32)


def _literal_table(literal_digits: int) -> np.ndarray:
  """[2 * 10**d - 1] int32: `_number_table` of every literal v with at most
  d digits (at index v + 10**d - 1)."""
  hi = 10 ** literal_digits - 1
  return _number_table(-hi, hi)


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
  nregs = jnp.asarray(isa.REG_ARGS)[op]
  has_lit = jnp.asarray(isa.LIT_ARGS)[op] > 0
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


def _place(groups, body: jax.Array, size: int, *, bos: bool, eos: bool
           ) -> Tokens:
  """`BOS? + body + EOS?` in a PAD-filled array of `size`, the body's
  `body` tokens added in from windows.

  Args:
    groups: (windows [N, W] int32, start [N] int32) pairs; each window's
      tokens first, then zeros, added in at `start` (BOS counted). Windows
      may only overlap in their zero tails.
    body: [] int32, the number of body tokens.
    size: static length `T`.
  """
  pad = max(w.shape[-1] for w, _ in groups)
  dims = jax.lax.ScatterDimensionNumbers(
      update_window_dims=(1,), inserted_window_dims=(),
      scatter_dims_to_operand_dims=(0,))
  out = jnp.zeros(size + pad, jnp.int32)
  for windows, start in groups:
    out = jax.lax.scatter_add(
        out, jnp.minimum(start, size)[:, None], windows.astype(jnp.int32),
        dims, indices_are_sorted=True, unique_indices=False,
        mode="promise_in_bounds")
  t = jnp.arange(size)
  last = int(bos) + body                     # one past the body
  ids = jnp.where(t < last, out[:size], isa.TOK_PAD)
  if bos:
    ids = jnp.where(t == 0, isa.TOK_BOS, ids)
  if eos:
    ids = jnp.where(t == last, isa.TOK_EOS, ids)
  return Tokens(ids=ids, length=last + int(eos))


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
  end = jnp.cumsum(count, dtype=jnp.int32)
  total = end[-1] if count.shape[0] else jnp.int32(0)
  return _place([(windows, int(bos) + end - count)], total, size, bos=bos,
                eos=eos)


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


def _overflow(tokens: Tokens, ok: jax.Array, size: int) -> Tokens:
  """`tokens` with length `size + 1` (an overflow the host rejects) unless
  `ok`."""
  return tokens.replace(length=jnp.where(ok, tokens.length, size + 1))


def _direct_target(trace: Trace, size: int) -> Tokens:
  """`BOS + (digits(v) NEWLINE for each output v) + EOS`."""
  # output k starts at or after 1 + 2k: only the first T_out // 2 show
  shown = min(trace.output.shape[0], size // 2)
  owin, ocount, total = plain_output_windows(trace, shown)
  target = place_windows(owin, ocount, size)
  return target.replace(length=2 + total)


# ------------------------------------------------------------- windowed layout
# Programs with labels (Tier 2) and the chain-of-thought renders take the
# same idea further. A piece of a window (a label `L d..`, the opcode and its
# registers, a literal, a register's value) is at most 5 tokens, packed in
# one int32, first token lowest (6 bits a token; a value's MINUS and digits
# 4 bits, `_value_table`); window slot j takes the last piece starting at or
# before it and shifts its token out. No slot arrays and no compaction: the
# windows are built compacted and added into place.


def instruction_width(label_digits: int, literal_digits: int) -> int:
  """Slots of one instruction's window: `[L d.. COLON] OP operands [L d..]
  NEWLINE` (no label slots when `label_digits` is 0)."""
  label = 2 + label_digits if label_digits else 0       # L d.. COLON
  target = 1 + label_digits if label_digits else 0      # L d..
  return label + plain_width(literal_digits) + target


def _pick(j: jax.Array, pieces) -> tuple[jax.Array, jax.Array]:
  """(packed, start) of the last piece starting at or before slot `j`.

  Args:
    j: [..., W] slots.
    pieces: (packed [..., 1], start [..., 1]) in order of their starts;
      the first starts at or before every slot.
  """
  packed, start = pieces[0]
  shape = jnp.broadcast_shapes(j.shape, packed.shape, start.shape)
  packed = jnp.broadcast_to(packed, shape)
  start = jnp.broadcast_to(start, shape)
  for p, s in pieces[1:]:
    m = j >= s
    packed = jnp.where(m, p, packed)
    start = jnp.where(m, s, start)
  return packed, start


def _token(packed: jax.Array, k: jax.Array) -> jax.Array:
  """Token `k` >= 0 of packed pieces (0 past their tokens)."""
  return (packed >> (6 * jnp.minimum(k, 5))) & 63


def instruction_windows(program: Program, *, label_digits: int,
                        literal_digits: int
                        ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Every instruction's tokens, compacted, labels included.

  Args:
    program: one `Program` ([P] arrays).
    label_digits: static, the most digits of a label number (0: no labels).
    literal_digits: static, the most digits of a LOAD literal (1..4).

  Returns:
    toks [P, W] int32 (`W = instruction_width(...)`, 0 after each
    instruction's tokens), count [P] int32 (0 at or after
    `program.length`), and ok [] bool: the program keeps the promise (labels
    and literals within their digits, register operands in R0..R7), so the
    windows equal `instruction_slots` token for token.
  """
  p = program.op.shape[-1]
  w = instruction_width(label_digits, literal_digits)
  lab_hi = 10 ** label_digits - 1
  lit_hi = 10 ** literal_digits - 1
  digits = jnp.asarray(_number_table(0, lab_hi))
  op = jnp.clip(program.op, 0, isa.NUM_OPS - 1)                     # [P]
  nregs = jnp.asarray(isa.REG_ARGS)[op]
  has_lit = jnp.asarray(isa.LIT_ARGS)[op] > 0
  live = jnp.arange(p) < program.length
  # pieces: `L d..` (+ COLON), OP R.., `MINUS? d..`, `L d..`; then NEWLINE
  has_lab = program.label >= 0
  lab = jnp.clip(program.label, 0, lab_hi)
  n_lab = jnp.where(has_lab, 2 + _num_digits(lab), 0)
  r = (isa.TOK_R0 + program.regs) & 63                              # [P, 3]
  p_op = (jnp.asarray(isa.OP_TOKEN)[op] | (r[:, 0] << 6) | (r[:, 1] << 12)
          | (r[:, 2] << 18))
  lit = program.lit
  n_lit = jnp.where(has_lit, (lit < 0).astype(jnp.int32)
                    + _num_digits(jnp.abs(lit)), 0)
  p_lit = jnp.asarray(_literal_table(literal_digits))[
      jnp.clip(lit, -lit_hi, lit_hi) + lit_hi]
  has_tgt = program.target_label >= 0
  tgt = jnp.clip(program.target_label, 0, lab_hi)
  n_tgt = jnp.where(has_tgt, 1 + _num_digits(tgt), 0)
  s_lit = n_lab + 1 + nregs
  s_tgt = s_lit + n_lit
  s_nl = s_tgt + n_tgt
  col = lambda x: x[:, None]
  j = jnp.arange(w)[None, :]                                        # [1, W]
  packed, start = _pick(j, [
      (col(isa.TOK_L | (digits[lab] << 6)), jnp.zeros((p, 1), jnp.int32)),
      (col(p_op), col(n_lab)), (col(p_lit), col(s_lit)),
      (col(isa.TOK_L | (digits[tgt] << 6)), col(s_tgt))])
  toks = jnp.where(j == col(s_nl), isa.TOK_NEWLINE, jnp.where(
      col(has_lab) & (j == col(n_lab) - 1), isa.TOK_COLON,
      _token(packed, j - start)))
  count = jnp.where(live, s_nl + 1, 0)
  toks = jnp.where(j < col(count), toks, 0)
  used = jnp.arange(isa.MAX_REG_ARGS)[None, :] < col(nregs)
  bad = jnp.any(used & ((program.regs < 0) | (program.regs >= isa.NUM_REGS)),
                axis=-1)
  bad |= has_lit & (jnp.abs(lit) > lit_hi)
  if label_digits:
    bad |= (program.label > lab_hi) | (program.target_label > lab_hi)
  else:
    bad |= has_lab | has_tgt
  return toks, count, ~jnp.any(live & bad)


def _windows(program: Program, *, label_digits: int, literal_digits: int
             ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The plain layout without labels, else `instruction_windows`."""
  if label_digits == 0:
    return plain_instruction_windows(program, literal_digits=literal_digits)
  return instruction_windows(program, label_digits=label_digits,
                             literal_digits=literal_digits)


@functools.cache
def _value_table() -> np.ndarray:
  """[VALUE_MAX - VALUE_MIN + 1] int32: the tokens `MINUS? digits` of every
  register value v (at index v - VALUE_MIN) as `token - TOK_DIGIT0` (MINUS
  is 10), 4 bits a token, first token lowest (below 2**20)."""
  out = np.zeros(isa.VALUE_MAX - isa.VALUE_MIN + 1, np.int64)
  for v in range(isa.VALUE_MIN, isa.VALUE_MAX + 1):
    toks = ([isa.TOK_MINUS] if v < 0 else []) + [
        isa.TOK_DIGIT0 + int(c) for c in str(abs(v))]
    out[v - isa.VALUE_MIN] = sum((t - isa.TOK_DIGIT0) << (4 * k)
                                 for k, t in enumerate(toks))
  assert out.max() < 2 ** 20
  return out.astype(np.int32)


# Slots of a register file line: R<i> EQUALS MINUS? d.. for i = 0..7, NEWLINE
REGISTER_LINE_WIDTH = isa.NUM_REGS * (2 + 1 + isa.MAX_VALUE_DIGITS) + 1


def register_windows(regs: jax.Array, show: jax.Array
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Register file lines `R<i> EQUALS digits(value)` (registers shown) and
  NEWLINE, compacted.

  Args:
    regs: [..., R] int32 register values.
    show: [..., R] bool, which registers are written out.

  Returns:
    toks [..., REGISTER_LINE_WIDTH] int32 (0 after the line's tokens),
    count [...] int32 (NEWLINE included), and ok [...] bool: every shown
    value is in [VALUE_MIN, VALUE_MAX] (else its tokens are wrong).
  """
  lo, hi = isa.VALUE_MIN, isa.VALUE_MAX
  v = jnp.clip(regs, lo, hi)
  n = jnp.where(show, 2 + (v < 0).astype(jnp.int32)
                + _num_digits(jnp.abs(v)), 0)                        # [..., R]
  # a value's tokens (MINUS, digits) 4 bits each, its register's number above
  packed = (jnp.asarray(_value_table())[v - lo]
            | (jnp.arange(isa.NUM_REGS) << 20))
  end = jnp.cumsum(n, axis=-1, dtype=jnp.int32)
  start = end - n
  j = jnp.arange(REGISTER_LINE_WIDTH)
  col = lambda x, i: x[..., i:i + 1]
  packed, first = _pick(j, [(col(packed, i), col(start, i))
                            for i in range(isa.NUM_REGS)])
  k = j - first
  digit = isa.TOK_DIGIT0 + ((packed >> (4 * jnp.clip(k - 2, 0, 4))) & 15)
  toks = jnp.where(k == 0, isa.TOK_R0 + (packed >> 20), jnp.where(
      k == 1, isa.TOK_EQUALS, digit))
  total = end[..., -1:]
  toks = jnp.where(j < total, toks, jnp.where(j == total, isa.TOK_NEWLINE, 0))
  ok = jnp.all(~show | ((regs >= lo) & (regs <= hi)), axis=-1)
  return toks, total[..., 0] + 1, ok


def _windowed_direct(program: Program, trace: Trace, *, label_digits: int,
                     literal_digits: int, max_input_len: int,
                     max_target_len: int) -> Render:
  """`render_direct` from instruction windows (plain layout without
  labels)."""
  win, count, ok = _windows(program, label_digits=label_digits,
                            literal_digits=literal_digits)
  inp = _overflow(place_windows(win, count, max_input_len), ok,
                  max_input_len)
  return Render(input=inp, target=_direct_target(trace, max_target_len))


def _shown_registers(trace: Trace, mode: str) -> jax.Array:
  """[S, R] bool: the registers a cot step writes out: all ("full"), or
  those whose value differs from the step before ("modified"; the first
  step compares with all zeros)."""
  if mode == "full":
    return jnp.ones(trace.regs.shape, bool)
  prev = jnp.concatenate(
      [jnp.zeros((1, isa.NUM_REGS), trace.regs.dtype), trace.regs[:-1]])
  return trace.regs != prev


def _windowed_cot(program: Program, trace: Trace, *, mode: str,
                  label_digits: int, literal_digits: int, max_input_len: int,
                  max_target_len: int) -> Render:
  """`render_cot` from windows: per step the executed instruction's window
  and its register file line, then the output values."""
  win, count, ok = _windows(program, label_digits=label_digits,
                            literal_digits=literal_digits)      # [P, W], [P]
  inp = _overflow(place_windows(win, count, max_input_len), ok,
                  max_input_len)
  s = trace.pc.shape[0]
  live = jnp.arange(s) < trace.num_steps                            # [S]
  pc = jnp.clip(trace.pc, 0, program.op.shape[0] - 1)
  ins = jnp.where(live[:, None], win[pc], 0)                        # [S, W]
  ins_n = jnp.where(live, count[pc], 0)
  show = _shown_registers(trace, mode)                              # [S, R]
  reg, reg_n, reg_ok = register_windows(trace.regs, show)           # [S, 57]
  reg = jnp.where(live[:, None], reg, 0)
  reg_n = jnp.where(live, reg_n, 0)
  ok &= jnp.all(reg_ok | ~live)
  owin, out_n, _ = plain_output_windows(trace, s)                   # [S, 6]
  line_end = jnp.cumsum(ins_n + reg_n, dtype=jnp.int32)
  line_start = 1 + line_end - ins_n - reg_n
  steps = line_end[-1]
  out_end = jnp.cumsum(out_n, dtype=jnp.int32)
  target = _place([(ins, line_start), (reg, line_start + ins_n),
                   (owin, 1 + steps + out_end - out_n)],
                  steps + out_end[-1], max_target_len, bos=True, eos=True)
  return Render(input=inp,
                target=_overflow(target, ok, max_target_len))


# ------------------------------------------------------------- checks
def _check_size(name: str, value) -> None:
  if not checks.is_int(value) or (
      value < 1):
    raise ValueError(f"{name} must be a positive Python int (static), "
                     f"got {value!r}")


def _check_digits(**digits) -> None:
  for k, v in digits.items():
    hi = isa.MAX_LABEL_DIGITS if k == "label_digits" else (
        isa.MAX_LITERAL_DIGITS if k == "literal_digits" else
        isa.MAX_VALUE_DIGITS)
    if not checks.is_int(v) or not 0 <= v <= hi:
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
  pieces = [one_slot(isa.TOK_BOS), (toks, mask & keep[:, None])]
  if query:
    pieces.append(one_slot(isa.TOK_QUERY))
  pieces.append(one_slot(isa.TOK_EOS))
  return compact(*cat_slots(*pieces), size)


def _check_render(program: Program, trace: Trace, max_input_len,
                  max_target_len, label_digits, literal_digits) -> None:
  _check_program(program)
  _check_trace(trace)
  _check_size("max_input_len", max_input_len)
  _check_size("max_target_len", max_target_len)
  _check_digits(label_digits=label_digits, literal_digits=literal_digits)


def render_direct(program: Program, trace: Trace, *, max_input_len: int,
                  max_target_len: int, label_digits: int = isa.MAX_LABEL_DIGITS,
                  literal_digits: int = isa.MAX_LITERAL_DIGITS) -> Render:
  """The `direct` render: the program in, its output values out.

  Args:
    program: one `Program` ([P] arrays).
    trace: its `Trace` ([S] arrays).
    max_input_len, max_target_len: static lengths of input and target.
    label_digits, literal_digits: static promise on the program (as in
      `max_render_lengths`): the instructions are built in windows of
      `instruction_width(label_digits, literal_digits)` tokens (the plain
      layout when `label_digits == 0`, no labels: Tier 0/1), equal token for
      token. A program that breaks the promise (a label or literal of more
      digits, a register operand outside R0..R7) gets input length
      `max_input_len + 1`, an overflow the host rejects.

  Returns:
    `Render`: input `BOS + encode(program) + EOS`; target
    `BOS + (digits(v) NEWLINE for each output v) + EOS`.
  """
  _check_render(program, trace, max_input_len, max_target_len, label_digits,
                literal_digits)
  sizes = dict(max_input_len=max_input_len, max_target_len=max_target_len)
  if literal_digits == 0:  # no literal fits: the general slot path
    return _render_direct_slots(program, trace, **sizes)
  return _windowed_direct(program, trace, label_digits=label_digits,
                          literal_digits=literal_digits, **sizes)


def _render_direct_slots(program: Program, trace: Trace, *,
                         max_input_len: int, max_target_len: int) -> Render:
  """`render_direct` from slots and `compact` (no promise; the reference
  for the windowed path)."""
  keep = jnp.ones(program.op.shape, bool)
  return Render(input=_program_input(program, keep, False, max_input_len),
                target=output_target(trace, max_target_len))


def render_cot(program: Program, trace: Trace, *, mode: str,
               max_input_len: int, max_target_len: int,
               label_digits: int = isa.MAX_LABEL_DIGITS,
               literal_digits: int = isa.MAX_LITERAL_DIGITS) -> Render:
  """The chain-of-thought render (spec section 7).

  Args:
    program: one `Program` ([P] arrays).
    trace: its `Trace` ([S] arrays).
    mode: "full" (every register each step) or "modified" (only registers
      whose value differs from the previous step, the first step comparing
      with all zeros).
    max_input_len, max_target_len: static lengths of input and target.
    label_digits, literal_digits: static promise on the program, as in
      `render_direct`; a program breaking it, or a trace with a register
      value outside [VALUE_MIN, VALUE_MAX], gets lengths `max_input_len + 1`
      and `max_target_len + 1`, overflows the host rejects.

  Returns:
    `Render`: input as in `render_direct`; target `BOS`, then per executed
    step the executed instruction's encoding, the register file after it and
    NEWLINE; then the output values as in `render_direct`; then `EOS`.
  """
  if mode not in COT_MODES:
    raise ValueError(f"cot mode must be one of {COT_MODES}, got {mode!r}")
  _check_render(program, trace, max_input_len, max_target_len, label_digits,
                literal_digits)
  sizes = dict(max_input_len=max_input_len, max_target_len=max_target_len)
  if literal_digits == 0:  # no literal fits: the general slot path
    return _render_cot_slots(program, trace, mode=mode, **sizes)
  return _windowed_cot(program, trace, mode=mode, label_digits=label_digits,
                       literal_digits=literal_digits, **sizes)


def _render_cot_slots(program: Program, trace: Trace, *, mode: str,
                      max_input_len: int, max_target_len: int) -> Render:
  """`render_cot` from slots and `compact` (no promise; the reference for
  the windowed path)."""
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
  target = compact(*cat_slots(one_slot(isa.TOK_BOS), (steps_t, steps_m),
                              output_slots(trace), one_slot(isa.TOK_EOS)),
                   max_target_len)
  keep = jnp.ones(program.op.shape, bool)
  return Render(input=_program_input(program, keep, False, max_input_len),
                target=target)


def render_probe_query(program: Program, trace: Trace, step: jax.Array, *,
                       max_input_len: int, max_target_len: int,
                       label_digits: int = isa.MAX_LABEL_DIGITS,
                       literal_digits: int = isa.MAX_LITERAL_DIGITS
                       ) -> Render:
  """The `probe_query` render at step `step` (spec section 7).

  Args:
    program: one `Program` ([P] arrays).
    trace: its `Trace` ([S] arrays).
    step: [] int32 (traced), the step t probed; 0 <= t < trace.num_steps.
    max_input_len, max_target_len: static lengths of input and target.
    label_digits, literal_digits: static promise on the program, as in
      `render_cot` (a break gives lengths `max_*_len + 1`).

  Returns:
    `Render`: input `BOS + encode(instructions 0..pc_t) + ? + EOS`; target
    `BOS + R0=.. R7=.. (register file after step t) + NEWLINE + EOS`. When
    `step` is outside [0, num_steps) both sequences are empty: all PAD with
    `length` 0 (a valid render is never empty), for the host to check.
  """
  _check_render(program, trace, max_input_len, max_target_len, label_digits,
                literal_digits)
  if jnp.ndim(step) != 0:
    raise ValueError(f"step must be a scalar, got shape {jnp.shape(step)}; "
                     f"vmap the render for batches")
  sizes = dict(max_input_len=max_input_len, max_target_len=max_target_len)
  if literal_digits == 0:  # no literal fits: the general slot path
    return _render_probe_query_slots(program, trace, step, **sizes)
  t, keep, in_range = _probe_step(program, trace, step)
  win, count, ok = _windows(program, label_digits=label_digits,
                            literal_digits=literal_digits)
  inp = place_windows(win, jnp.where(keep, count, 0), max_input_len,
                      eos=False)
  i = jnp.arange(max_input_len)
  ids = jnp.where(i == inp.length, isa.TOK_QUERY, jnp.where(
      i == inp.length + 1, isa.TOK_EOS, inp.ids))
  inp = _overflow(Tokens(ids=ids, length=inp.length + 2), ok, max_input_len)
  reg, reg_n, reg_ok = register_windows(trace.regs[t],
                                        jnp.ones(isa.NUM_REGS, bool))
  target = _overflow(place_windows(reg[None], reg_n[None], max_target_len),
                     reg_ok, max_target_len)
  return _empty_unless(in_range, Render(input=inp, target=target))


def _probe_step(program: Program, trace: Trace, step: jax.Array
                ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The step probed (clipped into [0, S)), the instructions kept [P] and
  whether `step` is in [0, num_steps)."""
  in_range = (step >= 0) & (step < trace.num_steps)
  t = jnp.clip(step, 0, trace.pc.shape[0] - 1)
  keep = (jnp.arange(program.op.shape[0]) <= trace.pc[t]) & in_range
  return t, keep, in_range


def _empty_unless(ok: jax.Array, render: Render) -> Render:
  """Both sequences all PAD with length 0 unless `ok`."""
  def empty(x: Tokens) -> Tokens:
    return Tokens(ids=jnp.where(ok, x.ids, isa.TOK_PAD),
                  length=jnp.where(ok, x.length, 0))
  return Render(input=empty(render.input), target=empty(render.target))


def _render_probe_query_slots(program: Program, trace: Trace,
                              step: jax.Array, *, max_input_len: int,
                              max_target_len: int) -> Render:
  """`render_probe_query` from slots and `compact` (no promise; the
  reference for the windowed path)."""
  t, keep, in_range = _probe_step(program, trace, step)
  inp = _program_input(program, keep, True, max_input_len)
  reg_t, reg_m = register_slots(trace.regs[t], jnp.ones(isa.NUM_REGS, bool))
  target = compact(*cat_slots(one_slot(isa.TOK_BOS), (reg_t, reg_m),
                              one_slot(isa.TOK_NEWLINE),
                              one_slot(isa.TOK_EOS)),
                   max_target_len)
  return _empty_unless(in_range, Render(input=inp, target=target))


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
  `label_digits`, `literal_digits`: the static promise on the program
  (see `render_direct`)."""
  if name not in RENDERS:
    raise ValueError(f"unknown render {name!r}; expected one of {RENDER_NAMES}")
  sizes = dict(max_input_len=max_input_len, max_target_len=max_target_len)
  if name == "probe_query":
    if step is None:
      raise ValueError("render 'probe_query' needs a step")
    return render_probe_query(program, trace, step, label_digits=label_digits,
                              literal_digits=literal_digits, **sizes)
  if step is not None:
    raise ValueError(f"render {name!r} takes no step")
  return RENDERS[name](program, trace, label_digits=label_digits,
                       literal_digits=literal_digits, **sizes)


def output_width(value_digits: int = isa.MAX_VALUE_DIGITS) -> int:
  """Tokens of one printed value: MINUS, `value_digits` digits, NEWLINE."""
  return 1 + value_digits + 1


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
  if not checks.is_int(outputs) or not (
      0 <= outputs <= max_steps):
    raise ValueError(f"max_outputs must be an int in [0, max_steps], got "
                     f"{max_outputs!r}")
  _check_digits(label_digits=label_digits, literal_digits=literal_digits,
                value_digits=value_digits)
  instruction = instruction_width(label_digits, literal_digits)
  regfile = isa.NUM_REGS * (2 + 1 + value_digits)
  output = output_width(value_digits)
  program = max_len * instruction
  if name == "direct":
    return 2 + program, 2 + outputs * output
  if name in ("cot", "cot_modified"):
    return (2 + program,
            2 + max_steps * (instruction + regfile + 1) + outputs * output)
  return 3 + program, 3 + regfile  # probe_query
