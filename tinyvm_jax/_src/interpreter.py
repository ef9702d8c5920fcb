"""The exact Tiny-VM interpreter: `jax.lax.scan` over a static step budget.

Each step fetches the instruction at `pc` and views it one-hot (opcode over
the 21 opcodes, each register operand over the 8 registers); every opcode's
result is computed and the one-hot opcode selects it. The soft interpreter
(`soft.py`) runs the same machine on distributions instead of one-hots.

`run_straight_line` is the fast path for programs without jumps or stack
(Tier 0/1): step t runs instruction t, faults are found from the
instructions before the scan, and a step only updates the register file.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tinyvm_jax._src import checks
from tinyvm_jax._src import isa
from tinyvm_jax._src import program as program_lib
from tinyvm_jax._src.types import Program, Trace

_WRITES = np.asarray(isa.WRITES_REG, np.int32)     # [21]
_N_REGS = np.asarray(isa.REG_ARGS, np.int32)          # [21]


class Instruction(NamedTuple):
  """One instruction viewed one-hot, as the interpreter consumes it."""
  op: jax.Array      # [21] int32 one-hot opcode (all zero: invalid opcode)
  regs: jax.Array    # [3, R] int32 one-hot register operands (all zero: bad index)
  lit: jax.Array     # [] int32
  target: jax.Array  # [] int32 instruction index, -1 if undefined


class _State(NamedTuple):
  pc: jax.Array      # [] int32
  regs: jax.Array    # [R] int32
  stack: jax.Array   # [K] int32
  depth: jax.Array   # [] int32
  done: jax.Array    # [] bool
  halted: jax.Array  # [] bool
  error: jax.Array   # [] int32
  steps: jax.Array   # [] int32


def one_hot(program: Program) -> Instruction:
  """Every instruction of a program viewed one-hot ([P, ...] fields)."""
  return Instruction(
      op=jax.nn.one_hot(program.op, isa.NUM_OPS, dtype=jnp.int32),
      regs=jax.nn.one_hot(program.regs, isa.NUM_REGS, dtype=jnp.int32),
      lit=program.lit, target=program.target)


def fetch(program: Program, pc: jax.Array) -> Instruction:
  """The instruction at `pc`, one-hot (pc clipped into the program)."""
  i = jnp.clip(pc, 0, program.op.shape[-1] - 1)
  return one_hot(Program(op=program.op[i], regs=program.regs[i],
                         lit=program.lit[i], target=program.target[i],
                         target_label=program.target_label[i],
                         label=program.label[i], length=program.length))


def _dot(onehot: jax.Array, values: jax.Array) -> jax.Array:
  """Selects `values` by a one-hot (a sum: cheaper than a tiny matmul)."""
  return jnp.sum(onehot * values, axis=-1)


def clamp(x: jax.Array) -> jax.Array:
  return jnp.clip(x, isa.VALUE_MIN, isa.VALUE_MAX)


def trunc_div(a: jax.Array, b: jax.Array) -> jax.Array:
  """Quotient truncated toward zero; 0 when dividing by zero."""
  safe = jnp.where(b == 0, 1, b)
  q = jnp.abs(a) // jnp.abs(safe)
  return jnp.where(b == 0, 0, jnp.where((a < 0) != (safe < 0), -q, q))


def op_results(ins: Instruction, regs: jax.Array, top: jax.Array) -> jax.Array:
  """[21] int32: the value each opcode would write (0 for non-writers)."""
  a = _dot(ins.regs[1], regs)
  b = _dot(ins.regs[2], regs)
  zero = jnp.zeros((), jnp.int32)
  vals = [clamp(ins.lit), a, clamp(a + b), clamp(a - b), clamp(a * b),
          clamp(trunc_div(a, b)), clamp(-a), (a == b).astype(jnp.int32),
          (a < b).astype(jnp.int32), zero, zero, zero, top]
  return jnp.stack(vals + [zero] * (isa.NUM_OPS - len(vals)))


def _step(program: Program, s: _State):
  """One machine step: fetch the instruction at `s.pc` and run it."""
  ins = fetch(program, s.pc)
  is_op = lambda o: ins.op[o] == 1
  r0 = _dot(ins.regs[0], s.regs)
  slots = jnp.arange(isa.STACK_SIZE)
  top = jnp.sum(jnp.where(slots == s.depth - 1, s.stack, 0))
  # Errors are checked before the instruction runs; a failing step is not
  # recorded, as the reference raises there.
  n_regs = _dot(ins.op, _N_REGS)
  bad_reg = jnp.any((jnp.arange(isa.MAX_REG_ARGS) < n_regs)
                    & (ins.regs.sum(-1) == 0))
  jumps = (is_op(isa.JZ) & (r0 == 0)) | is_op(isa.JMP)
  err = jnp.select(
      [ins.op.sum() == 0, bad_reg, ins.op[isa.USEROP_0:].sum() > 0,
       is_op(isa.PUSH) & (s.depth >= isa.STACK_SIZE),
       is_op(isa.POP) & (s.depth <= 0),
       jumps & (ins.target < 0)],
      [isa.ERR_BAD_OPCODE, isa.ERR_BAD_REGISTER, isa.ERR_USEROP,
       isa.ERR_STACK_OVERFLOW, isa.ERR_STACK_UNDERFLOW, isa.ERR_BAD_TARGET],
      isa.ERR_NONE)
  run = ~s.done & (err == isa.ERR_NONE)

  val = _dot(ins.op, op_results(ins, s.regs, top))
  write = _dot(ins.op, _WRITES) * ins.regs[0]
  regs = jnp.where(write == 1, val, s.regs)
  push, pop = is_op(isa.PUSH), is_op(isa.POP)
  stack = jnp.where(push & (slots == s.depth), r0, s.stack)
  stack = jnp.where(pop & (slots == s.depth - 1), 0, stack)
  depth = s.depth + push.astype(jnp.int32) - pop.astype(jnp.int32)
  next_pc = jnp.where(jumps, ins.target, s.pc + 1)
  halts = is_op(isa.HALT) | (next_pc >= program.length)
  emits = run & is_op(isa.PRINT)

  new = _State(
      pc=jnp.where(run, next_pc, s.pc),
      regs=jnp.where(run, regs, s.regs),
      stack=jnp.where(run, stack, s.stack),
      depth=jnp.where(run, depth, s.depth),
      done=s.done | ~run | halts,
      halted=s.halted | (run & halts),
      error=jnp.where(~s.done & ~run, err, s.error),
      steps=s.steps + run.astype(jnp.int32))
  zero = lambda x: jnp.where(run, x, jnp.zeros_like(x))
  record = (zero(s.pc), zero(new.regs), zero(new.stack), zero(new.depth),
            jnp.where(emits, r0, 0), emits)
  return new, record



def _as_program(program: Program, max_steps: int) -> Program:
  """`program` as jax arrays (numpy pytrees from `from_json` work too),
  checked unbatched; `max_steps` checked static and positive."""
  if not checks.is_int(max_steps) or max_steps < 1:
    raise ValueError(f"max_steps must be >= 1 (a static int), got {max_steps!r}")
  if not isinstance(program, Program):
    raise TypeError(f"expected a Program, got {type(program).__name__}")
  program = jax.tree_util.tree_map(jnp.asarray, program)
  if program.op.ndim != 1:
    raise ValueError(f"expected one unbatched program ([P] arrays), got op "
                     f"of shape {program.op.shape}; vmap for batches")
  return program

def run(program: Program, *, max_steps: int) -> Trace:
  """Runs one program for at most `max_steps` steps.

  Args:
    program: an unbatched `Program` ([P] arrays); vmap for batches.
    max_steps: static step budget `S` (the reference allows 1,000,000).

  Returns:
    The `Trace` ([S] arrays). A program still running after `max_steps`
    steps ends with `error == ERR_STEP_BUDGET`; a stack fault, a userop, a
    jump to an undefined label, a bad register index or opcode end the run
    with the matching error code, the faulting step not recorded.
  """
  program = _as_program(program, max_steps)
  init = _State(
      pc=jnp.zeros((), jnp.int32), regs=jnp.zeros(isa.NUM_REGS, jnp.int32),
      stack=jnp.zeros(isa.STACK_SIZE, jnp.int32),
      depth=jnp.zeros((), jnp.int32),
      done=jnp.asarray(program.length <= 0),
      halted=jnp.asarray(program.length <= 0),
      error=jnp.zeros((), jnp.int32), steps=jnp.zeros((), jnp.int32))
  final, (pc, regs, stack, depth, emitted, emit_mask) = jax.lax.scan(
      lambda s, _: _step(program, s), init, None, length=max_steps)
  error = jnp.where(final.done, final.error, isa.ERR_STEP_BUDGET)
  slot = jnp.where(emit_mask, jnp.cumsum(emit_mask) - 1, max_steps)
  output = jnp.zeros(max_steps, jnp.int32).at[slot].set(emitted, mode="drop")
  return Trace(pc=pc, regs=regs, stack=stack, depth=depth, emitted=emitted,
               emit_mask=emit_mask, output=output,
               num_output=emit_mask.sum(dtype=jnp.int32),
               num_steps=final.steps, halted=final.halted & (error == 0),
               error=error)


# ------------------------------------------------------------ straight line
# Opcodes the straight-line runner executes: the fill ops, PRINT, NOP, HALT.
_LINE_OPS = np.zeros(isa.NUM_OPS, bool)
_LINE_OPS[list(isa.FILL_OPS) + [isa.PRINT, isa.NOP, isa.HALT]] = True
_HALT_KEY = 31   # above every error code
assert max(isa.ERROR_MESSAGES) < _HALT_KEY


def _line_errors(program: Program) -> jax.Array:
  """[P] int32: the error each instruction raises when reached, in `run`'s
  order (in a straight-line run every fault is a property of the
  instruction alone); ERR_NONE where it runs."""
  op, regs = program.op, program.regs
  c = jnp.clip(op, 0, isa.NUM_OPS - 1)
  n_regs = jnp.asarray(_N_REGS)[c]
  bad_reg = jnp.zeros(op.shape, bool)
  for i in range(isa.MAX_REG_ARGS):
    bad_reg |= (i < n_regs) & ((regs[:, i] < 0) | (regs[:, i] >= isa.NUM_REGS))
  err = jnp.where(jnp.asarray(_LINE_OPS)[c], isa.ERR_NONE,
                  isa.ERR_NOT_STRAIGHT_LINE)
  err = jnp.where(c >= isa.USEROP_0, isa.ERR_USEROP, err)
  err = jnp.where(bad_reg, isa.ERR_BAD_REGISTER, err)
  return jnp.where((op < 0) | (op >= isa.NUM_OPS), isa.ERR_BAD_OPCODE, err)


def _select(regs: jax.Array, index: jax.Array) -> jax.Array:
  """regs[index] for [R] registers and a [] index (0 if out of range), as a
  sum of selects (a gather costs more on a CPU)."""
  return jnp.sum(jnp.where(jnp.arange(isa.NUM_REGS) == index, regs, 0))


def fill_value(op: jax.Array, lit: jax.Array, a: jax.Array,
               b: jax.Array) -> jax.Array:
  """[] int32: the value fill op `op` (LOAD..LT) writes, sources a, b.

  DIV divides in float32, exact here: |a|, |b| <= 1024, so a non-integer
  quotient is at least 1/1024 from an integer, far beyond float32's
  rounding, and an integer quotient is exact.
  """
  bf = jnp.where(b == 0, 1, b).astype(jnp.float32)
  div = jnp.where(b == 0, 0, jnp.trunc(a.astype(jnp.float32) / bf
                                       ).astype(jnp.int32))
  vals = [clamp(lit), a, clamp(a + b), clamp(a - b), clamp(a * b),
          clamp(div), clamp(-a), (a == b).astype(jnp.int32),
          (a < b).astype(jnp.int32)]
  out = vals[-1]
  for o in range(len(vals) - 2, -1, -1):
    out = jnp.where(op == o, vals[o], out)
  return out


def run_straight_line(program: Program, *, max_steps: int) -> Trace:
  """Runs a straight-line program (Tier 0/1) fast: instruction t at step t.

  The program may hold only the fill ops (LOAD..LT), PRINT, NOP and HALT,
  with `length <= P`. There is no fetch and no stack (`stack` and `depth`
  are zero): a step reads its operands by selects and writes the register
  file, and where the run stops (HALT, the end, a fault, the budget) is
  found from the instructions before the scan. Equal to `run(program,
  max_steps=max_steps)` field by field for such programs (tests check every
  Tier 0/1 reference row and random programs); JZ, JMP, PUSH or POP end the
  run with `ERR_NOT_STRAIGHT_LINE` where `run` would execute them, before
  the instruction, as a fault. A bad opcode, a bad register index, a userop
  or an exhausted step budget give `run`'s error codes. About three times
  faster than `run` on a CPU (benchmarks/interpreter.py).

  Args:
    program: an unbatched `Program` ([P] arrays); vmap for batches.
    max_steps: static step budget `S`.

  Returns:
    The `Trace` ([S] arrays).
  """
  program = _as_program(program, max_steps)
  p = program.op.shape[-1]
  n = min(p, max_steps)                      # instructions that can run

  # The run stops at its first event: a fault (the instruction does not
  # run) or a halt (it runs). Key 32 t + code orders them, a fault first.
  t = jnp.arange(p)
  halts = (program.op == isa.HALT) | (t + 1 >= program.length)
  err = _line_errors(program)
  key = jnp.min(jnp.where(err != isa.ERR_NONE, 32 * t + err,
                          jnp.where(halts, 32 * t + _HALT_KEY, 32 * p)))
  at, code = key // 32, key % 32
  steps = jnp.where(code == _HALT_KEY, at + 1, at)     # executed, no budget
  error = jnp.where(code == _HALT_KEY, isa.ERR_NONE, code)
  # past the budget, or past P without halting (length > P, no contract)
  over = ((steps > max_steps) | ((steps == max_steps) & (code != _HALT_KEY))
          | (code == isa.ERR_NONE))
  error = jnp.where(program.length <= 0, isa.ERR_NONE,
                    jnp.where(over, isa.ERR_STEP_BUDGET, error))
  steps = jnp.where(program.length <= 0, 0, jnp.minimum(steps, max_steps))

  def step(regs, x):
    op, r, lit = x
    printed, a, b = (_select(regs, r[i]) for i in range(isa.MAX_REG_ARGS))
    write = (op >= 0) & (op <= isa.LT)
    new = jnp.where(write & (jnp.arange(isa.NUM_REGS) == r[0]),
                    fill_value(op, lit, a, b), regs)
    return new, (new, printed)

  _, (regs, printed) = jax.lax.scan(
      step, jnp.zeros(isa.NUM_REGS, jnp.int32),
      (program.op[:n], program.regs[:n], program.lit[:n]))
  op = program.op[:n]
  pad = max_steps - n
  if pad:
    regs, printed, op = (
        jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)])
        for x in (regs, printed, op))
  live = jnp.arange(max_steps) < steps                                # [S]
  emit_mask = live & (op == isa.PRINT)
  emitted = jnp.where(emit_mask, printed, 0)
  return Trace(pc=jnp.where(live, jnp.arange(max_steps), 0),
               regs=jnp.where(live[:, None], regs, 0),
               stack=jnp.zeros((max_steps, isa.STACK_SIZE), jnp.int32),
               depth=jnp.zeros(max_steps, jnp.int32),
               emitted=emitted, emit_mask=emit_mask,
               output=_compact_values(emitted, emit_mask),
               num_output=emit_mask.sum(dtype=jnp.int32),
               num_steps=steps.astype(jnp.int32),
               halted=error == isa.ERR_NONE, error=error.astype(jnp.int32))


def _compact_values(values: jax.Array, mask: jax.Array) -> jax.Array:
  """[N] int32: the values where `mask`, in order, then zeros."""
  n = values.shape[0]
  slot = jnp.where(mask, jnp.cumsum(mask, dtype=jnp.int32) - 1, n)
  return jnp.zeros(n, jnp.int32).at[slot].set(values, mode="drop")


# ------------------------------------------------------------ host helpers
def trace_to_json(trace: Trace) -> dict[str, Any]:
  """The reference's trace dict `{steps, output, halted}` of one trace."""
  t = jax.tree_util.tree_map(np.asarray, trace)
  steps = []
  for i in range(int(t.num_steps)):
    steps.append({
        "pc": int(t.pc[i]), "regs": t.regs[i].tolist(),
        "stack": t.stack[i, :t.depth[i]].tolist(),
        "emitted": int(t.emitted[i]) if t.emit_mask[i] else None})
  return {"steps": steps, "output": t.output[:int(t.num_output)].tolist(),
          "halted": bool(t.halted)}


