"""Tier 4: userops, their decompositions and few-shot rows (spec section 11).

A *userop* is a symbolic opcode in one of the slots USEROP_0..USEROP_4
(opcodes 16..20), written with its slot's vocabulary symbol (DOUBLE, MAX, ABS,
MOD, SIGN) and bound to a *decomposition*: a straight-line list of base
instructions whose register operands are placeholder positions into the
call's operands (0 is the call's destination) and whose literals pass
through. A `UserOp` value carries that binding; every function here takes it
explicitly, so there is no global symbol table to rebind (the reference's
defect, spec section 15). Running a userop is an error; `substitute` replaces
every call by its decomposition, giving the *base* program.

Default userops (`DEFAULT_USEROPS`; `d` destination, `a`, `b` sources):

| symbol | slot | call | decomposition | computes |
|---|---|---|---|---|
| DOUBLE | 16 | `DOUBLE d a` | `ADD d a a` | clamp(2a) |
| MAX | 17 | `MAX d a b` | `PUSH a; LT d b a; MUL a d a; MUL d d b; SUB d b d; ADD d d a; POP a` | max(a, b) |
| ABS | 18 | `ABS d a` | `PUSH a; LOAD d 0; LT d a d; LT a d a; SUB d a d; POP a; MUL d d a` | min(abs(a), 1023) |
| MOD | 19 | `MOD d a b` | `DIV d a b; MUL d d b; SUB d a d` | a - trunc(a / b) * b; a when b = 0 |
| SIGN | 20 | `SIGN d a` | `PUSH a; LOAD d 0; LT d a d; LT a d a; SUB d a d; POP a` | sign(a) in {-1, 0, 1} |

A decomposition may use only the call's operands, so MAX, ABS and SIGN borrow
a source register as scratch and save it on the stack around the borrowing
(`PUSH a ... POP a`): the sources hold their values again afterwards, the
stack is as before, and one free stack entry is needed (a generated call runs
at depth 0). How they work: MAX selects with the 0/1 flag c = [b < a] as
`(b - c*b) + c*a`, exact because one term is 0; SIGN computes neg = [a < 0]
into d, then pos = [neg < a] = [a > 0] into the borrowed a, and d = pos - neg;
ABS is SIGN followed by `MUL d d a`; MOD is C's truncated remainder (sign of
the dividend), consistent with the machine's truncating DIV.

Where clamping makes them differ from the mathematics (and only there):
DOUBLE saturates for a outside [-512, 511]; ABS(-1024) = 1023 (as NEG
does); MOD(-1024, -1) = -1, the quotient 1024 being clamped to 1023; and by
definition MOD(a, 0) = a (DIV by zero gives 0). MAX and SIGN are exact on
all of [-1024, 1023]. Aliasing: DOUBLE allows any; the others need the
destination to differ from the sources, and MAX also a != b as registers
(the generator always calls with distinct registers).

Few-shot rows. A program *with symbol* is a Tier 2 skeleton
(`gen_branched` with n' = max(n - 2, 4), k = max(2, n_args), b = 0, l = 0,
one stack frame if use_stack) with the call inserted before its PRINT and the
PRINT retargeted to the call's destination. The call's operands are the first
n_args distinct registers that the skeleton writes, in program order:
`r_one`, then the print target p, then (arity 3, k = 3) the third active
register q. A skeleton can leave q unwritten: probability 1/16 without a
stack frame (the 4 warm-up instructions all write p), 1/16 * 2**-g * 2/3
with one (its g fill instructions write p too and the POP loads another
register). The third operand is then still q, found as the register the
skeleton reads, or, if q never appears, drawn uniformly from the registers
not used, which has the same distribution; it holds 0. Demos draw
n = 8 + uniform[0, 4], the target uses n_target. Traces are the base form's.

Renders (ids as in spec sections 5-7):
- `userop_direct`: input `BOS`, then for each demo its with-symbol program
  and its output values (`digits NEWLINE` each), then the target's
  with-symbol program, `EOS`; target `BOS`, the target's outputs, `EOS`.
- `userop_with_decomposition`: the same, but every call of the userop in a
  demo program is followed by `DECOMP` and then the concrete decomposition
  instructions (its placeholders replaced by the call's registers), each
  with its NEWLINE; as text, `"DOUBLE R2 R0 \\nDECOMP ADD R2 R0 R0 \\n"`.
  The target program is shown without decompositions.

Row format (one JSON object a line, compact separators; this is the layout
of the reference-made file `userop_double_first300.jsonl.gz`):

    {"meta": {"tier": "tier4_userop",
              "seed": <row key, unsigned 64-bit: hi << 32 | lo>,
              "opcode_spec": {"name": "MAX", "n_args": 3,
                              "decomposition": [<instruction>, ...]},
              "k_demos": 2, "n_target": 20, "use_stack": true,
              "renders": ["userop_direct", "userop_with_decomposition"]},
     "demos": [{"with_symbol": [<instruction>, ...],
                "base": [<instruction>, ...],
                "trace": {"steps": [...], "output": [...], "halted": true}},
               ...],                       # k_demos entries
     "target": {"with_symbol": ..., "base": ..., "trace": ...},
     "renders": {"userop_direct": {"input_ids", "target_ids", "input_text",
                                   "target_text"},
                 "userop_with_decomposition": {...}}}

Instructions are the reference's `{"op", "args", "label", "target"}`; a call
is `{"op": "USEROP_<slot - 16>", "args": [registers]}`. In `decomposition`,
register arguments are placeholder positions and label and target are null.
The slot is the one of the symbol `name`. Demo n values are not stored: they
are redrawn from `seed` (as are the programs) by `check_userop_rows(...,
rebuild=True)`.
"""

import dataclasses
import functools
import itertools
import types
from typing import Any, Iterable, Iterator, Mapping, NamedTuple, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from tinyvm_jax._src import branched
from tinyvm_jax._src import interpreter
from tinyvm_jax._src import isa
from tinyvm_jax._src import keys as keys_lib
from tinyvm_jax._src import program as program_lib
from tinyvm_jax._src import render as render_lib
from tinyvm_jax._src import text as text_lib
from tinyvm_jax._src import validate as validate_lib
from tinyvm_jax._src.program import ProgramError
from tinyvm_jax._src.check.replay import Mismatch
from tinyvm_jax._src.types import Program, Render, Trace

TIER = "tier4_userop"
USEROP_RENDER_NAMES = ("userop_direct", "userop_with_decomposition")
DEMO_N_MIN, DEMO_N_MAX = 8, 12     # demos: n = 8 + uniform[0, 4]

# ops a decomposition may use: straight-line base instructions
_DECOMP_OPS = frozenset(isa.OP_NAMES[:isa.NUM_BASE_OPS]) - {
    "JZ", "JMP", "HALT", "PRINT"}
_STREAM_N = 0          # random words of the demos' n (axes stream)
_STREAM_OPERANDS = 2   # per program key; gen_branched uses streams 0 and 1
_NONE = -1
_OUTPUT_TOKENS = 1 + isa.MAX_VALUE_DIGITS + 1      # - d d d d NEWLINE
_INSTRUCTION_TOKENS = 7   # generated rows: `LOAD R -127 NEWLINE` is longest
TABLE_ROWS = 8            # decomposition tables are padded to a multiple


