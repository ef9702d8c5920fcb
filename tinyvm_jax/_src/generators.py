"""Tier 0 and Tier 1 program generators (spec section 10), as pure JAX
functions of a key and the axes.

Each generator builds one program padded to a static `max_len` (`P`); `n` and
`k` may be traced, so one compiled function serves every row of a tier; vmap
for batches. All of a program's random draws come from `keys.random_words`
counters that depend only on the instruction slot, so a row's program does not
depend on `max_len` (as long as it fits), the batch size or the device.

Draws per instruction slot `i` (one threefry block, two words `w0`, `w1`):
`w0` gives, in mixed radix, the fill op (9), the destination (over the
destination pool) and two source registers (over `active`); `w1` gives the
LOAD literal (255 values). Fields an op does not use (the sources of LOAD,
the literal of ADD) are drawn and ignored, so every field is independent of
the others. Each outcome's probability is exact within a relative
9 * 8**3 / 2**32 ~ 1e-6 (`keys.uniform_int`).

`flat_output_histogram` (Tier 1) is sampling-importance-resampling: R
candidate programs are generated and run, and one is kept with probability
proportional to 1 / p(bucket of its printed value). Measured with
benchmarks/flat_histogram.py (Tier 1 train axes, 20,000 rows; total
variation distance from the uniform histogram over the 22 buckets, share of
[0, 100), zero fraction): plain 0.84, 0.81, 0.55; R=4 0.72, 0.52, 0.36; R=16
(default) 0.62, 0.25, 0.18; R=64 0.45, 0.14, 0.10. A bucket's share cannot
exceed the chance that one of the R candidates lands in it, and the rarest
buckets have p ~ 1e-4, so an exactly flat histogram would need R ~ 10**4.
It costs R generations and runs a row (R=16: about 12x the plain row).
"""

import jax
import jax.numpy as jnp
import numpy as np

from tinyvm_jax._src import interpreter
from tinyvm_jax._src import checks
from tinyvm_jax._src import isa
from tinyvm_jax._src import keys as keys_lib
from tinyvm_jax._src.types import Program

# counter streams of a program key
_STREAM_SLOT = 0    # counter i: instruction slot i
_STREAM_MISC = 1    # counters below: row-level draws
_MISC_ACTIVE = 0    # counters 0..3: eight words ranking the registers
_MISC_PRINT = 4     # counter 4: print-target choice and fallback
_NUM_MISC = 5
_STREAM_FLAT = 2    # counter 0: the flat-histogram pick

_NUM_FILL_OPS = len(isa.FILL_OPS)
assert isa.FILL_OPS == tuple(range(_NUM_FILL_OPS))  # op id == fill index
_COUNTER_OPS = np.array([isa.ADD, isa.SUB, isa.NEG, isa.MOV], np.int32)
_N_LITERALS = isa.LITERAL_MAX - isa.LITERAL_MIN + 1
_N_REGS_TABLE = np.asarray(isa.REG_ARGS, np.int32)

# Printed-value buckets (value // 100, -11..10) and the Tier 1 train
# frequency of each, measured on the reference's 200,000 rows (stats.json);
# the flat-histogram knob weights candidates by the inverse.
NUM_BUCKETS = 22
BUCKET_MIN = isa.VALUE_MIN // 100   # -11
_TIER1_BUCKET_FREQ = np.array([
    0.00537, 0.00041, 0.00011, 0.00012, 0.00011, 0.00007, 0.00019, 0.0003,
    0.00167, 0.0239, 0.11756, 0.80702, 0.02543, 0.002, 0.0005, 0.00052,
    0.00025, 0.00025, 0.0003, 0.00022, 0.0007, 0.01299])
# integer weights ~ 64 / p(bucket): at most 914,286, so the sum over up to
# MAX_FLAT_CANDIDATES candidates fits int32.
FLAT_WEIGHTS = np.round(64.0 / _TIER1_BUCKET_FREQ).astype(np.int32)
MAX_FLAT_CANDIDATES = 2048
assert int(FLAT_WEIGHTS.max()) * MAX_FLAT_CANDIDATES < 2 ** 31


def value_bucket(value: jax.Array) -> jax.Array:
  """Index 0..21 of the 100-wide bucket of a value (value // 100 + 11)."""
  return jnp.floor_divide(value, 100) - BUCKET_MIN


def _nibble(packed: jax.Array, i: jax.Array) -> jax.Array:
  """Entry `i` of eight 4-bit entries packed in a uint32."""
  return ((packed >> (4 * i).astype(jnp.uint32)) & 0xF).astype(jnp.int32)


def _slot_words(key: jax.Array, max_len: int) -> jax.Array:
  return keys_lib.random_words(key, jnp.arange(max_len), _STREAM_SLOT)


def _misc_words(key: jax.Array) -> jax.Array:
  """[2 * _NUM_MISC] uint32 row-level words."""
  return keys_lib.random_words(key, jnp.arange(_NUM_MISC), _STREAM_MISC
                               ).reshape(-1)


