"""Assembly text both ways: `parse_asm(text) -> Program`, `to_asm(program)`.

The surface syntax is the text of the renders (spec section 7), one
instruction a line:

    LOAD R3 5            ; a comment runs to the end of the line
    LOAD R2-42           ; the renders glue a minus sign to the register
    ADD R3 R7 R3
    L4:JMP L7            ; `L4:` defines a label, a trailing `L7` names one
    JZ R0 L3
    DOUBLE R1 R2         ; userops by their symbol (or USEROP_0 .. USEROP_4)

`to_asm` writes exactly the renders' text of each instruction with the
trailing space removed, so `to_asm(p) == detokenize(encode(p))` line by line
up to trailing spaces. `parse_asm` also accepts what people type: any
spacing (`L4: JMP L7`, `LOAD R2 -42`), lower case, `;` comments and blank
lines. It checks syntax only (operand counts, registers R0..R7, label and
literal sizes the encoding holds, unique labels); `validate` checks the
rest (literal range, undefined targets, PRINT of unwritten registers,
stack depth).
"""

import re
from typing import Any, NamedTuple, Sequence

from tinyvm_jax._src import isa
from tinyvm_jax._src import program as program_lib
from tinyvm_jax._src import text as text_lib
from tinyvm_jax._src.types import Program

_TOKEN_RE = re.compile(
    r"\s*(?:(?P<label>L\d+\b)|(?P<reg>R\d+\b)|(?P<num>-?\d+)|(?P<colon>:)"
    r"|(?P<word>[A-Za-z_][A-Za-z0-9_]*)|(?P<bad>\S))", re.IGNORECASE)
# opcode spellings: names (LOAD .. HALT, USEROP_0 ..) and userop symbols
_OPCODES = {name: o for o, name in enumerate(isa.OP_NAMES)}
_OPCODES.update({sym: isa.USEROP_0 + i
                 for i, sym in enumerate(isa.DEFAULT_USEROP_SYMBOLS)})


class AsmError(ValueError):
  """A syntax error: `line` and `column` (1-based) say where."""

  def __init__(self, line: int, column: int, msg: str):
    super().__init__(f"line {line}, column {column}: {msg}")
    self.line, self.column, self.msg = line, column, msg


class _Tok(NamedTuple):
  kind: str   # label, reg, num, colon, word, bad, end
  text: str
  col: int    # 1-based


class Parsed(NamedTuple):
  """A parsed program: the reference's instruction list and, for each
  instruction, the 1-based line of the text it came from."""
  instructions: list[dict[str, Any]]
  lines: list[int]


def _tokens(line: str) -> list[_Tok]:
  code = line.split(";", 1)[0]
  out, pos = [], 0
  while pos < len(code):
    m = _TOKEN_RE.match(code, pos)
    if m is None or m.lastgroup is None:   # trailing whitespace only
      break
    out.append(_Tok(m.lastgroup, m.group(m.lastgroup), m.start(m.lastgroup)
                    + 1))
    pos = m.end()
  out.append(_Tok("end", "", len(code.rstrip()) + 1))
  return out


def _number(tok: _Tok, ln: int, what: str, digits: int) -> int:
  value = int(tok.text.lstrip("LlRr"))
  if abs(value) >= 10 ** digits:
    raise AsmError(ln, tok.col, f"{what} {tok.text} has more than {digits} "
                   "digits")
  return value


