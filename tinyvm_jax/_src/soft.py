"""Differentiable execution: the Tiny-VM on distributions over instructions.

The exact interpreter (`interpreter.py`) views each instruction one-hot and
mixes every opcode's result by the one-hot opcode. This module runs the same
machine on *probability distributions*: a `SoftProgram` holds, per
instruction, a distribution over the 21 opcodes, one over the 8 registers for
each of the 3 register operands, a (float) literal and a distribution over
jump targets, so a model's softmax outputs can be executed and trained
through with `jax.grad`.

The soft machine is an expected-value (mean-field) machine. Its state is a
program-counter distribution `pc` over instructions, the probability that
the run has halted, one expected register file, an expected stack with a
distribution over its depth, and a distribution over how many values have
been printed. Each step:

- fetches by contraction: the source operands and the literal are
  `pc`-weighted mixtures of every instruction's distributions; the source
  values are the expected registers they name (`a = src_probs[0] @ regs`);
  the register read by PUSH, PRINT and JZ is taken per instruction;
- computes every opcode's result on those values (as `op_results` does) and
  writes the expected result: register `r` moves towards result `o` by the
  probability that the executed instruction has opcode `o` and destination
  `r` (per instruction, `sum_p pc_p op_p[o] dest_p[r]`);
- moves `pc`: the mass at instruction `p` falls through to `p + 1`, jumps
  through `target[p]` (JMP, or JZ by the probability that its register is
  zero), or halts (HALT, or falling past `length`).

With one-hot inputs and `temperature=0` this is exactly the exact machine,
jumps included (`pc` stays one-hot). With spread-out distributions the
register file is one average over all paths (mean-field), not a mixture of
machines: that is the approximation that keeps a step O(P).

Relaxations. The exact machine is piecewise constant in EQ, LT, DIV and the
JZ test, and flat outside the clamp range. With `temperature` t > 0 they are
replaced by smooth functions of the operand values. Each puts its
transitions half way between integers, with logistic width t, so on integer
operands it is off the exact op by about exp(-1 / (2t)): the exact op is
recovered as t -> 0, and a one-hot program's soft run at t = 0.01 matches
the exact run to about 1e-18 in float32 (1e-8 at t = 0.02): errors do not
pile up through MUL and DIV, as they would with an O(t) bias anywhere.

- `LT(a, b) = sigmoid((b - a - 1/2) / t)`.
- `EQ(a, b) = sigmoid((d + 1/2) / t) - sigmoid((d - 1/2) / t)`, d = a - b: a
  box of width 1 (= 1 - LT(a, b) - LT(b, a)); the JZ test is EQ(r, 0).
- clamp to [-1024, 1023]: `x` blended into the bound by
  `sigmoid((x - 1023 - 1/2) / t)` (and likewise below -1024): identity
  inside, the bound beyond half a unit outside. Exact at every integer, not
  monotone between 1023 and 1024 (it rises to 1023.5 before snapping back):
  a monotone smooth clamp must be O(t) off at the bounds.
- `DIV(a, b) = sgn(a) sgn(b) softfloor((|a| + 1/2) / |b|)`, clamped, with
  `sgn(x) = sigmoid((x - 1/2) / t) - sigmoid((-x - 1/2) / t)` (0 on
  (-1/2, 1/2), so b = 0 gives 0 as the exact DIV) and `softfloor` a smooth
  staircase with unit steps at the integers, each a normalised logistic of
  width t / |b| (width t in the numerator, where the integers live: an
  integer numerator is at least 1/2 from a step). The staircase is capped
  at 1025, which bounds the slope near b = 0 by about 1025 / (4t). For large
  t the staircase becomes the ramp (|a| + 1/2) / |b| - 1/2.

`temperature=0` (a Python number) runs the relaxations' t -> 0 limits: the
exact ops on integers, with the same half-integer thresholds elsewhere (EQ
is |a - b| < 1/2, LT is b - a > 1/2, DIV's signs and staircase likewise,
the clamp a plain clip), so values a rounding error off an integer still
compute the exact result. EQ, LT and DIV then have zero gradient with
respect to their operands (gradients still flow to the instruction
distributions through the mixing, and through MOV, ADD, SUB, MUL, NEG and
the clamp). A traced temperature may be 0 too. Positive temperatures are
clipped to [`MIN_TEMPERATURE`, `MAX_TEMPERATURE`] = [1e-6, 1e4], which keeps
every gradient finite. `straight_through=True` runs the exact ops forward
and takes the relaxations' gradients backward (at t = 0 it changes nothing).

Faults. The exact machine stops with an error on a stack overflow or
underflow, a userop, an invalid opcode or an undefined jump target. The soft
machine keeps running: it adds the probability of each fault to `fault` and
that mass skips the faulting part of the instruction (a PUSH on a full stack
pushes nothing, a jump to no target halts). A POP with underflow mass still
writes its expected top (0 for that mass).
"""

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from tinyvm_jax._src import isa
from tinyvm_jax._src.types import Program

