"""Assembly text both ways: the renders' syntax, round trips, errors."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import golden, load_rows, row_files
import tinyvm_jax as tv
from tinyvm_jax._src import isa
from tinyvm_jax._src import program as program_lib


def _same(a, b):
  for f in program_lib.Program.__dataclass_fields__:
    np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)


@pytest.mark.parametrize("name", row_files())
def test_fixture_programs_round_trip_and_match_the_render_text(name):
  for row in load_rows(name):
    prog = tv.from_json(row["program"])
    text = tv.to_asm(prog)
    assert tv.to_json(tv.parse_asm(text)) == row["program"]
    _same(tv.parse_asm(text), prog)
    if "probe" in row or "userop" in name:
      continue
    # the render's input text is the program's text, each line with a
    # trailing space where the last token adds one
    rendered = next(iter(row["renders"].values()))["input_text"]
    assert [line.rstrip(" ") for line in rendered.splitlines()] == (
        text.splitlines())


def test_golden_programs_round_trip():
  for case in golden():
    prog = case["program_ir"]["instructions"]
    prog = [dict(ins, op=isa.OP_NAMES[ins["op"]]) if isinstance(
        ins["op"], int) else ins for ins in prog]
    assert tv.to_json(tv.parse_asm(tv.to_asm(prog))) == tv.to_json(
        tv.from_json(prog))


@st.composite
def programs(draw):
  n = draw(st.integers(0, 12))
  labels = draw(st.lists(st.integers(0, 9999), max_size=n, unique=True))
  where = draw(st.lists(st.integers(0, max(n - 1, 0)), min_size=len(labels),
                        max_size=len(labels), unique=True)) if n else []
  out = []
  for i in range(n):
    op = draw(st.integers(0, isa.NUM_OPS - 1))
    args = [draw(st.integers(0, 7)) for _ in range(int(isa.REG_ARGS[op]))]
    if isa.LIT_ARGS[op]:
      args.append(draw(st.integers(-9999, 9999)))
    target = None
    if isa.HAS_TARGET[op] or draw(st.integers(0, 9)) == 0:
      target = f"L{draw(st.integers(0, 9999))}"
    label = f"L{labels[where.index(i)]}" if i in where else None
    out.append({"op": isa.OP_NAMES[op], "args": args, "label": label,
                "target": target})
  return out


@settings(max_examples=300, deadline=None)
@given(programs())
def test_random_programs_round_trip(instructions):
  prog = tv.from_json(instructions)
  text = tv.to_asm(prog)
  assert tv.to_json(tv.parse_asm(text)) == instructions
  # the text is the detokenized encoding, trailing spaces aside
  assert text.splitlines() == [
      line.rstrip(" ") for line in tv.detokenize(tv.encode(prog)).splitlines()]


def test_what_people_type_is_accepted():
  text = """
  ; a comment line
  load r3 5        ; lower case
  LOAD R2 -42
  LOAD R1-7
  L4 :  add R3 R2 R1
  jz R3 L4
  double R1 R2
  PRINT R3
  HALT"""
  assert tv.to_asm(tv.parse_asm(text)) == (
      "LOAD R3 5\nLOAD R2-42\nLOAD R1-7\nL4:ADD R3 R2 R1\nJZ R3 L4\n"
      "DOUBLE R1 R2\nPRINT R3\nHALT\n")
  assert tv.parse_asm("").max_len == 0 and tv.to_asm(tv.parse_asm("")) == ""
  assert tv.parse_asm("NOP\n", max_len=4).max_len == 4


@pytest.mark.parametrize("text, line, col, needle", [
    ("LOAD R0 1\nFOO R1", 2, 1, "expected an opcode, got 'FOO'"),
    ("ADD R0 R1", 1, 10, "operand 3, got the end of the line"),
    ("LOAD R0 R1", 1, 9, "an integer literal as operand 2"),
    ("MOV R8 R1", 1, 5, "R8 is outside R0..R7"),
    ("LOAD R0 12345", 1, 9, "more than 4 digits"),
    ("NOP\n  JMP", 2, 6, "expects a jump target"),
    ("L1: NOP\nL1: NOP", 2, 1, "already defined on line 1"),
    ("PRINT R0 R1", 1, 10, "unexpected 'R1'"),
    ("L3:", 1, 4, "expected an opcode, got the end of the line"),
    ("HALT #", 1, 6, "unexpected '#'"),
    ("  @", 1, 3, "unexpected character '@'"),
])
def test_syntax_errors_name_line_and_column(text, line, col, needle):
  with pytest.raises(ValueError) as e:
    tv.parse_asm(text)
  assert str(e.value).startswith(f"line {line}, column {col}: "), e.value
  assert needle in str(e.value)


def test_bad_arguments():
  with pytest.raises(TypeError):
    tv.parse_asm(b"NOP")
  with pytest.raises(ValueError, match="more than max_len=1"):
    tv.parse_asm("NOP\nNOP", max_len=1)
  batch = program_lib.stack([tv.parse_asm("NOP")] * 2)
  with pytest.raises(ValueError, match="one program"):
    tv.to_asm(batch)
