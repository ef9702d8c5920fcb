"""The interpreter against an independent Python Tiny-VM (tests/pyvm.py).

pyvm is itself checked against every reference trace in tests/data; then the
jitted, vmapped `interpreter.run` must agree with it step for step, error
code included, on hand-picked edge cases and on random valid and invalid
programs (hypothesis). All programs are padded to `P` and run for `S` steps so
that the interpreter compiles once.
"""

import gzip
import json
import pathlib

import hypothesis
from hypothesis import strategies as st
import jax
import numpy as np
import pytest

import pyvm
from tinyvm_jax._src import interpreter
from tinyvm_jax._src import isa
from tinyvm_jax._src import program as program_lib
from tinyvm_jax._src import validate

DATA = pathlib.Path(__file__).parent / "data"
P = 48   # static program length
S = 40   # static step budget
ERROR_CODES = {
    None: isa.ERR_NONE,
    "stack_overflow": isa.ERR_STACK_OVERFLOW,
    "stack_underflow": isa.ERR_STACK_UNDERFLOW,
    "userop": isa.ERR_USEROP,
    "step_budget": isa.ERR_STEP_BUDGET,
    "bad_target": isa.ERR_BAD_TARGET,
    "bad_register": isa.ERR_BAD_REGISTER,
    "bad_opcode": isa.ERR_BAD_OPCODE,
}
SETTINGS = hypothesis.settings(max_examples=200, deadline=None,
                               suppress_health_check=[
                                   hypothesis.HealthCheck.too_slow])

_TRACES = []


def _run_one(program):
  _TRACES.append(1)   # counts traces: a retrace would append again
  return interpreter.run(program, max_steps=S)


_run_batch = jax.jit(jax.vmap(_run_one))


def ins(op, *args, label=None, target=None):
  return {"op": op, "args": list(args), "label": label, "target": target}


def run_jax(prog):
  """Runs one program (JSON list or Program) through the jitted batch path."""
  if not isinstance(prog, program_lib.Program):
    prog = program_lib.from_json(prog, max_len=P)
  trace = _run_batch(program_lib.stack([prog]))
  return jax.tree_util.tree_map(lambda x: np.asarray(x)[0], trace)


def assert_agree(prog_json, prog=None):
  """The interpreter's trace equals pyvm's, error code included."""
  want = pyvm.run(prog_json, max_steps=S)
  trace = run_jax(prog if prog is not None else prog_json)
  got = interpreter.trace_to_json(trace)
  assert int(trace.error) == ERROR_CODES[want["error"]], (
      int(trace.error), want["error"])
  assert got["steps"] == want["steps"]
  assert got["output"] == want["output"]
  assert got["halted"] == want["halted"]
  n = int(trace.num_steps)
  assert not trace.pc[n:].any() and not trace.regs[n:].any()
  assert not trace.output[int(trace.num_output):].any()
  return want


# ------------------------------------------------------------ the oracle itself
def _reference_traces():
  out = []
  for x in json.loads(gzip.open(DATA / "golden.json.gz").read()):
    out.append(("golden.json.gz", x["program_ir"], x["expected_trace"]))
  for path in sorted(DATA.glob("*.jsonl.gz")):
    with gzip.open(path) as f:
      for line in f:
        row = json.loads(line)
        if "program" in row:
          out.append((path.name, row["program"], row["trace"]))
        else:
          for d in row["demos"] + [row["target"]]:
            out.append((path.name, d["base"], d["trace"]))
            out.append((path.name, d["with_symbol"], None))
  return out


REFERENCE = _reference_traces()


@pytest.mark.parametrize("name", sorted({r[0] for r in REFERENCE}))
def test_pyvm_reproduces_reference_traces(name):
  for _, prog, trace in (r for r in REFERENCE if r[0] == name):
    got = pyvm.run(prog)
    if trace is None:   # a userop program with its symbol: running it fails
      assert got["error"] == "userop"
      continue
    assert got.pop("error") is None
    assert got == trace