MIN_TEMPERATURE = 1e-6
MAX_TEMPERATURE = 1e4
_DIV_CAP = 1025.0          # |quotient| beyond this is clamped anyway
_DIV_MIN_DIVISOR = 1e-3    # |b| below this reads as this (times sgn(b))
_DIV_MAX_DIVISOR = 4096.0
_MIN_MASS = 1e-6           # running mass below this is not renormalised

_WRITES = np.asarray(isa.WRITES_REG, np.float32)                # [21]
_FAULT_OPS = np.asarray(isa.IS_USEROP, np.float32)              # [21]
_R = isa.NUM_REGS
_K = isa.STACK_SIZE


@chex.dataclass(frozen=True, mappable_dataclass=False)
class SoftProgram:
  """One program as distributions, padded to a static length `P`.

  Rows at index >= `length` are never executed (falling past `length`
  halts). A target row summing to less than 1 sends the rest of a jump's
  mass to a fault (an undefined label).
  """
  op: jax.Array      # [P, 21] float, distribution over opcodes
  regs: jax.Array    # [P, 3, R] float, distribution over registers per operand
  lit: jax.Array     # [P] float, the literal of LOAD
  target: jax.Array  # [P, P] float, distribution over jump targets
  length: jax.Array  # [] int32, number of real instructions

  @property
  def max_len(self) -> int:
    return self.op.shape[-2]


@chex.dataclass(frozen=True, mappable_dataclass=False)
class SoftTrace:
  """A soft run over a static budget of `S` steps (`O` = `S` output slots).

  Every field is an expectation over the soft machine's distributions;
  with one-hot programs at temperature 0 they equal the exact `Trace`'s
  fields (`pc` then one-hot, `alive` the step mask).
  """
  pc: jax.Array          # [S, P] float, distribution of the instruction run
  alive: jax.Array       # [S] float, probability that step s ran (pc[s].sum())
  regs: jax.Array        # [S, R] float, expected register file after step s
  stack: jax.Array       # [S, K] float, expected stack slots after step s
  depth: jax.Array       # [S, K + 1] float, distribution of the depth after s
  emit_prob: jax.Array   # [S] float, probability that step s printed
  emitted: jax.Array     # [S] float, E[printed value * 1(printed)] at step s
  output: jax.Array      # [O] float, E[j-th output * 1(it exists)]
  output_prob: jax.Array  # [O] float, probability that output j exists
  num_output: jax.Array  # [] float, expected number of outputs
  halted: jax.Array      # [] float, probability of having halted by the end
  fault: jax.Array       # [] float, expected number of faults (see module doc)


class _State(NamedTuple):
  pc: jax.Array       # [P] float, running mass per instruction
  halted: jax.Array   # [] float
  regs: jax.Array     # [R] float
  stack: jax.Array    # [K] float
  depth: jax.Array    # [K + 1] float
  count: jax.Array    # [O + 1] float, distribution of outputs so far
  output: jax.Array   # [O] float
  out_prob: jax.Array  # [O] float
  fault: jax.Array    # [] float


# ----------------------------------------------------------- relaxations
def _check_temperature(temperature) -> None:
  if isinstance(temperature, (int, float, np.integer, np.floating)) and not (
      np.isfinite(temperature) and temperature >= 0):
    raise ValueError(f"temperature must be finite and >= 0, got "
                     f"{temperature!r}")


def _is_exact(temperature) -> bool:
  return (isinstance(temperature, (int, float, np.integer, np.floating))
          and float(temperature) == 0.0)


