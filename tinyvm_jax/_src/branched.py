"""Tier 2 program generator `gen_branched` (spec section 10, Tier 2).

The reference builds a program by appending regions of data-dependent length.
Here one example is laid out into fixed `[P]` arrays:

1. Draw the region parameters (templates, registers, loop counts). Each
   region is built at position 0 with labels from 0: a few *structural* rows
   (compare, JZ, JMP, NOP, counter updates, PUSH/POP) and its label
   definitions. Region offsets are an exclusive cumsum of the region lengths,
   label numbers one of the labels each region allocates (program order).
2. Every position `p < P` gets an independent random *fill* instruction; its
   destination is drawn from the exclusion set of the block covering `p`
   ({r_one, counters}, or also {r_k, r_diff} in a countup body).
3. The structural rows and labels are scattered over the pool at their
   offsets and jump targets resolved from the label positions; rows at
   `p >= length` become padding.

A fill block's instructions are i.i.d. in the reference too, so drawing every
free position independently gives the same distribution. All randomness comes
from two calls of counter-based threefry (`keys.random_words`): one for the
region parameters, one for the fill pool with counter = position, so a
program does not depend on `P` and XLA compiles two threefry kernels only.

Static sizes. With `f = max(1, n // (b + m + 1))` and `g = max(2, f // 2)`,
a program has `4 + max(k, 4)` fixed rows, `f + 3` (arith-zero, if) or
`2f + 4` (if-else) rows a branch region, `f + 5` (countdown, test-at-top) or
`f + 7` (countup) rows a loop region and `g + 2` rows a stack frame.
`max_program_len` maximises this over the axes: for the Tier 2 axes
(n <= 256, k <= 8, b <= 8, l <= 16, stack_frames <= 2) it is 524 (b = 7 or
8, l = 0, every branch an if-else, two frames; the reference's first 1,000
train rows reach 463). A loop with count K runs `K(f + 3) + 1` (countdown),
`K(f + 3) + 3` (test-at-top) or `K(f + 4) + 2` (countup) steps (no body writes
r_one or a counter), the counts sum to l, and a branch runs at most `f + 4`;
`max_trace_steps` maximises the sum: 1,615 for the Tier 2 axes with b >= 1
(b = 1, l = 16, one countup loop, two frames; 2,258 if b = 0 were allowed;
the reference's rows reach 1,257). Per eval bucket (length, steps): easy
(44, 28), medium (101, 127), hard (240, 324), ood_len_256 (356, 415).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tinyvm_jax._src import checks
from tinyvm_jax._src import isa
from tinyvm_jax._src import keys as keys_lib
from tinyvm_jax._src.types import Program

MAX_BRANCHES = 8   # static slots for branch regions (Tier 2: b <= 8)
MAX_LOOPS = 4      # the generator never makes more than 4 loops
MAX_FRAMES = 2     # static slots for stack frames (Tier 2: stack_frames <= 2)
_MAX_LABELS = 2 * (MAX_BRANCHES + MAX_LOOPS)

# branch templates: arith-zero 0.2, if 0.4, if-else 0.4 (one of 5 outcomes)
ARITH_ZERO, IF, IF_ELSE = 0, 1, 2
_BRANCH_OF_5 = (ARITH_ZERO, IF, IF, IF_ELSE, IF_ELSE)
# loop templates (countup only where a register is left for its body)
COUNTDOWN, TEST_AT_TOP, COUNTUP = 0, 1, 2

_FILL_OPS = np.asarray(isa.FILL_OPS, np.int32)                        # [9]
_ARITH_OPS = np.asarray([isa.ADD, isa.SUB, isa.MUL, isa.MOV], np.int32)
_CMP_OPS = np.asarray([isa.LT, isa.EQ], np.int32)
_NONE = -1
_AXIS_NAMES = ("n", "k", "b", "l", "use_stack", "stack_frames")

# Random words: the stream of the region parameters (one word per draw, at
# the indices below) and the stream of the fill pool (counter = 2 * position
# and 2 * position + 1).
_STREAM_PARAMS = 0
_STREAM_FILL = 1
_W_PERM = 0                               # 7 words: Fisher-Yates over R0..R7
_W_LOOPS = _W_PERM + isa.NUM_REGS - 1     # m, then 3 cut points
_W_P = _W_LOOPS + MAX_LOOPS               # print target, its literal
_W_BRANCH = _W_P + 2                      # 5 words a branch
_BRANCH_WORDS = 5
_W_LOOP = _W_BRANCH + _BRANCH_WORDS * MAX_BRANCHES   # 1 word a loop
_W_FRAME = _W_LOOP + MAX_LOOPS                       # 2 words a frame
_N_WORDS = _W_FRAME + 2 * MAX_FRAMES


class _Rows(NamedTuple):
  """Structural rows of one region, positions relative to its start."""
  pos: jax.Array     # [R] int32
  on: jax.Array      # [R] bool, whether the row exists
  op: jax.Array      # [R] int32
  regs: jax.Array    # [R, 3] int32
  lit: jax.Array     # [R] int32
  tlabel: jax.Array  # [R] int32, label jumped to (relative number); -1 none


class _Labels(NamedTuple):
  """Label definitions of one region, relative to its start and first label."""
  pos: jax.Array  # [L] int32
  on: jax.Array   # [L] bool
  num: jax.Array  # [L] int32


class _Regs(NamedTuple):
  """The example's registers: active set and reserved roles."""
  perm: jax.Array       # [8] int32, active[i] = perm[i] for i < k
  k: jax.Array          # [] int32
  in_active: jax.Array  # [8] bool
  r_one: jax.Array      # [] int32
  r_k: jax.Array        # [] int32
  r_diff: jax.Array     # [] int32
  excl_std: jax.Array   # [8] bool, {r_one, counters}
  excl_cup: jax.Array   # [8] bool, {r_one, counters, r_k, r_diff}