# ------------------------------------------------------------ edge cases
def _value(v, r=1):
  """Instructions leaving exactly `v` (in [-1024, 1023]) in register r,
  built from LOAD literals within [-127, 127] (clobbers R7 for big values)."""
  if -127 <= v <= 127:
    return [ins("LOAD", r, v)]
  step = "ADD" if v > 0 else "SUB"
  q, m = divmod(abs(v), 127)
  return ([ins("LOAD", 7, 127), ins("LOAD", r, 0)] + [ins(step, r, r, 7)] * q
          + [ins("LOAD", 7, m), ins(step, r, r, 7)])


def _binop(op, a, b):
  return _value(a, 1) + _value(b, 2) + [ins(op, 3, 1, 2), ins("PRINT", 3)]


ARITH = [
    ("ADD", 1023, 1, 1023), ("ADD", -1023, -1, -1024), ("ADD", -1024, -1, -1024),
    ("SUB", -1024, 1, -1024), ("SUB", 1023, -1, 1023), ("SUB", -1, 1023, -1024),
    ("MUL", 1023, 1023, 1023), ("MUL", -1024, 1023, -1024), ("MUL", 32, 32, 1023),
    ("MUL", -32, 32, -1024), ("MUL", 31, 33, 1023), ("MUL", -1, -1024, 1023),
    ("DIV", -1024, -1, 1023), ("DIV", 7, 2, 3), ("DIV", -7, 2, -3),
    ("DIV", 7, -2, -3), ("DIV", -7, -2, 3), ("DIV", 5, 0, 0), ("DIV", 0, 0, 0),
    ("DIV", -1024, 0, 0), ("DIV", 1, 1023, 0), ("DIV", -1024, 1023, -1),
    ("EQ", -1024, -1024, 1), ("EQ", 1, -1, 0), ("LT", -1024, 1023, 1),
    ("LT", 5, 5, 0), ("LT", 1023, -1024, 0),
]


@pytest.mark.parametrize("op,a,b,want", ARITH,
                         ids=[f"{o}({a},{b})" for o, a, b, _ in ARITH])
def test_arithmetic_edges(op, a, b, want):
  assert pyvm.run(_value(a, 1), max_steps=S)["steps"][-1]["regs"][1] == a
  result = assert_agree(_binop(op, a, b))
  assert result["output"] == [want]


@pytest.mark.parametrize("v,want", [(-1024, 1023), (1023, -1023), (0, 0),
                                    (-1, 1)])
def test_neg_edges(v, want):
  result = assert_agree(_value(v, 1) + [ins("NEG", 2, 1), ins("PRINT", 2)])
  assert result["output"] == [want]


@pytest.mark.parametrize("k", [-127, 127, 0, 128, -128, 1023, 1024, -1025,
                               9999, -9999])
def test_load_clamps_its_literal(k):
  result = assert_agree([ins("LOAD", 4, k), ins("PRINT", 4)])
  assert result["output"] == [max(-1024, min(1023, k))]


LOOP = [ins("LOAD", 0, 1), ins("NOP", label="L0"), ins("ADD", 1, 1, 0),
        ins("JMP", target="L0")]