def _relaxed(hard, soft_fn, temperature, straight_through):
  """`hard` at temperature 0, else `soft_fn(t)` (or straight-through)."""
  _check_temperature(temperature)
  if _is_exact(temperature):
    return hard
  t = jnp.asarray(temperature, hard.dtype)
  soft = soft_fn(jnp.clip(t, MIN_TEMPERATURE, MAX_TEMPERATURE))
  if straight_through:
    soft = jax.lax.stop_gradient(hard) + (soft - jax.lax.stop_gradient(soft))
  return jnp.where(t > 0, soft, hard)


def _float(x):
  x = jnp.asarray(x)
  return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(
      jnp.float32)


def soft_lt(a, b, temperature, *, straight_through: bool = False):
  """LT: `b - a > 1/2` at t = 0 (`a < b` on integers), else
  `sigmoid((b - a - 1/2) / t)`."""
  a, b = _float(a), _float(b)
  hard = jax.lax.stop_gradient((b - a > 0.5).astype(a.dtype))
  return _relaxed(hard, lambda t: jax.nn.sigmoid((b - a - 0.5) / t),
                  temperature, straight_through)


def soft_eq(a, b, temperature, *, straight_through: bool = False):
  """EQ: `|a - b| < 1/2` at t = 0 (`a == b` on integers), else a logistic
  box of width 1 centred at a = b."""
  a, b = _float(a), _float(b)
  d = a - b
  hard = jax.lax.stop_gradient((jnp.abs(d) < 0.5).astype(d.dtype))
  soft = lambda t: 0.5 * (jnp.tanh((d + 0.5) / (2 * t))
                          - jnp.tanh((d - 0.5) / (2 * t)))
  return _relaxed(hard, soft, temperature, straight_through)


def _soft_clamp(x, t):
  # convex blends, so a huge x gives exactly the bound (no cancellation)
  up = jax.nn.sigmoid((x - isa.VALUE_MAX - 0.5) / t)
  y = isa.VALUE_MAX * up + x * (1 - up)
  down = jax.nn.sigmoid((isa.VALUE_MIN - 0.5 - y) / t)
  return isa.VALUE_MIN * down + y * (1 - down)


def soft_clamp(x, temperature, *, straight_through: bool = False):
  """Clamp to [-1024, 1023]: exact at t = 0, else blended into the bound
  half a unit beyond it (exact on integers as t -> 0)."""
  x = _float(x)
  hard = jnp.clip(x, isa.VALUE_MIN, isa.VALUE_MAX)
  return _relaxed(hard, lambda t: _soft_clamp(x, t), temperature,
                  straight_through)


def _hard_sign(x):
  return jnp.where(x > 0.5, 1, jnp.where(x < -0.5, -1, 0)).astype(x.dtype)


def _hard_div(a, b):
  """The relaxation's t -> 0 limit: trunc(a / b) on integers, 0 for
  |b| < 1/2."""
  q = jnp.floor((jnp.abs(a) + 0.5) / jnp.maximum(jnp.abs(b), 0.5))
  return _hard_sign(a) * _hard_sign(b) * jnp.minimum(q, _DIV_CAP)


def _soft_floor(z, w):
  """Smooth staircase, unit steps at the integers of logistic width `w`;
  equals floor(z) as w -> 0 for non-integer z, z - 1/2 as w -> inf."""
  y = z - 0.5
  base = jnp.floor(y)              # zero gradient; the staircase is continuous
  f = y - base                     # in [0, 1): the step is at f = 1/2
  rho = 0.5 + 0.5 * jnp.tanh((f - 0.5) / (2 * w)) / jnp.tanh(1 / (4 * w))
  return base + rho


def _soft_sign(x, t):
  """sign(x) with logistic steps at +-1/2 (0 on (-1/2, 1/2))."""
  return 0.5 * (jnp.tanh((x - 0.5) / (2 * t)) + jnp.tanh((x + 0.5) / (2 * t)))


def _soft_div(a, b, t):
  v = jnp.clip(jnp.abs(b), _DIV_MIN_DIVISOR, _DIV_MAX_DIVISOR)
  g = _soft_floor((jnp.abs(a) + 0.5) / v, t / v)
  cap = jax.nn.sigmoid((g - _DIV_CAP) / t)                  # soft min(g, cap)
  g = _DIV_CAP * cap + g * (1 - cap)
  return _soft_clamp(_soft_sign(a, t) * _soft_sign(b, t) * g, t)