def sample_active(words: jax.Array) -> jax.Array:
  """A uniformly random ordering of R0..R7 packed as nibbles (uint32).

  `active` (k registers without replacement, ordered) is its first k
  entries. Each register's position is its rank among eight random words
  (ties broken by index), which is a uniform permutation.

  Args:
    words: [8] uint32.
  """
  i = jnp.arange(isa.NUM_REGS)
  lower = (words[None, :] < words[:, None]) | (
      (words[None, :] == words[:, None]) & (i[None, :] < i[:, None]))
  rank = lower.sum(axis=1, dtype=jnp.uint32)            # [8]: entry p = rank[p]
  return jnp.sum(rank << (4 * i).astype(jnp.uint32), dtype=jnp.uint32)


def _program(op, regs, lit, length) -> Program:
  p = op.shape[0]
  nr = jnp.asarray(_N_REGS_TABLE)[op]                               # [P]
  regs = jnp.where(jnp.arange(isa.MAX_REG_ARGS)[None, :] < nr[:, None],
                   regs, 0)
  return Program(
      op=op, regs=regs, lit=jnp.where(op == isa.LOAD, lit, 0),
      target=jnp.full(p, -1, jnp.int32),
      target_label=jnp.full(p, -1, jnp.int32),
      label=jnp.full(p, -1, jnp.int32), length=length.astype(jnp.int32))


def _tail(op, regs, n, print_reg):
  """Puts `PRINT print_reg` at slot n, `HALT` at n + 1, NOP after."""
  i = jnp.arange(op.shape[0])
  op = jnp.where(i < n, op, jnp.where(i == n, isa.PRINT,
                                      jnp.where(i == n + 1, isa.HALT, isa.NOP)))
  regs = jnp.where((i < n)[:, None], regs,
                   jnp.where((i == n)[:, None],
                             jnp.stack([print_reg, 0, 0]).astype(jnp.int32), 0))
  return op, regs


def fill_block(slot_words: jax.Array, active: jax.Array, k: jax.Array,
               pool: jax.Array, pool_size: jax.Array):
  """The fill instructions of every slot (spec section 10, fill block).

  Args:
    slot_words: [P, 2] uint32, one row per slot.
    active: packed `active` ordering (uint32); sources are uniform over its
      first `k` entries.
    k: [] int32 number of active registers.
    pool: packed destination pool (`active - exclude`, in order).
    pool_size: [] int32 size of the pool (>= 1).

  Returns:
    (op [P], regs [P, 3], lit [P], dest_index [P]) int32; `dest_index` is
    the destination's position in the pool. Callers mask the slots they use.
  """
  w, w_lit = slot_words[:, 0], slot_words[:, 1]
  op = keys_lib.uniform_int(w, _NUM_FILL_OPS)
  w = keys_lib.next_fraction(w, _NUM_FILL_OPS)
  dest_index = keys_lib.uniform_int(w, pool_size)
  w = keys_lib.next_fraction(w, pool_size)
  srcs = []
  for _ in range(2):
    srcs.append(_nibble(active, keys_lib.uniform_int(w, k)))
    w = keys_lib.next_fraction(w, k)
  regs = jnp.stack([_nibble(pool, dest_index)] + srcs, axis=-1)
  lit = keys_lib.uniform_int(w_lit, _N_LITERALS) + isa.LITERAL_MIN
  return op, regs, lit, dest_index


def gen_counter(key: jax.Array, n: jax.Array, *, max_len: int) -> Program:
  """Tier 0 `gen_counter(n)`: `LOAD R0 K`, n - 1 ops over ADD SUB NEG MOV
  on R0, `PRINT R0`, `HALT` (length n + 2).

  Args:
    key: the program key (consumed).
    n: [] int32, clipped to [1, max_len - 2].
    max_len: static `P` >= 3.

  Returns:
    An unbatched `Program` with [P] arrays.
  """
  if max_len < 3:
    raise ValueError(f"gen_counter needs max_len >= 3, got {max_len}")
  n = jnp.clip(jnp.asarray(n, jnp.int32), 1, max_len - 2)
  words = _slot_words(key, max_len)
  i = jnp.arange(max_len)
  op = jnp.where(i == 0, isa.LOAD,
                 jnp.asarray(_COUNTER_OPS)[keys_lib.uniform_int(words[:, 0], 4)])
  lit = keys_lib.uniform_int(words[:, 1], _N_LITERALS) + isa.LITERAL_MIN
  op, regs = _tail(op, jnp.zeros((max_len, 3), jnp.int32), n, jnp.int32(0))
  return _program(op, regs, lit, n + 2)


def _choose_print_slot(eligible, word, randomize):
  """Slot whose destination is printed: the last eligible slot, or (if
  `randomize`) a uniform choice over the eligible slots."""
  i = jnp.arange(eligible.shape[0])
  if not randomize:
    return jnp.max(jnp.where(eligible, i, -1))
  count = eligible.sum(dtype=jnp.int32)
  j = keys_lib.uniform_int(word, jnp.maximum(count, 1))
  before = jnp.cumsum(eligible, dtype=jnp.int32) - 1    # eligible index
  return jnp.max(jnp.where(eligible & (before == j), i, -1))