# ------------------------------------------------------------------ UserOp
@dataclasses.dataclass(frozen=True)
class UserOp:
  """A userop symbol bound to its decomposition (hashable: a static arg).

  Attributes:
    name: the symbol, one of DOUBLE, MAX, ABS, MOD, SIGN; it fixes the slot
      (the vocabulary gives each slot its symbol token).
    decomposition: ((op name, args), ...): base instructions, straight-line
      and silent (no JZ, JMP, HALT, PRINT); register args are placeholder positions in
      [0, n_args), 0 being the destination, which some instruction must
      write; a LOAD literal (last arg) is in [-127, 127]. PUSH/POP must
      balance and never pop below the entry depth.
  """
  name: str
  decomposition: tuple

  def __post_init__(self):
    if self.name not in isa.DEFAULT_USEROP_SYMBOLS:
      raise ValueError(f"UserOp: name must be one of "
                       f"{isa.DEFAULT_USEROP_SYMBOLS}, got {self.name!r}")
    dec = self.decomposition
    if not isinstance(dec, (tuple, list)) or not dec:
      raise ValueError(f"UserOp {self.name}: decomposition must be a "
                       f"non-empty sequence of (op, args), got {dec!r}")
    norm, depth, writes = [], 0, set()
    for i, ins in enumerate(dec):
      where = f"UserOp {self.name}: decomposition[{i}]"
      if not isinstance(ins, (tuple, list)) or len(ins) != 2:
        raise ValueError(f"{where}: expected (op, args), got {ins!r}")
      op, args = ins
      if op not in _DECOMP_OPS:
        raise ValueError(f"{where}: op {op!r} is not allowed (straight-line "
                         f"base ops only: {sorted(_DECOMP_OPS)})")
      o = isa.OP_IDS[op]
      nr, nl = int(isa.REG_ARGS[o]), int(isa.LIT_ARGS[o])
      if not isinstance(args, (tuple, list)) or len(args) != nr + nl or any(
          isinstance(a, bool) or not isinstance(a, (int, np.integer))
          for a in args):
        raise ValueError(f"{where}: {op} takes {nr} placeholder and {nl} "
                         f"literal integer args, got {args!r}")
      args = tuple(int(a) for a in args)
      if any(not 0 <= a < self.n_args for a in args[:nr]):
        raise ValueError(f"{where}: placeholder positions of {self.name} are "
                         f"0..{self.n_args - 1}, got {args[:nr]}")
      if nl and not isa.LITERAL_MIN <= args[nr] <= isa.LITERAL_MAX:
        raise ValueError(f"{where}: literal {args[nr]} outside "
                         f"[{isa.LITERAL_MIN}, {isa.LITERAL_MAX}]")
      depth += (o == isa.PUSH) - (o == isa.POP)
      if depth < 0:
        raise ValueError(f"{where}: POP below the depth at the call")
      if isa.WRITES_REG[o]:
        writes.add(args[0])
      norm.append((op, args))
    if depth:
      raise ValueError(f"UserOp {self.name}: decomposition leaves {depth} "
                       f"entries on the stack; PUSH and POP must balance")
    if 0 not in writes:
      raise ValueError(f"UserOp {self.name}: decomposition never writes "
                       f"placeholder 0, the destination")
    object.__setattr__(self, "decomposition", tuple(norm))

  @property
  def slot(self) -> int:
    """The opcode, 16..20."""
    return isa.USEROP_0 + isa.DEFAULT_USEROP_SYMBOLS.index(self.name)

  @property
  def op_name(self) -> str:
    """The opcode's JSON name, `USEROP_<slot - 16>`."""
    return isa.OP_NAMES[self.slot]

  @property
  def n_args(self) -> int:
    return int(isa.REG_ARGS[self.slot])

  @property
  def writes(self) -> tuple[int, ...]:
    """Placeholder positions some decomposition instruction writes (what
    `validate`'s `userop_writes` should say for the with-symbol program)."""
    return tuple(sorted({a[0] for o, a in self.decomposition
                         if isa.WRITES_REG[isa.OP_IDS[o]]}))

  @property
  def stack_need(self) -> int:
    """The most stack entries the decomposition holds at once."""
    depth = most = 0
    for o, _ in self.decomposition:
      depth += (o == "PUSH") - (o == "POP")
      most = max(most, depth)
    return most

  def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The decomposition as op [M], placeholder regs [M, 3] (0 where unused)
    and lit [M] int32 numpy arrays."""
    m = len(self.decomposition)
    op = np.zeros(m, np.int32)
    regs = np.zeros((m, isa.MAX_REG_ARGS), np.int32)
    lit = np.zeros(m, np.int32)
    for i, (o, args) in enumerate(self.decomposition):
      op[i] = isa.OP_IDS[o]
      nr = int(isa.REG_ARGS[op[i]])
      regs[i, :nr] = args[:nr]
      if isa.LIT_ARGS[op[i]]:
        lit[i] = args[nr]
    return op, regs, lit

  def table(self, rows: int | None = None) -> "Decomposition":
    """The binding as arrays, padded to `rows` (default: a multiple of
    `TABLE_ROWS`, so userops of up to 8 instructions share compilations)."""
    m = len(self.decomposition)
    rows = -(-m // TABLE_ROWS) * TABLE_ROWS if rows is None else rows
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < m:
      raise ValueError(f"UserOp {self.name}: table rows must be an int >= "
                       f"{m}, got {rows!r}")
    op, regs, lit = self.arrays()
    pad = rows - m
    return Decomposition(
        op=np.pad(op, (0, pad), constant_values=isa.NOP),
        regs=np.pad(regs, ((0, pad), (0, 0))), lit=np.pad(lit, (0, pad)),
        size=np.int32(m), slot=np.int32(self.slot),
        n_args=np.int32(self.n_args))

  def to_spec(self) -> dict[str, Any]:
    """`meta.opcode_spec`: {name, n_args, decomposition (JSON instructions
    over placeholders)}."""
    return {"name": self.name, "n_args": self.n_args,
            "decomposition": [{"op": o, "args": list(a), "label": None,
                               "target": None}
                              for o, a in self.decomposition]}

  @classmethod
  def from_spec(cls, spec: Mapping[str, Any]) -> "UserOp":
    """Parses `meta.opcode_spec`; ValueError when malformed or when n_args
    disagrees with the symbol's slot."""
    if not isinstance(spec, Mapping) or not {"name", "decomposition"} <= set(
        spec):
      raise ValueError(f"opcode_spec must be an object with name and "
                       f"decomposition, got {spec!r}")
    dec = spec["decomposition"]
    if not isinstance(dec, list) or not all(
        isinstance(d, Mapping) and "op" in d for d in dec):
      raise ValueError("opcode_spec.decomposition must be a list of "
                       "instruction objects")
    for d in dec:
      if d.get("label") is not None or d.get("target") is not None:
        raise ValueError("opcode_spec.decomposition: labels and targets are "
                         f"not allowed, got {dict(d)}")
    op = cls(name=spec["name"],
             decomposition=tuple((d["op"], tuple(d.get("args", ())))
                                 for d in dec))
    if "n_args" in spec and spec["n_args"] != op.n_args:
      raise ValueError(f"opcode_spec: {op.name} takes {op.n_args} operands, "
                       f"spec says n_args={spec['n_args']!r}")
    return op


