"""A small pure-Python Tiny-VM (spec sections 1-3): the test suite's oracle.

Written from the spec alone and independent of `tinyvm_jax`, so that the
property tests compare two implementations rather than one with itself. It runs
the reference's JSON instruction lists (`op` a name or an opcode number).

Faults end the run with an error name and the trace so far (the faulting
instruction records no step, as the reference raises there). When several
faults hold at one instruction the first in this order is reported:
bad_opcode, bad_register (any register operand outside 0..7, read or written),
userop, stack_overflow / stack_underflow, bad_target (a jump that is *taken*
to an undefined label). `step_budget` is raised before an instruction would
run as step `max_steps + 1`.
"""

from typing import Any, Mapping, Sequence

NAMES = ("LOAD", "MOV", "ADD", "SUB", "MUL", "DIV", "NEG", "EQ", "LT", "JZ",
         "JMP", "PUSH", "POP", "PRINT", "NOP", "HALT", "USEROP_0", "USEROP_1",
         "USEROP_2", "USEROP_3", "USEROP_4")
N_REG_OPERANDS = dict(zip(NAMES, (1, 2, 3, 3, 3, 3, 2, 3, 3, 1, 0, 1, 1, 1, 0,
                                  0, 2, 3, 2, 3, 2)))
LO, HI = -1024, 1023
STACK_MAX = 16
STEP_CAP = 1_000_000

ERRORS = ("stack_overflow", "stack_underflow", "userop", "step_budget",
          "bad_target", "bad_register", "bad_opcode")


def clamp(v: int) -> int:
  return max(LO, min(HI, v))


def div(a: int, b: int) -> int:
  if b == 0:
    return 0
  q = abs(a) // abs(b)
  return q if (a < 0) == (b < 0) else -q


_ARITH = {
    "ADD": lambda a, b: clamp(a + b),
    "SUB": lambda a, b: clamp(a - b),
    "MUL": lambda a, b: clamp(a * b),
    "DIV": lambda a, b: clamp(div(a, b)),
    "EQ": lambda a, b: int(a == b),
    "LT": lambda a, b: int(a < b),
}


def _name(op: Any) -> str | None:
  if isinstance(op, str):
    return op if op in N_REG_OPERANDS else None
  if isinstance(op, int) and not isinstance(op, bool) and 0 <= op < len(NAMES):
    return NAMES[op]
  return None


def run(instructions: Sequence[Mapping[str, Any]] | Mapping[str, Any], *,
        max_steps: int = STEP_CAP) -> dict[str, Any]:
  """Runs a program.

  Returns:
    `{"steps": [{"pc", "regs", "stack", "emitted"}...], "output": [...],
    "halted": bool, "error": None or one of ERRORS}`; `halted` is False when
    the run ended with an error.
  """
  if isinstance(instructions, Mapping):   # golden.json's program_ir
    instructions = instructions["instructions"]
  prog = list(instructions)
  labels = {}
  for i, ins in enumerate(prog):
    if ins.get("label") is not None:
      labels.setdefault(ins["label"], i)
  regs = [0] * 8
  stack: list[int] = []
  steps: list[dict[str, Any]] = []
  output: list[int] = []

  def result(halted: bool, error: str | None) -> dict[str, Any]:
    return {"steps": steps, "output": output, "halted": halted,
            "error": error}

  pc = 0
  while 0 <= pc < len(prog):
    if len(steps) >= max_steps:
      return result(False, "step_budget")
    ins = prog[pc]
    name = _name(ins["op"])
    if name is None:
      return result(False, "bad_opcode")
    args = list(ins["args"])
    nreg = N_REG_OPERANDS[name]
    rs = args[:nreg]
    if any(not 0 <= r < 8 for r in rs):
      return result(False, "bad_register")
    if name.startswith("USEROP"):
      return result(False, "userop")
    emitted = None
    next_pc = pc + 1
    if name == "LOAD":
      regs[rs[0]] = clamp(args[1])
    elif name == "MOV":
      regs[rs[0]] = regs[rs[1]]
    elif name == "NEG":
      regs[rs[0]] = clamp(-regs[rs[1]])
    elif name in _ARITH:
      regs[rs[0]] = _ARITH[name](regs[rs[1]], regs[rs[2]])
    elif name in ("JZ", "JMP"):
      if name == "JMP" or regs[rs[0]] == 0:
        if ins.get("target") not in labels:
          return result(False, "bad_target")
        next_pc = labels[ins["target"]]
    elif name == "PUSH":
      if len(stack) >= STACK_MAX:
        return result(False, "stack_overflow")
      stack.append(regs[rs[0]])
    elif name == "POP":
      if not stack:
        return result(False, "stack_underflow")
      regs[rs[0]] = stack.pop()
    elif name == "PRINT":
      emitted = regs[rs[0]]
      output.append(emitted)
    steps.append({"pc": pc, "regs": list(regs), "stack": list(stack),
                  "emitted": emitted})
    if name == "HALT":
      break
    pc = next_pc
  return result(True, None)
