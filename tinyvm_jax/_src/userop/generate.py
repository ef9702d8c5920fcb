"""Few-shot row generation (spec section 11): `make_row` builds one row from
its key and axes; `gen_userop_row` and `generate_userop_rows` are the
per-example and the jitted batch entry points for a given userop.

A program *with symbol* is a Tier 2 skeleton (`gen_branched` with
n' = max(n - 2, 4), k = max(2, n_args), b = 0, l = 0, one stack frame if
use_stack) with the call inserted before its PRINT and the PRINT retargeted
to the call's destination. The call's operands are the first n_args
distinct registers that the skeleton writes, in program order: `r_one`, then
the print target p, then (arity 3, k = 3) the third active register q. A
skeleton can leave q unwritten: probability 1/16 without a stack frame (the
4 warm-up instructions all write p), 1/16 * 2**-g * 2/3 with one (its g fill
instructions write p too and the POP loads another register). The third
operand is then still q, found as the register the skeleton reads, or, if q
never appears, drawn uniformly from the registers not used, which has the
same distribution; it holds 0. Demos draw n = 8 + uniform[0, 4], the target
uses n_target. Traces are the base form's.

Keys: the demos' n come from `axes_key(key)` (stream 0, counter j for demo
j); program j (demo j, then the target as j = k_demos) from
`fold_in(program_key(key), j)`. A row of `k_demos` demos in a layout of `E`
program slots (E - 1 >= k_demos) keeps its demos in slots 0..k_demos - 1,
its target in slot E - 1 and empty programs (length 0) between, and is the
same row as in a layout of k_demos + 1 slots.
"""

import functools
from typing import Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from tinyvm_jax._src import branched
from tinyvm_jax._src import interpreter
from tinyvm_jax._src import isa
from tinyvm_jax._src import keys as keys_lib
from tinyvm_jax._src.types import Program, Trace
from tinyvm_jax._src.userop import binding
from tinyvm_jax._src.userop import renders as renders_lib
from tinyvm_jax._src.userop import shapes as shapes_lib
from tinyvm_jax._src.userop.shapes import RENDER_NAMES
from tinyvm_jax._src.userop.substitution import substitute_arrays

AXIS_NAMES = ("userop", "k_demos", "n_target", "use_stack")
_STREAM_N = 0          # random words of the demos' n (axes stream)
_STREAM_OPERANDS = 2   # per program key; gen_branched uses streams 0 and 1
_NONE = -1


@chex.dataclass(frozen=True, mappable_dataclass=False)
class UseropRow:
  """One few-shot row (`E` program slots: the demos, then the target);
  batched rows carry a leading `B`."""
  key_data: jax.Array    # [2] uint32, the row key; meta.seed = hi << 32 | lo
  axes: jax.Array        # [4] int32, AXIS_NAMES: userop (slot - 16),
                         # k_demos, n_target, use_stack (0/1)
  n: jax.Array           # [E] int32, n of each demo, then n_target (0 in
                         # empty demo slots)
  with_symbol: Program   # [E, P]
  base: Program          # [E, P'] the calls substituted
  trace: Trace           # [E, S] of the base programs
  renders: dict          # render name -> Render ([T] ids)