class Decomposition(NamedTuple):
  """A userop binding as arrays (`UserOp.table`), so that one compiled
  function serves every userop: `M` table rows, the first `size` real."""
  op: jax.Array      # [M] int32 base opcodes (NOP past size)
  regs: jax.Array    # [M, 3] int32 placeholder positions (0 where unused)
  lit: jax.Array     # [M] int32 literals
  size: jax.Array    # [] int32 instructions in the decomposition
  slot: jax.Array    # [] int32 the userop's opcode, 16..20
  n_args: jax.Array  # [] int32 its register operands, 2 or 3


def _default(name: str, *dec) -> UserOp:
  return UserOp(name=name, decomposition=dec)


DEFAULT_USEROPS: Mapping[str, UserOp] = types.MappingProxyType({
    "DOUBLE": _default("DOUBLE", ("ADD", (0, 1, 1))),
    "MAX": _default("MAX", ("PUSH", (1,)), ("LT", (0, 2, 1)),
                    ("MUL", (1, 0, 1)), ("MUL", (0, 0, 2)),
                    ("SUB", (0, 2, 0)), ("ADD", (0, 0, 1)), ("POP", (1,))),
    "ABS": _default("ABS", ("PUSH", (1,)), ("LOAD", (0, 0)),
                    ("LT", (0, 1, 0)), ("LT", (1, 0, 1)), ("SUB", (0, 1, 0)),
                    ("POP", (1,)), ("MUL", (0, 0, 1))),
    "MOD": _default("MOD", ("DIV", (0, 1, 2)), ("MUL", (0, 0, 2)),
                    ("SUB", (0, 1, 0))),
    "SIGN": _default("SIGN", ("PUSH", (1,)), ("LOAD", (0, 0)),
                     ("LT", (0, 1, 0)), ("LT", (1, 0, 1)), ("SUB", (0, 1, 0)),
                     ("POP", (1,))),
})


def _check_userop(userop, where: str) -> UserOp:
  if not isinstance(userop, UserOp):
    raise ValueError(f"{where}: expected a UserOp (e.g. "
                     f"DEFAULT_USEROPS['DOUBLE']), got {userop!r}")
  return userop


def _as_table(userop, where: str) -> Decomposition:
  """A `Decomposition` from a UserOp (or one given, e.g. traced)."""
  if isinstance(userop, Decomposition):
    if jnp.ndim(userop.op) != 1 or jnp.shape(userop.regs) != (
        jnp.shape(userop.op)[0], isa.MAX_REG_ARGS):
      raise ValueError(f"{where}: expected one Decomposition (op [M], regs "
                       f"[M, 3]), got op {jnp.shape(userop.op)}, regs "
                       f"{jnp.shape(userop.regs)}")
    return jax.tree_util.tree_map(jnp.asarray, userop)
  return jax.tree_util.tree_map(jnp.asarray,
                                _check_userop(userop, where).table())


# ------------------------------------------------------------ substitution
def substitute(program, userop, *, max_len: int | None = None):
  """Replaces every call of `userop` by its concrete decomposition.

  Args:
    program: a reference JSON instruction list (host; returns a new list),
      or one unbatched `Program` ([P] arrays; works under jit and vmap).
    userop: the binding, a `UserOp` (or, for arrays, its `Decomposition`
      table, which may be traced); calls of other slots are left in place.
    max_len: (arrays only) static length of the result; default P * M (M
      the table's rows), which always fits. A result that does not fit
      keeps its true `length` (> max_len) to flag it.

  Returns:
    The base program, in the form given. A call's label moves to the first
    instruction of its decomposition; jump targets follow their instruction.

  Raises:
    ValueError / ProgramError: a bad userop, program or max_len, or a call
      with the wrong number of operands (JSON).
  """
  if isinstance(program, (list, tuple)):
    return _substitute_json(program, _check_userop(userop, "substitute"))
  table = _as_table(userop, "substitute")
  if not isinstance(program, Program):
    raise ValueError(f"substitute: expected a JSON instruction list or a "
                     f"Program, got {type(program).__name__}")
  if jnp.ndim(program.op) != 1:
    raise ValueError(f"substitute: expected one unbatched Program (op of rank "
                     f"1), got op of shape {jnp.shape(program.op)}; vmap it")
  m = table.op.shape[0]
  p = program.op.shape[0]
  if max_len is None:
    max_len = p * m
  if isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer)) \
      or max_len < 1:
    raise ValueError(f"substitute: max_len must be a positive int, got "
                     f"{max_len!r}")
  return _substitute_arrays(program, table, int(max_len))


def _substitute_json(instructions, userop: UserOp) -> list[dict[str, Any]]:
  out = []
  for i, ins in enumerate(instructions):
    if not isinstance(ins, Mapping) or "op" not in ins:
      raise ProgramError(f"instruction {i}: not an instruction object")
    op = ins["op"]
    if op != userop.op_name and op != userop.slot:
      out.append(dict(ins))
      continue
    args = ins.get("args", [])
    if not isinstance(args, (list, tuple)) or len(args) != userop.n_args:
      raise ProgramError(f"instruction {i} ({userop.op_name}): expected "
                         f"{userop.n_args} register operands, got {args!r}")
    for t, (o, dargs) in enumerate(userop.decomposition):
      nr = int(isa.REG_ARGS[isa.OP_IDS[o]])
      out.append({"op": o,
                  "args": [args[a] for a in dargs[:nr]] + list(dargs[nr:]),
                  "label": ins.get("label") if t == 0 else None,
                  "target": None})
  return out


def _substitute_arrays(program: Program, dec: Decomposition,
                       max_len: int) -> Program:
  d_op, d_regs, d_lit = dec.op, dec.regs, dec.lit
  m = d_op.shape[0]
  p = program.op.shape[0]
  live = jnp.arange(p) < program.length
  is_call = live & (program.op == dec.slot)
  count = jnp.where(is_call, dec.size, live.astype(jnp.int32))    # [P]
  start = jnp.cumsum(count) - count                                # [P]
  total = count.sum()
  j = jnp.arange(max_len)
  src = jnp.searchsorted(jnp.where(live, start, total), j, side="right") - 1
  src = jnp.clip(src, 0, p - 1)                                    # [P']
  t = jnp.clip(j - start[src], 0, m - 1)
  call = is_call[src]
  call_regs = jnp.take_along_axis(program.regs[src], d_regs[t], axis=1)
  tgt = program.target[src]
  tgt = jnp.where(tgt >= 0, start[jnp.clip(tgt, 0, p - 1)], _NONE)
  first = ~call | (t == 0)
  pad = j >= total
  sel = lambda a, b: jnp.where(call, a, b)
  return Program(
      op=jnp.where(pad, isa.NOP, sel(d_op[t], program.op[src])),
      regs=jnp.where(pad[:, None], 0,
                     jnp.where(call[:, None], call_regs, program.regs[src])),
      lit=jnp.where(pad, 0, sel(d_lit[t], program.lit[src])),
      target=jnp.where(pad | call, _NONE, tgt),
      target_label=jnp.where(pad | call, _NONE, program.target_label[src]),
      label=jnp.where(pad | ~first, _NONE, program.label[src]),
      length=total.astype(jnp.int32))