def _uniform(word: jax.Array, n) -> jax.Array:
  """An int uniform in [0, n) from one uint32 word (n >= 1 enforced)."""
  return keys_lib.uniform_int(word, jnp.maximum(n, 1))


def _choose(word: jax.Array, mask: jax.Array) -> jax.Array:
  """A register uniform over the True entries of `mask` ([8] bool)."""
  order = jnp.argsort(~mask, stable=True)   # the allowed registers first
  return order[_uniform(word, mask.sum())].astype(jnp.int32)


def _onehot(r: jax.Array) -> jax.Array:
  return jnp.arange(isa.NUM_REGS) == r


def _rows(table, on) -> _Rows:
  """`_Rows` from (pos, op, regs, lit, tlabel) tuples, one per row."""
  pos, op, regs, lit, tlabel = zip(*table)
  arr = lambda xs: jnp.stack([jnp.asarray(x, jnp.int32) for x in xs])
  regs = jnp.stack([arr(tuple(r) + (0,) * (3 - len(r))) for r in regs])
  return _Rows(pos=arr(pos), on=jnp.stack([jnp.asarray(o, bool) for o in on]),
               op=arr(op), regs=regs, lit=arr(lit), tlabel=arr(tlabel))


def _shift(rows: _Rows, labels: _Labels, start, lab, on):
  """Moves a region to `start` and its labels to `lab`; `on` gates it."""
  rows = rows._replace(
      pos=rows.pos + start, on=rows.on & on,
      tlabel=jnp.where(rows.tlabel >= 0, rows.tlabel + lab, _NONE))
  labels = labels._replace(pos=labels.pos + start, num=labels.num + lab,
                           on=labels.on & on)
  return rows, labels


def _permutation(words: jax.Array) -> jax.Array:
  """[8] int32 uniform permutation of 0..7 (Fisher-Yates, 7 words)."""
  perm = jnp.arange(isa.NUM_REGS, dtype=jnp.int32)
  for i in range(isa.NUM_REGS - 1, 0, -1):
    j = _uniform(words[isa.NUM_REGS - 1 - i], i + 1)
    pi, pj = perm[i], perm[j]
    perm = perm.at[i].set(pj).at[j].set(pi)
  return perm


