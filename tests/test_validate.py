"""Static validation (spec section 9, section 15's defects fixed)."""

import dataclasses
import gzip
import json
import pathlib

import numpy as np
import pytest

from tinyvm_jax._src import program as program_lib
from tinyvm_jax._src import validate
from tinyvm_jax._src.program import ProgramError

DATA = pathlib.Path(__file__).parent / "data"


def ins(op, *args, label=None, target=None):
  return {"op": op, "args": list(args), "label": label, "target": target}


def reference_programs():
  """(id, program) for every program in tests/data (golden IR included)."""
  out = []
  for x in json.loads(gzip.open(DATA / "golden.json.gz").read()):
    out.append((f"golden/{x['generator']}/{x['seed']}", x["program_ir"]))
  for path in sorted(DATA.glob("*.jsonl.gz")):
    with gzip.open(path) as f:
      for i, line in enumerate(f):
        row = json.loads(line)
        if "program" in row:
          out.append((f"{path.name}/{i}", row["program"]))
        else:  # userop rows: demos and target, with symbol and base form
          for j, d in enumerate(row["demos"] + [row["target"]]):
            out.append((f"{path.name}/{i}/{j}/with_symbol", d["with_symbol"]))
            out.append((f"{path.name}/{i}/{j}/base", d["base"]))
  return out


REFERENCE = reference_programs()


def test_reference_programs_are_many():
  assert len(REFERENCE) > 2000


@pytest.mark.parametrize("name", sorted({n.split("/")[0] for n, _ in REFERENCE}))
def test_reference_programs_pass(name):
  progs = [p for n, p in REFERENCE if n.split("/")[0] == name]
  failures = [(i, validate.find_issues(p)) for i, p in enumerate(progs)]
  assert [f for f in failures if f[1]] == []


@pytest.mark.parametrize("name", ["tier1_train.jsonl.gz", "tier2_train.jsonl.gz",
                                  "tier2_eval_hard.jsonl.gz"])
def test_reference_programs_pass_as_arrays(name):
  for n, p in REFERENCE:
    if n.split("/")[0] == name:
      prog = program_lib.from_json(p, max_len=len(p) + 5)  # padded
      assert validate.find_issues(prog) == [], n


