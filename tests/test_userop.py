"""Tier 4 userops: decompositions, substitution, few-shot rows and renders."""

import copy
import functools

import jax
import numpy as np
import pytest

from conftest import load_rows
from tinyvm_jax._src import interpreter
from tinyvm_jax._src import isa
from tinyvm_jax._src import keys as keys_lib
from tinyvm_jax._src import program as P
from tinyvm_jax._src.userop import api as U
from tinyvm_jax._src.userop import generate as generate_lib
from tinyvm_jax._src import validate

NAMES = tuple(U.DEFAULT_USEROPS)
LO, HI = isa.VALUE_MIN, isa.VALUE_MAX
VALUES = np.arange(LO, HI + 1, dtype=np.int64)             # every value
N_ROWS = 64


@functools.lru_cache(maxsize=None)
def stored_rows():
  return load_rows("userop_double")


# ------------------------------------------------------------ decompositions
def _run_numpy(userop, operands):
  """Runs a decomposition on arrays of operand values (numpy, vectorised):
  returns the operands after it and the stack depth at the end."""
  regs = [np.array(v, np.int64) for v in operands]
  stack = []
  clamp = lambda x: np.clip(x, LO, HI)
  for op, args in userop.decomposition:
    src = [regs[a] for a in args[1:]]
    if op == "LOAD":
      regs[args[0]] = np.full_like(regs[0], clamp(args[1]))
    elif op == "MOV":
      regs[args[0]] = src[0].copy()
    elif op in ("ADD", "SUB", "MUL"):
      f = {"ADD": np.add, "SUB": np.subtract, "MUL": np.multiply}[op]
      regs[args[0]] = clamp(f(src[0], src[1]))
    elif op == "DIV":
      a, b = src
      safe = np.where(b == 0, 1, b)
      q = np.abs(a) // np.abs(safe) * np.where((a < 0) != (safe < 0), -1, 1)
      regs[args[0]] = clamp(np.where(b == 0, 0, q))
    elif op == "NEG":
      regs[args[0]] = clamp(-src[0])
    elif op == "EQ":
      regs[args[0]] = (src[0] == src[1]).astype(np.int64)
    elif op == "LT":
      regs[args[0]] = (src[0] < src[1]).astype(np.int64)
    elif op == "PUSH":
      stack.append(regs[args[0]].copy())
    elif op == "POP":
      regs[args[0]] = stack.pop()
    else:
      raise AssertionError(op)
  return regs, len(stack)


def _intended(name, a, b):
  """(the mathematics, the machine's value where clamping differs)."""
  if name == "DOUBLE":
    return 2 * a, np.clip(2 * a, LO, HI)
  if name == "MAX":
    return np.maximum(a, b), np.maximum(a, b)
  if name == "ABS":
    return np.abs(a), np.minimum(np.abs(a), HI)
  if name == "SIGN":
    return np.sign(a), np.sign(a)
  # MOD: C's truncated remainder; MOD(a, 0) = a by definition
  safe = np.where(b == 0, 1, b)
  math = np.where(b == 0, a, np.fmod(a, safe))
  return math, np.where((a == LO) & (b == -1), -1, math)


@pytest.mark.parametrize("name", NAMES)
def test_decomposition_over_every_value(name):
  """Each default decomposition against its intended function over every
  register value (all pairs for arity 3), with a garbage destination; the
  sources are left as they were and the stack as it was."""
  u = U.DEFAULT_USEROPS[name]
  rng = np.random.default_rng(0)
  if u.n_args == 2:
    a, b = VALUES, np.zeros_like(VALUES)
    ops = [rng.integers(LO, HI + 1, a.shape), a]
  else:
    a, b = (x.ravel() for x in np.meshgrid(VALUES, VALUES))
    ops = [rng.integers(LO, HI + 1, a.shape), a, b]
  out, depth = _run_numpy(u, ops)
  assert depth == 0
  for got, want in zip(out[1:], ops[1:]):
    np.testing.assert_array_equal(got, want)
  math, machine = _intended(name, a, b)
  np.testing.assert_array_equal(out[0], machine)
  differs = out[0] != math
  documented = {
      "DOUBLE": (a < -512) | (a > 511), "MAX": np.zeros_like(differs),
      "ABS": a == LO, "SIGN": np.zeros_like(differs),
      "MOD": (a == LO) & (b == -1)}[name]
  np.testing.assert_array_equal(differs, documented)


