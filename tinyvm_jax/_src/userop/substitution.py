"""Substitution: a program's userop calls replaced by their decompositions.

Running a userop is an error (`isa.ERR_USEROP`); `substitute` gives the
*base* program, which runs. It works on reference JSON instruction lists
(host) and on `Program` arrays (jit and vmap; the userop's `Decomposition`
table may be traced, so one compilation serves every userop).
"""

from typing import Any, Mapping

import jax.numpy as jnp

from tinyvm_jax._src import checks
from tinyvm_jax._src import isa
from tinyvm_jax._src.program import ProgramError
from tinyvm_jax._src.types import Program
from tinyvm_jax._src.userop import binding

_NONE = -1


def substitute(program, userop, *, max_len: int | None = None):
  """Replaces every call of `userop` by its concrete decomposition.

  Args:
    program: a reference JSON instruction list (host; returns a new list),
      or one unbatched `Program` ([P] arrays; works under jit and vmap).
    userop: the binding, a `UserOp` (or, for arrays, its `Decomposition`
      table, which may be traced); calls of other slots are left in place.
    max_len: (arrays only) static length of the result; default P * M (M
      the table's rows), which always fits. A result that does not fit
      keeps its true `length` (> max_len) to flag it.

  Returns:
    The base program, in the form given. A call's label moves to the first
    instruction of its decomposition; jump targets follow their instruction.

  Raises:
    ValueError / ProgramError: a bad userop, program or max_len, or a call
      with the wrong number of operands (JSON).
  """
  if isinstance(program, (list, tuple)):
    return substitute_json(program,
                           binding.check_userop(userop, "substitute"))
  table = binding.as_table(userop, "substitute")
  if not isinstance(program, Program):
    raise ValueError(f"substitute: expected a JSON instruction list or a "
                     f"Program, got {type(program).__name__}")
  if jnp.ndim(program.op) != 1:
    raise ValueError(f"substitute: expected one unbatched Program (op of rank "
                     f"1), got op of shape {jnp.shape(program.op)}; vmap it")
  if max_len is None:
    max_len = program.op.shape[0] * table.op.shape[0]
  max_len = checks.check_int("substitute: max_len", max_len, lo=1)
  return substitute_arrays(program, table, max_len)


def substitute_json(instructions, userop: binding.UserOp
                    ) -> list[dict[str, Any]]:
  """`substitute` of a JSON instruction list (host)."""
  out = []
  for i, ins in enumerate(instructions):
    if not isinstance(ins, Mapping) or "op" not in ins:
      raise ProgramError(f"instruction {i}: not an instruction object")
    op = ins["op"]
    if op != userop.op_name and op != userop.slot:
      out.append(dict(ins))
      continue
    args = ins.get("args", [])
    if not isinstance(args, (list, tuple)) or len(args) != userop.n_args:
      raise ProgramError(f"instruction {i} ({userop.op_name}): expected "
                         f"{userop.n_args} register operands, got {args!r}")
    for t, (o, dargs) in enumerate(userop.decomposition):
      nr = int(isa.REG_ARGS[isa.OP_IDS[o]])
      out.append({"op": o,
                  "args": [args[a] for a in dargs[:nr]] + list(dargs[nr:]),
                  "label": ins.get("label") if t == 0 else None,
                  "target": None})
  return out


def substitute_arrays(program: Program, dec: binding.Decomposition,
                      max_len: int) -> Program:
  """`substitute` of one [P] `Program` with a [M] table: the [max_len]
  base program (unchecked arguments; jit and vmap)."""
  d_op, d_regs, d_lit = dec.op, dec.regs, dec.lit
  m = d_op.shape[0]
  p = program.op.shape[0]
  live = jnp.arange(p) < program.length
  is_call = live & (program.op == dec.slot)
  count = jnp.where(is_call, dec.size, live.astype(jnp.int32))    # [P]
  start = jnp.cumsum(count) - count                                # [P]
  total = count.sum()
  j = jnp.arange(max_len)
  src = jnp.searchsorted(jnp.where(live, start, total), j, side="right") - 1
  src = jnp.clip(src, 0, p - 1)                                    # [P']
  t = jnp.clip(j - start[src], 0, m - 1)
  call = is_call[src]
  call_regs = jnp.take_along_axis(program.regs[src], d_regs[t], axis=1)
  tgt = program.target[src]
  tgt = jnp.where(tgt >= 0, start[jnp.clip(tgt, 0, p - 1)], _NONE)
  first = ~call | (t == 0)
  pad = j >= total
  sel = lambda a, b: jnp.where(call, a, b)
  return Program(
      op=jnp.where(pad, isa.NOP, sel(d_op[t], program.op[src])),
      regs=jnp.where(pad[:, None], 0,
                     jnp.where(call[:, None], call_regs, program.regs[src])),
      lit=jnp.where(pad, 0, sel(d_lit[t], program.lit[src])),
      target=jnp.where(pad | call, _NONE, tgt),
      target_label=jnp.where(pad | call, _NONE, program.target_label[src]),
      label=jnp.where(pad | ~first, _NONE, program.label[src]),
      length=total.astype(jnp.int32))
