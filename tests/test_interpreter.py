"""The exact interpreter against every reference trace, and its contracts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import golden, load_rows, row_files
from tinyvm_jax._src import interpreter
from tinyvm_jax._src import isa
from tinyvm_jax._src import program as P
from tinyvm_jax._src.interpreter import (VMError, execute, raise_for_error,
                                         run, trace_from_json, trace_to_json)

_TRACES = []


def _batched_run(programs, max_steps):
  _TRACES.append(max_steps)
  return jax.vmap(lambda p: run(p, max_steps=max_steps))(programs)


run_batch = jax.jit(_batched_run, static_argnames="max_steps")


def _round_up(x, m=64):
  return -(-x // m) * m


@pytest.mark.parametrize("name", row_files())
def test_every_reference_trace(name):
  rows = load_rows(name)
  max_len = _round_up(max(len(r["program"]) for r in rows))
  max_steps = _round_up(max(len(r["trace"]["steps"]) for r in rows) + 1)
  progs = P.stack([P.from_json(r["program"], max_len=max_len) for r in rows])
  traces = run_batch(progs, max_steps=max_steps)
  for i, row in enumerate(rows):
    got = trace_to_json(jax.tree_util.tree_map(lambda x, i=i: x[i], traces))
    assert got == row["trace"], f"{name} row {i}"


def test_every_golden_program():
  for g in golden():
    instructions = [dict(ins, op=isa.OP_NAMES[ins["op"]])
                    for ins in g["program_ir"]["instructions"]]
    assert execute(instructions) == g["expected_trace"], g["generator"]


def test_trace_json_round_trip():
  row = load_rows("tier2_eval_hard")[0]
  t = trace_from_json(row["trace"], max_steps=2048)
  assert trace_to_json(t) == row["trace"]


def test_same_result_alone_in_batch_jitted_or_not():
  rows = load_rows("tier2_eval_medium")[:9]
  progs = [P.from_json(r["program"], max_len=256) for r in rows]
  batch = run_batch(P.stack(progs), max_steps=1024)
  for i, prog in enumerate(progs):
    alone = run(jax.tree_util.tree_map(jnp.asarray, prog), max_steps=1024)
    in_batch = jax.tree_util.tree_map(lambda x, i=i: x[i], batch)
    jax.tree_util.tree_map(np.testing.assert_array_equal, alone, in_batch)


def test_second_call_does_not_retrace():
  rows = load_rows("tier1_eval_len_8")
  progs = P.stack([P.from_json(r["program"], max_len=16) for r in rows])
  run_batch(progs, max_steps=17)
  before = len(_TRACES)
  shifted = jax.tree_util.tree_map(lambda x: x[::-1].copy(), progs)
  run_batch(shifted, max_steps=17)
  assert len(_TRACES) == before


def _ins(op, *args, label=None, target=None):
  return {"op": op, "args": list(args), "label": label, "target": target}


def _run_one(instructions, max_steps=64):
  prog = P.from_json(instructions, max_len=32)
  return run(jax.tree_util.tree_map(jnp.asarray, prog), max_steps=max_steps)


@pytest.mark.parametrize("instructions, error, steps", [
    ([_ins("POP", 0)], isa.ERR_STACK_UNDERFLOW, 0),
    ([_ins("PUSH", 0, label="L0"), _ins("JMP", target="L0")],
     isa.ERR_STACK_OVERFLOW, 32),
    ([_ins("LOAD", 1, 3), _ins("USEROP_0", 0, 1)], isa.ERR_USEROP, 1),
    ([_ins("NOP", label="L0"), _ins("JMP", target="L0")],
     isa.ERR_STEP_BUDGET, 64),
    ([_ins("JMP", target="L9")], isa.ERR_BAD_TARGET, 0),
    ([_ins("LOAD", 8, 1)], isa.ERR_BAD_REGISTER, 0),
    ([_ins("MOV", 0, -1)], isa.ERR_BAD_REGISTER, 0),
])
def test_errors_are_values(instructions, error, steps):
  t = _run_one(instructions)
  assert int(t.error) == error
  assert int(t.num_steps) == steps
  assert not bool(t.halted)
  with pytest.raises(VMError, match=isa.ERROR_MESSAGES[error].split(" (")[0]):
    raise_for_error(t)


def test_untaken_jump_to_undefined_label_is_fine():
  t = _run_one([_ins("LOAD", 0, 1), _ins("JZ", 0, target="L5"),
                _ins("PRINT", 0)])
  assert int(t.error) == 0 and bool(t.halted)


@pytest.mark.parametrize("a, b, op, want", [
    (-1024, -1, "DIV", 1023), (-7, 2, "DIV", -3), (7, -2, "DIV", -3),
    (5, 0, "DIV", 0), (1023, 1023, "MUL", 1023), (-1024, 1023, "MUL", -1024),
    (1023, 1, "ADD", 1023), (-1024, 1, "SUB", -1024), (-1024, 0, "NEG", 1023),
    (3, 3, "EQ", 1), (2, 3, "LT", 1), (3, 2, "LT", 0),
])
def test_arithmetic_edges(a, b, op, want):
  # Build a and b by repeated doubling so values at the clamp edges appear.
  def make(reg, v):
    return [_ins("LOAD", reg, 0)] if v == 0 else _make_value(reg, v)
  ins = make(1, a) + make(2, b)
  ins.append(_ins(op, 0, 1) if op == "NEG" else _ins(op, 0, 1, 2))
  ins.append(_ins("PRINT", 0))
  assert execute(ins)["output"] == [want]


def _make_value(reg, v):
  """Instructions leaving value v in `reg` using R7 as scratch (|v|<=1024)."""
  sign = -1 if v < 0 else 1
  out = [_ins("LOAD", reg, 0)]
  rest = abs(v)
  while rest:
    k = min(rest, 127)
    out += [_ins("LOAD", 7, sign * k), _ins("ADD", reg, reg, 7)]
    rest -= k
  return out


def test_execute_refuses_malformed_program():
  with pytest.raises(P.ProgramError, match="instruction 0"):
    execute([{"op": "ADD", "args": [0]}])


def test_max_steps_must_be_positive():
  with pytest.raises(ValueError, match="max_steps must be >= 1"):
    _run_one([_ins("HALT")], max_steps=0)


def test_run_takes_the_numpy_program_from_json():
  prog = P.from_json([_ins("LOAD", 0, 5), _ins("PRINT", 0)])
  for runner in (interpreter.run, interpreter.run_straight_line):
    trace = runner(prog, max_steps=8)        # numpy leaves, no jnp.asarray
    assert interpreter.trace_to_json(trace)["output"] == [5]


def test_run_refuses_batched_programs_and_other_types():
  prog = P.from_json([_ins("LOAD", 0, 5), _ins("PRINT", 0)])
  batched = jax.tree_util.tree_map(lambda x: x[None], prog)
  with pytest.raises(ValueError, match="vmap for batches"):
    interpreter.run(batched, max_steps=8)
  with pytest.raises(TypeError, match="expected a Program"):
    interpreter.run([_ins("HALT")], max_steps=8)
