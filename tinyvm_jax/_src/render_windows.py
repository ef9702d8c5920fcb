"""Token windows: the one layout every render is built from (spec 5-7).

A window holds one piece of a sequence (an instruction, a step's register
file line, an output value) already compacted: its tokens first, then
zeros, in a static width `W`, with its token count. `place_windows` adds a
row of windows into a PAD-filled array of static length `T` at the running
sum of their counts; windows overlap only in their zero tails, so the sum is
exact. The widths come from a static promise on the programs
(`label_digits`, `literal_digits`): instructions without labels (Tier 0/1,
`label_digits == 0`) get windows with no label slots and a cheaper build.
Each builder also says whether its input kept the promise, so a render can
turn a break into an overflowing length for the host to reject.
`instruction_slots`, `output_slots` and `compact` give the same windows as
(tokens, mask) for callers that build sequences by masking (userop).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from tinyvm_jax._src import isa
from tinyvm_jax._src.types import Program, Tokens, Trace


def output_width(value_digits: int = isa.MAX_VALUE_DIGITS) -> int:
  """Most tokens of one output value: `MINUS? d.. NEWLINE`."""
  return 1 + value_digits + 1


def register_line_width(value_digits: int = isa.MAX_VALUE_DIGITS) -> int:
  """Most tokens of a register file line: `R<i> EQUALS MINUS? d..` for the
  8 registers, then NEWLINE."""
  return isa.NUM_REGS * (2 + 1 + value_digits) + 1


def instruction_width(label_digits: int, literal_digits: int) -> int:
  """Most tokens of one instruction: `[L d.. COLON] OP operands [L d..]
  NEWLINE` (no label tokens when `label_digits` is 0)."""
  label = 2 + label_digits if label_digits else 0       # L d.. COLON
  target = 1 + label_digits if label_digits else 0      # L d..
  operands = max(int(r) + int(n) * (1 + literal_digits)
                 for r, n in zip(isa.REG_ARGS, isa.LIT_ARGS))
  return label + 1 + operands + 1 + target


OUTPUT_WIDTH = output_width()                 # 6: `- d d d d NEWLINE`
REGISTER_LINE_WIDTH = register_line_width()   # 57


# ------------------------------------------------------------- numbers
# A number's tokens `MINUS? digits` (at most 5) are packed in one int32,
# first token lowest, read from a table built once with numpy (importing
# this module must not start a JAX backend).


@functools.cache
def _number_table(lo: int, hi: int, bits: int = 6, base: int = 0
                  ) -> np.ndarray:
  """[hi - lo + 1] int32: the tokens `MINUS? digits` of every v in [lo, hi]
  (at index v - lo), as `token - base`, `bits` bits a token."""
  out = np.zeros(hi - lo + 1, np.int64)
  for v in range(lo, hi + 1):
    toks = ([isa.TOK_MINUS] if v < 0 else []) + [
        isa.TOK_DIGIT0 + int(c) for c in str(abs(v))]
    out[v - lo] = sum((t - base) << (bits * k) for k, t in enumerate(toks))
  assert out.max() < 2 ** (5 * bits)
  return out.astype(np.int32)


def _value_table() -> np.ndarray:
  """`_number_table` of every register value, 4 bits a token relative to
  TOK_DIGIT0 (MINUS is 10; below 2**20, leaving room for the register)."""
  return _number_table(isa.VALUE_MIN, isa.VALUE_MAX, 4, isa.TOK_DIGIT0)


def _num_digits(a: jax.Array) -> jax.Array:
  """Decimal digits of `a` >= 0 (1 for 0), up to 4."""
  return (1 + (a >= 10).astype(jnp.int32) + (a >= 100).astype(jnp.int32)
          + (a >= 1000).astype(jnp.int32))


def _digits(a: jax.Array, n: jax.Array, i) -> jax.Array:
  """Digit `i` (0: most significant) of `a` >= 0 written with `n` digits
  (`i` static or traced, 0 <= i < n <= 4); constant divisors only."""
  k = n - 1 - i                        # power of ten of the digit
  return jnp.where(k == 0, a % 10, jnp.where(
      k == 1, (a // 10) % 10, jnp.where(k == 2, (a // 100) % 10,
                                        (a // 1000) % 10)))


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


# ------------------------------------------------------------- windows
# A window is built from pieces of at most 5 tokens packed in an int32 (a
# label `L d..`, the opcode and its registers, a literal, a register's
# value); slot j takes the last piece starting at or before it and shifts
# its token out.


def _pick(j: jax.Array, pieces) -> tuple[jax.Array, jax.Array]:
  """(packed, start) of the last piece starting at or before slot `j`.

  Args:
    j: [..., W] slots.
    pieces: (packed [..., 1], start [..., 1]) in order of their starts;
      the first starts at or before every slot.
  """
  packed, start = pieces[0]
  shape = jnp.broadcast_shapes(j.shape, jnp.shape(packed), jnp.shape(start))
  packed = jnp.broadcast_to(packed, shape)
  start = jnp.broadcast_to(start, shape)
  for p, s in pieces[1:]:
    m = j >= s
    packed = jnp.where(m, p, packed)
    start = jnp.where(m, s, start)
  return packed, start


def _token(packed: jax.Array, k: jax.Array, most: int) -> jax.Array:
  """Token `k` >= 0 of packed pieces (0 past their tokens), `k` at most
  `most` (static). Shifts stay below 32 bits: `k` is clamped to 5 when it
  can pass it (a clamp is cheaper than XLA's out-of-range shift, and is
  left out where it is not needed, the Tier 0/1 hot path)."""
  if most > 5:
    k = jnp.minimum(k, 5)
  return (packed >> (6 * k)) & 63


def _operands(program: Program, live: jax.Array, literal_digits: int):
  """Packed pieces of every instruction's `OP R..` and literal (0 on rows
  not `live` [P], and the literal's on instructions without one).

  Returns:
    p_op, n_op, p_lit, n_lit [P] int32 (pieces and their token counts), and
    bad [P] bool: a register operand outside R0..R7 or a literal of more
    than `literal_digits` digits.
  """
  hi = 10 ** literal_digits - 1
  op = jnp.clip(program.op, 0, isa.NUM_OPS - 1)                     # [P]
  nregs = jnp.asarray(isa.REG_ARGS)[op]
  r = (isa.TOK_R0 + program.regs) & 63                              # [P, 3]
  p_op = (jnp.asarray(isa.OP_TOKEN)[op] | (r[:, 0] << 6) | (r[:, 1] << 12)
          | (r[:, 2] << 18))
  has_lit = jnp.asarray(isa.LIT_ARGS)[op] > 0
  lit = program.lit
  n_lit = jnp.where(has_lit, (lit < 0).astype(jnp.int32)
                    + _num_digits(jnp.abs(lit)), 0)
  p_lit = jnp.asarray(_number_table(-hi, hi))[jnp.clip(lit, -hi, hi) + hi]
  used = jnp.arange(isa.MAX_REG_ARGS)[None, :] < nregs[:, None]
  # a register outside 0..7 has a bit above the lowest three
  bad = jnp.any(used & ((program.regs & -8) != 0), axis=-1)
  bad |= has_lit & (jnp.abs(lit) > hi)
  return (jnp.where(live, p_op, 0), 1 + nregs,
          jnp.where(live & has_lit, p_lit, 0), n_lit, bad)


def instruction_windows(program: Program, *, label_digits: int,
                        literal_digits: int
                        ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Every instruction's tokens, NEWLINE included, compacted (spec 6).

  Args:
    program: one `Program` ([P] arrays).
    label_digits: static, the most digits of a label number (0: the
      program defines and names no labels, and the windows have no label
      slots).
    literal_digits: static, the most digits of a LOAD literal (1..4).

  Returns:
    toks [P, W] int32 (`W = instruction_width(...)`, 0 after each
    instruction's tokens), count [P] int32 (0 at or after
    `program.length`), and ok [] bool: the program keeps the promise (labels
    and literals within their digits, register operands in R0..R7), so the
    windows hold its exact tokens.
  """
  p = program.op.shape[-1]
  w = instruction_width(label_digits, literal_digits)
  live = jnp.arange(p) < program.length
  p_op, n_op, p_lit, n_lit, bad = _operands(program, live, literal_digits)
  has_lab = program.label >= 0
  has_tgt = program.target_label >= 0
  col = lambda x: x[:, None]
  j = jnp.arange(w)[None, :]                                        # [1, W]
  # every piece is 0 past its tokens and on dead rows: no mask after
  if label_digits == 0:   # pieces OP R.., `MINUS? d..`; then NEWLINE
    s_nl = n_op + n_lit
    packed, start = _pick(j, [(col(p_op), 0), (col(p_lit), col(n_op))])
    toks = _token(packed, j - start, w - 2)   # the literal starts at 1 or more
    bad |= has_lab | has_tgt
  else:   # pieces `L d..` (+ COLON), OP R.., `MINUS? d..`, `L d..`; NEWLINE
    hi = 10 ** label_digits - 1
    digits = jnp.asarray(_number_table(0, hi))
    lab = jnp.clip(program.label, 0, hi)
    tgt = jnp.clip(program.target_label, 0, hi)
    n_lab = jnp.where(has_lab, 2 + _num_digits(lab), 0)
    s_lit = n_lab + n_op
    s_tgt = s_lit + n_lit
    s_nl = s_tgt + jnp.where(has_tgt, 1 + _num_digits(tgt), 0)
    p_lab = jnp.where(live & has_lab, isa.TOK_L | (digits[lab] << 6), 0)
    p_tgt = jnp.where(live & has_tgt, isa.TOK_L | (digits[tgt] << 6), 0)
    packed, start = _pick(j, [
        (col(p_lab), 0), (col(p_op), col(n_lab)), (col(p_lit), col(s_lit)),
        (col(p_tgt), col(s_tgt))])
    toks = jnp.where(col(live & has_lab) & (j == col(n_lab) - 1),
                     isa.TOK_COLON, _token(packed, j - start, w - 1))
    bad |= (program.label > hi) | (program.target_label > hi)
  toks = jnp.where(j == col(jnp.where(live, s_nl, -1)), isa.TOK_NEWLINE, toks)
  count = jnp.where(live, s_nl + 1, 0)
  return toks, count, ~jnp.any(live & bad)


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


