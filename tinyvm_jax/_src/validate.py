"""Static validation of programs (spec section 9, without the defects listed
in section 15). Host side (numpy/Python).

A program is valid when:
- every instruction has a known opcode (0..20) and its operand counts, JZ/JMP
  carry a target, every target names a defined label and labels are unique;
- every register operand is in 0..7 and every LOAD literal in [-127, 127];
- for every `PRINT Ri`, every path from the entry writes Ri first (forward
  "must-write" dataflow; nothing is written at entry; an unreachable PRINT is
  rejected);
- the stack depth is the same on every path into each instruction, the entry
  of instruction 0 (depth 0) included, and never negative or above 16 after
  any reachable instruction, instruction 0 included.

Control flow: HALT has no successor, JMP one (its target), JZ two (the next
instruction and its target), everything else the next instruction; running
past the last instruction ends the program. Userops are treated as ordinary
instructions that write the registers their signature names, by operand
position. Unless told otherwise (`userop_writes`), a userop writes its first
operand: section 11 binds a userop to a decomposition whose placeholders index
the call's operands, the reference's `DOUBLE` decomposes to `ADD 0 1 1`
(placeholder 0 written) and the generated call `SYM r_one p` is followed by a
PRINT of `r_one`, the call's destination.
"""

import dataclasses
import re
from typing import Any, Mapping, Sequence

import numpy as np

from tinyvm_jax._src import isa
from tinyvm_jax._src import program as program_lib
from tinyvm_jax._src.program import ProgramError
from tinyvm_jax._src.types import Program

_ALL_REGS = (1 << isa.NUM_REGS) - 1
_FROM_JSON_RE = re.compile(r"^instruction (\d+)(?: \((\w+)\))?: (.*)$", re.S)
_DEFAULT_USEROP_WRITES = {o: (0,) for o in range(isa.USEROP_0, isa.NUM_OPS)}


@dataclasses.dataclass(frozen=True)
class Issue:
  """One reason a program is not valid."""
  index: int   # the instruction at fault; -1 for the program as a whole
  reason: str

  def __str__(self) -> str:
    where = "program" if self.index < 0 else f"instruction {self.index}"
    return f"{where}: {self.reason}"


def find_issues(program: Any, *,
          userop_writes: Mapping[Any, Sequence[int]] | None = None
          ) -> list[Issue]:
  """Lists every reason a program is not valid (empty when it is).

  Args:
    program: a reference JSON instruction list (`op` a name or an opcode
      number), a reference IR dict `{"instructions", "label_index"}` (as in
      golden.json), or an unbatched `Program` ([P] arrays).
    userop_writes: opcode (16..20) or name (`"USEROP_0"`) -> the operand
      positions that userop writes; slots not given write operand 0.

  Returns:
    The issues, sorted by instruction index. A structural fault (opcode,
    operand counts, labels, targets) is reported alone: control flow is not
    analysed on a program whose jumps cannot be resolved.

  Raises:
    TypeError: `program` is none of the accepted forms.
    ProgramError: `program` is a batched `Program`, or `userop_writes` names
      an unknown slot or an operand position the slot does not have.
  """
  writes = _userop_writes(userop_writes)
  prog, issues = _as_program(program)
  if prog is None:
    return issues
  issues += _check_arrays(prog, writes)
  return sorted(issues, key=lambda x: x.index)


def validate(program: Any, *,
             userop_writes: Mapping[Any, Sequence[int]] | None = None) -> None:
  """Raises `ProgramError` naming the first faulty instruction and why.

  Args and accepted forms as for `find_issues`.
  """
  issues = find_issues(program, userop_writes=userop_writes)
  if issues:
    more = len(issues) - 1
    suffix = f" (and {more} more issue{'s' * (more > 1)})" if more else ""
    raise ProgramError(f"{issues[0]}{suffix}")


def is_valid(program: Any, **kwargs) -> bool:
  """Whether `find_issues` finds nothing wrong."""
  return not find_issues(program, **kwargs)


