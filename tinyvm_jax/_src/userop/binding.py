"""Userop bindings: `UserOp` (a symbol and its decomposition), its array form
`Decomposition`, and the five default userops (spec section 11).

A *userop* is a symbolic opcode in one of the slots USEROP_0..USEROP_4
(opcodes 16..20), written with its slot's vocabulary symbol (DOUBLE, MAX, ABS,
MOD, SIGN) and bound to a *decomposition*: a straight-line list of base
instructions whose register operands are placeholder positions into the
call's operands (0 is the call's destination) and whose literals pass
through. A `UserOp` value carries that binding; every function of the
package takes it explicitly, so there is no global symbol table to rebind
(the reference's defect, spec section 15).

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
"""

import dataclasses
import functools
import types
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tinyvm_jax._src import checks
from tinyvm_jax._src import isa

# ops a decomposition may use: straight-line base instructions
_DECOMP_OPS = frozenset(isa.OP_NAMES[:isa.NUM_BASE_OPS]) - {
    "JZ", "JMP", "HALT", "PRINT"}
TABLE_ROWS = 8     # decomposition tables are padded to a multiple


def _instruction(name: str, i: int, ins: Any, n_args: int
                 ) -> tuple[str, tuple[int, ...]]:
  """One decomposition instruction, checked and normalised to
  (op name, int args)."""
  where = f"UserOp {name}: decomposition[{i}]"
  if not isinstance(ins, (tuple, list)) or len(ins) != 2:
    raise ValueError(f"{where}: expected (op, args), got {ins!r}")
  op, args = ins
  if op not in _DECOMP_OPS:
    raise ValueError(f"{where}: op {op!r} is not allowed (straight-line "
                     f"base ops only: {sorted(_DECOMP_OPS)})")
  o = isa.OP_IDS[op]
  nr, nl = int(isa.REG_ARGS[o]), int(isa.LIT_ARGS[o])
  if not isinstance(args, (tuple, list)) or len(args) != nr + nl or not all(
      checks.is_int(a) for a in args):
    raise ValueError(f"{where}: {op} takes {nr} placeholder and {nl} "
                     f"literal integer args, got {args!r}")
  args = tuple(int(a) for a in args)
  if any(not 0 <= a < n_args for a in args[:nr]):
    raise ValueError(f"{where}: placeholder positions of {name} are "
                     f"0..{n_args - 1}, got {args[:nr]}")
  if nl and not isa.LITERAL_MIN <= args[nr] <= isa.LITERAL_MAX:
    raise ValueError(f"{where}: literal {args[nr]} outside "
                     f"[{isa.LITERAL_MIN}, {isa.LITERAL_MAX}]")
  return op, args


@dataclasses.dataclass(frozen=True)
class UserOp:
  """A userop symbol bound to its decomposition (hashable: a static arg).

  Attributes:
    name: the symbol, one of DOUBLE, MAX, ABS, MOD, SIGN; it fixes the slot
      (the vocabulary gives each slot its symbol token).
    decomposition: ((op name, args), ...): base instructions, straight-line
      and silent (no JZ, JMP, HALT, PRINT); register args are placeholder
      positions in [0, n_args), 0 being the destination, which some
      instruction must write; a LOAD literal (last arg) is in [-127, 127].
      PUSH/POP must balance and never pop below the entry depth.
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
    norm = tuple(_instruction(self.name, i, ins, self.n_args)
                 for i, ins in enumerate(dec))
    depth = 0
    for i, (op, _) in enumerate(norm):
      depth += (op == "PUSH") - (op == "POP")
      if depth < 0:
        raise ValueError(f"UserOp {self.name}: decomposition[{i}]: POP "
                         f"below the depth at the call")
    if depth:
      raise ValueError(f"UserOp {self.name}: decomposition leaves {depth} "
                       f"entries on the stack; PUSH and POP must balance")
    object.__setattr__(self, "decomposition", norm)
    if 0 not in self.writes:
      raise ValueError(f"UserOp {self.name}: decomposition never writes "
                       f"placeholder 0, the destination")

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

  @functools.lru_cache(maxsize=256)
  def table(self, rows: int | None = None) -> "Decomposition":
    """The binding as arrays, padded to `rows` (default: a multiple of
    `TABLE_ROWS`, so userops of up to 8 instructions share compilations).
    Memoized: treat the arrays as read-only."""
    m = len(self.decomposition)
    rows = table_rows([self]) if rows is None else rows
    checks.check_int(f"UserOp {self.name}: table rows", rows, lo=m)
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


def check_userop(userop: Any, where: str) -> UserOp:
  """`userop` if it is a `UserOp`, else ValueError naming `where`."""
  if not isinstance(userop, UserOp):
    raise ValueError(f"{where}: expected a UserOp (e.g. "
                     f"DEFAULT_USEROPS['DOUBLE']), got {userop!r}")
  return userop


def as_table(userop: Any, where: str) -> Decomposition:
  """A `Decomposition` (jnp leaves) from a UserOp, or one given (e.g.
  traced), checked to be unbatched."""
  if isinstance(userop, Decomposition):
    if jnp.ndim(userop.op) != 1 or jnp.shape(userop.regs) != (
        jnp.shape(userop.op)[0], isa.MAX_REG_ARGS):
      raise ValueError(f"{where}: expected one Decomposition (op [M], regs "
                       f"[M, 3]), got op {jnp.shape(userop.op)}, regs "
                       f"{jnp.shape(userop.regs)}")
    return jax.tree_util.tree_map(jnp.asarray, userop)
  return jax.tree_util.tree_map(jnp.asarray,
                                check_userop(userop, where).table())


def table_rows(userops: Sequence[UserOp]) -> int:
  """`M`: the longest decomposition rounded up to a multiple of
  `TABLE_ROWS`, so that userops of similar size share compilations."""
  m = max([len(u.decomposition) for u in userops] + [1])
  return -(-m // TABLE_ROWS) * TABLE_ROWS


def stack_tables(userops: Sequence[UserOp]) -> Decomposition:
  """[B] tables (numpy) of `userops`, padded to one `table_rows`."""
  rows = table_rows(userops)
  return jax.tree_util.tree_map(lambda *x: np.stack(x),
                                *[u.table(rows) for u in userops])