@functools.partial(jax.jit, static_argnames="max_len")
def _call_and_run(programs, tables, *, max_len):
  def one(prog, table):
    base = U.substitute(prog, table, max_len=max_len)
    return base, interpreter.run(base, max_steps=max_len)
  return jax.vmap(one)(programs, tables)


def test_decompositions_on_the_jax_interpreter():
  """`LOAD R0 d; LOAD R1 a; LOAD R2 b; SYM R0 R1 R2; PRINT R0; HALT`,
  substituted and run in JAX, agrees with the numpy model; one compiled
  function for all userops (tables traced)."""
  rng = np.random.default_rng(1)
  edge = np.array([LO, LO + 1, -512, -1, 0, 1, 2, 511, 512, HI])
  progs, tables, want = [], [], []
  for name in NAMES:
    u = U.DEFAULT_USEROPS[name]
    vals = np.concatenate([np.stack(np.meshgrid(edge, edge), -1).reshape(-1, 2),
                           rng.integers(LO, HI + 1, (28, 2))])
    d0 = rng.integers(LO, HI + 1, len(vals))
    out, _ = _run_numpy(u, [d0, vals[:, 0], vals[:, 1]][:u.n_args])
    for (a, b), d, w in zip(vals, d0, out[0]):
      prog = [{"op": "LOAD", "args": [r, int(v)]}
              for r, v in ((0, d), (1, a), (2, b))]
      prog += [{"op": u.op_name, "args": [0, 1, 2][:u.n_args]},
               {"op": "PRINT", "args": [0]}, {"op": "HALT", "args": []}]
      progs.append(P.from_json(prog, max_len=8))
      tables.append(u.table())
      want.append((int(w), a, b))
  stack = lambda *x: np.stack(x)
  base, trace = jax.device_get(_call_and_run(
      jax.tree_util.tree_map(stack, *progs),
      jax.tree_util.tree_map(stack, *tables), max_len=16))
  assert not trace.error.any()
  np.testing.assert_array_equal(trace.output[:, 0], [w for w, _, _ in want])
  last = trace.regs[np.arange(len(want)), trace.num_steps - 1]
  np.testing.assert_array_equal(last[:, 1:3], [[a, b] for _, a, b in want])
  sizes = np.array([int(t.size) for t in tables])
  np.testing.assert_array_equal(base.length, 5 + sizes)


def test_default_userops():
  assert [u.slot for u in U.DEFAULT_USEROPS.values()] == list(range(16, 21))
  assert [u.n_args for u in U.DEFAULT_USEROPS.values()] == [2, 3, 2, 3, 2]
  assert U.DEFAULT_USEROPS["DOUBLE"].to_spec() == (
      stored_rows()[0]["meta"]["opcode_spec"])
  for u in U.DEFAULT_USEROPS.values():
    assert U.UserOp.from_spec(u.to_spec()) == u
    assert hash(U.UserOp.from_spec(u.to_spec())) == hash(u)
    assert u.writes[0] == 0 and u.stack_need <= 1
  with pytest.raises(TypeError):
    U.DEFAULT_USEROPS["DOUBLE"] = U.DEFAULT_USEROPS["MAX"]


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="TRIPLE", decomposition=(("ADD", (0, 1, 1)),)), "name must"),
    (dict(name="DOUBLE", decomposition=()), "non-empty"),
    (dict(name="DOUBLE", decomposition=(("JMP", ()),)), "not allowed"),
    (dict(name="DOUBLE", decomposition=(("USEROP_0", (0, 1)),)),
     "not allowed"),
    (dict(name="DOUBLE", decomposition=(("ADD", (0, 1)),)), "takes 3"),
    (dict(name="DOUBLE", decomposition=(("ADD", (0, 1, 2)),)),
     "placeholder positions"),
    (dict(name="DOUBLE", decomposition=(("LOAD", (0, 300)),)), "literal"),
    (dict(name="DOUBLE", decomposition=(("ADD", (0, 1, True)),)), "integer"),
    (dict(name="DOUBLE", decomposition=(("PUSH", (1,)), ("ADD", (0, 1, 1)))),
     "balance"),
    (dict(name="DOUBLE", decomposition=(("POP", (1,)), ("PUSH", (1,)),
                                        ("ADD", (0, 1, 1)))), "POP below"),
    (dict(name="DOUBLE", decomposition=(("ADD", (1, 1, 1)),)),
     "never writes placeholder 0"),
])
def test_userop_bad_input(kwargs, match):
  with pytest.raises(ValueError, match=match):
    U.UserOp(**kwargs)


