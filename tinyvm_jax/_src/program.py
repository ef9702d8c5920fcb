"""Programs as arrays: exact conversions to and from the reference's JSON
instruction lists and token ids (spec sections 4 and 6). Host side (numpy)."""

import re
from typing import Any, Mapping, Sequence

import numpy as np

from tinyvm_jax._src import isa
from tinyvm_jax._src.types import Program

_LABEL_RE = re.compile(r"^L(\d+)$")


class ProgramError(ValueError):
  """A program that cannot be represented or is not well formed."""


def _label_number(text: Any, where: str) -> int:
  m = _LABEL_RE.match(text) if isinstance(text, str) else None
  if m is None:
    raise ProgramError(f"{where}: label {text!r} is not of the form L<n>")
  n = int(m.group(1))
  if n >= 10 ** isa.MAX_LABEL_DIGITS:
    raise ProgramError(f"{where}: label number {n} has more than "
                       f"{isa.MAX_LABEL_DIGITS} digits")
  return n


def _op_id(op: Any, where: str) -> int:
  if isinstance(op, str) and op in isa.OP_IDS:
    return isa.OP_IDS[op]
  if isinstance(op, (int, np.integer)) and not isinstance(op, bool) and (
      0 <= op < isa.NUM_OPS):
    return int(op)
  raise ProgramError(f"{where}: unknown opcode {op!r}")


def from_json(instructions: Sequence[Mapping[str, Any]], *,
              max_len: int | None = None) -> Program:
  """Builds a `Program` (numpy arrays) from a reference instruction list.

  Args:
    instructions: dicts `{"op", "args", "label", "target"}`; `op` is a name
      (or an opcode number, as in the reference's IR).
    max_len: static length `P` to pad to; defaults to the program's length.

  Returns:
    A `Program` whose arrays have leading dimension `P`.

  Raises:
    ProgramError: naming the instruction, when an instruction has the wrong
      operand count, an unknown opcode, a malformed or duplicate label, or a
      value that does not fit the encoding.
  """
  if not isinstance(instructions, (list, tuple)):
    raise ProgramError("a program must be a list of instructions")
  n = len(instructions)
  p = n if max_len is None else max_len
  if n > p:
    raise ProgramError(f"program has {n} instructions, more than max_len={p}")
  op = np.full(p, isa.NOP, np.int32)
  regs = np.zeros((p, isa.MAX_REG_ARGS), np.int32)
  lit = np.zeros(p, np.int32)
  target_label = np.full(p, -1, np.int32)
  label = np.full(p, -1, np.int32)
  where_label: dict[int, int] = {}
  for i, ins in enumerate(instructions):
    where = f"instruction {i}"
    if not isinstance(ins, Mapping) or "op" not in ins:
      raise ProgramError(f"{where}: not an instruction object with an 'op'")
    o = _op_id(ins["op"], where)
    args = ins.get("args", [])
    nr, nl = int(isa.REG_ARGS[o]), int(isa.LIT_ARGS[o])
    if not isinstance(args, (list, tuple)) or len(args) != nr + nl or not all(
        isinstance(a, (int, np.integer)) and not isinstance(a, bool)
        for a in args):
      raise ProgramError(
          f"{where} ({isa.OP_NAMES[o]}): expected {nr} register and {nl} "
          f"literal integer operands, got {args!r}")
    for j, r in enumerate(args[:nr]):
      if not -2**31 <= r < 2**31:
        raise ProgramError(f"{where}: register operand {r} out of range")
      regs[i, j] = r
    if nl:
      k = args[nr]
      if abs(k) >= 10 ** isa.MAX_LITERAL_DIGITS:
        raise ProgramError(f"{where}: literal {k} has more than "
                           f"{isa.MAX_LITERAL_DIGITS} digits")
      lit[i] = k
    op[i] = o
    if ins.get("label") is not None:
      num = _label_number(ins["label"], where)
      if num in where_label:
        raise ProgramError(f"{where}: label L{num} already defined at "
                           f"instruction {where_label[num]}")
      where_label[num] = i
      label[i] = num
    if ins.get("target") is not None:
      target_label[i] = _label_number(ins["target"], where)
    elif isa.HAS_TARGET[o]:
      raise ProgramError(f"{where} ({isa.OP_NAMES[o]}): missing jump target")
  target = np.array([where_label.get(int(t), -1) if t >= 0 else -1
                     for t in target_label], np.int32)
  return Program(op=op, regs=regs, lit=lit, target=target,
                 target_label=target_label, label=label,
                 length=np.int32(n))


def to_json(program: Program) -> list[dict[str, Any]]:
  """The reference's instruction list of one (unbatched) program."""
  op = np.asarray(program.op)
  regs = np.asarray(program.regs)
  lit = np.asarray(program.lit)
  label = np.asarray(program.label)
  target_label = np.asarray(program.target_label)
  out = []
  for i in range(int(program.length)):
    o = int(op[i])
    args = [int(r) for r in regs[i, :isa.REG_ARGS[o]]]
    if isa.LIT_ARGS[o]:
      args.append(int(lit[i]))
    out.append({
        "op": isa.OP_NAMES[o],
        "args": args,
        "label": f"L{int(label[i])}" if label[i] >= 0 else None,
        "target": f"L{int(target_label[i])}" if target_label[i] >= 0 else None,
    })
  return out