def _loop_counts(words: jax.Array, k: jax.Array, l: jax.Array):
  """Step 2: the number of loops m and their counts ([4], 0 past m)."""
  m = jnp.where(l > 0, 1 + _uniform(words[0], jnp.clip(l, 1, MAX_LOOPS)), 0)
  # the cut; the split below is drawn for the final m
  m = jnp.where(1 + m + 2 > k, jnp.maximum(0, k - 3), m)
  # m - 1 distinct cut points from 1..l-1, drawn one by one without
  # replacement (the t-th uniform over the l - 1 - t values left), sorted;
  # the counts are the gaps between 0, the cut points and l
  cuts = jnp.full(MAX_LOOPS - 1, l)                           # [3]
  for t in range(MAX_LOOPS - 1):
    v = 1 + _uniform(words[1 + t], l - 1 - t)
    for taken in cuts:                # ascending: skip the values taken
      v = v + (v >= taken).astype(jnp.int32)
    cuts = jnp.sort(cuts.at[t].set(jnp.where(t < m - 1, v, l)))
  bounds = jnp.concatenate([jnp.zeros(1, jnp.int32), cuts, l[None]])
  parts = jnp.diff(bounds)
  parts = jnp.where(l < m, 1, parts)  # l < m: all ones (unreachable: m <= l)
  return m, jnp.where(jnp.arange(MAX_LOOPS) < m, parts, 0)


def _branch(words: jax.Array, f: jax.Array, r: _Regs):
  """Step 6, one branch region at 0 with labels from 0.

  Returns its rows, labels, length and number of labels.
  """
  tpl = jnp.asarray(_BRANCH_OF_5)[_uniform(words[0], 5)]
  u_op = _uniform(words[1], 4)
  head = jnp.where(tpl == ARITH_ZERO, jnp.asarray(_ARITH_OPS)[u_op],
                   jnp.asarray(_CMP_OPS)[u_op % 2])
  i1 = _uniform(words[2], r.k)
  i2 = _uniform(words[3], r.k - 1)
  ri, rj = r.perm[i1], r.perm[i2 + (i2 >= i1)]     # two distinct registers
  rc_mask = r.in_active & ~_onehot(ri) & ~_onehot(rj) & ~_onehot(r.r_one)
  rc = _choose(words[4], jnp.where(rc_mask.any(), rc_mask, r.in_active))
  mov = head == isa.MOV
  srcs = (jnp.where(mov, rj, ri), jnp.where(mov, 0, rj))   # MOV rc rj
  ie = tpl == IF_ELSE
  nop = jnp.where(ie, 2 * f + 3, f + 2)
  rows = _rows((
      (0, head, (rc,) + srcs, 0, _NONE),         # OP/CMP rc ri rj
      (1, isa.JZ, (rc,), 0, 0),                  # JZ rc L_else / L_after
      (2 + f, isa.JMP, (), 0, 1),                # if-else: JMP L_after
      (nop, isa.NOP, (), 0, _NONE),              # L_after: NOP
  ), on=(True, True, ie, True))
  labels = _Labels(pos=jnp.stack([3 + f, nop]),  # L_else (else block), L_after
                   on=jnp.stack([ie, jnp.asarray(True)]),
                   num=jnp.stack([0, ie.astype(jnp.int32)]))
  return rows, labels, nop + 1, 1 + ie.astype(jnp.int32)