@pytest.mark.parametrize("spec, match", [
    ({"name": "DOUBLE", "n_args": 3,
      "decomposition": [{"op": "ADD", "args": [0, 1, 1]}]}, "n_args=3"),
    ({"name": "DOUBLE", "decomposition": [
        {"op": "ADD", "args": [0, 1, 1], "label": "L0"}]}, "labels"),
    ({"name": "DOUBLE"}, "name and decomposition"),
    ({"name": "DOUBLE", "decomposition": "ADD"}, "list of instruction"),
])
def test_from_spec_bad_input(spec, match):
  with pytest.raises(ValueError, match=match):
    U.UserOp.from_spec(spec)


# ------------------------------------------------------------ substitution
def test_substitute_json_gives_every_stored_base():
  double = U.DEFAULT_USEROPS["DOUBLE"]
  for row in stored_rows():
    for part in row["demos"] + [row["target"]]:
      assert U.substitute(part["with_symbol"], double) == part["base"]


def test_substitute_arrays_with_labels_and_jumps():
  """Labels move to the first decomposition row, targets follow their
  instruction, other slots stay; arrays and JSON agree."""
  u = U.DEFAULT_USEROPS["MAX"]
  prog = [
      {"op": "LOAD", "args": [1, 3], "label": None, "target": None},
      {"op": "USEROP_1", "args": [0, 1, 2], "label": "L0", "target": None},
      {"op": "JZ", "args": [0], "label": None, "target": "L1"},
      {"op": "USEROP_0", "args": [3, 0], "label": None, "target": None},
      {"op": "USEROP_1", "args": [4, 0, 1], "label": "L1", "target": None},
      {"op": "JMP", "args": [], "label": None, "target": "L0"},
      {"op": "HALT", "args": [], "label": None, "target": None}]
  want = U.substitute(prog, u)
  assert len(want) == 7 + 2 * 6
  assert want[1]["label"] == "L0" and want[2]["label"] is None
  assert want[9]["op"] == "USEROP_0" and want[10]["label"] == "L1"
  sub = jax.jit(functools.partial(U.substitute, userop=u))
  got = jax.device_get(sub(P.from_json(prog, max_len=9)))
  assert got.op.shape == (9 * 8,)                   # default max_len
  assert P.to_json(got) == want
  np.testing.assert_array_equal(got.target[[8, 17]], [10, 1])
  short = jax.device_get(U.substitute(P.from_json(prog), u, max_len=10))
  assert int(short.length) == 19                    # overflow flagged


def test_substitute_bad_input():
  u = U.DEFAULT_USEROPS["DOUBLE"]
  prog = P.from_json([{"op": "HALT", "args": []}])
  with pytest.raises(ValueError, match="expected a UserOp"):
    U.substitute(prog, "DOUBLE")
  with pytest.raises(ValueError, match="unbatched"):
    U.substitute(P.stack([prog, prog]), u)
  with pytest.raises(ValueError, match="max_len"):
    U.substitute(prog, u, max_len=0)
  with pytest.raises(ValueError, match="JSON instruction list or a Program"):
    U.substitute({"op": "HALT"}, u)
  with pytest.raises(P.ProgramError, match="expected 2 register operands"):
    U.substitute([{"op": "USEROP_0", "args": [1]}], u)