EDGE_PROGRAMS = [
    ("push_16", [ins("PUSH", 0)] * 16, None),
    ("push_17", [ins("PUSH", 0)] * 17, "stack_overflow"),
    ("push_16_pop_16", [ins("LOAD", 0, 3)] + [ins("PUSH", 0)] * 16
     + [ins("POP", 1)] * 16 + [ins("PRINT", 1)], None),
    ("pop_empty", [ins("POP", 0)], "stack_underflow"),
    ("pop_after_push_pop", [ins("PUSH", 0), ins("POP", 0), ins("POP", 0)],
     "stack_underflow"),
    ("push_loop_overflows", [ins("PUSH", 0, label="L0"), ins("JMP", target="L0")],
     "stack_overflow"),
    ("loop_hits_budget", LOOP, "step_budget"),
    ("exactly_budget_then_end", [ins("NOP")] * S, None),
    ("exactly_budget_then_halt", [ins("NOP")] * (S - 1) + [ins("HALT")], None),
    ("budget_plus_one", [ins("NOP")] * (S + 1), "step_budget"),
    ("countdown_loop",
     [ins("LOAD", 0, 5), ins("LOAD", 1, 1), ins("SUB", 0, 0, 1, label="L0"),
      ins("PRINT", 0), ins("JZ", 0, target="L1"), ins("JMP", target="L0"),
      ins("HALT", label="L1"), ins("PRINT", 0)], None),
    ("forward_jump", [ins("JMP", target="L0"), ins("LOAD", 0, 9),
                      ins("PRINT", 0, label="L0")], None),
    ("jz_not_taken", [ins("LOAD", 0, 2), ins("JZ", 0, target="L0"),
                      ins("PRINT", 0), ins("PRINT", 0, label="L0")], None),
    ("jz_back_to_0", [ins("ADD", 1, 1, 2, label="L0"), ins("LOAD", 2, 1),
                      ins("LT", 3, 1, 2), ins("EQ", 3, 3, 4),
                      ins("JZ", 3, target="L0"), ins("PRINT", 1)], None),
    ("halt_stops", [ins("HALT"), ins("POP", 0)], None),
    ("register_8", [ins("LOAD", 1, 1), ins("LOAD", 8, 1)], "bad_register"),
    ("register_minus_1", [ins("LOAD", 1, 1), ins("MOV", 2, -1)], "bad_register"),
    ("print_register_8", [ins("PRINT", 8)], "bad_register"),
    ("pop_register_8_empty", [ins("POP", 8)], "bad_register"),
    ("undefined_target_taken", [ins("NOP"), ins("JMP", target="L3")],
     "bad_target"),
    ("undefined_target_jz_taken", [ins("JZ", 0, target="L3")], "bad_target"),
    ("undefined_target_not_taken", [ins("LOAD", 0, 1), ins("JZ", 0, target="L3"),
                                    ins("PRINT", 0)], None),
    ("userop", [ins("LOAD", 1, 2), ins("USEROP_0", 0, 1), ins("PRINT", 0)],
     "userop"),
    ("userop_4", [ins("USEROP_4", 0, 1)], "userop"),
    ("userop_bad_register", [ins("USEROP_3", 0, 1, 8)], "bad_register"),
    ("empty", [], None),
]


@pytest.mark.parametrize("prog,error", [c[1:] for c in EDGE_PROGRAMS],
                         ids=[c[0] for c in EDGE_PROGRAMS])
def test_edge_programs(prog, error):
  assert assert_agree(prog)["error"] == error


def test_bad_opcode():
  prog = program_lib.from_json([ins("LOAD", 0, 1), ins("NOP")], max_len=P)
  prog = prog.replace(op=np.where(np.arange(P) == 1, isa.NUM_OPS, prog.op))
  assert assert_agree([ins("LOAD", 0, 1), ins(isa.NUM_OPS)], prog)["error"] == (
      "bad_opcode")


def test_pyvm_unknown_opcode_name():
  assert pyvm.run([ins("FOO")])["error"] == "bad_opcode"


# ------------------------------------------------------------ random programs
REG = st.integers(0, 7)
EDGE_LITS = st.sampled_from([-127, -1, 0, 1, 2, 127])
LIT = st.one_of(EDGE_LITS, st.integers(-127, 127))
BAD_LIT = st.one_of(LIT, st.sampled_from([-9999, -1025, -128, 128, 1024, 9999]))
FILL = ("LOAD", "MOV", "ADD", "SUB", "MUL", "DIV", "NEG", "EQ", "LT")