# ------------------------------------------------------------ renders
def _decomposition_slots(program: Program, dec: Decomposition):
  """[P, 1 + M * I] slots `DECOMP` + the concrete decomposition of each
  instruction, valid only on live calls of the userop."""
  d_op, d_regs, d_lit = dec.op, dec.regs, dec.lit
  m = d_op.shape[0]
  p = program.op.shape[0]
  regs = program.regs[jnp.arange(p)[:, None, None], d_regs[None]]  # [P,M,3]
  rows = Program(op=jnp.tile(d_op, p), regs=regs.reshape(p * m, 3),
                lit=jnp.tile(d_lit, p),
                target=jnp.full(p * m, _NONE, jnp.int32),
                target_label=jnp.full(p * m, _NONE, jnp.int32),
                label=jnp.full(p * m, _NONE, jnp.int32),
                length=jnp.asarray(p * m, jnp.int32))
  toks, mask = render_lib.instruction_slots(rows)                 # [P*M, I]
  mask = mask.reshape(p, m, -1) & (jnp.arange(m) < dec.size)[None, :, None]
  show = (program.op == dec.slot) & (jnp.arange(p) < program.length)
  toks = jnp.concatenate([jnp.full((p, 1), isa.TOK_DECOMP, jnp.int32),
                          toks.reshape(p, -1)], axis=1)
  mask = jnp.concatenate([jnp.ones((p, 1), bool), mask.reshape(p, -1)],
                         axis=1) & show[:, None]
  return toks, mask


def _check_few_shot(with_symbol, trace, where: str) -> None:
  if not isinstance(with_symbol, Program) or not isinstance(trace, Trace):
    raise ValueError(f"{where}: expected a Program and a Trace, got "
                     f"{type(with_symbol).__name__} and "
                     f"{type(trace).__name__}")
  if jnp.ndim(with_symbol.op) != 2 or jnp.ndim(trace.pc) != 2:
    raise ValueError(
        f"{where}: expected the programs [E, P] and traces [E, S] of one row "
        f"(demos, then the target); got op {jnp.shape(with_symbol.op)} and "
        f"pc {jnp.shape(trace.pc)}; vmap over rows")
  if with_symbol.op.shape[0] != trace.pc.shape[0]:
    raise ValueError(f"{where}: {with_symbol.op.shape[0]} programs but "
                     f"{trace.pc.shape[0]} traces")
  chex.assert_shape(with_symbol.regs, (*with_symbol.op.shape,
                                       isa.MAX_REG_ARGS))


def _few_shot(with_symbol: Program, trace: Trace,
              dec: Decomposition | None, *,
              max_input_len: int, max_target_len: int) -> Render:
  e = with_symbol.op.shape[0]
  for name, v in (("max_input_len", max_input_len),
                  ("max_target_len", max_target_len)):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
      raise ValueError(f"{name} must be a positive Python int, got {v!r}")
  demo = jnp.arange(e) < e - 1                                     # [E]
  toks, mask = jax.vmap(render_lib.instruction_slots)(with_symbol)  # [E,P,I]
  if dec is not None:
    d_t, d_m = jax.vmap(lambda pr: _decomposition_slots(pr, dec))(
        with_symbol)                                                # [E,P,X]
    toks = jnp.concatenate([toks, d_t], axis=2)
    mask = jnp.concatenate([mask, d_m & demo[:, None, None]], axis=2)
  out_t, out_m = jax.vmap(render_lib.output_slots)(trace)           # [E,S,6]
  body_t = jnp.concatenate([toks.reshape(e, -1), out_t.reshape(e, -1)], 1)
  body_m = jnp.concatenate([mask.reshape(e, -1),
                            out_m.reshape(e, -1) & demo[:, None]], 1)
  bos = (jnp.full((1,), isa.TOK_BOS), jnp.ones((1,), bool))
  eos = (jnp.full((1,), isa.TOK_EOS), jnp.ones((1,), bool))
  def cat(*pieces):
    return (jnp.concatenate([jnp.ravel(t) for t, _ in pieces]),
            jnp.concatenate([jnp.ravel(m) for _, m in pieces]))
  inp = render_lib.compact(*cat(bos, (body_t, body_m), eos), max_input_len)
  last = jax.tree_util.tree_map(lambda x: x[e - 1], trace)
  target = render_lib.compact(
      *cat(bos, render_lib.output_slots(last), eos), max_target_len)
  return Render(input=inp, target=target)


def render_userop_direct(with_symbol: Program, trace: Trace, *,
                         max_input_len: int, max_target_len: int) -> Render:
  """The `userop_direct` few-shot render of one row.

  Args:
    with_symbol: [E, P] programs, the demos then the target (E = k + 1).
    trace: [E, S] their base forms' traces.
    max_input_len, max_target_len: static token lengths.

  Returns:
    `Render`: input `BOS`, each demo's program and outputs, the target's
    program, `EOS`; target `BOS`, the target's outputs, `EOS`.
  """
  _check_few_shot(with_symbol, trace, "render_userop_direct")
  return _few_shot(with_symbol, trace, None, max_input_len=max_input_len,
                   max_target_len=max_target_len)


def render_userop_with_decomposition(with_symbol: Program, trace: Trace,
                                     userop, *, max_input_len: int,
                                     max_target_len: int) -> Render:
  """The `userop_with_decomposition` render: as `render_userop_direct`,
  with each demo call of the userop followed by `DECOMP` and its concrete
  decomposition instructions. Args as there, plus `userop`: a `UserOp` or
  its `Decomposition` table (which may be traced)."""
  _check_few_shot(with_symbol, trace, "render_userop_with_decomposition")
  dec = _as_table(userop, "render_userop_with_decomposition")
  return _few_shot(with_symbol, trace, dec, max_input_len=max_input_len,
                   max_target_len=max_target_len)


def render_userop(name: str, with_symbol: Program, trace: Trace,
                  userop, *, max_input_len: int,
                  max_target_len: int) -> Render:
  """A few-shot render by name (one of `USEROP_RENDER_NAMES`)."""
  sizes = dict(max_input_len=max_input_len, max_target_len=max_target_len)
  if name == "userop_direct":
    return render_userop_direct(with_symbol, trace, **sizes)
  if name == "userop_with_decomposition":
    return render_userop_with_decomposition(with_symbol, trace, userop,
                                            **sizes)
  raise ValueError(f"unknown userop render {name!r}; expected one of "
                   f"{USEROP_RENDER_NAMES}")


# ------------------------------------------------------------ static sizes
@dataclasses.dataclass(frozen=True)
class UseropShapes:
  """Static sizes that every generated row of a (userop, k_demos, n_max)
  fits."""
  max_len: int      # P, with-symbol programs
  base_len: int     # base programs
  max_steps: int    # S (straight-line programs: one step an instruction)
  input_lens: tuple  # ((render name, T_in), ...)
  target_len: int   # T_out (one printed value)

  def token_lengths(self, render: str) -> tuple[int, int]:
    lens = dict(self.input_lens)
    if render not in lens:
      raise ValueError(f"unknown userop render {render!r}; expected one of "
                       f"{USEROP_RENDER_NAMES}")
    return lens[render], self.target_len


def _skeleton_n(n):
  return jnp.maximum(n - 2, 4)