def _loop(word: jax.Array, f: jax.Array, c: jax.Array, count: jax.Array,
          r: _Regs):
  """Step 7, one loop region at 0 with L_top = 0 and L_done = 1.

  Returns its rows, labels, length, body offset and whether it counts up.
  """
  can_count_up = (r.in_active & ~r.excl_cup).any()
  tpl = _uniform(word, 2 + can_count_up.astype(jnp.int32))
  lt, ld = 0, 1
  tables = (
      ((0, isa.LOAD, (c,), count, _NONE),              # countdown
       (1 + f, isa.SUB, (c, c, r.r_one), 0, _NONE),
       (2 + f, isa.JZ, (c,), 0, ld),
       (3 + f, isa.JMP, (), 0, lt),
       (4 + f, isa.NOP, (), 0, _NONE)),
      ((0, isa.LOAD, (c,), count, _NONE),              # test-at-top
       (1, isa.JZ, (c,), 0, ld),
       (2 + f, isa.SUB, (c, c, r.r_one), 0, _NONE),
       (3 + f, isa.JMP, (), 0, lt),
       (4 + f, isa.NOP, (), 0, _NONE)),
      ((0, isa.LOAD, (c,), 0, _NONE),                  # countup
       (1, isa.LOAD, (r.r_k,), count, _NONE),
       (2 + f, isa.ADD, (c, c, r.r_one), 0, _NONE),
       (3 + f, isa.SUB, (r.r_diff, r.r_k, c), 0, _NONE),
       (4 + f, isa.JZ, (r.r_diff,), 0, ld),
       (5 + f, isa.JMP, (), 0, lt),
       (6 + f, isa.NOP, (), 0, _NONE)))
  blank = (0, isa.NOP, (), 0, _NONE)
  rows = [_rows(t + (blank,) * (7 - len(t)),
                on=(True,) * len(t) + (False,) * (7 - len(t)))
          for t in tables]
  rows = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs)[tpl], *rows)
  body = jnp.asarray([1, 2, 2])[tpl]
  length = jnp.where(tpl == COUNTUP, f + 7, f + 5)
  top = jnp.where(tpl == TEST_AT_TOP, 1, body)   # L_top: JZ or first body row
  labels = _Labels(pos=jnp.stack([top, length - 1]), on=jnp.ones(2, bool),
                   num=jnp.asarray([lt, ld], jnp.int32))
  return rows, labels, length, body, tpl == COUNTUP


def _frame(words: jax.Array, g: jax.Array, r: _Regs):
  """Step 8, one stack frame at 0: `PUSH save`, g fill rows, `POP back`."""
  save = r.perm[_uniform(words[0], r.k)]
  back = r.perm[_uniform(words[1], r.k)]
  rows = _rows(((0, isa.PUSH, (save,), 0, _NONE),
                (1 + g, isa.POP, (back,), 0, _NONE)), on=(True, True))
  labels = _Labels(pos=jnp.zeros(0, jnp.int32), on=jnp.zeros(0, bool),
                   num=jnp.zeros(0, jnp.int32))
  return rows, labels


def _fill_pool(key: jax.Array, p_max: int, r: _Regs):
  """A fill instruction for every position (section 10, fill block).

  Returns op [P], regs [P, 3] (destination under the {r_one, counters}
  exclusion), lit [P] and the destination under the countup exclusion [P].
  """
  pos = jnp.arange(p_max)
  w = keys_lib.random_words(
      key, jnp.stack([2 * pos, 2 * pos + 1], -1).reshape(-1), _STREAM_FILL)
  w = w.reshape(p_max, 4)                                    # [P, 4] uint32
  nxt = keys_lib.next_fraction
  op = jnp.asarray(_FILL_OPS)[_uniform(w[:, 0], 9)]
  allowed_std = r.in_active & ~r.excl_std
  allowed_cup = r.in_active & ~r.excl_cup
  n_std = jnp.maximum(allowed_std.sum(), 1)
  w_d = nxt(w[:, 0], 9)
  dest = jnp.argsort(~allowed_std, stable=True)[_uniform(w_d, n_std)]
  dest_cup = jnp.argsort(~allowed_cup, stable=True)[
      _uniform(nxt(w_d, n_std), allowed_cup.sum())]
  src1 = r.perm[_uniform(w[:, 1], r.k)]
  src2 = r.perm[_uniform(w[:, 2], r.k)]
  lit = _uniform(w[:, 3], isa.LITERAL_MAX - isa.LITERAL_MIN + 1)
  n_regs = jnp.asarray(isa.REG_ARGS)[op]
  regs = jnp.stack([dest, jnp.where(n_regs >= 2, src1, 0),
                    jnp.where(n_regs >= 3, src2, 0)], axis=-1)
  lit = jnp.where(op == isa.LOAD, lit + isa.LITERAL_MIN, 0)
  return op, regs.astype(jnp.int32), lit, dest_cup.astype(jnp.int32)