# ------------------------------------------------------------ stored rows
def test_stored_rows_replay_exactly():
  """Every stored row: base = substitute(with_symbol), trace = run(base),
  both renders' ids and text rebuilt byte for byte, programs valid and of
  the generator's shape."""
  rows = stored_rows()
  assert len(rows) == 50
  assert list(U.check_userop_rows(enumerate(rows, 1))) == []


@pytest.mark.parametrize("edit, field", [
    (lambda r: r["renders"]["userop_direct"]["input_ids"].__setitem__(6, 0),
     "renders.userop_direct.input_ids"),
    (lambda r: r["renders"]["userop_with_decomposition"].__setitem__(
        "input_text", "x"), "renders.userop_with_decomposition.input_text"),
    (lambda r: r["renders"]["userop_direct"]["target_ids"].pop(1),
     "renders.userop_direct.target_ids"),
    (lambda r: r["demos"][1]["base"][-3]["args"].__setitem__(2, 5),
     "demos[1].base"),
    (lambda r: r["target"]["trace"]["output"].__setitem__(0, 12345),
     "target.trace.output"),
    (lambda r: r["demos"][0]["trace"].__setitem__("halted", False),
     "demos[0].trace.halted"),
    (lambda r: r["meta"].__setitem__("n_target", 30), "target.with_symbol"),
    (lambda r: r["meta"].__setitem__("k_demos", 3), "meta.k_demos"),
    (lambda r: r["meta"].__setitem__("tier", "tier2"), "meta.tier"),
    (lambda r: r["meta"]["opcode_spec"].__setitem__("n_args", 3),
     "meta.opcode_spec"),
    (lambda r: r["target"]["with_symbol"][0].__setitem__("op", "FOO"),
     "target.with_symbol"),
    (lambda r: r.pop("demos"), "row"),
])
def test_check_finds_edits(edit, field):
  """An edit of row 2 is found, and only there (the whole file is checked,
  sharing the compilation of the replay above)."""
  rows = list(stored_rows())
  rows[1] = copy.deepcopy(rows[1])
  edit(rows[1])
  found = list(U.check_userop_rows(enumerate(rows, 1)))
  assert found and all(m.line == 2 for m in found)
  assert field in {m.field for m in found}, found


@pytest.mark.parametrize("edit", [
    lambda r: r.__setitem__("renders", 3),
    lambda r: r["renders"].__setitem__("userop_direct", []),
    lambda r: r["meta"].__setitem__("renders", None),
    lambda r: r["renders"]["userop_direct"].__setitem__("input_ids", 5),
    lambda r: r["target"].__setitem__("trace", []),
    lambda r: r["target"]["trace"].__setitem__("steps", None),
    lambda r: r["demos"][0].__setitem__("base", None),
    lambda r: r["demos"].__setitem__(0, "x"),
    lambda r: r["meta"].__setitem__("use_stack", 1),
    lambda r: r["meta"].__setitem__("n_target", "8"),
])
def test_check_survives_malformed_rows(edit):
  row = copy.deepcopy(stored_rows()[0])
  edit(row)
  assert U.check_userop_row(row)


def test_check_bad_input():
  assert U.check_userop_row([1, 2], line=7) == [
      U.Mismatch(7, "row", "not an object")]
  with pytest.raises(ValueError, match="batch_size"):
    list(U.check_userop_rows([], batch_size=0))


# ------------------------------------------------------------ generated rows
@pytest.fixture(scope="module")
def generated():
  """N_ROWS rows cycling over the default userops, n_target 8..32,
  use_stack on odd rows: (userops, batch, row dicts)."""
  idx = np.arange(N_ROWS)
  ops = [U.DEFAULT_USEROPS[NAMES[i % len(NAMES)]] for i in idx]
  kd = np.stack([np.asarray(jax.random.key_data(
      keys_lib.row_key(0, "train", "userop", i))) for i in idx])
  batch = U.generate_userop_rows(ops, kd, n_target=8 + idx % 25,
                                 use_stack=idx % 2 == 1)
  rows = [U.row_to_json(jax.tree_util.tree_map(lambda x, i=i: x[i], batch),
                        ops[i]) for i in idx]
  return ops, batch, rows