# values near the clamp edges, built from LOAD/ADD/MUL/NEG/SUB
EDGE_RECIPES = [
    lambda r: [ins("LOAD", r, 127), ins("MUL", r, r, r)],                  # 1023
    lambda r: [ins("LOAD", r, -127), ins("LOAD", 7, 127),
               ins("MUL", r, r, 7)],                                       # -1024
    lambda r: [ins("LOAD", r, 32), ins("MUL", r, r, r), ins("NEG", r, r),
               ins("LOAD", 7, 1), ins("SUB", r, r, 7)],                    # -1024
    lambda r: [ins("LOAD", r, 31), ins("LOAD", 7, 33), ins("MUL", r, r, 7)],
    lambda r: [ins("LOAD", r, -1)],
    lambda r: [ins("LOAD", r, 0)],
]


@st.composite
def fill_op(draw, reg=REG, lit=LIT):
  op = draw(st.sampled_from(FILL))
  if op == "LOAD":
    return ins(op, draw(reg), draw(lit))
  return ins(op, *[draw(reg) for _ in range(pyvm.N_REG_OPERANDS[op])])


@st.composite
def edge_prelude(draw):
  prog = []
  for r in draw(st.lists(st.integers(0, 6), max_size=3)):
    prog += draw(st.sampled_from(EDGE_RECIPES))(r)
  return prog


@st.composite
def any_program(draw, invalid=True):
  """Arbitrary instruction lists over all 21 opcodes: mostly invalid ones
  (unwritten prints, unbalanced stacks, runs of pushes, userops, and when
  `invalid` some of: registers -1/8/9, literals beyond [-127, 127], jumps to
  an undefined label)."""
  faults = draw(st.sets(st.sampled_from(["reg", "lit", "target"]))
                ) if invalid else set()
  reg = st.one_of(*[REG] * 12, st.sampled_from([-1, 8, 9])) if (
      "reg" in faults) else REG
  lit = BAD_LIT if "lit" in faults else LIT
  prog = draw(edge_prelude())
  n = draw(st.integers(0, P - len(prog)))
  labels = [f"L{i}" for i in range(draw(st.integers(0, 4)))]
  targets = labels + (["L77"] * 2 if "target" in faults else [])
  while len(prog) < n:
    kind = draw(st.sampled_from(["fill"] * 12 + ["control"] * 8 + ["userop"]
                                + ["pushes"]))
    if kind == "fill":
      prog.append(draw(fill_op(reg, lit)))
    elif kind == "pushes":
      r = draw(reg)
      prog += [ins("PUSH", r) for _ in range(draw(st.integers(1, 17)))]
    else:
      op = draw(st.sampled_from(pyvm.NAMES[9:16] if kind == "control"
                                else pyvm.NAMES[16:]))
      args = [draw(reg) for _ in range(pyvm.N_REG_OPERANDS[op])]
      target = draw(st.sampled_from(targets)) if (
          op in ("JZ", "JMP") and targets) else None
      if op in ("JZ", "JMP") and target is None:
        op, args = "NOP", []
      prog.append(ins(op, *args, target=target))
  prog = prog[:P]
  if prog and labels:
    k = min(len(labels), len(prog))
    where = draw(st.lists(st.integers(0, len(prog) - 1), unique=True,
                          min_size=k, max_size=k))
    for lab, i in zip(labels, where):
      prog[i]["label"] = lab
  return prog


