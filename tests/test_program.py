"""Programs as arrays: exact round trips with JSON and token ids."""

import numpy as np
import pytest

from conftest import load_rows, row_files
from tinyvm_jax._src import isa
from tinyvm_jax._src import program as P


@pytest.mark.parametrize("name", row_files())
def test_json_and_tokens_round_trip(name):
  for row in load_rows(name):
    prog = P.from_json(row["program"], max_len=len(row["program"]) + 3)
    assert P.to_json(prog) == row["program"]
    ids = P.encode(prog)
    assert P.decode_json(ids) == row["program"]
    decoded = P.decode(ids, max_len=prog.max_len)
    for f in P.Program.__dataclass_fields__:
      np.testing.assert_array_equal(getattr(decoded, f), getattr(prog, f))
    first = next(iter(row["renders"].values()))
    if "probe" not in row:
      assert [isa.TOK_BOS] + ids + [isa.TOK_EOS] == first["input_ids"]


def test_label_numbers_are_decimal():
  prog = P.from_json([{"op": "NOP", "args": [], "label": "L007",
                       "target": None},
                      {"op": "JMP", "args": [], "label": None,
                       "target": "L007"}])
  assert P.encode(prog) == [isa.TOK_L, isa.TOK_DIGIT0 + 7, isa.TOK_COLON,
                            isa.NOP, isa.TOK_NEWLINE, isa.JMP, isa.TOK_L,
                            isa.TOK_DIGIT0 + 7, isa.TOK_NEWLINE]
  assert P.to_json(prog)[0]["label"] == "L7"
  assert int(prog.target[1]) == 0


def test_undefined_target_is_kept_as_unresolved():
  prog = P.from_json([{"op": "JMP", "args": [], "target": "L3"}])
  assert int(prog.target[0]) == -1 and int(prog.target_label[0]) == 3


@pytest.mark.parametrize("instructions, message", [
    ("LOAD R0 1", "must be a list"),
    ([{"op": "FOO", "args": []}], "instruction 0: unknown opcode"),
    ([{"args": []}], "instruction 0: not an instruction"),
    ([{"op": "ADD", "args": [1, 2]}], "instruction 0 (ADD): expected 3"),
    ([{"op": "LOAD", "args": [1, 2.5]}], "instruction 0 (LOAD)"),
    ([{"op": "NOP", "args": []}, {"op": "JZ", "args": [0]}],
     "instruction 1 (JZ): missing jump target"),
    ([{"op": "NOP", "args": [], "label": "X1"}], "not of the form L<n>"),
    ([{"op": "NOP", "args": [], "label": "L1"},
      {"op": "NOP", "args": [], "label": "L1"}], "already defined"),
    ([{"op": "LOAD", "args": [0, 123456]}], "more than 4 digits"),
])
def test_bad_programs_are_refused(instructions, message):
  with pytest.raises(P.ProgramError, match=None) as e:
    P.from_json(instructions)
  assert message in str(e.value)


def test_too_long_for_max_len():
  with pytest.raises(P.ProgramError, match="more than max_len=1"):
    P.from_json([{"op": "NOP", "args": []}] * 2, max_len=1)


@pytest.mark.parametrize("ids, message", [
    ([isa.TOK_R0], "token 0: expected an opcode"),
    ([isa.ADD, isa.TOK_R0, isa.TOK_NEWLINE], "token 2: expected a register"),
    ([isa.NOP], "token 1: expected NEWLINE"),
    ([isa.TOK_L, isa.NOP], "token 1: expected digits"),
])
def test_decode_reports_the_token(ids, message):
  with pytest.raises(P.ProgramError) as e:
    P.decode(ids)
  assert message in str(e.value)