def userop_shapes(table_rows: int, *, k_demos: int, n_max: int
                  ) -> UseropShapes:
  """Sizes for rows with `k_demos` demos and n_target <= n_max, of any
  userop whose table has `table_rows` rows (`UserOp.table`)."""
  for what, v, lo in (("table_rows", table_rows, 1), ("k_demos", k_demos, 0),
                      ("n_max", n_max, 0)):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
      raise ValueError(f"{what} must be an int >= {lo}, got {v!r}")
  n_skel = max(max(n_max, DEMO_N_MAX) - 2, 4)
  p = branched.max_program_len(n_skel, isa.MAX_REG_ARGS, 0, 0, 1) + 1  # call
  base = p + table_rows - 1
  e = k_demos + 1
  direct = 2 + e * p * _INSTRUCTION_TOKENS + k_demos * _OUTPUT_TOKENS
  dec = 1 + table_rows * _INSTRUCTION_TOKENS
  return UseropShapes(
      max_len=p, base_len=base, max_steps=base,
      input_lens=(("userop_direct", direct),
                  ("userop_with_decomposition", direct + k_demos * dec)),
      target_len=2 + _OUTPUT_TOKENS)


# ------------------------------------------------------------ generator
@chex.dataclass(frozen=True, mappable_dataclass=False)
class UseropRow:
  """One few-shot row (`E` = k_demos + 1 programs: the demos, then the
  target); batched rows carry a leading `B`."""
  key_data: jax.Array    # [2] uint32, the row key; meta.seed = hi << 32 | lo
  n: jax.Array           # [E] int32, n of each demo, then n_target
  use_stack: jax.Array   # [] bool
  with_symbol: Program   # [E, P]
  base: Program          # [E, P'] the calls substituted
  trace: Trace           # [E, S] of the base programs
  renders: dict          # render name -> Render


