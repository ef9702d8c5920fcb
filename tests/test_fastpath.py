"""The Tier 0/1 fast path: `run_straight_line` and the plain direct render
against the general `run` and render, field by field and token by token."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_rows, row_files
from tinyvm_jax._src import interpreter
from tinyvm_jax._src import isa
from tinyvm_jax._src import program as program_lib
from tinyvm_jax._src import render as render_lib
from tinyvm_jax._src import sampling
from tinyvm_jax._src import tiers
from tinyvm_jax._src.types import Program

# every Tier 0/1 file of tests/data, padded to one shape (one compilation)
STRAIGHT_FILES = [n for n in row_files() if n.startswith(("tier0", "tier1"))]
P_ALL = 130


@functools.partial(jax.jit, static_argnames=("max_steps",))
def _both(programs, *, max_steps):
  fast = jax.vmap(lambda p: interpreter.run_straight_line(
      p, max_steps=max_steps))(programs)
  slow = jax.vmap(lambda p: interpreter.run(p, max_steps=max_steps))(programs)
  return fast, slow


def assert_same_traces(programs, max_steps):
  fast, slow = _both(programs, max_steps=max_steps)
  for name in fast.__dataclass_fields__:
    np.testing.assert_array_equal(getattr(fast, name), getattr(slow, name),
                                  err_msg=name)
  return fast


def _stack(rows, max_len):
  return program_lib.stack([program_lib.from_json(r["program"],
                                                  max_len=max_len)
                            for r in rows])


# ------------------------------------------------------------- the runner
@functools.lru_cache(maxsize=None)
def straight_rows():
  rows = [(n, r) for n in STRAIGHT_FILES for r in load_rows(n)]
  return rows, _stack([r for _, r in rows], P_ALL)


def test_every_straight_line_reference_row():
  rows, programs = straight_rows()
  assert len(STRAIGHT_FILES) >= 10 and len(rows) > 1000
  fast = jax.tree_util.tree_map(np.asarray,
                                assert_same_traces(programs, P_ALL))
  for i, (name, row) in enumerate(rows):
    got = interpreter.trace_to_json(
        jax.tree_util.tree_map(lambda x, i=i: x[i], fast))
    assert got == row["trace"], (name, i)


def _random_programs(rng, count, p, ops, *, reg_hi=isa.NUM_REGS,
                     lit_range=(-127, 127)):
  """Random programs of the given opcodes, random lengths in [0, p]."""
  op = rng.choice(np.asarray(ops), size=(count, p)).astype(np.int32)
  regs = rng.integers(0, reg_hi, size=(count, p, 3), dtype=np.int32)
  lit = rng.integers(lit_range[0], lit_range[1] + 1, size=(count, p),
                     dtype=np.int32)
  length = rng.integers(0, p + 1, size=count, dtype=np.int32)
  neg = np.full((count, p), -1, np.int32)
  live = np.arange(p)[None, :] < length[:, None]
  return Program(op=np.where(live, op, isa.NOP), regs=regs,
                 lit=np.where(live & (op == isa.LOAD), lit, 0), target=neg,
                 target_label=neg, label=neg, length=length)


LINE_OPS = list(isa.FILL_OPS) + [isa.PRINT, isa.NOP, isa.HALT]


@pytest.mark.parametrize("p,max_steps", [(24, 20), (12, 16)])
def test_random_straight_line_programs(p, max_steps):
  # big literals reach the clamps; PRINT several times; HALT mid-program;
  # lengths below, at and above the budget
  rng = np.random.default_rng(max_steps)
  ops = LINE_OPS + [isa.LOAD] * 3 + [isa.PRINT]
  progs = _random_programs(rng, 400, p, ops, lit_range=(-1500, 1500))
  trace = assert_same_traces(progs, max_steps)
  errors = set(np.asarray(trace.error).tolist())
  assert isa.ERR_NONE in errors
  assert (isa.ERR_STEP_BUDGET in errors) == (max_steps < p)
  assert np.asarray(trace.num_output).max() > 1


def test_random_programs_with_every_opcode_and_bad_operands():
  # every opcode (and two invalid ones) with register indices up to 9: a
  # fault gives run's code, or ERR_NOT_STRAIGHT_LINE where run would jump,
  # push or pop; everything before the fault is equal
  rng = np.random.default_rng(7)
  ops = LINE_OPS * 6 + list(range(isa.NUM_OPS)) + [-3, 21, 99]
  progs = _random_programs(rng, 600, 16, ops, reg_hi=9)
  fast, slow = _both(progs, max_steps=20)
  err_f, err_s = np.asarray(fast.error), np.asarray(slow.error)
  line = err_f != isa.ERR_NOT_STRAIGHT_LINE
  assert line.sum() > 100 and (~line).sum() > 30
  np.testing.assert_array_equal(err_f[line], err_s[line])
  codes = set(err_f.tolist())
  assert {isa.ERR_BAD_OPCODE, isa.ERR_BAD_REGISTER, isa.ERR_USEROP,
          isa.ERR_NOT_STRAIGHT_LINE, isa.ERR_NONE} <= codes
  for name in fast.__dataclass_fields__:
    if name in ("error", "halted"):
      continue
    f, s = np.asarray(getattr(fast, name)), np.asarray(getattr(slow, name))
    np.testing.assert_array_equal(f[line], s[line], err_msg=name)
  # where the fast runner stops at JZ/JMP/PUSH/POP, the steps before agree
  n = np.asarray(fast.num_steps)
  for i in np.flatnonzero(~line):
    assert int(slow.num_steps[i]) >= n[i]
    np.testing.assert_array_equal(fast.regs[i, :n[i]], slow.regs[i, :n[i]])
    op = int(progs.op[i, n[i]])
    assert op in (isa.JZ, isa.JMP, isa.PUSH, isa.POP)
    assert not bool(fast.halted[i])


def _ins(op, *args, label=None, target=None):
  return {"op": op, "args": list(args), "label": label, "target": target}


_END = _ins("NOP", label="L0")


@pytest.mark.parametrize("instructions,error,steps", [
    ([_ins("LOAD", 1, 5), _ins("JMP", target="L0"), _END],
     isa.ERR_NOT_STRAIGHT_LINE, 1),
    ([_ins("LOAD", 1, 5), _ins("JZ", 1, target="L0"), _END],
     isa.ERR_NOT_STRAIGHT_LINE, 1),
    ([_ins("PUSH", 1)], isa.ERR_NOT_STRAIGHT_LINE, 0),
    ([_ins("LOAD", 1, 5), _ins("POP", 1)], isa.ERR_NOT_STRAIGHT_LINE, 1),
    ([_ins("LOAD", 8, 1)], isa.ERR_BAD_REGISTER, 0),
    ([_ins("NOP"), _ins("ADD", 0, 1, -1)], isa.ERR_BAD_REGISTER, 1),
    ([_ins("LOAD", 1, 3), _ins("USEROP_0", 0, 1)], isa.ERR_USEROP, 1),
    ([_ins("LOAD", 1, 3)] * 9, isa.ERR_STEP_BUDGET, 8),
    ([_ins("LOAD", 1, 3)] * 7 + [_ins("HALT")], isa.ERR_NONE, 8),
    ([_ins("LOAD", 1, 3)] * 8 + [_ins("PUSH", 1)], isa.ERR_STEP_BUDGET, 8),
])
def test_errors(instructions, error, steps):
  prog = program_lib.from_json(instructions, max_len=12)
  trace = jax.jit(functools.partial(interpreter.run_straight_line,
                                    max_steps=8))(prog)
  assert (int(trace.error), int(trace.num_steps)) == (error, steps)
  assert bool(trace.halted) == (error == isa.ERR_NONE)
  assert not np.asarray(trace.regs[steps:]).any()
  assert not np.asarray(trace.pc[steps:]).any()


def test_unused_bad_register_and_bad_opcode():
  prog = program_lib.from_json([_ins("LOAD", 1, 3), _ins("PRINT", 1)],
                               max_len=4)
  # operands a LOAD does not use may hold anything, as in `run`
  prog = prog.replace(regs=prog.regs.copy())
  prog.regs[0, 1:] = [9, -4]
  bad = prog.replace(op=np.array([isa.LOAD, 21, isa.NOP, isa.NOP], np.int32))
  progs = program_lib.stack([prog, bad])
  trace = assert_same_traces(progs, 4)
  assert trace.error.tolist() == [isa.ERR_NONE, isa.ERR_BAD_OPCODE]
  assert trace.output[0, 0] == 3


def test_div_in_float_is_exact():
  a = jnp.arange(isa.VALUE_MIN, isa.VALUE_MAX + 1, dtype=jnp.int32)
  aa, bb = jnp.meshgrid(a, a, indexing="ij")
  got = jax.jit(interpreter.fill_value)(jnp.full(aa.shape, isa.DIV), aa,
                                        aa, bb)
  want = interpreter.clamp(interpreter.trunc_div(aa, bb))
  np.testing.assert_array_equal(got, want)


def test_runner_bad_budget():
  prog = program_lib.from_json([_ins("HALT")], max_len=2)
  with pytest.raises(ValueError, match="max_steps"):
    interpreter.run_straight_line(prog, max_steps=0)


# ------------------------------------------------------------- the render
@functools.partial(jax.jit, static_argnames=("sizes", "plain", "max_steps"))
def _render(programs, *, sizes, plain, max_steps):
  """Renders at each (T_in, T_out) of `sizes` (one compilation)."""
  def one(p):
    t = interpreter.run_straight_line(p, max_steps=max_steps)
    digits = dict(label_digits=0, literal_digits=3) if plain else {}
    return [render_lib.render_direct(p, t, max_input_len=t_in,
                                     max_target_len=t_out, **digits)
            for t_in, t_out in sizes]
  return jax.vmap(one)(programs)


def assert_same_renders(programs, max_steps, sizes):
  args = dict(sizes=tuple(sizes), max_steps=max_steps)
  plain = _render(programs, plain=True, **args)
  full = _render(programs, plain=False, **args)
  for x, y in zip(jax.tree_util.tree_leaves(plain),
                  jax.tree_util.tree_leaves(full)):
    np.testing.assert_array_equal(x, y)
  return plain


def test_plain_render_of_every_reference_row():
  rows, programs = straight_rows()
  out, = _render(programs, sizes=((2 + 7 * P_ALL, 8),), plain=True,
                 max_steps=P_ALL)
  out = jax.tree_util.tree_map(np.asarray, out)
  for i, (name, row) in enumerate(rows):
    if "direct" not in row["renders"]:
      continue
    ref = row["renders"]["direct"]
    n_in, n_out = int(out.input.length[i]), int(out.target.length[i])
    assert out.input.ids[i, :n_in].tolist() == ref["input_ids"], name
    assert out.target.ids[i, :n_out].tolist() == ref["target_ids"], name


def test_plain_render_of_random_programs_and_overflows():
  # literals of up to 3 digits, many prints (several output values), the
  # render cut anywhere
  rng = np.random.default_rng(5)
  progs = _random_programs(rng, 300, 24, LINE_OPS + [isa.PRINT] * 3,
                           lit_range=(-999, 999))
  assert_same_renders(progs, 24, [(170, 64), (16, 3), (5, 1), (9, 2),
                                  (60, 7)])


def test_plain_render_flags_a_broken_promise():
  prog = program_lib.from_json([_ins("LOAD", 1, 1000), _ins("PRINT", 1)],
                               max_len=4)
  label = program_lib.from_json([_ins("NOP"), _ins("HALT")], max_len=4)
  label = label.replace(label=np.array([3, -1, -1, -1], np.int32))
  ok = program_lib.from_json([_ins("LOAD", 1, -999), _ins("PRINT", 1)],
                             max_len=4)
  out, = _render(program_lib.stack([prog, label, ok]), sizes=((40, 8),),
                 plain=True, max_steps=4)
  assert np.asarray(out.input.length).tolist()[:2] == [41, 41]
  assert int(out.input.length[2]) <= 40


def test_plain_render_bad_arguments():
  prog = jax.tree_util.tree_map(
      jnp.asarray, program_lib.from_json([_ins("HALT")], max_len=2))
  trace = interpreter.run(prog, max_steps=2)
  for k, v in (("label_digits", 5), ("literal_digits", -1),
               ("literal_digits", 2.0)):
    with pytest.raises(ValueError, match=k):
      render_lib.render_direct(prog, trace, max_input_len=8,
                               max_target_len=8, **{k: v})


# ------------------------------------------------------------- tiers, sampling
def test_make_row_fast_path_equals_general_path():
  tier, bucket = tiers.get_tier("tier1"), None
  assert tier.straight_line
  slow_tier = dataclasses.replace(tier, straight_line=False)
  shapes = tier.shapes(bucket)
  wide = dataclasses.replace(shapes, label_digits=isa.MAX_LABEL_DIGITS,
                             literal_digits=isa.MAX_LITERAL_DIGITS)
  lengths = {"direct": shapes.token_lengths("direct")}

  @jax.jit
  def both(key):
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(64))
    fast = jax.vmap(lambda k: tiers.make_row(tier, k, bucket=bucket))(keys)
    slow = jax.vmap(lambda k: tiers.make_row(
        slow_tier, k, bucket=bucket, shapes=wide,
        token_lengths=lengths))(keys)
    return fast, slow

  fast, slow = both(jax.random.key(3))
  for x, y in zip(jax.tree_util.tree_leaves(fast),
                  jax.tree_util.tree_leaves(slow)):
    np.testing.assert_array_equal(x, y)


def test_sample_batch_first_row_and_blocks():
  @functools.partial(jax.jit, static_argnames=("block",))
  def sample(key, first, block=None):
    b = sampling.sample_batch(key, "tier1", 5, first_row=first,
                              block_size=block)
    return b.input_ids, b.target_ids, b.regs, b.valid

  key = jax.random.key(11)
  whole = sample(key, 0)
  for a, b, c in zip(whole, sample(key, 2), sample(key, 0, block=2)):
    np.testing.assert_array_equal(a[2:], b[:3])
    np.testing.assert_array_equal(a, c)
  with pytest.raises(ValueError, match="first_row"):
    sampling.sample_batch(key, "tier1", 2, first_row=-1)
  with pytest.raises(ValueError, match="block_size"):
    sampling.sample_batch(key, "tier1", 2, block_size=0)