# ------------------------------------------------------------ static sizes
def _reachable_loops(k: int, l: int) -> set[int]:
  """The loop numbers m that axes (k, l) can produce (step 2)."""
  if l <= 0:
    return {0}
  return {m if 1 + m + 2 <= k else max(0, k - 3)
          for m in range(1, min(MAX_LOOPS, l) + 1)}


def _axis_grid(n_max, k_max, b_max, l_max, frames_max, b_min):
  """(f, g, k, b, l, m, frames, countup possible) over the axes; length and
  steps grow with n, so n = n_max."""
  for what, v, lo in (("n_max", n_max, 0), ("k_max", k_max, 2),
                      ("b_max", b_max, 0), ("l_max", l_max, 0),
                      ("frames_max", frames_max, 0), ("b_min", b_min, 0)):
    if not checks.is_int(v) or v < lo:
      raise ValueError(f"{what} must be an integer >= {lo}, got {v!r}")
  if b_min > b_max:
    raise ValueError(f"b_min={b_min} is above b_max={b_max}")
  for k in range(2, k_max + 1):
    for l in range(0, l_max + 1):
      for m in _reachable_loops(k, l):
        for b in range(b_min, b_max + 1):
          f = max(1, n_max // (b + m + 1))
          for frames in range(frames_max + 1):
            yield f, max(2, f // 2), k, b, l, m, frames, k - (m + 3) >= 1


def max_program_len(n_max: int, k_max: int, b_max: int, l_max: int,
                    frames_max: int, *, b_min: int = 0) -> int:
  """The longest program `gen_branched` can make with axes up to these
  (n <= n_max, 2 <= k <= k_max, b_min <= b <= b_max, 0 <= l <= l_max,
  stack frames <= frames_max): every branch an if-else, every loop a countup
  where one is possible. Tier 2 (256, 8, 8, 16, 2) gives 524."""
  return max(4 + max(k, 4) + b * (2 * f + 4) + m * (f + (7 if cup else 5))
             + frames * (g + 2)
             for f, g, k, b, l, m, frames, cup in _axis_grid(
                 n_max, k_max, b_max, l_max, frames_max, b_min))


def max_trace_steps(n_max: int, k_max: int, b_max: int, l_max: int,
                    frames_max: int, *, b_min: int = 0) -> int:
  """A step budget no `gen_branched` program with these axes exceeds.

  Straight-line rows run once; a branch runs at most f + 4 steps (if-else,
  then-path); loops with counts K_i (sum l) run K(f+3)+1 (countdown),
  K(f+3)+3 (test-at-top) or K(f+4)+2 (countup) steps, as no body writes
  r_one or a counter. Tier 2 (256, 8, 8, 16, 2, b_min=1) gives 1,615.
  """
  return max(4 + max(k, 4) + b * (f + 4)
             + (0 if m == 0 else
                l * (f + 4) + 2 * m if cup else l * (f + 3) + 3 * m)
             + frames * (g + 2)
             for f, g, k, b, l, m, frames, cup in _axis_grid(
                 n_max, k_max, b_max, l_max, frames_max, b_min))


def row_bounds(axes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-row (program length, step budget) bounds for concrete axes (host,
  vectorised numpy): for each row the `max_program_len` and
  `max_trace_steps` formulas at its own axes (n, k, b, l, use_stack,
  stack_frames), maximised over the loop numbers m its (k, l) can produce.

  Args:
    axes: [N, 6] integers in the Tier 2 axis order.

  Returns:
    (P, S): [N] int64 each; every program `gen_branched` makes from a row's
    axes has at most P rows and halts within S steps.
  """
  a = np.asarray(axes, np.int64)
  if a.ndim != 2 or a.shape[1] != 6:
    raise ValueError(f"row_bounds: axes must be [N, 6], got {a.shape}")
  n, k, b, l, use_stack, frames = a.T
  frames = np.where(use_stack > 0, frames, 0)
  best_p = np.zeros(len(a), np.int64)
  best_s = np.zeros(len(a), np.int64)
  for drawn in range(0, MAX_LOOPS + 1):
    if drawn == 0:
      ok, m = l <= 0, np.zeros_like(l)
    else:
      ok = drawn <= l
      m = np.where(1 + drawn + 2 <= k, drawn, np.maximum(0, k - 3))
    f = np.maximum(1, n // (b + m + 1))
    g = np.maximum(2, f // 2)
    cup = k - (m + 3) >= 1
    base = 4 + np.maximum(k, 4) + frames * (g + 2)
    p = base + b * (2 * f + 4) + m * (f + np.where(cup, 7, 5))
    loops = np.where(cup, l * (f + 4) + 2 * m, l * (f + 3) + 3 * m)
    s = base + b * (f + 4) + np.where(m == 0, 0, loops)
    best_p = np.where(ok, np.maximum(best_p, p), best_p)
    best_s = np.where(ok, np.maximum(best_s, s), best_s)
  return best_p, best_s


def _scalar(x, what: str):
  """x as a Python int, or None when it is traced; ValueError unless an
  integer (or bool) scalar."""
  dtype = jnp.result_type(x)
  if jnp.shape(x) != () or not (jnp.issubdtype(dtype, jnp.integer)
                                or dtype == jnp.bool_):
    raise ValueError(f"gen_branched: {what} must be an integer scalar, got "
                     f"{x!r}")
  return None if isinstance(x, jax.core.Tracer) else int(x)


def _check_args(key, max_len, n, k, b, l, use_stack, stack_frames) -> None:
  """Raises ValueError on a bad static size or out-of-range concrete axes."""
  if not checks.is_int(max_len) \
      or max_len < 1:
    raise ValueError(f"gen_branched: max_len must be a positive int, got "
                     f"{max_len!r}")
  if jnp.shape(jax.random.key_data(key)) != (2,):
    raise ValueError("gen_branched: key must be one PRNG key (vmap for "
                     f"batches), got key data of shape "
                     f"{jnp.shape(jax.random.key_data(key))}")
  n, k, b, l, use_stack, frames = (
      _scalar(v, what) for v, what in zip((n, k, b, l, use_stack,
                                           stack_frames), _AXIS_NAMES))
  for what, v, lo, hi in (("n", n, 0, None), ("k", k, 2, isa.NUM_REGS),
                          ("b", b, 0, MAX_BRANCHES),
                          ("stack_frames", frames, 0, MAX_FRAMES)):
    if v is not None and (v < lo or (hi is not None and v > hi)):
      raise ValueError(f"gen_branched: {what} must be in [{lo}, "
                       f"{hi if hi is not None else 'inf'}], got {v}")
  if None in (n, k, b, l, use_stack, frames):
    return
  need = max_program_len(n, k, b, max(l, 0), frames if use_stack else 0,
                         b_min=b)
  if max_len < need:
    raise ValueError(f"gen_branched: max_len={max_len} is too short for "
                     f"n={n} k={k} b={b} l={l} (up to {need} rows)")


def gen_branched(key: jax.Array, n, k, b, l, use_stack, stack_frames, *,
                 max_len: int) -> Program:
  """One Tier 2 program: branches, loops and stack frames (spec section 10).

  Args:
    key: a PRNG key (consumed).
    n, k, b, l, use_stack, stack_frames: the axes, [] integer (use_stack may
      be bool), traced or concrete. Requires 2 <= k <= 8, 0 <= b <= 8,
      0 <= stack_frames <= 2, n >= 0; l <= 0 means no loops. Concrete values
      outside raise ValueError; traced ones are clipped into these ranges.
    max_len: static program length `P`, at least `max_program_len` of the
      axes (checked for concrete axes). Should a program not fit, `length`
      keeps its true value (> P) to flag it, like an overflowing `Tokens`.

  Returns:
    A `Program` with [P] arrays; vmap over keys and axes for batches.

  Raises:
    ValueError: bad `max_len`, or concrete axes out of range or too long
      for `max_len`.
  """
  _check_args(key, max_len, n, k, b, l, use_stack, stack_frames)
  i32 = lambda x: jnp.asarray(x).astype(jnp.int32)
  n, l = i32(n), i32(l)
  k = jnp.clip(i32(k), 2, isa.NUM_REGS)
  b = jnp.clip(i32(b), 0, MAX_BRANCHES)
  frames = jnp.where(i32(use_stack) != 0,
                     jnp.clip(i32(stack_frames), 0, MAX_FRAMES), 0)
  words = keys_lib.random_words(key, jnp.arange((_N_WORDS + 1) // 2),
                                _STREAM_PARAMS).reshape(-1)   # [>= _N_WORDS]
  # 1-3. active registers, loops, reserved registers
  regs, m, counters, counts = _registers(words, k, l)
  # 4-5. print target p (not r_one) and its literal; rows per region
  p = regs.perm[_uniform(words[_W_P], k - 1)]
  lit_p = _uniform(words[_W_P + 1], isa.LITERAL_MAX - isa.LITERAL_MIN + 1
                   ) + isa.LITERAL_MIN
  f = jnp.maximum(1, n // (b + m + 1))
  g = jnp.maximum(2, f // 2)
  # 6-8. the regions after the warm-up block
  on = jnp.concatenate([jnp.arange(MAX_BRANCHES) < b,
                        jnp.arange(MAX_LOOPS) < m,
                        jnp.arange(MAX_FRAMES) < frames])      # [14]
  rows, labels, end, countup = _regions(
      words, 2 + jnp.maximum(k, 4), on, f, g, regs, counters, counts)
  # 4, 9. LOAD r_one 1; LOAD p K; (warm-up: fill) ... PRINT p; HALT
  edge = _rows(((0, isa.LOAD, (regs.r_one,), 1, _NONE),
                (1, isa.LOAD, (p,), lit_p, _NONE),
                (end, isa.PRINT, (p,), 0, _NONE),
                (end + 1, isa.HALT, (), 0, _NONE)), on=(True,) * 4)
  return _assemble(key, max_len, regs, _concat(edge, rows), labels,
                   countup + (f,), end + 2)


def _registers(words: jax.Array, k: jax.Array, l: jax.Array):
  """Steps 1-3: active registers, loops, and the reserved registers taken
  from the end of active (r_one, one counter a loop, r_k, r_diff; each
  falls back to active[0] when none is left).

  Returns `_Regs`, m, the counters [4] (valid below m) and loop counts [4].
  """
  perm = _permutation(words[_W_PERM:])
  at = lambda i: perm[jnp.clip(i, 0, isa.NUM_REGS - 1)]
  m, counts = _loop_counts(words[_W_LOOPS:], k, l)
  slot = jnp.arange(MAX_LOOPS)
  r_one = at(k - 1)
  counters = at(k - 2 - slot)
  is_counter = ((jnp.arange(isa.NUM_REGS)[:, None] == counters)
                & (slot < m)).any(-1)
  r_k = jnp.where(k - 2 - m >= 0, at(k - 2 - m), perm[0])
  r_diff = jnp.where(k - 3 - m >= 0, at(k - 3 - m), perm[0])
  excl_std = _onehot(r_one) | is_counter
  regs = _Regs(perm=perm, k=k, in_active=jnp.argsort(perm) < k, r_one=r_one,
               r_k=r_k, r_diff=r_diff, excl_std=excl_std,
               excl_cup=excl_std | _onehot(r_k) | _onehot(r_diff))
  return regs, m, counters, counts


def _regions(words, first, on, f, g, regs: _Regs, counters, counts):
  """Steps 6-8: branch, loop and frame regions laid out from row `first`.

  `on` [14] says which of the 8 branch, 4 loop and 2 frame slots exist.
  Returns their rows and labels (flat), the row after them, and the
  countup bodies (start [4], whether a countup [4]).
  """
  bw = words[_W_BRANCH:_W_LOOP].reshape(MAX_BRANCHES, _BRANCH_WORDS)
  br_rows, br_labels, br_len, br_nlab = jax.vmap(
      lambda w: _branch(w, f, regs))(bw)
  lp_rows, lp_labels, lp_len, lp_body, lp_up = jax.vmap(
      lambda w, c, cnt: _loop(w, f, c, cnt, regs))(
          words[_W_LOOP:_W_FRAME], counters, counts)
  fr_rows, fr_labels = jax.vmap(lambda w: _frame(w, g, regs))(
      words[_W_FRAME:_N_WORDS].reshape(MAX_FRAMES, 2))
  size = jnp.where(on, jnp.concatenate(
      [br_len, lp_len, jnp.full(MAX_FRAMES, g + 2)]), 0)
  start = first + jnp.cumsum(size) - size
  nlab = jnp.where(on, jnp.concatenate(
      [br_nlab, jnp.full(MAX_LOOPS, 2), jnp.zeros(MAX_FRAMES, jnp.int32)]), 0)
  lab = jnp.cumsum(nlab) - nlab
  moved, lo = [], 0
  for g_rows, g_labels in ((br_rows, br_labels), (lp_rows, lp_labels),
                           (fr_rows, fr_labels)):
    hi = lo + g_rows.pos.shape[0]          # row counts differ by kind
    moved.append(jax.vmap(_shift)(g_rows, g_labels, start[lo:hi],
                                  lab[lo:hi], on[lo:hi]))
    lo = hi
  loops = slice(MAX_BRANCHES, MAX_BRANCHES + MAX_LOOPS)
  countup = (start[loops] + lp_body, lp_up & on[loops])
  return (_concat(*[_flat(r) for r, _ in moved]),
          _concat(*[_flat(x) for _, x in moved]),
          start[-1] + size[-1], countup)


def _flat(tree):
  """Merges the two leading dimensions of every leaf."""
  return jax.tree_util.tree_map(
      lambda x: x.reshape((-1,) + x.shape[2:]), tree)


def _concat(*trees):
  return jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs), *trees)


def _assemble(key, p_max: int, r: _Regs, rows: _Rows,
              labels: _Labels, countup, length) -> Program:
  """The fill pool overwritten by structural rows and labels; targets."""
  up_start, up_on, f = countup                     # countup bodies [4]
  op, regs, lit, dest_up = _fill_pool(key, p_max, r)
  pos = jnp.arange(p_max)
  in_up = (up_on[:, None] & (pos >= up_start[:, None])
           & (pos < up_start[:, None] + f)).any(0)              # [P]
  regs = regs.at[:, 0].set(jnp.where(in_up, dest_up, regs[:, 0]))
  at = jnp.where(rows.on, rows.pos, p_max)          # p_max: dropped
  op = op.at[at].set(rows.op, mode="drop")
  regs = regs.at[at].set(rows.regs, mode="drop")
  lit = lit.at[at].set(rows.lit, mode="drop")
  target_label = jnp.full(p_max, _NONE, jnp.int32).at[at].set(
      rows.tlabel, mode="drop")
  label = jnp.full(p_max, _NONE, jnp.int32).at[
      jnp.where(labels.on, labels.pos, p_max)].set(labels.num, mode="drop")
  label_pos = jnp.full(_MAX_LABELS, _NONE, jnp.int32).at[
      jnp.where(labels.on, labels.num, _MAX_LABELS)].set(labels.pos,
                                                          mode="drop")
  target = jnp.where(target_label >= 0,
                     label_pos[jnp.clip(target_label, 0, _MAX_LABELS - 1)],
                     _NONE)
  pad = pos >= length
  return Program(
      op=jnp.where(pad, isa.NOP, op),
      regs=jnp.where(pad[:, None], 0, regs),
      lit=jnp.where(pad, 0, lit),
      target=jnp.where(pad, _NONE, target),
      target_label=jnp.where(pad, _NONE, target_label),
      label=jnp.where(pad, _NONE, label),
      length=length.astype(jnp.int32))