def _parse_line(toks: list[_Tok], ln: int) -> dict[str, Any]:
  """One instruction from the tokens of a non-blank line."""
  i, label = 0, None
  if toks[0].kind == "label" and toks[1].kind == "colon":
    label = f"L{_number(toks[0], ln, 'label', isa.MAX_LABEL_DIGITS)}"
    i = 2
  tok = toks[i]
  if tok.kind == "bad":
    raise AsmError(ln, tok.col, f"unexpected character {tok.text!r}")
  if tok.kind != "word" or tok.text.upper() not in _OPCODES:
    what = f"{tok.text!r}" if tok.text else "the end of the line"
    raise AsmError(ln, tok.col, f"expected an opcode, got {what}")
  op = _OPCODES[tok.text.upper()]
  name = isa.OP_NAMES[op]
  args: list[int] = []
  for j in range(int(isa.REG_ARGS[op]) + int(isa.LIT_ARGS[op])):
    i += 1
    tok, want = toks[i], "reg" if j < isa.REG_ARGS[op] else "num"
    if tok.kind != want:
      what = "a register R0..R7" if want == "reg" else "an integer literal"
      got = f"{tok.text!r}" if tok.text else "the end of the line"
      raise AsmError(ln, tok.col, f"{name} expects {what} as operand "
                     f"{j + 1}, got {got}")
    value = _number(tok, ln, "register" if want == "reg" else "literal",
                    isa.MAX_LITERAL_DIGITS)
    if want == "reg" and value >= isa.NUM_REGS:
      raise AsmError(ln, tok.col, f"register {tok.text} is outside R0..R7")
    args.append(value)
  i += 1
  target = None
  if toks[i].kind == "label":
    target = f"L{_number(toks[i], ln, 'label', isa.MAX_LABEL_DIGITS)}"
    i += 1
  elif isa.HAS_TARGET[op]:
    raise AsmError(ln, toks[i].col, f"{name} expects a jump target label "
                   "(like L3)")
  if toks[i].kind != "end":
    raise AsmError(ln, toks[i].col, f"unexpected {toks[i].text!r} after "
                   f"the operands of {name}")
  return {"op": name, "args": args, "label": label, "target": target}


def parse_asm_lines(text: str) -> Parsed:
  """Parses assembly text to the reference's instruction list, keeping the
  line of each instruction (for diagnostics).

  Raises:
    AsmError (a ValueError): at the first syntax error, naming its line and
      column.
  """
  if not isinstance(text, str):
    raise TypeError(f"parse_asm takes a str, got {type(text).__name__}")
  out, lines, defined = [], [], {}
  for ln, line in enumerate(text.splitlines(), start=1):
    toks = _tokens(line)
    if toks[0].kind == "end":
      continue
    ins = _parse_line(toks, ln)
    if ins["label"] is not None:
      if ins["label"] in defined:
        raise AsmError(ln, toks[0].col, f"label {ins['label']} is already "
                       f"defined on line {defined[ins['label']]}")
      defined[ins["label"]] = ln
    out.append(ins)
    lines.append(ln)
  return Parsed(out, lines)


def parse_asm(text: str, *, max_len: int | None = None) -> Program:
  """Parses assembly text (the renders' syntax) to a `Program`.

  Args:
    text: one instruction a line; `;` starts a comment; blank lines are
      skipped.
    max_len: static length `P` to pad to; defaults to the program's length.

  Returns:
    An unbatched `Program` (numpy arrays, leading dimension `P`).

  Raises:
    ValueError: at the first syntax error, as `line L, column C: why`.
  """
  parsed = parse_asm_lines(text)
  if max_len is not None and len(parsed.instructions) > max_len:
    raise AsmError(parsed.lines[max_len], 1, f"the program has "
                   f"{len(parsed.instructions)} instructions, more than "
                   f"max_len={max_len}")
  return program_lib.from_json(parsed.instructions, max_len=max_len)


def to_asm(program: Program | Sequence[dict[str, Any]]) -> str:
  """The assembly text of one program: the renders' text of each
  instruction without its trailing space, one a line.

  Args:
    program: an unbatched `Program` ([P] arrays) or a reference JSON
      instruction list.

  Returns:
    The text, each line ending in a newline ("" for an empty program).
  """
  if not isinstance(program, Program):
    program = program_lib.from_json(program)
  if program.op.ndim != 1:
    raise ValueError(f"to_asm takes one program, got a batch (op shape "
                     f"{program.op.shape})")
  lines = [text_lib.detokenize(program_lib.instruction_tokens(program, i))
           .rstrip("\n").rstrip(" ") for i in range(int(program.length))]
  return "".join(line + "\n" for line in lines)