def _call_operands(skel: Program, word_key: jax.Array) -> jax.Array:
  """[3] int32: registers ordered by first write (program order), then by
  first appearance as any operand, then at random; the call takes the first
  n_args."""
  p = skel.op.shape[0]
  pos = jnp.arange(p)
  live = pos < skel.length
  op = jnp.clip(skel.op, 0, isa.NUM_OPS - 1)
  r = jnp.arange(isa.NUM_REGS)
  writes = live & jnp.asarray(isa.WRITES_REG)[op]                 # [P]
  first_write = jnp.min(jnp.where(writes[:, None] & (skel.regs[:, :1] == r),
                                  pos[:, None], 3 * p), axis=0)    # [8]
  used = live[:, None] & (jnp.arange(isa.MAX_REG_ARGS)
                          < jnp.asarray(isa.REG_ARGS)[op][:, None])  # [P, 3]
  appears = (used[..., None] & (skel.regs[..., None] == r)).any(1)  # [P, 8]
  first_seen = jnp.min(jnp.where(appears, pos[:, None], 3 * p), axis=0)
  words = keys_lib.random_words(word_key, jnp.arange(isa.NUM_REGS // 2),
                                _STREAM_OPERANDS).reshape(-1)      # [8]
  rank = jnp.argsort(jnp.argsort(words))
  order_key = jnp.where(first_write < 3 * p, first_write,
                        jnp.where(first_seen < 3 * p, p + first_seen,
                                  2 * p + rank))
  return jnp.argsort(order_key)[:isa.MAX_REG_ARGS].astype(jnp.int32)


def _insert_call(skel: Program, dec: binding.Decomposition,
                 key: jax.Array) -> Program:
  """The skeleton ([P]) with `SYM operands` before its PRINT, the PRINT
  retargeted to operand 0 ([P + 1])."""
  p = skel.op.shape[0]
  at = skel.length - 2                      # the PRINT's index
  pos = jnp.arange(p + 1)
  src = jnp.clip(jnp.where(pos < at, pos, pos - 1), 0, p - 1)
  ops = _call_operands(skel, key)
  call_regs = jnp.where(jnp.arange(isa.MAX_REG_ARGS) < dec.n_args, ops, 0)
  is_call, is_print = pos == at, pos == at + 1
  pad = pos > skel.length
  regs = jnp.where(is_call[:, None], call_regs, skel.regs[src])
  regs = regs.at[:, 0].set(jnp.where(is_print, ops[0], regs[:, 0]))
  tgt = skel.target[src]
  tgt = jnp.where(tgt >= at, tgt + 1, tgt)
  none = lambda x: jnp.where(is_call | pad, _NONE, x)
  return Program(
      op=jnp.where(pad, isa.NOP, jnp.where(is_call, dec.slot,
                                           skel.op[src])),
      regs=jnp.where(pad[:, None], 0, regs),
      lit=jnp.where(is_call | pad, 0, skel.lit[src]),
      target=none(tgt), target_label=none(skel.target_label[src]),
      label=none(skel.label[src]), length=skel.length + 1)


def _emptied(program: Program, live: jax.Array) -> Program:
  """`program`, or the empty program (length 0, padding) unless `live`."""
  pad = dict(op=isa.NOP, target=_NONE, target_label=_NONE, label=_NONE)
  return Program(**{f: jnp.where(live, getattr(program, f), pad.get(f, 0))
                    for f in Program.__dataclass_fields__})


def make_row(key: jax.Array, dec: binding.Decomposition, axes: jax.Array, *,
             shapes: shapes_lib.UseropShapes, num_programs: int,
             renders: Sequence[str]) -> UseropRow:
  """One row from its key (consumed) and [4] int32 axes (may be traced;
  axes[0] is only recorded: `dec` is the userop's table).

  `num_programs` (static E) must exceed axes[1] (k_demos); the arguments
  are not checked (see `gen_userop_row`).
  """
  e = num_programs
  k, n_target, stack = axes[1], axes[2], axes[3] != 0
  words = keys_lib.random_words(keys_lib.axes_key(key),
                                jnp.arange(max(e - 1, 1)),
                                _STREAM_N)[:e - 1, 0]
  n_demo = shapes_lib.DEMO_N_MIN + keys_lib.uniform_int(
      words, shapes_lib.DEMO_N_MAX - shapes_lib.DEMO_N_MIN + 1)
  slot = jnp.arange(e)
  live = (slot < k) | (slot == e - 1)
  index = jnp.where(slot == e - 1, k, slot)        # the program's key index
  n = jnp.where(slot == e - 1, n_target,
                jnp.where(live, jnp.pad(n_demo, (0, 1)), 0)).astype(jnp.int32)
  pkey = keys_lib.program_key(key)

  def one(j, n_j, live_j):
    kj = jax.random.fold_in(pkey, j)
    skel = branched.gen_branched(
        kj, shapes_lib.skeleton_n(n_j), jnp.maximum(2, dec.n_args), 0, 0,
        stack, stack.astype(jnp.int32), max_len=shapes.max_len - 1)
    ws = _emptied(_insert_call(skel, dec, kj), live_j)
    base = substitute_arrays(ws, dec, shapes.base_len)
    return ws, base, interpreter.run(base, max_steps=shapes.max_steps)

  with_symbol, base, trace = jax.vmap(one)(index, n, live)
  out = {}
  for r in renders:
    t_in, t_out = shapes.token_lengths(r)
    out[r] = renders_lib.render_userop(r, with_symbol, trace, dec,
                                       max_input_len=t_in,
                                       max_target_len=t_out)
  return UseropRow(key_data=jax.random.key_data(key),
                   axes=jnp.asarray(axes, jnp.int32), n=n,
                   with_symbol=with_symbol, base=base, trace=trace,
                   renders=out)


def _scalar_arg(x, what: str, lo: int):
  """Concrete value of a scalar arg (None if traced); ValueError if bad."""
  dtype = jnp.result_type(x)
  if jnp.shape(x) != () or not (jnp.issubdtype(dtype, jnp.integer)
                                or dtype == jnp.bool_):
    raise ValueError(f"gen_userop_row: {what} must be an integer scalar, got "
                     f"{x!r}")
  if isinstance(x, jax.core.Tracer):
    return None
  if int(x) < lo:
    raise ValueError(f"gen_userop_row: {what} must be >= {lo}, got {x}")
  return int(x)


def check_renders(renders: Sequence[str], where: str) -> tuple[str, ...]:
  """`renders` as a tuple; ValueError naming `where` for an unknown one."""
  for r in renders:
    if r not in RENDER_NAMES:
      raise ValueError(f"{where}: unknown render {r!r}; expected one of "
                       f"{RENDER_NAMES}")
  return tuple(renders)


def gen_userop_row(key: jax.Array, userop, *, n_target, use_stack,
                   k_demos: int = 2, n_max: int | None = None,
                   renders: Sequence[str] = RENDER_NAMES) -> UseropRow:
  """One Tier 4 few-shot row (spec section 11); vmap over keys for batches.

  Args:
    key: the row key (consumed): demos' n from `axes_key(key)`, program j
      (demos, then the target) from `fold_in(program_key(key), j)`.
    userop: the binding: a `UserOp`, or its `Decomposition` table (may be
      traced: one compilation then serves every userop).
    n_target: [] int, the target's n (traced or concrete, >= 0).
    use_stack: [] bool/int, one stack frame in every program.
    k_demos: static number of demos.
    n_max: static bound on n_target fixing the shapes; default n_target
      (which must then be concrete).
    renders: names from `RENDER_NAMES` (static).

  Returns:
    An unbatched `UseropRow` with E = k_demos + 1 and the other shapes from
    `userop_shapes`.
  """
  dec = binding.as_table(userop, "gen_userop_row")
  if jnp.shape(jax.random.key_data(key)) != (2,):
    raise ValueError("gen_userop_row: key must be one PRNG key (vmap for "
                     "batches)")
  n_conc = _scalar_arg(n_target, "n_target", 0)
  _scalar_arg(use_stack, "use_stack", 0)
  if n_max is None:
    if n_conc is None:
      raise ValueError("gen_userop_row: pass a static n_max when n_target "
                       "is traced")
    n_max = n_conc
  if n_conc is not None and n_conc > n_max:
    raise ValueError(f"gen_userop_row: n_target={n_conc} > n_max={n_max}")
  renders = check_renders(renders, "gen_userop_row")
  shapes = shapes_lib.userop_shapes(dec.op.shape[0], k_demos=k_demos,
                                    n_max=n_max)
  axes = jnp.stack([dec.slot - isa.USEROP_0, jnp.int32(k_demos),
                    jnp.asarray(n_target, jnp.int32),
                    (jnp.asarray(use_stack).astype(jnp.int32) != 0
                     ).astype(jnp.int32)]).astype(jnp.int32)
  return make_row(key, dec, axes, shapes=shapes, num_programs=k_demos + 1,
                  renders=renders)


@functools.partial(jax.jit, static_argnames=("k_demos", "n_max", "renders"))
def _generate(key_data, n_target, use_stack, table, *, k_demos, n_max,
              renders):
  def one(kd, n, s, dec):
    key = jax.random.wrap_key_data(kd, impl=keys_lib.IMPL)
    return gen_userop_row(key, dec, n_target=n, use_stack=s,
                          k_demos=k_demos, n_max=n_max, renders=renders)
  return jax.vmap(one)(key_data, n_target, use_stack, table)


def key_data_of(key_data) -> np.ndarray:
  """[B, 2] uint32 key data from [B, 2] key data or [B] uint64 seeds."""
  kd = np.asarray(key_data)
  if kd.ndim == 1 and kd.dtype == np.uint64:
    kd = keys_lib.key_data_from_seeds(kd)
  if kd.ndim != 2 or kd.shape[1] != 2 or not np.issubdtype(kd.dtype,
                                                           np.integer):
    raise ValueError(f"key_data must be [B, 2] uint32 or [B] uint64 seeds, "
                     f"got {kd.dtype} {kd.shape}")
  if not kd.shape[0]:
    raise ValueError("generate_userop_rows: no rows (key_data is empty)")
  return kd.astype(np.uint32)


def generate_userop_rows(userop, key_data, *, n_target, use_stack,
                         k_demos: int = 2, n_max: int | None = None,
                         renders: Sequence[str] = RENDER_NAMES
                         ) -> UseropRow:
  """A batch of rows (jitted, one compilation for every userop of up to 8
  instructions; host numpy result).

  Args:
    userop: a `UserOp`, or a sequence of them, one per row.
    key_data: [B, 2] uint32 row keys' data (e.g. of `keys.row_key`), or
      [B] uint64 seeds (meta.seed).
    n_target, use_stack: [B] (or scalars, broadcast) per-row values.
    k_demos: demos a row.
    n_max: static bound on n_target; default the largest rounded up to a
      power of two, at least 32 (rows do not depend on it).
    renders: render names.

  Returns:
    A `UseropRow` batch ([B, ...] numpy arrays); `rows_to_json` turns it
    into row dicts.
  """
  kd = key_data_of(key_data)
  b = kd.shape[0]
  ops = [userop] * b if isinstance(userop, binding.UserOp) else list(userop)
  if len(ops) != b:
    raise ValueError(f"{len(ops)} userops for {b} rows")
  for u in ops:
    binding.check_userop(u, "generate_userop_rows")
  n = np.broadcast_to(np.asarray(n_target), (b,))
  s = np.broadcast_to(np.asarray(use_stack), (b,))
  if not np.issubdtype(n.dtype, np.integer) or n.min() < 0:
    raise ValueError(f"n_target must be integers >= 0, got {n_target!r}")
  if not (s.dtype == bool or np.issubdtype(s.dtype, np.integer)):
    raise ValueError(f"use_stack must be bools, got {use_stack!r}")
  if n_max is None:
    n_max = default_n_max(n)
  elif n.max() > n_max:
    raise ValueError(f"n_target up to {n.max()} exceeds n_max={n_max}")
  out = _generate(jnp.asarray(kd), jnp.asarray(n, jnp.int32),
                  jnp.asarray(s, bool), binding.stack_tables(ops),
                  k_demos=int(k_demos), n_max=int(n_max),
                  renders=check_renders(renders, "generate_userop_rows"))
  return jax.tree_util.tree_map(np.asarray, out)


def default_n_max(n_target: np.ndarray) -> int:
  """The static n bound of rows of these n_target: the largest rounded up
  to a power of two, at least 32 (rows do not depend on it)."""
  return 1 << (max(int(np.max(n_target, initial=0)), 32) - 1).bit_length()


@functools.partial(jax.jit, static_argnames=("shapes", "num_programs"))
def _programs(key_data, axes, table, *, shapes, num_programs):
  def one(kd, ax, dec):
    key = jax.random.wrap_key_data(kd, impl=keys_lib.IMPL)
    return make_row(key, dec, ax, shapes=shapes, num_programs=num_programs,
                    renders=()).with_symbol
  return jax.vmap(one)(key_data, axes, table)


def rebuild_programs(userops: Sequence[binding.UserOp], seeds, axes, *,
                     num_programs: int) -> Program:
  """The with-symbol programs of rows rebuilt from their seeds and axes
  (host; one compilation for rows of any k_demos < num_programs).

  Args:
    userops: [B] the rows' userops.
    seeds: [B] uint64 meta.seed values.
    axes: [B, 4] int axes (AXIS_NAMES).
    num_programs: static E, above every row's k_demos.

  Returns:
    [B, E, P] `Program` (numpy): demos in slots 0..k-1, the target in E - 1.
  """
  axes = np.asarray(axes, np.int32)
  shapes = shapes_lib.userop_shapes(
      binding.table_rows(userops), k_demos=num_programs - 1,
      n_max=default_n_max(axes[:, 2]))
  out = _programs(jnp.asarray(key_data_of(np.asarray(seeds, np.uint64))),
                  jnp.asarray(axes), binding.stack_tables(userops),
                  shapes=shapes, num_programs=num_programs)
  return jax.tree_util.tree_map(np.asarray, out)
