"""What the viewer's pages show, as JSON-ready dicts.

`row_view(row)` turns a reference row dict (`meta`, `program`, `trace`,
`renders`) into the step view's model: the program as assembly lines, each
step with the register it wrote and whether that write was clamped, the
stack, the output, a fault if the run ended in one, and each render's text
and ids. `run_source(text)` is the Playground: it parses and validates
assembly and runs it on the JAX interpreter at fixed sizes (one
compilation for every program), returning diagnostics and the same view.

Seeds are u64 and travel as decimal strings (JavaScript numbers hold 53
bits).
"""

import threading
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from tinyvm_jax._src import asm
from tinyvm_jax._src import interpreter
from tinyvm_jax._src import isa
from tinyvm_jax._src import program as program_lib
from tinyvm_jax._src import validate as validate_lib

MAX_PROGRAM = 256          # P: instructions the Playground runs
MAX_STEPS = 4096           # S: steps the Playground runs
MAX_SOURCE_CHARS = 32_768  # characters of Playground source
_RUN = jax.jit(interpreter.run, static_argnames="max_steps")
_RUN_LOCK = threading.Lock()


def _raw_write(op: int, args: Sequence[int], regs: Sequence[int],
               stack: Sequence[int]) -> int | None:
  """The unclamped value instruction `op args` writes from state (regs,
  stack) before it; None when it writes nothing."""
  reg = lambda j: int(regs[args[j]]) if 0 <= args[j] < len(regs) else 0
  if op == isa.LOAD:
    return int(args[1])
  if op == isa.POP:
    return int(stack[-1]) if stack else None
  if not isa.WRITES_REG[op]:
    return None
  a = reg(1)
  if op in (isa.MOV, isa.NEG):
    return a if op == isa.MOV else -a
  b = reg(2)
  if op == isa.DIV:
    return 0 if b == 0 else (abs(a) // abs(b)) * (1 if (a < 0) == (b < 0)
                                                  else -1)
  return {isa.ADD: a + b, isa.SUB: a - b, isa.MUL: a * b,
          isa.EQ: int(a == b), isa.LT: int(a < b)}[op]