# ------------------------------------------------------------ input forms
def _userop_writes(spec) -> dict[int, tuple[int, ...]]:
  writes = dict(_DEFAULT_USEROP_WRITES)
  for key, positions in (spec or {}).items():
    o = isa.OP_IDS.get(key, key) if isinstance(key, str) else key
    if not (isinstance(o, (int, np.integer)) and isa.USEROP_0 <= o < isa.NUM_OPS):
      raise ProgramError(f"userop_writes: {key!r} is not a userop slot "
                         f"(USEROP_0..USEROP_4 or {isa.USEROP_0}..{isa.NUM_OPS - 1})")
    positions = tuple(int(p) for p in positions)
    for p in positions:
      if not 0 <= p < isa.REG_ARGS[o]:
        raise ProgramError(
            f"userop_writes: {isa.OP_NAMES[o]} has operand positions "
            f"0..{isa.REG_ARGS[o] - 1}, got {p}")
    writes[int(o)] = positions
  return writes


def _as_program(program) -> tuple[Program | None, list[Issue]]:
  """A numpy `Program`, or None and the structural issue found parsing."""
  if isinstance(program, Program):
    ndim = np.ndim(program.op)
    if ndim != 1:
      raise ProgramError(f"find_issues takes one unbatched program ([P] arrays); "
                         f"got op of shape {np.shape(program.op)}")
    return program, []
  label_index = None
  if isinstance(program, Mapping):
    if "instructions" not in program:
      raise TypeError("a program dict needs an 'instructions' list "
                      f"(reference IR); got keys {sorted(program)}")
    label_index = program.get("label_index")
    program = program["instructions"]
  if not isinstance(program, (list, tuple)):
    raise TypeError("expected a JSON instruction list, a reference IR dict or "
                    f"a Program; got {type(program).__name__}")
  try:
    prog = program_lib.from_json(program)
  except ProgramError as e:
    m = _FROM_JSON_RE.match(str(e))
    if m is None:
      return None, [Issue(-1, str(e))]
    name = f"{m.group(2)}: " if m.group(2) else ""
    return None, [Issue(int(m.group(1)), name + m.group(3))]
  issues = []
  if label_index is not None:
    defined = {f"L{int(n)}": i for i, n in enumerate(prog.label) if n >= 0}
    if dict(label_index) != defined:
      issues.append(Issue(-1, f"label_index {dict(label_index)} disagrees "
                              f"with the labels defined {defined}"))
  return prog, issues


# ------------------------------------------------------------ checks
def _check_arrays(prog: Program, userop_writes) -> list[Issue]:
  op = np.asarray(prog.op)
  regs = np.asarray(prog.regs)
  lit = np.asarray(prog.lit)
  target = np.asarray(prog.target)
  target_label = np.asarray(prog.target_label)
  label = np.asarray(prog.label)
  n = int(prog.length)
  p = op.shape[0]
  if not 0 <= n <= p:
    return [Issue(-1, f"length {n} outside 0..{p} (the padded size)")]

  issues, structural = [], []
  where_label: dict[int, int] = {}
  for i in range(n):
    if label[i] >= 0:
      if int(label[i]) in where_label:
        structural.append(Issue(i, f"label L{label[i]} already defined at "
                                   f"instruction {where_label[int(label[i])]}"))
      else:
        where_label[int(label[i])] = i
  for i in range(n):
    o = int(op[i])
    if not 0 <= o < isa.NUM_OPS:
      structural.append(Issue(i, f"opcode {o} outside 0..{isa.NUM_OPS - 1}"))
      continue
    name = isa.OP_NAMES[o]
    for j in range(isa.REG_ARGS[o]):
      if not 0 <= regs[i, j] < isa.NUM_REGS:
        issues.append(Issue(i, f"{name}: register operand {j} is {regs[i, j]}, "
                               f"outside 0..{isa.NUM_REGS - 1}"))
    if isa.LIT_ARGS[o] and not isa.LITERAL_MIN <= lit[i] <= isa.LITERAL_MAX:
      issues.append(Issue(i, f"{name}: literal {lit[i]} outside "
                             f"[{isa.LITERAL_MIN}, {isa.LITERAL_MAX}]"))
    tl = int(target_label[i])
    if tl < 0:
      if isa.HAS_TARGET[o]:
        structural.append(Issue(i, f"{name}: missing jump target"))
    elif tl not in where_label:
      structural.append(Issue(i, f"{name}: target L{tl} is not a defined label"))
    elif isa.HAS_TARGET[o] and int(target[i]) != where_label[tl]:
      structural.append(Issue(
          i, f"{name}: target index {target[i]} disagrees with label L{tl} "
             f"defined at instruction {where_label[tl]}"))
  if structural:
    return structural + issues

  succ = [_successors(int(op[i]), i, int(target[i])) for i in range(n)]
  issues += _check_stack(op, succ, n)
  issues += _check_prints(op, regs, succ, n, userop_writes)
  return issues