@st.composite
def valid_program(draw):
  """Structured programs that validate: a prelude writes the registers that
  will be printed; blocks are fill ops, prints, balanced push/pop frames
  (up to 16 deep), if, if-else and loops (which may run out of budget)."""
  printable = draw(st.lists(st.integers(0, 6), min_size=1, max_size=4,
                           unique=True))
  prog = [ins("LOAD", r, draw(LIT)) for r in printable]
  for r in draw(st.lists(st.sampled_from(printable), max_size=3)):
    prog += draw(st.sampled_from(EDGE_RECIPES))(r)   # edge values to print
  next_label = [0]

  def label():
    next_label[0] += 1
    return f"L{next_label[0] - 1}"

  def straight(max_size=3):
    return [draw(st.one_of(fill_op(),
                           st.builds(lambda r: ins("PRINT", r),
                                     st.sampled_from(printable)))),
            ] + draw(st.lists(fill_op(), max_size=max_size - 1))

  def nop(lab):
    return ins("NOP", label=lab)

  for _ in range(draw(st.integers(0, 5))):
    if len(prog) > P - 14:   # room for the longest block below, a frame aside
      break
    kind = draw(st.sampled_from(["ops", "frame", "if", "ifelse", "loop",
                                 "spin"]))
    if kind == "ops":
      prog += straight()
    elif kind == "frame":
      room = len(prog) + 2 * 16 + 2 + 2 <= P   # frame, its ops, final 2
      depth = draw(st.sampled_from([1, 2, 16] if room else [1, 2]))
      prog += [ins("PUSH", draw(REG)) for _ in range(depth)]
      prog += draw(st.lists(fill_op(), max_size=2))
      prog += [ins("POP", draw(REG)) for _ in range(depth)]
    elif kind == "if":
      after = label()
      prog += [ins("JZ", draw(REG), target=after)] + straight() + [nop(after)]
    elif kind == "ifelse":
      els, after = label(), label()
      prog += [ins("JZ", draw(REG), target=els)] + straight()
      prog += [ins("JMP", target=after), nop(els)] + straight() + [nop(after)]
    elif kind == "loop":   # countdown from a small count
      top, done, c, one = label(), label(), draw(REG), draw(REG)
      prog += [ins("LOAD", c, draw(st.integers(1, 4))), ins("LOAD", one, 1),
               nop(top)] + straight(2)
      prog += [ins("SUB", c, c, one), ins("JZ", c, target=done),
               ins("JMP", target=top), nop(done)]
    else:                  # jump back while a register is zero
      top = label()
      prog += [nop(top)] + straight(2) + [ins("JZ", draw(REG), target=top)]
  if draw(st.booleans()):
    prog.append(ins("PRINT", draw(st.sampled_from(printable))))
  if draw(st.booleans()):
    prog.append(ins("HALT"))
  return prog


def _check_validator_soundness(prog, result):
  """On a valid program no static fault happens at run time and every PRINT
  prints a register written earlier in the run."""
  assert result["error"] in (None, "step_budget", "userop"), result["error"]
  written = set()
  for step in result["steps"]:
    i = prog[step["pc"]]
    if i["op"] == "PRINT":
      assert i["args"][0] in written
    if i["op"] in FILL or i["op"] == "POP":
      written.add(i["args"][0])


@SETTINGS
@hypothesis.given(valid_program())
def test_valid_programs_agree(prog):
  assert len(prog) <= P
  assert validate.find_issues(prog) == []
  result = assert_agree(prog)
  _check_validator_soundness(prog, result)


@SETTINGS
@hypothesis.given(any_program(invalid=True))
def test_any_program_agrees(prog):
  result = assert_agree(prog)
  if validate.is_valid(prog):
    _check_validator_soundness(prog, result)


@SETTINGS
@hypothesis.given(any_program(invalid=False))
def test_in_range_programs_agree(prog):
  result = assert_agree(prog)
  if validate.is_valid(prog):
    _check_validator_soundness(prog, result)


def test_no_retrace():
  """Programs of the same padded shape share one compiled function."""
  run_jax([ins("NOP")])
  before = len(_TRACES)
  run_jax([ins("LOAD", 0, 1), ins("PRINT", 0), ins("HALT")])
  run_jax([ins("POP", 3)])
  assert len(_TRACES) == before