def soft_div(a, b, temperature, *, straight_through: bool = False):
  """DIV (truncating, 0 when b == 0, clamped): exact at t = 0, else the
  smooth staircase of the module doc."""
  a, b = _float(a), _float(b)
  hard = jax.lax.stop_gradient(jnp.clip(_hard_div(a, b), isa.VALUE_MIN,
                                        isa.VALUE_MAX))
  return _relaxed(hard, lambda t: _soft_div(a, b, t), temperature,
                  straight_through)


def soft_op_results(a, b, lit, top, temperature, *,
                    straight_through: bool = False) -> jax.Array:
  """[21] float: each opcode's (relaxed) result on source values `a`, `b`,
  literal `lit` and stack top `top` (0 for opcodes that write nothing)."""
  kw = dict(temperature=temperature, straight_through=straight_through)
  lit, clamped_add, clamped_sub, clamped_mul, neg = soft_clamp(
      jnp.stack([lit, a + b, a - b, a * b, -a]), **kw)
  zero = jnp.zeros_like(a)
  vals = [lit, a, clamped_add, clamped_sub, clamped_mul, soft_div(a, b, **kw),
          neg, soft_eq(a, b, **kw), soft_lt(a, b, **kw), zero, zero, zero,
          top]
  return jnp.stack(vals + [zero] * (isa.NUM_OPS - len(vals)))


# ----------------------------------------------------------- programs
def soft_from_program(program: Program, *, dtype=jnp.float32) -> SoftProgram:
  """The one-hot `SoftProgram` of an exact (unbatched) `Program`.

  An invalid opcode or register index gives an all-zero row (the soft
  machine then does nothing there and counts a fault for a bad opcode); an
  undefined target (-1) gives an all-zero target row.
  """
  p = program.op.shape[-1]
  return SoftProgram(
      op=jax.nn.one_hot(program.op, isa.NUM_OPS, dtype=dtype),
      regs=jax.nn.one_hot(program.regs, _R, dtype=dtype),
      lit=jnp.asarray(program.lit).astype(dtype),
      target=jax.nn.one_hot(program.target, p, dtype=dtype),
      length=jnp.asarray(program.length, jnp.int32))


def _distribution(logits, straight_through):
  probs = jax.nn.softmax(logits, axis=-1)
  if not straight_through:
    return probs
  hard = jax.nn.one_hot(jnp.argmax(logits, -1), logits.shape[-1],
                        dtype=probs.dtype)
  return hard + (probs - jax.lax.stop_gradient(probs))


def soft_from_logits(op_logits: jax.Array, reg_logits: jax.Array,
                     lit: jax.Array, length, *,
                     target_logits: jax.Array | None = None,
                     straight_through: bool = False) -> SoftProgram:
  """A `SoftProgram` from logits (softmax over the last axis).

  Args:
    op_logits: [P, 21]; use -inf to rule an opcode out.
    reg_logits: [P, 3, R].
    lit: [P] float literals.
    length: [] int number of real instructions.
    target_logits: [P, P], or None for no jump targets (a jump then faults).
    straight_through: one-hot argmax forward, softmax gradient backward.
  """
  op_logits = jnp.asarray(op_logits)
  p = op_logits.shape[0] if op_logits.ndim else 0
  want = {"op_logits": (p, isa.NUM_OPS), "reg_logits": (p, 3, _R),
          "lit": (p,), "target_logits": (p, p)}
  for name, arg in zip(want, (op_logits, reg_logits, lit, target_logits)):
    if arg is not None and jnp.shape(arg) != want[name]:
      raise ValueError(f"{name} must have shape {want[name]} (unbatched; "
                       f"vmap for batches), got {jnp.shape(arg)}")
  if target_logits is None:
    target = jnp.zeros((p, p), op_logits.dtype)
  else:
    target = _distribution(target_logits, straight_through)
  return SoftProgram(op=_distribution(op_logits, straight_through),
                     regs=_distribution(reg_logits, straight_through),
                     lit=jnp.asarray(lit, op_logits.dtype), target=target,
                     length=jnp.asarray(length, jnp.int32))