def _successors(o: int, i: int, t: int) -> tuple[int, ...]:
  """Instructions that may run after instruction `i` (an index equal to the
  program length, past the end, means the program ends)."""
  if o == isa.HALT:
    return ()
  if o == isa.JMP:
    return (t,)
  if o == isa.JZ:
    return (i + 1,) if t == i + 1 else (i + 1, t)
  return (i + 1,)


def _reachable(succ, n: int) -> list[int]:
  """Indices reachable from instruction 0, in visiting order."""
  if n == 0:
    return []
  seen, order, todo = {0}, [], [0]
  while todo:
    i = todo.pop()
    order.append(i)
    for s in succ[i]:
      if s < n and s not in seen:
        seen.add(s)
        todo.append(s)
  return order


def _check_stack(op, succ, n: int) -> list[Issue]:
  """Depth consistency on every edge (the entry is an edge into 0 with depth
  0) and the depth after each reachable instruction in [0, 16]."""
  issues = []
  depth_in: dict[int, tuple[int, str]] = {}
  if n:
    depth_in[0] = (0, "the entry")
  todo = [0] if n else []
  while todo:
    i = todo.pop()
    d, _ = depth_in[i]
    o = int(op[i])
    out = d + (o == isa.PUSH) - (o == isa.POP)
    if out < 0:
      issues.append(Issue(i, f"{isa.OP_NAMES[o]}: pops an empty stack "
                             f"(depth {d} here)"))
      continue
    if out > isa.STACK_SIZE:
      issues.append(Issue(i, f"{isa.OP_NAMES[o]}: pushes past the stack's "
                             f"{isa.STACK_SIZE} entries (depth {d} here)"))
      continue
    for s in succ[i]:
      if s >= n:
        continue
      if s not in depth_in:
        depth_in[s] = (out, f"instruction {i}")
        todo.append(s)
      elif depth_in[s][0] != out:
        first, src = depth_in[s]
        issues.append(Issue(
            s, f"stack depth differs between paths into it: {first} from "
               f"{src}, {out} from instruction {i}"))
  return issues


def _written(o: int, regs_i, userop_writes) -> int:
  """Bit mask of the registers instruction writes."""
  if isa.WRITES_REG[o]:
    positions = (0,)
  elif isa.IS_USEROP[o]:
    positions = userop_writes[o]
  else:
    return 0
  mask = 0
  for j in positions:
    r = int(regs_i[j])
    if 0 <= r < isa.NUM_REGS:
      mask |= 1 << r
  return mask


def _check_prints(op, regs, succ, n: int, userop_writes) -> list[Issue]:
  """Forward must-write dataflow: a PRINT's register must be written on every
  path from the entry (at which nothing is written)."""
  order = _reachable(succ, n)
  reachable = set(order)
  written_in = {i: _ALL_REGS for i in order}
  if n:
    written_in[0] = 0
  gen = {i: _written(int(op[i]), regs[i], userop_writes) for i in order}
  todo, queued = list(reversed(order)), set(order)
  while todo:
    i = todo.pop()
    queued.discard(i)
    out = written_in[i] | gen[i]
    for s in succ[i]:
      if s < n and written_in[s] & out != written_in[s]:
        written_in[s] &= out
        if s not in queued:
          queued.add(s)
          todo.append(s)
  issues = []
  for i in range(n):
    if int(op[i]) != isa.PRINT:
      continue
    r = int(regs[i, 0])
    if i not in reachable:
      issues.append(Issue(i, f"PRINT R{r}: unreachable from the entry"))
    elif 0 <= r < isa.NUM_REGS and not written_in[i] >> r & 1:
      issues.append(Issue(i, f"PRINT R{r}: R{r} is not written on every path "
                             f"from the entry"))
  return issues