# (id, program, index of the first issue, words its reason contains)
INVALID = [
    # section 15: the reference's stack defects
    ("pop_alone", [ins("POP", 0)], 0, "pops an empty stack"),
    ("push_loop_into_0", [ins("PUSH", 0, label="L0"), ins("JMP", target="L0")],
     0, "stack depth differs"),
    ("pop_loop_into_0",
     [ins("LOAD", 1, 1), ins("PUSH", 1), ins("POP", 1, label="L0"),
      ins("JMP", target="L0")], 2, "stack depth differs"),
    ("push_17", [ins("PUSH", 0)] * 17, 16, "past the stack's 16"),
    ("pop_after_jz_join",
     [ins("LOAD", 0, 0), ins("JZ", 0, target="L0"), ins("PUSH", 0),
      ins("POP", 1, label="L0")], 3, "stack depth differs"),
    ("jz_back_into_0_with_push",
     [ins("PUSH", 1, label="L0"), ins("POP", 2), ins("PUSH", 3),
      ins("JZ", 3, target="L0")], 0, "stack depth differs"),
    # operand counts, opcodes, labels, targets
    ("too_few_args", [ins("ADD", 1, 2)], 0, "expected 3 register"),
    ("too_many_args", [ins("LOAD", 1, 2, 3)], 0, "expected 1 register"),
    ("non_int_arg", [ins("MOV", 1, "R2")], 0, "integer operands"),
    ("unknown_op_name", [ins("NOP"), ins("FOO", 1)], 1, "unknown opcode"),
    ("unknown_op_number", [ins("NOP"), ins(21)], 1, "unknown opcode"),
    ("jz_without_target", [ins("LOAD", 0, 1), ins("JZ", 0)], 1,
     "missing jump target"),
    ("jmp_without_target", [ins("JMP")], 0, "missing jump target"),
    ("undefined_target", [ins("NOP", label="L1"), ins("JMP", target="L2")], 1,
     "L2 is not a defined label"),
    ("non_jump_undefined_target", [ins("NOP", target="L5")], 0,
     "L5 is not a defined label"),
    ("duplicate_label", [ins("NOP", label="L1"), ins("NOP", label="L1")], 1,
     "already defined at instruction 0"),
    ("malformed_label", [ins("NOP", label="X1")], 0, "not of the form"),
    # operand ranges (section 15: the reference checks neither)
    ("register_8", [ins("LOAD", 8, 1)], 0, "register operand 0 is 8"),
    ("register_minus_1", [ins("LOAD", 1, 1), ins("ADD", 2, 1, -1)], 1,
     "register operand 2 is -1"),
    ("print_register_8", [ins("PRINT", 8)], 0, "register operand 0 is 8"),
    ("jz_register_9", [ins("JZ", 9, target="L0"), ins("NOP", label="L0")], 0,
     "register operand 0 is 9"),
    ("userop_register_8", [ins("USEROP_1", 1, 2, 8)], 0,
     "register operand 2 is 8"),
    ("literal_128", [ins("LOAD", 0, 128)], 0, "literal 128 outside"),
    ("literal_minus_128", [ins("NOP"), ins("LOAD", 0, -128)], 1,
     "literal -128 outside"),
    # must-write of printed registers
    ("print_unwritten", [ins("PRINT", 1)], 0, "R1 is not written"),
    ("print_other_register", [ins("LOAD", 0, 5), ins("PRINT", 1)], 1,
     "R1 is not written"),
    ("print_written_on_one_branch",
     [ins("LOAD", 0, 0), ins("JZ", 0, target="L0"), ins("LOAD", 1, 3),
      ins("PRINT", 1, label="L0")], 3, "R1 is not written"),
    ("print_written_only_in_else",
     [ins("LOAD", 0, 1), ins("JZ", 0, target="L0"), ins("LOAD", 2, 4),
      ins("JMP", target="L1"), ins("LOAD", 3, 1, label="L0"),
      ins("PRINT", 2, label="L1")], 5, "R2 is not written"),
    ("print_written_after_loop_entry",
     [ins("LOAD", 0, 3), ins("PRINT", 1, label="L0"), ins("LOAD", 1, 1),
      ins("JZ", 0, target="L0")], 1, "R1 is not written"),
    ("print_unreachable_after_halt",
     [ins("LOAD", 1, 1), ins("HALT"), ins("PRINT", 1)], 2, "unreachable"),
    ("print_unreachable_jumped_over",
     [ins("LOAD", 1, 1), ins("JMP", target="L0"), ins("PRINT", 1),
      ins("NOP", label="L0")], 2, "unreachable"),
    ("print_after_pop_elsewhere",
     [ins("LOAD", 0, 1), ins("PUSH", 0), ins("POP", 2), ins("PRINT", 3)], 3,
     "R3 is not written"),
    # userops write the operand named by position (section 15): slot 0 writes
    # its first operand, not register R0
    ("userop_writes_position_not_register",
     [ins("LOAD", 3, 1), ins("USEROP_0", 2, 3), ins("PRINT", 0)], 2,
     "R0 is not written"),
    ("userop_does_not_write_second_operand",
     [ins("LOAD", 3, 1), ins("USEROP_0", 3, 5), ins("PRINT", 5)], 2,
     "R5 is not written"),
]


@pytest.mark.parametrize("prog,index,words", [c[1:] for c in INVALID],
                         ids=[c[0] for c in INVALID])
def test_invalid_programs_are_refused(prog, index, words):
  issues = validate.find_issues(prog)
  assert issues, "accepted"
  assert issues[0].index == index
  assert any(words in i.reason for i in issues if i.index == index), issues
  with pytest.raises(ProgramError, match=rf"^instruction {index}: "):
    validate.validate(prog)
  assert not validate.is_valid(prog)


VALID = [
    ("empty", []),
    ("push_16", [ins("PUSH", 0)] * 16 + [ins("POP", 1)] * 16),
    ("nop_loop_into_0", [ins("NOP", label="L0"), ins("JMP", target="L0")]),
    ("balanced_loop_into_0",
     [ins("PUSH", 0, label="L0"), ins("POP", 1), ins("JZ", 1, target="L0")]),
    ("print_written_on_both_branches",
     [ins("LOAD", 0, 1), ins("JZ", 0, target="L0"), ins("LOAD", 2, 4),
      ins("JMP", target="L1"), ins("LOAD", 2, 1, label="L0"),
      ins("PRINT", 2, label="L1")]),
    ("print_after_pop", [ins("PUSH", 0), ins("POP", 4), ins("PRINT", 4)]),
    ("falls_off_the_end_with_stack", [ins("PUSH", 0)]),
    ("non_jump_with_existing_target", [ins("NOP", label="L0", target="L0")]),
    ("unreachable_code_without_print",
     [ins("HALT"), ins("POP", 0), ins("PUSH", 9 - 9)]),
    ("literal_edges", [ins("LOAD", 0, -127), ins("LOAD", 7, 127),
                       ins("PRINT", 7)]),
    ("userop_writes_first_operand",
     [ins("LOAD", 3, 1), ins("USEROP_0", 2, 3), ins("PRINT", 2)]),
    ("jz_to_next", [ins("LOAD", 0, 0), ins("JZ", 0, target="L0"),
                    ins("PRINT", 0, label="L0")]),
    ("int_opcodes", [ins(0, 1, 5), ins(13, 1), ins(15)]),
]