def _register_trace(key, n, k, max_len, distractor_regs,
                    randomize_print_target) -> Program:
  """One Tier 1 program (no flattening); see `gen_register_trace`."""
  n = jnp.clip(jnp.asarray(n, jnp.int32), 1, max_len - 2)
  k = jnp.clip(jnp.asarray(k, jnp.int32), 1, isa.NUM_REGS)
  misc = _misc_words(key)
  active = sample_active(misc[2 * _MISC_ACTIVE:2 * _MISC_ACTIVE + 8])
  op, regs, lit, dest_index = fill_block(_slot_words(key, max_len), active,
                                         k, active, k)
  i = jnp.arange(max_len)
  in_block = i < n
  if distractor_regs:
    # the first min(d, k - 1) of `active` are never printed; when no fill
    # instruction writes another register (the reference then prints an
    # unwritten register and fails), the last one's destination is redrawn
    # over the non-distractors.
    dd = jnp.minimum(distractor_regs, k - 1)
    eligible = in_block & (dest_index >= dd)
    redraw = ~eligible.any()
    new_dest = _nibble(active, dd + keys_lib.uniform_int(
        misc[2 * _MISC_PRINT + 1], k - dd))
    regs = regs.at[:, 0].set(
        jnp.where(redraw & (i == n - 1), new_dest, regs[:, 0]))
    eligible = eligible | (redraw & (i == n - 1))
  else:
    eligible = in_block
  slot = _choose_print_slot(eligible, misc[2 * _MISC_PRINT],
                            randomize_print_target)
  op, regs = _tail(op, regs, n, regs[slot, 0])
  return _program(op, regs, lit, n + 2)


def _flat_choice(key, n, k, max_len, distractor_regs, randomize_print_target,
                 num_candidates) -> Program:
  """Sampling-importance-resampling over candidates by printed bucket.

  Candidate c is the program of `fold_in(key, c)`; all are run, and one is
  picked with probability proportional to its integer weight
  `FLAT_WEIGHTS[bucket]` (exact integer arithmetic, so the pick is the same
  on every device).
  """
  cand = jax.vmap(lambda c: jax.random.fold_in(key, c))(
      jnp.arange(num_candidates))
  progs = jax.vmap(lambda c: _register_trace(
      c, n, k, max_len, distractor_regs, randomize_print_target))(cand)
  traces = jax.vmap(lambda p: interpreter.run(p, max_steps=max_len))(progs)
  weight = jnp.asarray(FLAT_WEIGHTS)[value_bucket(traces.output[:, 0])]
  cdf = jnp.cumsum(weight)                                      # [C] int32
  word = keys_lib.random_words(key, jnp.arange(1), _STREAM_FLAT)[0, 0]
  u = keys_lib.uniform_int32(word, cdf[-1]).astype(jnp.int32)
  pick = jnp.sum(cdf <= u)
  return jax.tree_util.tree_map(lambda x: x[pick], progs)


def gen_register_trace(key: jax.Array, n: jax.Array, k: jax.Array, *,
                       max_len: int, distractor_regs: int = 0,
                       randomize_print_target: bool = False,
                       flat_output_histogram: bool = False,
                       flat_candidates: int = 16) -> Program:
  """Tier 1 `gen_register_trace(n, k)`: a fill block of n instructions over
  k active registers, `PRINT` the last destination, `HALT` (length n + 2).

  Args:
    key: the program key (consumed).
    n: [] int32 fill length, clipped to [1, max_len - 2].
    k: [] int32 active registers, clipped to [1, 8].
    max_len: static `P` >= 3.
    distractor_regs: static d; the first min(d, k - 1) registers of `active`
      are never printed (the print target is the most recent other write).
      If no fill instruction writes another register, the last one's
      destination is redrawn over the non-distractors (the reference prints
      an unwritten register there and fails its own check).
    randomize_print_target: print the destination of a uniformly chosen fill
      instruction (so weighted by write count), distractors excluded.
    flat_output_histogram: flatten the histogram of printed values over
      100-wide buckets: `flat_candidates` candidate programs are generated
      and run, and one is chosen with probability proportional to
      1 / p(bucket of its output), p the reference's Tier 1 train bucket
      frequencies (sampling-importance-resampling; exact as the number of
      candidates grows, costs `flat_candidates` generations and runs).
    flat_candidates: static number of candidates for the flat histogram.

  Returns:
    An unbatched `Program` with [P] arrays.
  """
  if max_len < 3:
    raise ValueError(f"gen_register_trace needs max_len >= 3, got {max_len}")
  if not checks.is_int(distractor_regs) or distractor_regs < 0:
    raise ValueError(f"distractor_regs must be >= 0, got {distractor_regs!r}")
  if not flat_output_histogram:
    return _register_trace(key, n, k, max_len, distractor_regs,
                           randomize_print_target)
  if not 1 <= flat_candidates <= MAX_FLAT_CANDIDATES:
    raise ValueError(f"flat_candidates must be in [1, {MAX_FLAT_CANDIDATES}]"
                     f", got {flat_candidates}")
  return _flat_choice(key, n, k, max_len, distractor_regs,
                      randomize_print_target, flat_candidates)