def test_generated_rows_replay_and_rebuild(generated):
  """Our rows pass the same check, and rebuild from meta.seed; the
  generator compiled once for all five userops."""
  _, _, rows = generated
  assert list(U.check_userop_rows(enumerate(rows, 1), rebuild=True)) == []
  assert generate_lib._generate._cache_size() == 1


def test_generated_row_layout(generated):
  ops, _, rows = generated
  for i, (u, row) in enumerate(zip(ops, rows)):
    assert list(row) == ["meta", "demos", "target", "renders"]
    assert list(row["meta"]) == ["tier", "seed", "opcode_spec", "k_demos",
                                 "n_target", "use_stack", "renders"]
    assert row["meta"]["opcode_spec"] == u.to_spec()
    assert row["meta"]["n_target"] == 8 + i % 25
    assert row["meta"]["use_stack"] == (i % 2 == 1)
    assert list(row["renders"]) == list(U.USEROP_RENDER_NAMES)
    assert all(list(r) == ["input_ids", "target_ids", "input_text",
                           "target_text"] for r in row["renders"].values())
    seed = keys_lib.key_to_seed(keys_lib.row_key(0, "train", "userop", i))
    assert row["meta"]["seed"] == seed


def _layout(x):
  """The shape of a JSON value: keys in order, element layouts, types."""
  if isinstance(x, dict):
    return {k: _layout(v) for k, v in x.items()}
  if isinstance(x, list):
    return [_layout(x[0])] if x else []
  return type(x).__name__


def test_generated_layout_matches_the_stored_rows(generated):
  _, _, rows = generated
  assert _layout(rows[1]) == _layout(stored_rows()[1])   # both use_stack


def _first_written(prog, n):
  seen = []
  for ins in prog:
    if isa.WRITES_REG[isa.OP_IDS[ins["op"]]] and ins["args"][0] not in seen:
      seen.append(ins["args"][0])
  return seen[:n]


def test_generated_programs_follow_section_11(generated):
  ops, _, rows = generated
  lengths = set()
  for u, row in zip(ops, rows):
    writes = {u.op_name: u.writes}
    for j, part in enumerate(row["demos"] + [row["target"]]):
      ws = part["with_symbol"]
      call = ws[-3]
      assert call["op"] == u.op_name and ws[-2] == {
          "op": "PRINT", "args": call["args"][:1], "label": None,
          "target": None}
      assert ws[0]["op"] == "LOAD" and ws[0]["args"][1] == 1
      assert call["args"][:2] == [ws[0]["args"][0], ws[1]["args"][0]]
      first = _first_written(ws[:-3], u.n_args)
      if len(first) == u.n_args:
        assert call["args"] == first
      regs = {a for ins in ws for a in ins["args"][:isa.REG_ARGS[
          isa.OP_IDS[ins["op"]]]]}
      assert len(regs) <= max(2, u.n_args)
      assert any(i["op"] == "PUSH" for i in ws) == row["meta"]["use_stack"]
      validate.validate(ws, userop_writes=writes)
      validate.validate(part["base"])
      assert part["trace"]["halted"] and len(part["trace"]["output"]) == 1
      if j < len(row["demos"]) and row["meta"]["use_stack"]:
        lengths.add(len(ws))
  assert lengths == {14, 15, 16}                  # demo n = 8 + [0, 4]


def test_decomp_render_text(generated):
  """Each demo call is followed by DECOMP and its concrete instructions,
  one per line; the target's call is not."""
  ops, _, rows = generated
  for u, row in zip(ops[:len(NAMES)], rows):
    text = row["renders"]["userop_with_decomposition"]["input_text"]
    plain = row["renders"]["userop_direct"]["input_text"]
    for part in row["demos"]:
      regs = " ".join(f"R{r}" for r in part["with_symbol"][-3]["args"])
      assert f"{u.name} {regs} \nDECOMP " in text
    assert text.count("DECOMP ") == len(row["demos"])
    assert text.replace("DECOMP ", "").count("\n") == plain.count("\n") + sum(
        len(u.decomposition) for _ in row["demos"])
    if u.name == "MAX":
      d, a, b = row["demos"][0]["with_symbol"][-3]["args"]
      assert (f"MAX R{d} R{a} R{b} \nDECOMP PUSH R{a} \nLT R{d} R{b} R{a} \n"
              f"MUL R{a} R{d} R{a} \nMUL R{d} R{d} R{b} \nSUB R{d} R{b} R{d} \n"
              f"ADD R{d} R{d} R{a} \nPOP R{a} \nPRINT R{d} \n") in text