def step_records(program: Sequence[Mapping[str, Any]],
                 steps: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """The trace's steps with `written` (register index or None) and
  `clamped` (the written value was cut to [-1024, 1023]) added."""
  out = []
  regs, stack = [0] * isa.NUM_REGS, []
  for st in steps:
    pc = int(st.get("pc", 0))
    ins = program[pc] if 0 <= pc < len(program) else {"op": "NOP",
                                                      "args": []}
    op = isa.OP_IDS.get(ins.get("op"), isa.NOP)
    args = list(ins.get("args") or [])
    raw = _raw_write(op, args, regs, stack) if args or op == isa.POP else None
    written = int(args[0]) if raw is not None and args else None
    clamped = raw is not None and not (isa.VALUE_MIN <= raw <= isa.VALUE_MAX)
    regs, stack = list(st.get("regs") or regs), list(st.get("stack") or [])
    out.append({"pc": pc, "regs": regs, "stack": stack,
                "emitted": st.get("emitted"), "written": written,
                "clamped": clamped, "raw": raw if clamped else None})
  return out


def _next_pc(program, steps) -> int:
  """Where a run stopped: the instruction after the last recorded step."""
  if not steps:
    return 0
    # (an empty trace faulted at instruction 0)
  last = steps[-1]
  ins = program[last["pc"]]
  target = ins.get("target")
  labels = {p.get("label"): i for i, p in enumerate(program)}
  jumps = ins["op"] == "JMP" or (ins["op"] == "JZ" and
                                 last["regs"][ins["args"][0]] == 0)
  return labels.get(target, -1) if jumps else last["pc"] + 1


def _token_names(ids: Sequence[int]) -> list[str]:
  return [isa.TOKENS[t] if 0 <= t < isa.VOCAB_SIZE else f"#{t}"
          for t in ids]


def row_view(row: Mapping[str, Any], **meta: Any) -> dict[str, Any]:
  """The step view's model of one reference row dict.

  Args:
    row: `{"meta", "program", "trace", "renders"}`; `trace["error"]`, when
      present, is the message of the fault the run ended in.
    **meta: extra keys for the view's `meta` (dataset, group, index, ...).

  Returns:
    A JSON-ready dict: meta (seed as a string), lines (assembly), steps
    (see `step_records`), output, halted, fault (None or {message, pc}),
    renders ([{name, input_text, target_text, input_ids, target_ids,
    input_tokens, target_tokens}]).
  """
  try:
    program = list(row["program"])
    trace = row["trace"]
    steps = list(trace["steps"])
    text = asm.to_asm(program_lib.from_json(program))
  except (KeyError, TypeError, ValueError) as e:
    raise ValueError(f"malformed row: {type(e).__name__}: {e}") from None
  m = dict(row.get("meta") or {})
  if m.get("seed") is not None:
    m["seed"] = str(m["seed"])
  m.update(meta)
  fault = None
  if trace.get("error"):
    fault = {"message": str(trace["error"]), "pc": _next_pc(program, steps)}
  renders = []
  for name, r in (row.get("renders") or {}).items():
    if not isinstance(r, Mapping):
      continue
    renders.append({
        "name": name, "input_text": r.get("input_text", ""),
        "target_text": r.get("target_text", ""),
        "input_ids": list(r.get("input_ids") or []),
        "target_ids": list(r.get("target_ids") or []),
        "input_tokens": _token_names(r.get("input_ids") or []),
        "target_tokens": _token_names(r.get("target_ids") or [])})
  return {"kind": "row", "meta": m,
          "lines": [{"text": t, "label": p.get("label")}
                    for t, p in zip(text.splitlines(), program)],
          "steps": step_records(program, steps),
          "output": list(trace.get("output") or []),
          "halted": bool(trace.get("halted")), "fault": fault,
          "renders": renders}


def _diagnostic(line: int, column: int, message: str, severity="error"):
  return {"line": line, "column": column, "message": message,
          "severity": severity}


def check_source(source: str) -> tuple[list[dict], list[dict] | None]:
  """(diagnostics, instructions or None): syntax errors stop the parse;
  `validate`'s issues are reported on their instruction's line."""
  if len(source) > MAX_SOURCE_CHARS:
    return [_diagnostic(1, 1, f"the source has {len(source):,} characters, "
                        f"more than {MAX_SOURCE_CHARS:,}")], None
  try:
    parsed = asm.parse_asm_lines(source)
  except asm.AsmError as e:
    return [_diagnostic(e.line, e.column, e.msg)], None
  ins, lines = parsed
  if len(ins) > MAX_PROGRAM:
    return [_diagnostic(lines[MAX_PROGRAM], 1, f"the Playground runs at "
                        f"most {MAX_PROGRAM} instructions")], None
  diags = []
  for issue in validate_lib.find_issues(ins):
    line = lines[issue.index] if 0 <= issue.index < len(lines) else 1
    diags.append(_diagnostic(line, 1, issue.reason, "warning"))
  return diags, ins


def run_source(source: str) -> dict[str, Any]:
  """Parses, validates and runs Playground source.

  Returns:
    {"diagnostics": [{line, column, message, severity}], "view": the
    row view of the run (None when the source does not parse)}. A program
    that `validate` rejects still runs (its issues are warnings); a run
    that faults or exceeds MAX_STEPS has a `fault`.
  """
  diags, ins = check_source(source)
  if ins is None:
    return {"diagnostics": diags, "view": None}
  prog = program_lib.from_json(ins, max_len=MAX_PROGRAM)
  with _RUN_LOCK:   # one run at a time: the CPU is shared
    trace = jax.device_get(_RUN(prog, max_steps=MAX_STEPS))
  tj = interpreter.trace_to_json(trace)
  if int(trace.error):
    msg = isa.ERROR_MESSAGES[int(trace.error)]
    if int(trace.error) == isa.ERR_STEP_BUDGET:
      msg = f"no HALT within the Playground's {MAX_STEPS:,} steps"
    tj["error"] = msg
  view = row_view({"meta": {"source": "playground"}, "program": ins,
                   "trace": tj, "renders": {}})
  return {"diagnostics": diags, "view": view}


def warm_up() -> None:
  """Compiles the Playground's interpreter (call from a thread)."""
  run_source("HALT")


# Example programs for the Playground: a row of every tier (row 0 of an
# eval bucket: Tier 0 the reference's, Tier 1 and 2 ours at seed base 0) and
# a few written by hand to show a loop, the stack, a clamp and a fault.
EXAMPLES: tuple[tuple[str, str], ...] = (
    ("tier0: counter (eval all)", """\
LOAD R0 127
ADD R0 R0 R0
MOV R0 R0
MOV R0 R0
MOV R0 R0
MOV R0 R0
ADD R0 R0 R0
SUB R0 R0 R0
PRINT R0
HALT
"""),
    ("tier1: register trace (eval len_8)", """\
LT R0 R7 R3
EQ R7 R7 R6
MOV R6 R3
MUL R7 R3 R6
DIV R0 R6 R0
MOV R6 R7
LOAD R7 58
DIV R7 R3 R0
PRINT R7
HALT
"""),
    ("tier2: branches (eval easy)", """\
LOAD R5 1
LOAD R7-21
NEG R6 R5
DIV R7 R7 R5
DIV R7 R4 R4
DIV R6 R7 R6
EQ R4 R6 R7
JZ R4 L0
LOAD R7-123
ADD R7 R5 R6
MOV R7 R6
LOAD R6 103
MUL R7 R5 R6
NEG R4 R4
MUL R6 R5 R4
MOV R4 R5
SUB R6 R5 R6
NEG R6 R6
SUB R6 R7 R5
SUB R6 R5 R6
LT R6 R7 R5
DIV R6 R4 R5
SUB R7 R7 R6
LOAD R6 23
L0:NOP
PRINT R7
HALT
"""),
    ("written: if-else, then a countdown loop", """\
LOAD R0 1
LOAD R5 -17
LOAD R2 40
SUB R3 R2 R5
MUL R4 R3 R0
LOAD R6 3
LT R1 R5 R2
JZ R1 L0
ADD R5 R5 R3
JMP L1
L0:SUB R5 R5 R3
L1:NOP
LOAD R6 3
L2:ADD R4 R4 R5
SUB R6 R6 R0
JZ R6 L3
JMP L2
L3:NOP
PRINT R4
HALT
"""),
    ("written: one stack frame", """\
LOAD R0 1
LOAD R3 25
MUL R2 R3 R3
PUSH R2
LOAD R2 -9
ADD R4 R2 R0
POP R5
SUB R5 R5 R4
PRINT R5
HALT
"""),
    ("written: values saturate at 1023", """\
LOAD R1 127
MUL R2 R1 R1     ; 16129 is clamped to 1023
NEG R3 R2
SUB R3 R3 R1     ; -1150 is clamped to -1024
PRINT R2
PRINT R3
HALT
"""),
    ("written: a stack underflow fault", """\
LOAD R0 7
PUSH R0
POP R1
POP R2           ; the stack is empty here
PRINT R1
HALT
"""),
)


def examples() -> list[dict[str, str]]:
  return [{"name": n, "source": s} for n, s in EXAMPLES]