def trace_from_json(d: dict[str, Any], *, max_steps: int) -> Trace:
  """A `Trace` ([S] numpy arrays) from the reference's trace dict."""
  steps = d["steps"]
  n = len(steps)
  if n > max_steps:
    raise ValueError(f"trace has {n} steps, more than max_steps={max_steps}")
  s = max_steps
  pc = np.zeros(s, np.int32)
  regs = np.zeros((s, isa.NUM_REGS), np.int32)
  stack = np.zeros((s, isa.STACK_SIZE), np.int32)
  depth = np.zeros(s, np.int32)
  emitted = np.zeros(s, np.int32)
  emit_mask = np.zeros(s, bool)
  for i, st in enumerate(steps):
    pc[i] = st["pc"]
    regs[i] = st["regs"]
    depth[i] = len(st["stack"])
    stack[i, :depth[i]] = st["stack"]
    if st["emitted"] is not None:
      emitted[i], emit_mask[i] = st["emitted"], True
  out = np.zeros(s, np.int32)
  out[:len(d["output"])] = d["output"]
  return Trace(pc=pc, regs=regs, stack=stack, depth=depth, emitted=emitted,
               emit_mask=emit_mask, output=out,
               num_output=np.int32(len(d["output"])), num_steps=np.int32(n),
               halted=np.bool_(d["halted"]), error=np.int32(0))