@pytest.mark.parametrize("prog", [c[1] for c in VALID], ids=[c[0] for c in VALID])
def test_valid_programs_pass(prog):
  assert validate.find_issues(prog) == []
  validate.validate(prog)
  assert validate.find_issues(program_lib.from_json(prog, max_len=len(prog) + 2)) == []


def test_reports_every_issue_sorted():
  prog = [ins("PRINT", 1), ins("LOAD", 9, 200), ins("POP", 0)]
  issues = validate.find_issues(prog)
  assert [i.index for i in issues] == [0, 1, 1, 2]
  with pytest.raises(ProgramError, match=r"^instruction 0: .*\(and 3 more issues\)$"):
    validate.validate(prog)


def test_issue_is_frozen_and_printable():
  issue = validate.Issue(3, "why")
  assert str(issue) == "instruction 3: why"
  assert str(validate.Issue(-1, "why")) == "program: why"
  with pytest.raises(dataclasses.FrozenInstanceError):
    issue.index = 4


def test_userop_writes_by_position():
  prog = [ins("LOAD", 1, 1), ins("LOAD", 2, 1), ins("USEROP_1", 5, 1, 6),
          ins("PRINT", 6)]
  assert [i.index for i in validate.find_issues(prog)] == [3]
  assert validate.find_issues(prog, userop_writes={"USEROP_1": (0, 2)}) == []
  assert validate.find_issues(prog, userop_writes={17: (2,)}) == []
  assert validate.find_issues(prog, userop_writes={17: ()})[0].index == 3


@pytest.mark.parametrize("spec,words", [
    ({"USEROP_9": (0,)}, "not a userop slot"),
    ({3: (0,)}, "not a userop slot"),
    ({"USEROP_0": (2,)}, "operand positions 0..1"),
])
def test_bad_userop_writes(spec, words):
  with pytest.raises(ProgramError, match=words):
    validate.find_issues([ins("NOP")], userop_writes=spec)


# ------------------------------------------------------------ Program input
def _with(prog, **fields):
  return dataclasses.replace(prog, **{k: np.asarray(v, np.int32)
                                      for k, v in fields.items()})


def test_program_arrays_checked_directly():
  base = program_lib.from_json(
      [ins("LOAD", 0, 1), ins("JZ", 0, target="L0"), ins("NOP", label="L0"),
       ins("PRINT", 0)], max_len=6)
  assert validate.find_issues(base) == []
  bad_op = _with(base, op=np.where(np.arange(6) == 2, 21, base.op))
  assert validate.find_issues(bad_op)[0] == validate.Issue(2, "opcode 21 outside 0..20")
  bad_target = _with(base, target=[-1, 3, -1, -1, -1, -1])
  assert "disagrees with label L0" in validate.find_issues(bad_target)[0].reason
  dup = _with(base, label=[-1, -1, 0, 0, -1, -1])
  assert validate.find_issues(dup)[0].index == 3
  too_long = _with(base, length=7)
  assert validate.find_issues(too_long) == [validate.Issue(-1, "length 7 outside 0..6 "
                                                         "(the padded size)")]
  # padding rows are never looked at
  junk = _with(base, op=[0, 9, 14, 13, 12, 12], regs=np.full((6, 3), 9) *
               (np.arange(6) >= 4)[:, None])
  assert validate.find_issues(junk) == []


def test_program_of_jax_arrays():
  import jax.numpy as jnp
  import jax
  prog = program_lib.from_json([ins("POP", 0)], max_len=3)
  prog = jax.tree_util.tree_map(jnp.asarray, prog)
  assert validate.find_issues(prog)[0].index == 0


def test_golden_ir_label_index_checked():
  ir = {"instructions": [ins(14, label="L0"), ins(10, target="L0")],
        "label_index": {"L0": 0}}
  assert validate.find_issues(ir) == []
  ir["label_index"] = {"L0": 1}
  assert validate.find_issues(ir)[0].index == -1


@pytest.mark.parametrize("bad", ["LOAD R0 1", 3, None, {"program": []}])
def test_bad_input_type(bad):
  with pytest.raises(TypeError):
    validate.find_issues(bad)


def test_batched_program_refused():
  prog = program_lib.stack([program_lib.from_json([ins("NOP")])] * 2)
  with pytest.raises(ProgramError, match="unbatched"):
    validate.find_issues(prog)