def test_row_to_json_bad_input(generated):
  ops, batch, _ = generated
  with pytest.raises(ValueError, match="one row"):
    U.row_to_json(batch, ops[0])
  with pytest.raises(ValueError, match="expected a UserOp"):
    U.row_to_json(jax.tree_util.tree_map(lambda x: x[0], batch), "DOUBLE")
  with pytest.raises(ValueError, match="batch"):
    U.rows_to_json(jax.tree_util.tree_map(lambda x: x[0], batch), ops[0])


def test_generate_bad_input():
  u = U.DEFAULT_USEROPS["DOUBLE"]
  kd = np.zeros((2, 2), np.uint32)
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="key_data"):
    U.generate_userop_rows(u, np.zeros(3, np.float32), n_target=8,
                           use_stack=False)
  with pytest.raises(ValueError, match="no rows"):
    U.generate_userop_rows(u, np.zeros((0, 2), np.uint32), n_target=8,
                           use_stack=False)
  with pytest.raises(ValueError, match="3 userops for 2 rows"):
    U.generate_userop_rows([u] * 3, kd, n_target=8, use_stack=False)
  with pytest.raises(ValueError, match="n_target must be integers >= 0"):
    U.generate_userop_rows(u, kd, n_target=-1, use_stack=False)
  with pytest.raises(ValueError, match="exceeds n_max"):
    U.generate_userop_rows(u, kd, n_target=40, use_stack=False, n_max=32)
  with pytest.raises(ValueError, match="expected a UserOp"):
    U.gen_userop_row(key, "MAX", n_target=8, use_stack=False)
  with pytest.raises(ValueError, match="one PRNG key"):
    U.gen_userop_row(jax.random.split(key, 2), u, n_target=8,
                     use_stack=False)
  with pytest.raises(ValueError, match="n_target=9 > n_max=8"):
    U.gen_userop_row(key, u, n_target=9, use_stack=False, n_max=8)
  with pytest.raises(ValueError, match="n_target must be >= 0"):
    U.gen_userop_row(key, u, n_target=-2, use_stack=False)
  with pytest.raises(ValueError, match="static n_max"):
    jax.jit(lambda n: U.gen_userop_row(key, u, n_target=n,
                                       use_stack=False))(8)
  with pytest.raises(ValueError, match="unknown render"):
    U.gen_userop_row(key, u, n_target=8, use_stack=False, renders=("cot",))
  with pytest.raises(ValueError, match="k_demos"):
    U.userop_shapes(8, k_demos=-1, n_max=8)


def test_render_bad_input(generated):
  _, batch, _ = generated
  one = jax.tree_util.tree_map(lambda x: x[0], batch)
  ws0 = jax.tree_util.tree_map(lambda x: x[0], one.with_symbol)
  tr0 = jax.tree_util.tree_map(lambda x: x[0], one.trace)
  sizes = dict(max_input_len=64, max_target_len=8)
  with pytest.raises(ValueError, match=r"\[E, P\]"):
    U.render_userop_direct(ws0, tr0, **sizes)
  with pytest.raises(ValueError, match="expected a Program and a Trace"):
    U.render_userop_direct(one.trace, one.with_symbol, **sizes)
  with pytest.raises(ValueError, match="expected a UserOp"):
    U.render_userop_with_decomposition(one.with_symbol, one.trace, None,
                                       **sizes)
  with pytest.raises(ValueError, match="max_input_len"):
    U.render_userop_direct(one.with_symbol, one.trace, max_input_len=0,
                           max_target_len=8)
  with pytest.raises(ValueError, match="unknown userop render"):
    U.render_userop("direct", one.with_symbol, one.trace, None, **sizes)