def harden(program: SoftProgram) -> SoftProgram:
  """The one-hot program of each distribution's most likely choice (the
  literal is rounded; an all-zero target row stays all zero)."""
  one_hot = lambda x: jax.nn.one_hot(jnp.argmax(x, -1), x.shape[-1],
                                     dtype=x.dtype)
  target = one_hot(program.target) * (program.target.sum(-1, keepdims=True)
                                      > 0)
  return SoftProgram(op=one_hot(program.op), regs=one_hot(program.regs),
                     lit=jnp.round(program.lit), target=target,
                     length=program.length)


def program_from_soft(program: SoftProgram) -> Program:
  """The exact `Program` of `harden(program)` (unbatched; vmap for batches).

  Labels: instruction j is labelled `L<j>` when some instruction targets
  it, so the program converts to JSON and tokens as usual.
  """
  h = harden(program)
  p = h.op.shape[-2]
  op = jnp.argmax(h.op, -1).astype(jnp.int32)
  has_target = (h.target.sum(-1) > 0) & jnp.asarray(isa.HAS_TARGET)[op]
  target = jnp.where(has_target, jnp.argmax(h.target, -1), -1).astype(
      jnp.int32)
  lit = jnp.clip(h.lit, -(10 ** isa.MAX_LITERAL_DIGITS - 1),
                 10 ** isa.MAX_LITERAL_DIGITS - 1).astype(jnp.int32)
  live = jnp.arange(p) < h.length
  is_target = jnp.zeros(p, bool).at[jnp.where(live & has_target, target, p)
                                     ].set(True, mode="drop")
  return Program(op=op, regs=jnp.argmax(h.regs, -1).astype(jnp.int32),
                 lit=jnp.where(op == isa.LOAD, lit, 0), target=target,
                 target_label=target,
                 label=jnp.where(is_target, jnp.arange(p), -1).astype(
                     jnp.int32),
                 length=jnp.asarray(h.length, jnp.int32))


# ----------------------------------------------------------- the machine
def _shift_up(d):
  """Mass at k moves to k + 1; the last entry keeps its own mass."""
  return jnp.concatenate([jnp.zeros_like(d[:1]), d[:-2],
                          d[-2:].sum(0, keepdims=True)])


def _shift_down(d):
  """Mass at k moves to k - 1; the first entry keeps its own mass."""
  return jnp.concatenate([d[:2].sum(0, keepdims=True), d[2:],
                          jnp.zeros_like(d[:1])])


def _step(program: SoftProgram, s: _State, temperature, straight_through):
  pc = s.pc                                                    # [P]
  alive = pc.sum()
  dt = pc.dtype
  norm = 1 / jnp.maximum(alive, _MIN_MASS)
  op_mass = pc @ program.op                                    # [21]
  srcs = jnp.einsum("p,pjr->jr", pc, program.regs[:, 1:]) * norm  # [2, R]
  a, b = srcs @ s.regs
  lit = (pc @ program.lit) * norm
  top = s.depth[1:] @ s.stack
  vals = soft_op_results(a, b, lit, top, temperature,
                         straight_through=straight_through)     # [21]
  # registers: dest r moves to result o by P(op o, dest r)
  write = jnp.einsum("p,po,pr->or", pc, program.op * _WRITES.astype(dt),
                     program.regs[:, 0])                        # [21, R]
  regs = s.regs + write.T @ vals - write.sum(0) * s.regs

  # reads of the first register operand, per instruction
  r0 = program.regs[:, 0] @ s.regs                             # [P]
  p_push, p_pop = op_mass[isa.PUSH], op_mass[isa.POP]
  pushed = pc @ (program.op[:, isa.PUSH] * r0)                 # E[r0 1(push)]
  d = s.depth
  stack = (s.stack + d[:-1] * (pushed - p_push * s.stack)
           - p_pop * d[1:] * s.stack)
  depth = d + p_push * (_shift_up(d) - d) + p_pop * (_shift_down(d) - d)
  p_print = op_mass[isa.PRINT]
  printed = pc @ (program.op[:, isa.PRINT] * r0)               # E[r0 1(print)]
  count = s.count
  output = s.output + count[:-1] * printed
  out_prob = s.out_prob + count[:-1] * p_print
  count = count + p_print * (_shift_up(count) - count)

  # program counter
  is_zero = soft_eq(r0, 0, temperature, straight_through=straight_through)
  jump = pc * (program.op[:, isa.JMP] + program.op[:, isa.JZ] * is_zero)
  halt = pc * program.op[:, isa.HALT]
  fall = pc - jump - halt
  landed = jump @ program.target                               # [P]
  moved = jnp.concatenate([jnp.zeros_like(fall[:1]), fall[:-1]]) + landed
  live = jnp.arange(pc.shape[0]) < program.length
  new_pc = jnp.where(live, moved, 0)
  lost = jump.sum() - landed.sum()
  halted = s.halted + (alive - new_pc.sum())

  no_op = jnp.maximum(alive - op_mass.sum(), 0)     # rows summing below 1
  fault = (s.fault + p_push * d[-1] + p_pop * d[0] + jnp.maximum(lost, 0)
           + op_mass @ _FAULT_OPS.astype(dt) + no_op)
  new = _State(pc=new_pc, halted=halted, regs=regs, stack=stack, depth=depth,
               count=count, output=output, out_prob=out_prob, fault=fault)
  return new, (pc, alive, regs, stack, depth, p_print, printed)