def _call_operands(skel: Program, word_key: jax.Array) -> jax.Array:
  """[3] int32: registers ordered by first write (program order), then by
  first appearance as any operand, then at random; the call takes the first
  n_args."""
  p = skel.op.shape[0]
  pos = jnp.arange(p)
  live = pos < skel.length
  op = jnp.clip(skel.op, 0, isa.NUM_OPS - 1)
  r = jnp.arange(isa.NUM_REGS)
  writes = live & jnp.asarray(isa.WRITES_REG)[op]                 # [P]
  first_write = jnp.min(jnp.where(writes[:, None] & (skel.regs[:, :1] == r),
                                  pos[:, None], 3 * p), axis=0)    # [8]
  used = live[:, None] & (jnp.arange(isa.MAX_REG_ARGS)
                          < jnp.asarray(isa.REG_ARGS)[op][:, None])  # [P, 3]
  appears = (used[..., None] & (skel.regs[..., None] == r)).any(1)  # [P, 8]
  first_seen = jnp.min(jnp.where(appears, pos[:, None], 3 * p), axis=0)
  words = keys_lib.random_words(word_key, jnp.arange(isa.NUM_REGS // 2),
                                _STREAM_OPERANDS).reshape(-1)      # [8]
  rank = jnp.argsort(jnp.argsort(words))
  order_key = jnp.where(first_write < 3 * p, first_write,
                        jnp.where(first_seen < 3 * p, p + first_seen,
                                  2 * p + rank))
  return jnp.argsort(order_key)[:isa.MAX_REG_ARGS].astype(jnp.int32)


def _insert_call(skel: Program, dec: Decomposition,
                 key: jax.Array) -> Program:
  """The skeleton ([P]) with `SYM operands` before its PRINT, the PRINT
  retargeted to operand 0 ([P + 1])."""
  p = skel.op.shape[0]
  at = skel.length - 2                      # the PRINT's index
  pos = jnp.arange(p + 1)
  src = jnp.clip(jnp.where(pos < at, pos, pos - 1), 0, p - 1)
  ops = _call_operands(skel, key)
  n_regs = jnp.arange(isa.MAX_REG_ARGS) < dec.n_args
  call_regs = jnp.where(n_regs, ops, 0)
  is_call, is_print = pos == at, pos == at + 1
  pad = pos > skel.length
  regs = jnp.where(is_call[:, None], call_regs, skel.regs[src])
  regs = regs.at[:, 0].set(jnp.where(is_print, ops[0], regs[:, 0]))
  tgt = skel.target[src]
  tgt = jnp.where(tgt >= at, tgt + 1, tgt)
  none = lambda x: jnp.where(is_call | pad, _NONE, x)
  return Program(
      op=jnp.where(pad, isa.NOP, jnp.where(is_call, dec.slot,
                                           skel.op[src])),
      regs=jnp.where(pad[:, None], 0, regs),
      lit=jnp.where(is_call | pad, 0, skel.lit[src]),
      target=none(tgt), target_label=none(skel.target_label[src]),
      label=none(skel.label[src]), length=skel.length + 1)


def _scalar_arg(x, what: str, lo: int):
  """Concrete value of a scalar arg (None if traced); ValueError if bad."""
  dtype = jnp.result_type(x)
  if jnp.shape(x) != () or not (jnp.issubdtype(dtype, jnp.integer)
                                or dtype == jnp.bool_):
    raise ValueError(f"gen_userop_row: {what} must be an integer scalar, got "
                     f"{x!r}")
  if isinstance(x, jax.core.Tracer):
    return None
  if int(x) < lo:
    raise ValueError(f"gen_userop_row: {what} must be >= {lo}, got {x}")
  return int(x)


def gen_userop_row(key: jax.Array, userop, *, n_target, use_stack,
                   k_demos: int = 2, n_max: int | None = None,
                   renders: Sequence[str] = USEROP_RENDER_NAMES) -> UseropRow:
  """One Tier 4 few-shot row (spec section 11); vmap over keys for batches.

  Args:
    key: the row key (consumed): demos' n from `axes_key(key)`, program j
      (demos, then the target) from `fold_in(program_key(key), j)`.
    userop: the binding: a `UserOp`, or its `Decomposition` table (may be
      traced: one compilation then serves every userop).
    n_target: [] int, the target's n (traced or concrete, >= 0).
    use_stack: [] bool/int, one stack frame in every program.
    k_demos: static number of demos.
    n_max: static bound on n_target fixing the shapes; default n_target
      (which must then be concrete).
    renders: names from `USEROP_RENDER_NAMES` (static).

  Returns:
    An unbatched `UseropRow` with shapes from `userop_shapes`.
  """
  dec = _as_table(userop, "gen_userop_row")
  if jnp.shape(jax.random.key_data(key)) != (2,):
    raise ValueError("gen_userop_row: key must be one PRNG key (vmap for "
                     "batches)")
  n_conc = _scalar_arg(n_target, "n_target", 0)
  _scalar_arg(use_stack, "use_stack", 0)
  if n_max is None:
    if n_conc is None:
      raise ValueError("gen_userop_row: pass a static n_max when n_target "
                       "is traced")
    n_max = n_conc
  if n_conc is not None and n_conc > n_max:
    raise ValueError(f"gen_userop_row: n_target={n_conc} > n_max={n_max}")
  for r in renders:
    if r not in USEROP_RENDER_NAMES:
      raise ValueError(f"gen_userop_row: unknown render {r!r}; expected one "
                       f"of {USEROP_RENDER_NAMES}")
  shapes = userop_shapes(dec.op.shape[0], k_demos=k_demos, n_max=n_max)
  e = k_demos + 1
  words = keys_lib.random_words(keys_lib.axes_key(key),
                                jnp.arange(max(k_demos, 1)),
                                _STREAM_N)[:k_demos, 0]
  n_demo = DEMO_N_MIN + keys_lib.uniform_int(words,
                                             DEMO_N_MAX - DEMO_N_MIN + 1)
  n = jnp.concatenate([n_demo, jnp.asarray(n_target, jnp.int32)[None]])
  stack = jnp.asarray(use_stack).astype(jnp.int32) != 0
  pkey = keys_lib.program_key(key)

  def one(j, n_j):
    kj = jax.random.fold_in(pkey, j)
    skel = branched.gen_branched(
        kj, _skeleton_n(n_j), jnp.maximum(2, dec.n_args), 0, 0, stack,
        stack.astype(jnp.int32), max_len=shapes.max_len - 1)
    ws = _insert_call(skel, dec, kj)
    base = _substitute_arrays(ws, dec, shapes.base_len)
    return ws, base, interpreter.run(base, max_steps=shapes.max_steps)

  with_symbol, base, trace = jax.vmap(one)(jnp.arange(e), n)
  out = {}
  for r in renders:
    t_in, t_out = shapes.token_lengths(r)
    out[r] = render_userop(r, with_symbol, trace, dec,
                           max_input_len=t_in, max_target_len=t_out)
  return UseropRow(key_data=jax.random.key_data(key), n=n, use_stack=stack,
                   with_symbol=with_symbol, base=base, trace=trace,
                   renders=out)


@functools.partial(jax.jit, static_argnames=("k_demos", "n_max", "renders"))
def _generate(key_data, n_target, use_stack, table, *, k_demos, n_max,
              renders):
  def one(kd, n, s, dec):
    key = jax.random.wrap_key_data(kd, impl=keys_lib.IMPL)
    return gen_userop_row(key, dec, n_target=n, use_stack=s,
                          k_demos=k_demos, n_max=n_max, renders=renders)
  return jax.vmap(one)(key_data, n_target, use_stack, table)


def generate_userop_rows(userop, key_data, *, n_target, use_stack,
                         k_demos: int = 2, n_max: int | None = None,
                         renders: Sequence[str] = USEROP_RENDER_NAMES
                         ) -> UseropRow:
  """A batch of rows (jitted, one compilation for every userop of up to 8
  instructions; host numpy result).

  Args:
    userop: a `UserOp`, or a sequence of them, one per row.
    key_data: [B, 2] uint32 row keys' data (e.g. of `keys.row_key`), or
      [B] uint64 seeds (meta.seed).
    n_target, use_stack: [B] (or scalars, broadcast) per-row values.
    k_demos: demos a row.
    n_max: static bound on n_target; default the largest rounded up to a
      power of two, at least 32 (rows do not depend on it).
    renders: render names.

  Returns:
    A `UseropRow` batch ([B, ...] numpy arrays); `rows_to_json` turns it
    into row dicts.
  """
  kd = np.asarray(key_data)
  if kd.ndim == 1 and kd.dtype == np.uint64:
    kd = np.stack([kd >> np.uint64(32), kd & np.uint64(0xFFFFFFFF)], -1)
  if kd.ndim != 2 or kd.shape[1] != 2 or not np.issubdtype(kd.dtype,
                                                           np.integer):
    raise ValueError(f"key_data must be [B, 2] uint32 or [B] uint64 seeds, "
                     f"got {kd.dtype} {kd.shape}")
  b = kd.shape[0]
  if not b:
    raise ValueError("generate_userop_rows: no rows (key_data is empty)")
  ops = [userop] * b if isinstance(userop, UserOp) else list(userop)
  if len(ops) != b:
    raise ValueError(f"{len(ops)} userops for {b} rows")
  for u in ops:
    _check_userop(u, "generate_userop_rows")
  n = np.broadcast_to(np.asarray(n_target), (b,))
  s = np.broadcast_to(np.asarray(use_stack), (b,))
  if not np.issubdtype(n.dtype, np.integer) or (b and n.min() < 0):
    raise ValueError(f"n_target must be integers >= 0, got {n_target!r}")
  if not (s.dtype == bool or np.issubdtype(s.dtype, np.integer)):
    raise ValueError(f"use_stack must be bools, got {use_stack!r}")
  if n_max is None:
    n_max = 1 << (max(int(n.max()) if b else 0, 32) - 1).bit_length()
  elif b and n.max() > n_max:
    raise ValueError(f"n_target up to {n.max()} exceeds n_max={n_max}")
  rows = max([len(u.decomposition) for u in ops] + [1])
  rows = -(-rows // TABLE_ROWS) * TABLE_ROWS
  tables = [u.table(rows) for u in ops]
  table = jax.tree_util.tree_map(lambda *x: jnp.asarray(np.stack(x)),
                                 *tables)
  out = _generate(jnp.asarray(kd.astype(np.uint32)),
                  jnp.asarray(n, jnp.int32), jnp.asarray(s, bool), table,
                  k_demos=int(k_demos), n_max=int(n_max),
                  renders=tuple(renders))
  return jax.tree_util.tree_map(np.asarray, out)


# ------------------------------------------------------------ JSON
def _render_json(r: Render, where: str) -> dict[str, Any]:
  out = {}
  for part, tok in (("input", r.input), ("target", r.target)):
    n = int(tok.length)
    if n > tok.ids.shape[-1]:
      raise ValueError(f"{where}.{part}: {n} tokens overflow the static "
                       f"length {tok.ids.shape[-1]}")
    out[f"{part}_ids"] = np.asarray(tok.ids[:n]).tolist()
  for part in ("input", "target"):
    out[f"{part}_text"] = text_lib.detokenize(out[f"{part}_ids"])
  return out


def row_to_json(row: UseropRow, userop: UserOp) -> dict[str, Any]:
  """The row dict (layout in the module docstring) of one unbatched row.

  Raises:
    ValueError: the row is batched, a program or render overflowed its
      static size; `interpreter.VMError` if a base program failed to run.
  """
  _check_userop(userop, "row_to_json")
  row = jax.tree_util.tree_map(np.asarray, row)
  if row.n.ndim != 1:
    raise ValueError(f"row_to_json takes one row (n of rank 1), got n of "
                     f"shape {row.n.shape}; use rows_to_json for batches")
  e = row.n.shape[0]
  parts = []
  for j in range(e):
    ws = jax.tree_util.tree_map(lambda x, j=j: x[j], row.with_symbol)
    base = jax.tree_util.tree_map(lambda x, j=j: x[j], row.base)
    trace = jax.tree_util.tree_map(lambda x, j=j: x[j], row.trace)
    if int(base.length) > base.op.shape[0]:
      raise ValueError(f"program {j}: base form overflowed its "
                       f"{base.op.shape[0]} rows")
    interpreter.raise_for_error(trace)
    parts.append({"with_symbol": program_lib.to_json(ws),
                  "base": program_lib.to_json(base),
                  "trace": interpreter.trace_to_json(trace)})
  names = [r for r in USEROP_RENDER_NAMES if r in row.renders]
  meta = {"tier": TIER,
          "seed": int(keys_lib.seeds_from_key_data(row.key_data)),
          "opcode_spec": userop.to_spec(), "k_demos": e - 1,
          "n_target": int(row.n[-1]), "use_stack": bool(row.use_stack),
          "renders": names}
  return {"meta": meta, "demos": parts[:-1], "target": parts[-1],
          "renders": {r: _render_json(row.renders[r], f"renders.{r}")
                      for r in names}}


def rows_to_json(rows: UseropRow, userop: UserOp) -> list[dict[str, Any]]:
  """`row_to_json` of each row of a batch."""
  rows = jax.tree_util.tree_map(np.asarray, rows)
  if rows.n.ndim != 2:
    raise ValueError(f"rows_to_json takes a batch (n of rank 2), got n of "
                     f"shape {rows.n.shape}")
  return [row_to_json(jax.tree_util.tree_map(lambda x, i=i: x[i], rows),
                      userop) for i in range(rows.n.shape[0])]


# ------------------------------------------------------------ verification
def expected_length(n: int, use_stack: bool) -> int:
  """Length of a generated with-symbol program: 9 rows, plus a stack frame
  of max(2, n' // 2) fill rows and PUSH/POP when use_stack."""
  return 9 + (2 + max(2, max(n - 2, 4) // 2) if use_stack else 0)


def _len(x) -> int:
  return len(x) if isinstance(x, list) else 0


def _round_up(x: int, m: int) -> int:
  return max(m, -(-x // m) * m)


@functools.partial(jax.jit, static_argnames=("base_len", "max_steps",
                                             "sizes"))
def _replay(with_symbol, tables, *, base_len, max_steps, sizes):
  def one(ws, dec):
    base = jax.vmap(lambda p: _substitute_arrays(p, dec, base_len))(ws)
    trace = jax.vmap(lambda p: interpreter.run(p, max_steps=max_steps))(base)
    out = {name: render_userop(name, ws, trace, dec, max_input_len=t_in,
                               max_target_len=t_out)
           for name, t_in, t_out in sizes}
    return base, trace, out
  return jax.vmap(one)(with_symbol, tables)


def _parse(line: int, row: Any):
  """(userop, [with-symbol JSON lists], [Program]) or a list of
  mismatches."""
  bad = lambda field, detail: [Mismatch(line, field, detail)]
  if not isinstance(row, Mapping):
    return bad("row", "not an object")
  missing = [k for k in ("meta", "demos", "target", "renders") if k not in row]
  if missing:
    return bad("row", f"missing keys {missing}")
  meta = row["meta"]
  if not isinstance(meta, Mapping):
    return bad("meta", "not an object")
  if not isinstance(row["renders"], Mapping) or not all(
      isinstance(r, Mapping) for r in row["renders"].values()):
    return bad("renders", "not an object of render objects")
  if not isinstance(meta.get("renders"), list):
    return bad("meta.renders", f"not a list: {meta.get('renders')!r}")
  if meta.get("tier") != TIER:
    return bad("meta.tier", f"expected {TIER!r}, got {meta.get('tier')!r}")
  try:
    userop = UserOp.from_spec(meta.get("opcode_spec"))
  except ValueError as e:
    return bad("meta.opcode_spec", str(e))
  demos = row["demos"]
  if not isinstance(demos, list) or meta.get("k_demos") != len(demos):
    return bad("meta.k_demos", f"{meta.get('k_demos')!r} but "
               f"{len(demos) if isinstance(demos, list) else 'no'} demos")
  out = []
  for where, part in [(f"demos[{j}]", d) for j, d in enumerate(demos)] + [
      ("target", row["target"])]:
    if not isinstance(part, Mapping) or not {"with_symbol", "base",
                                             "trace"} <= set(part):
      return bad(where, "needs with_symbol, base and trace")
    if not isinstance(part["trace"], Mapping):
      return bad(f"{where}.trace", "not an object")
    try:
      out.append((where, part, program_lib.from_json(part["with_symbol"])))
    except ProgramError as e:
      return bad(f"{where}.with_symbol", str(e))
  return userop, out


def _structure(line, meta, userop: UserOp, parts) -> Iterator[Mismatch]:
  """The shape of a generated row: lengths from n and use_stack, one call
  of distinct registers before `PRINT dest; HALT`, every program valid."""
  use_stack, n_target = meta.get("use_stack"), meta.get("n_target")
  if not isinstance(use_stack, bool):
    yield Mismatch(line, "meta.use_stack", f"not a bool: {use_stack!r}")
    return
  if isinstance(n_target, bool) or not isinstance(n_target, int) or (
      n_target < 0):
    yield Mismatch(line, "meta.n_target", f"not an int >= 0: {n_target!r}")
    return
  demo_lens = {expected_length(n, use_stack)
               for n in range(DEMO_N_MIN, DEMO_N_MAX + 1)}
  writes = {userop.op_name: userop.writes}
  for idx, (where, part, _) in enumerate(parts):
    ws = part["with_symbol"]
    want = ({expected_length(n_target, use_stack)} if where == "target"
            else demo_lens)
    if len(ws) not in want:
      yield Mismatch(line, f"{where}.with_symbol", f"{len(ws)} instructions,"
                     f" expected {sorted(want)} for use_stack={use_stack}"
                     + (f", n={n_target}" if where == "target" else ""))
    calls = [i for i, ins in enumerate(ws) if ins.get("op") == userop.op_name]
    ok = (len(calls) == 1 and calls[0] == len(ws) - 3
          and ws[-2].get("op") == "PRINT" and ws[-1].get("op") == "HALT"
          and ws[-2].get("args") == ws[calls[0]].get("args", [None])[:1]
          and len(set(ws[calls[0]]["args"])) == userop.n_args)
    if not ok:
      yield Mismatch(line, f"{where}.with_symbol", f"expected one "
                     f"{userop.op_name} of distinct registers followed by "
                     f"PRINT of its destination and HALT")
    for form, prog, kw in (("with_symbol", ws, {"userop_writes": writes}),
                           ("base", part["base"], {})):
      try:
        issues = validate_lib.find_issues(prog, **kw)
      except (TypeError, ProgramError) as e:
        issues = [str(e)]
      if issues:
        yield Mismatch(line, f"{where}.{form}", f"not valid: {issues[0]}")


def _compare_part(line, where, part, base, trace) -> Iterator[Mismatch]:
  got = program_lib.to_json(base)
  if got != part["base"]:
    yield Mismatch(line, f"{where}.base",
                   "differs from substitute(with_symbol): "
                   + _first_diff(got, part["base"]))
  if int(trace.error):
    yield Mismatch(line, f"{where}.trace", "base run ended in error: "
                   + isa.ERROR_MESSAGES[int(trace.error)])
  got = interpreter.trace_to_json(trace)
  want = part["trace"]
  for key in ("steps", "output", "halted"):
    if got[key] != want.get(key):
      stored = want.get(key)
      yield Mismatch(line, f"{where}.trace.{key}",
                     _first_diff(got[key], stored)
                     if isinstance(stored, list) else
                     f"got {got[key]!r}, stored {stored!r}")


def _first_diff(got: list, want: Any) -> str:
  if not isinstance(want, list):
    return f"stored {type(want).__name__}, not a list"
  for i, (g, w) in enumerate(zip(got, want)):
    if g != w:
      return f"first difference at index {i}: got {g!r}, stored {w!r}"
  return f"length: got {len(got)}, stored {len(want)}"


def _check_group(items, rebuild: bool) -> Iterator[tuple[int, Mismatch]]:
  """Replays rows (line, row, userop, parts) sharing k_demos and the table
  size in one jitted call; yields (index in items, mismatch)."""
  p = _round_up(max(int(pr.length) for *_, parts in items
                    for _, _, pr in parts), 32)     # few compilations
  tables = [u.table() for _, _, u, _ in items]
  m = tables[0].op.shape[0]
  calls = max(int(np.sum(np.asarray(pr.op) == u.slot))
              for _, _, u, parts in items for _, _, pr in parts)
  base_len = _round_up(p + calls * (m - 1), 16)
  stored_steps = max((_len(part["trace"].get("steps"))
                      for *_, parts in items for _, part, _ in parts),
                     default=0)
  max_steps = _round_up(max(base_len, stored_steps) + 1, 64)
  sizes = []
  for name in USEROP_RENDER_NAMES:
    ins = [_len(r["renders"][name].get("input_ids"))
           for _, r, *_ in items if name in r["renders"]]
    outs = [_len(r["renders"][name].get("target_ids"))
            for _, r, *_ in items if name in r["renders"]]
    if ins:
      sizes.append((name, _round_up(max(ins) + 1, 512),
                    _round_up(max(outs) + 1, 16)))
  b = _round_up(len(items), 64)        # few compilations
  progs = [program_lib.stack([program_lib.pad_to(pr, p)
                              for _, _, pr in parts]) for *_, parts in items]
  progs += [progs[-1]] * (b - len(items))
  tables += [tables[-1]] * (b - len(items))
  stack = lambda *x: np.stack(x)
  base, trace, renders = jax.device_get(_replay(
      jax.tree_util.tree_map(stack, *progs),
      jax.tree_util.tree_map(stack, *tables), base_len=base_len,
      max_steps=max_steps, sizes=tuple(sizes)))
  for i, (line, row, userop, parts) in enumerate(items):
    for name, stored in row["renders"].items():
      if name not in USEROP_RENDER_NAMES:
        yield i, Mismatch(line, f"renders.{name}", "unknown render")
        continue
      r = renders[name]
      for part, tok in (("input", r.input), ("target", r.target)):
        ids = tok.ids[i, :int(tok.length[i])].tolist()
        if ids != stored.get(f"{part}_ids"):
          yield i, Mismatch(line, f"renders.{name}.{part}_ids", _first_diff(
              ids, stored.get(f"{part}_ids")))
        text = text_lib.detokenize(ids)
        if text != stored.get(f"{part}_text"):
          yield i, Mismatch(line, f"renders.{name}.{part}_text",
                            f"got {text[:60]!r}..., stored "
                            f"{str(stored.get(f'{part}_text'))[:60]!r}...")
    meta = row["meta"]
    if meta["renders"] != list(row["renders"]):
      yield i, Mismatch(line, "meta.renders", f"{meta.get('renders')!r} but "
                        f"renders {list(row['renders'])}")
    for j, (where, part, _) in enumerate(parts):
      take = lambda x, j=j: x[i, j]
      yield from ((i, x) for x in _compare_part(
          line, where, part, jax.tree_util.tree_map(take, base),
          jax.tree_util.tree_map(take, trace)))
    yield from ((i, x) for x in _structure(line, meta, userop, parts))
  if rebuild:
    yield from _rebuild(items, b)


def _rebuild(items, b: int) -> Iterator[tuple[int, Mismatch]]:
  """Regenerates the programs of rows (line, row, userop, parts) from
  meta.seed in one call of `b` rows; yields (index, mismatch)."""
  ok, seeds, ns, stacks = [], [], [], []
  for i, (line, row, userop, parts) in enumerate(items):
    meta = row["meta"]
    n, stack, seed = (meta.get("n_target"), meta.get("use_stack"),
                      meta.get("seed"))
    if not isinstance(stack, bool) or isinstance(n, bool) or not isinstance(
        n, int) or n < 0 or isinstance(seed, bool) or not isinstance(
            seed, int) or not 0 <= seed < 2 ** 64:
      yield i, Mismatch(line, "meta", "cannot rebuild: needs an unsigned "
                        "64-bit seed, an int n_target >= 0 and a bool "
                        "use_stack")
      continue
    ok.append(i)
    seeds.append(seed)
    ns.append(n)
    stacks.append(stack)
  if not ok:
    return
  pad = b - len(ok)
  got = generate_userop_rows(
      [items[i][2] for i in ok] + [items[ok[-1]][2]] * pad,
      np.array(seeds + seeds[-1:] * pad, np.uint64),
      n_target=np.array(ns + ns[-1:] * pad),
      use_stack=np.array(stacks + stacks[-1:] * pad),
      k_demos=len(items[0][3]) - 1)   # the generator's own compilation
  for r, i in enumerate(ok):
    line, _, _, parts = items[i]
    for j, (where, part, _) in enumerate(parts):
      ws = program_lib.to_json(jax.tree_util.tree_map(
          lambda x, r=r, j=j: x[r, j], got.with_symbol))
      if ws != part["with_symbol"]:
        yield i, Mismatch(line, f"{where}.with_symbol", "differs from the "
                          "program rebuilt from meta.seed: " + _first_diff(
                              ws, part["with_symbol"]))


def check_userop_rows(rows: Iterable[tuple[int, Any]], *,
                      rebuild: bool = False, batch_size: int = 256
                      ) -> Iterator[Mismatch]:
  """Replays Tier 4 rows (meta.tier == "tier4_userop") and yields every
  mismatch, in row order.

  For each demo and the target: `substitute(with_symbol)` must equal the
  stored base, running the base must give the stored trace, both programs
  must be valid (the with-symbol one with the userop's `writes`), and the
  program must have a generated row's shape (lengths from n_target and
  use_stack, one call before `PRINT dest; HALT`); every stored render is
  rebuilt from the with-symbol programs and base traces and compared, ids
  and text. With `rebuild`, the programs are also regenerated from
  meta.seed (rows made by `tinyvm_jax`; the reference's seeds do not
  rebuild).

  Args:
    rows: (line number, row dict) pairs.
    rebuild: also compare with the programs rebuilt from meta.seed.
    batch_size: rows replayed a jitted call.
  """
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or (
      batch_size < 1):
    raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
  it = iter(rows)
  while chunk := list(itertools.islice(it, batch_size)):
    found: list[list[Mismatch]] = [[] for _ in chunk]
    groups: dict[tuple, list] = {}
    for i, (line, row) in enumerate(chunk):
      parsed = _parse(line, row)
      if isinstance(parsed, list):
        found[i] = parsed
        continue
      userop, parts = parsed
      size = userop.table().op.shape[0]
      groups.setdefault((size, len(parts)), []).append(
          (i, (line, row, userop, parts)))
    for members in groups.values():
      for j, mismatch in _check_group([m for _, m in members], rebuild):
        found[members[j][0]].append(mismatch)
    for ms in found:
      yield from ms


def check_userop_row(row: Mapping[str, Any], *, line: int = 1,
                     rebuild: bool = False) -> list[Mismatch]:
  """Every mismatch of one Tier 4 row (see `check_userop_rows`)."""
  return list(check_userop_rows([(line, row)], rebuild=rebuild))