class VMError(RuntimeError):
  """A run that ended in an error (the reference raises there)."""


def raise_for_error(trace: Trace) -> None:
  """Raises `VMError` if any run of a (batched) trace ended in an error.

  The message names the first failing row (for batches), the error, and
  the step and instruction where it happened.
  """
  err = np.asarray(trace.error).reshape(-1)
  bad = np.flatnonzero(err)
  if not bad.size:
    return
  i = int(bad[0])
  steps = int(np.asarray(trace.num_steps).reshape(-1)[i])
  row = f"row {i}: " if np.ndim(trace.error) else ""
  code = int(err[i])
  where = (f"after {steps} steps" if code == isa.ERR_STEP_BUDGET else
           f"at step {steps}")
  more = f" ({bad.size} rows failed)" if bad.size > 1 else ""
  raise VMError(f"{row}{isa.ERROR_MESSAGES[code]} {where}{more}")


def execute(instructions, *, max_steps: int = 10_000) -> dict[str, Any]:
  """Host convenience: runs a reference instruction list, returns its trace
  dict, and raises `VMError` (or `ProgramError` for a malformed program)."""
  prog = program_lib.from_json(instructions)
  trace = _run_jit(prog, max_steps=max_steps)
  raise_for_error(trace)
  return trace_to_json(trace)


_run_jit = jax.jit(run, static_argnames="max_steps")