def _check(program: SoftProgram, max_steps: int, temperature) -> None:
  if not isinstance(program, SoftProgram):
    raise TypeError(f"expected a SoftProgram, got {type(program).__name__}")
  if not isinstance(max_steps, (int, np.integer)) or max_steps < 1:
    raise ValueError(f"max_steps must be an int >= 1, got {max_steps!r}")
  _check_temperature(temperature)
  op = program.op
  if op.ndim != 2 or op.shape[1] != isa.NUM_OPS:
    raise ValueError(f"SoftProgram.op must be [P, {isa.NUM_OPS}] (unbatched; "
                     f"vmap for batches), got shape {tuple(op.shape)}")
  p = op.shape[0]
  want = {"regs": (p, isa.MAX_REG_ARGS, _R), "lit": (p,), "target": (p, p),
          "length": ()}
  for name, shape in want.items():
    got = tuple(getattr(program, name).shape)
    if got != shape:
      raise ValueError(f"SoftProgram.{name} must have shape {shape} for "
                       f"P={p}, got {got}")
  if not jnp.issubdtype(op.dtype, jnp.floating):
    raise ValueError(f"SoftProgram.op must be floating point, got {op.dtype}")


def soft_run(program: SoftProgram, *, max_steps: int, temperature=0.0,
             straight_through: bool = False,
             init_regs: jax.Array | None = None) -> SoftTrace:
  """Runs one soft program for `max_steps` steps (differentiable).

  Args:
    program: an unbatched `SoftProgram` ([P, ...] arrays); vmap for batches.
    max_steps: static step budget `S`.
    temperature: >= 0, a Python number or a traced scalar; 0 runs the exact
      ops (see the module doc for the relaxations).
    straight_through: exact ops forward, relaxed gradients backward.
    init_regs: [R] starting register file (the machine starts at zeros;
      this is equivalent to running `LOAD Ri v_i` first, for |v_i| <= 1023).

  Returns:
    The `SoftTrace` ([S] arrays), in the program's float dtype.
  """
  _check(program, max_steps, temperature)
  if init_regs is not None and jnp.shape(init_regs) != (_R,):
    raise ValueError(f"init_regs must have shape ({_R},), got "
                     f"{jnp.shape(init_regs)}")
  dt = program.op.dtype
  p = program.max_len
  start = (program.length > 0).astype(dt)
  init = _State(
      pc=jnp.zeros(p, dt).at[0].set(start), halted=1 - start,
      regs=(jnp.zeros(_R, dt) if init_regs is None
            else jnp.asarray(init_regs).astype(dt)),
      stack=jnp.zeros(_K, dt),
      depth=jnp.zeros(_K + 1, dt).at[0].set(1),
      count=jnp.zeros(max_steps + 1, dt).at[0].set(1),
      output=jnp.zeros(max_steps, dt), out_prob=jnp.zeros(max_steps, dt),
      fault=jnp.zeros((), dt))
  final, (pc, alive, regs, stack, depth, emit_prob, emitted) = jax.lax.scan(
      lambda s, _: _step(program, s, temperature, straight_through), init,
      None, length=max_steps)
  return SoftTrace(pc=pc, alive=alive, regs=regs, stack=stack, depth=depth,
                   emit_prob=emit_prob, emitted=emitted, output=final.output,
                   output_prob=final.out_prob, num_output=emit_prob.sum(),
                   halted=final.halted, fault=final.fault)