def output_windows(trace: Trace, count: int
                   ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The first `count` (static) output values as windows `MINUS? digits
  NEWLINE`.

  Returns:
    windows [count, OUTPUT_WIDTH] int32 (0 after each value's tokens), their
    token counts [count] (0 past `num_output`), and the token count of the
    whole output stream [] (every value counted).
  """
  s = trace.output.shape[0]
  live = jnp.arange(s) < trace.num_output
  sizes = jnp.where(live, (trace.output < 0).astype(jnp.int32)
                    + _num_digits(jnp.abs(trace.output)) + 1, 0)     # [S]
  v = trace.output[:count, None]
  n = sizes[:count, None]
  j = np.arange(OUTPUT_WIDTH)[None, :]
  win = jnp.where(j == n - 1, isa.TOK_NEWLINE, _number_window(v, j, 0))
  win = jnp.where(j < n, win, 0)
  return win, sizes[:count], sizes.sum(dtype=jnp.int32)


# ------------------------------------------------------------- placing
def place_groups(groups, body: jax.Array, size: int, *, bos: bool,
                 eos: bool) -> Tokens:
  """`BOS? + body + EOS?` in a PAD-filled array of `size`, the body's
  tokens added in from windows.

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
  return place_groups([(windows, int(bos) + end - count)], total, size,
                      bos=bos, eos=eos)


def compact(tokens: jax.Array, mask: jax.Array, size: int) -> Tokens:
  """Moves the valid tokens to the front, in order, of a PAD-filled array.

  Args:
    tokens: [N] int32 token ids.
    mask: [N] bool, which of them are valid.
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


def _as_mask(windows: jax.Array, count: jax.Array
             ) -> tuple[jax.Array, jax.Array]:
  """(windows, mask): the windows' tokens as valid slots for `compact`."""
  return windows, jnp.arange(windows.shape[-1]) < count[..., None]


def instruction_slots(program: Program) -> tuple[jax.Array, jax.Array]:
  """Every instruction's tokens [P, W] and their mask [P, W], for `compact`.

  The widest instruction windows (no promise: exact for every program
  within the encoding's capacities), for callers that build their sequences
  with `compact` (userop); `instruction_windows` with `place_windows` is
  cheaper.
  """
  win, count, _ = instruction_windows(
      program, label_digits=isa.MAX_LABEL_DIGITS,
      literal_digits=isa.MAX_LITERAL_DIGITS)
  return _as_mask(win, count)


def output_slots(trace: Trace) -> tuple[jax.Array, jax.Array]:
  """Output values' tokens [S, OUTPUT_WIDTH] (`digits(v) NEWLINE` each)
  and their mask, for `compact`; `output_windows` with `place_windows` is
  cheaper."""
  win, count, _ = output_windows(trace, trace.output.shape[0])
  return _as_mask(win, count)