def stack(programs: Sequence[Program]) -> Program:
  """Stacks programs of equal `P` into one batched `Program` ([B, ...])."""
  return Program(**{f: np.stack([np.asarray(getattr(p, f)) for p in programs])
                    for f in Program.__dataclass_fields__})


def pad_to(program: Program, max_len: int) -> Program:
  """Pads an unbatched program to `max_len` instructions."""
  p = program.op.shape[-1]
  if max_len < p:
    raise ProgramError(f"cannot pad a program of {p} rows to {max_len}")
  def pad(x, fill):
    x = np.asarray(x)
    out = np.full((max_len,) + x.shape[1:], fill, x.dtype)
    out[:p] = x
    return out
  return Program(op=pad(program.op, isa.NOP), regs=pad(program.regs, 0),
                 lit=pad(program.lit, 0), target=pad(program.target, -1),
                 target_label=pad(program.target_label, -1),
                 label=pad(program.label, -1), length=program.length)


# --------------------------------------------------------------- token ids
def number_tokens(v: int) -> list[int]:
  """Tokens of a number: MINUS if negative, then its decimal digits."""
  toks = [isa.TOK_MINUS] if v < 0 else []
  return toks + [isa.TOK_DIGIT0 + int(c) for c in str(abs(int(v)))]


def instruction_tokens(program: Program, i: int) -> list[int]:
  """Token ids of instruction `i`, NEWLINE included (spec section 6)."""
  o = int(program.op[i])
  toks = []
  if program.label[i] >= 0:
    toks += [isa.TOK_L] + number_tokens(int(program.label[i])) + [isa.TOK_COLON]
  toks.append(int(isa.OP_TOKEN[o]))
  toks += [isa.TOK_R0 + int(r) for r in program.regs[i, :isa.REG_ARGS[o]]]
  if isa.LIT_ARGS[o]:
    toks += number_tokens(int(program.lit[i]))
  if program.target_label[i] >= 0:
    toks += [isa.TOK_L] + number_tokens(int(program.target_label[i]))
  toks.append(isa.TOK_NEWLINE)
  return toks


def encode(program: Program) -> list[int]:
  """Token ids of a whole (unbatched) program: the concatenation of its
  instructions' encodings."""
  return [t for i in range(int(program.length))
          for t in instruction_tokens(program, i)]


def decode(ids: Sequence[int], *, max_len: int | None = None) -> Program:
  """Inverse of `encode`: parses token ids (without BOS/EOS) to a Program.

  Raises:
    ProgramError: naming the token position where the ids stop being a
      program.
  """
  return from_json(decode_json(ids), max_len=max_len)


def decode_json(ids: Sequence[int]) -> list[dict[str, Any]]:
  """Parses token ids to the reference's instruction list."""
  ids = [int(t) for t in ids]
  pos = 0
  out = []

  def fail(msg):
    raise ProgramError(f"token {pos}: {msg}")

  def digits():
    nonlocal pos
    start = pos
    while pos < len(ids) and isa.TOK_DIGIT0 <= ids[pos] < isa.TOK_DIGIT0 + 10:
      pos += 1
    if pos == start:
      fail("expected digits")
    return int("".join(str(t - isa.TOK_DIGIT0) for t in ids[start:pos]))

  def number():
    nonlocal pos
    neg = pos < len(ids) and ids[pos] == isa.TOK_MINUS
    pos += neg
    v = digits()
    return -v if neg else v

  sym_to_op = {int(t): o for o, t in enumerate(isa.OP_TOKEN)}
  while pos < len(ids):
    lab = None
    if ids[pos] == isa.TOK_L:
      pos += 1
      lab = f"L{digits()}"
      if pos >= len(ids) or ids[pos] != isa.TOK_COLON:
        fail("expected COLON after a label definition")
      pos += 1
    if pos >= len(ids) or ids[pos] not in sym_to_op:
      fail("expected an opcode")
    o = sym_to_op[ids[pos]]
    pos += 1
    args = []
    for _ in range(int(isa.REG_ARGS[o])):
      if pos >= len(ids) or not isa.TOK_R0 <= ids[pos] < isa.TOK_R0 + 8:
        fail(f"expected a register operand of {isa.OP_NAMES[o]}")
      args.append(ids[pos] - isa.TOK_R0)
      pos += 1
    if isa.LIT_ARGS[o]:
      args.append(number())
    tgt = None
    if pos < len(ids) and ids[pos] == isa.TOK_L:
      pos += 1
      tgt = f"L{digits()}"
    if pos >= len(ids) or ids[pos] != isa.TOK_NEWLINE:
      fail("expected NEWLINE at the end of an instruction")
    pos += 1
    out.append({"op": isa.OP_NAMES[o], "args": args, "label": lab,
                "target": tgt})
  return out
