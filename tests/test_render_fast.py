"""The package's renders (direct, cot full and modified, probe_query; with
and without labels) against the slot layout of tests/render_slots.py, token
for token and length for length: every reference row of tests/data,
generated Tier 2 rows, random programs (labels, negative and extreme values)
and truncation at small lengths."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import render_slots
from conftest import load_rows, row_files
from tinyvm_jax._src import interpreter
from tinyvm_jax._src import isa
from tinyvm_jax._src import program as program_lib
from tinyvm_jax._src import render as render_lib
from tinyvm_jax._src import render_windows
from tinyvm_jax._src import tiers
from tinyvm_jax._src.types import Program

NAMES = ("direct", "cot", "cot_modified", "probe_query")
SLOTS = {
    "direct": render_slots.render_direct,
    "cot": functools.partial(render_slots.render_cot, mode="full"),
    "cot_modified": functools.partial(render_slots.render_cot,
                                      mode="modified"),
    "probe_query": render_slots.render_probe_query,
}
# truncated (T_in, T_out): renders cut in the middle (the edge case below
# cuts one program everywhere)
SMALL = ((16, 40),)


@functools.partial(jax.jit, static_argnames=("name", "sizes", "digits"))
def _both(programs, traces, steps, *, name, sizes, digits):
  """(package, slot) renders of every row at each (T_in, T_out) of
  `sizes`, the package's under the promise `digits`."""
  def one(program, trace, step):
    new, old = [], []
    for t_in, t_out in sizes:
      kw = dict(max_input_len=t_in, max_target_len=t_out)
      args = (program, trace) + ((step,) if name == "probe_query" else ())
      new.append(render_lib.render(
          name, program, trace, **kw, **dict(digits),
          step=step if name == "probe_query" else None))
      old.append(SLOTS[name](*args, **kw))
    return new, old
  return jax.vmap(one)(programs, traces, steps)


def assert_same(name, programs, traces, steps, sizes, **digits):
  new, old = _both(programs, traces, steps, name=name, sizes=tuple(sizes),
                   digits=tuple(sorted(digits.items())))
  for (t_in, t_out), a, b in zip(sizes, new, old):
    for side in ("input", "target"):
      x, y = getattr(a, side), getattr(b, side)
      where = (name, side, t_in, t_out)
      np.testing.assert_array_equal(x.length, y.length, err_msg=str(where))
      np.testing.assert_array_equal(x.ids, y.ids, err_msg=str(where))
  return new


def _digits_needed(programs):
  """The tightest (label_digits, literal_digits) promise of `programs`."""
  live = np.arange(programs.op.shape[1]) < programs.length[:, None]
  labels = np.concatenate([programs.label[live],
                           programs.target_label[live], [-1]])
  lits = np.abs(programs.lit[live & (programs.op == isa.LOAD)])
  return (len(str(labels.max())) if labels.max() >= 0 else 0,
          len(str(lits.max())) if lits.size else 1)


def _max_sizes(name, p, s, label_digits, literal_digits):
  return render_lib.max_render_lengths(
      name, max_len=p, max_steps=s, label_digits=label_digits,
      literal_digits=literal_digits)


# ------------------------------------------------------------- reference rows
@functools.lru_cache(maxsize=None)
def tier_rows(tier):
  """Every program/trace row of a tier's files, padded to one shape."""
  rows = [r for n in row_files() if n.startswith(tier)
          for r in load_rows(n)]
  p = max(len(r["program"]) for r in rows)
  s = max(len(r["trace"]["steps"]) for r in rows)
  programs = program_lib.stack([program_lib.from_json(r["program"],
                                                      max_len=p)
                                for r in rows])
  traces = [interpreter.trace_from_json(r["trace"], max_steps=s)
            for r in rows]
  traces = jax.tree_util.tree_map(lambda *x: np.stack(x), *traces)
  steps = np.array([r.get("probe", {}).get("step_t", i % 7)
                    for i, r in enumerate(rows)], np.int32)
  return rows, programs, traces, steps, p, s


@pytest.mark.parametrize("tier", ["tier1", "tier2"])
@pytest.mark.parametrize("name", NAMES)
def test_every_reference_row(tier, name):
  rows, programs, traces, steps, p, s = tier_rows(tier)
  digits = _digits_needed(programs)
  if tier == "tier2":
    assert digits == (2, 3)  # labels up to L16: the Tier 2 promise
  full = _max_sizes(name, p, s, *digits)
  new = jax.device_get(assert_same(
      name, programs, traces, steps, (full,) + SMALL,
      label_digits=digits[0], literal_digits=digits[1])[0])
  checked = 0
  for i, row in enumerate(rows):
    if name not in row["renders"]:
      continue
    ref = row["renders"][name]
    for side in ("input", "target"):
      tokens = getattr(new, side)
      n = int(tokens.length[i])
      assert tokens.ids[i, :n].tolist() == ref[f"{side}_ids"]
    checked += 1
  assert checked == sum(name in r["renders"] for r in rows)


def test_reference_rows_at_the_default_promise():
  # label_digits = literal_digits = 4: the widest windows
  _, programs, traces, steps, p, s = tier_rows("tier2")
  assert_same("cot", programs, traces, steps,
              (_max_sizes("cot", p, s, 4, 4), (30, 200)))


# ------------------------------------------------------------- generated rows
def test_generated_tier2_rows():
  tier = tiers.get_tier("tier2")
  shapes = tier.shapes(None)
  rows = tiers.generate(tier, 0, "train", None, np.arange(48), renders=())
  assert int(np.max(rows.trace.error)) == 0
  steps = np.asarray(rows.trace.num_steps) // 2
  digits = dict(label_digits=shapes.label_digits,
                literal_digits=shapes.literal_digits)
  for name in ("direct", "cot", "cot_modified"):
    sizes = (shapes.token_lengths(name),)
    assert_same(name, rows.program, rows.trace, steps, sizes, **digits)


# ------------------------------------------------------------- random programs
def random_programs(rng, count, p, *, label_hi):
  """Random programs of every base opcode: literals and registers at their
  extremes, labels defined and named with numbers in [0, label_hi)."""
  op = rng.integers(0, isa.NUM_BASE_OPS, (count, p)).astype(np.int32)
  op = np.where(rng.random((count, p)) < 0.3, isa.LOAD, op)
  op = np.where(rng.random((count, p)) < 0.2, isa.MUL, op)
  regs = rng.integers(0, isa.NUM_REGS, (count, p, 3), dtype=np.int32)
  lit = rng.choice(np.array([0, 1, -1, 9, -10, 99, -100, 127, -127, 5, -42]),
                   (count, p)).astype(np.int32)
  label = np.where(rng.random((count, p)) < 0.3,
                   rng.integers(0, label_hi, (count, p)), -1).astype(np.int32)
  # jumps name a label of the program (or, rarely, an undefined one)
  pick = rng.integers(0, p, (count, p))
  target_label = np.take_along_axis(label, pick, axis=1)
  jumps = (op == isa.JZ) | (op == isa.JMP)
  target_label = np.where(jumps, np.where(target_label >= 0, target_label,
                                          label_hi - 1), -1)
  target = np.where(jumps & (np.take_along_axis(label, pick, axis=1) >= 0),
                    pick, -1).astype(np.int32)
  length = rng.integers(1, p + 1, count).astype(np.int32)
  live = np.arange(p)[None, :] < length[:, None]
  return Program(op=np.where(live, op, isa.NOP), regs=regs,
                 lit=np.where(live & (op == isa.LOAD), lit, 0),
                 target=np.where(live, target, -1).astype(np.int32),
                 target_label=np.where(live, target_label, -1).astype(
                     np.int32),
                 label=np.where(live, label, -1), length=length)


@functools.partial(jax.jit, static_argnames=("max_steps",))
def _run(programs, *, max_steps):
  return jax.vmap(functools.partial(interpreter.run,
                                    max_steps=max_steps))(programs)


def test_random_programs():
  # labels of 1 to 3 digits
  rng = np.random.default_rng(0)
  programs = random_programs(rng, 200, 20, label_hi=1000)
  traces = _run(programs, max_steps=40)
  regs = np.asarray(traces.regs)
  assert regs.max() > 999 and regs.min() < -99   # extremes: see EDGE
  assert (np.asarray(traces.num_steps) == 40).any()   # loops hit the budget
  steps = rng.integers(-2, 42, 200).astype(np.int32)
  for name in NAMES:
    sizes = (_max_sizes(name, 20, 40, 3, 3), (16, 9))
    assert_same(name, programs, traces, steps, sizes, label_digits=3,
                literal_digits=3)


def test_no_promise():
  # literal_digits=0 promises nothing: the slot layout's tokens and true
  # lengths for 4-digit labels and literals too, and no overflow
  rng = np.random.default_rng(1)
  programs = random_programs(rng, 64, 12, label_hi=10000)
  load = np.asarray(programs.op) == isa.LOAD
  programs = programs.replace(lit=np.where(load, rng.choice(
      np.array([9999, -9999, 1000, -5, 0]), load.shape), 0).astype(np.int32))
  traces = _run(programs, max_steps=24)
  steps = rng.integers(0, 24, 64).astype(np.int32)
  for name in NAMES:
    sizes = (_max_sizes(name, 12, 24, 4, 4), (16, 9))
    assert_same(name, programs, traces, steps, sizes, label_digits=0,
                literal_digits=0)


def _ins(op, *args, label=None, target=None):
  return {"op": op, "args": list(args), "label": label, "target": target}


# values at the extremes: 1023 (clamped), -1023, -1024, 0; one- and
# two-digit labels; a step that changes nothing (an empty modified line)
EDGE = [
    _ins("LOAD", 1, 127, label="L0"), _ins("LOAD", 2, 9),
    _ins("MUL", 1, 1, 2, label="L7"), _ins("NEG", 3, 1),
    _ins("LOAD", 4, 1), _ins("SUB", 3, 3, 4, label="L42"),
    _ins("NOP"), _ins("LOAD", 5, -127), _ins("JZ", 0, target="L99"),
    _ins("ADD", 6, 3, 1), _ins("PRINT", 3), _ins("PRINT", 1),
    _ins("JMP", target="L99"), _ins("HALT", label="L99"),
]


def edge_rows():
  program = program_lib.from_json(EDGE, max_len=16)
  trace = interpreter.run(jax.tree_util.tree_map(jnp.asarray, program),
                          max_steps=16)
  assert int(trace.error) == 0
  assert {isa.VALUE_MAX, -1023, isa.VALUE_MIN} <= set(
      np.asarray(trace.regs).ravel().tolist())
  batch = lambda x: np.stack([np.asarray(x)] * 3)
  return (jax.tree_util.tree_map(batch, program),
          jax.tree_util.tree_map(batch, trace), np.array([0, 5, 11], np.int32))


@pytest.mark.parametrize("name", NAMES)
def test_edge_program_at_every_length(name):
  programs, traces, steps = edge_rows()
  t_in, t_out = _max_sizes(name, 16, 16, 2, 3)
  # cut at BOS, in a label, in a register file, in the outputs; and whole
  sizes = [(1, 1), (25, 40), (t_in, 301), (t_in, t_out)]
  assert_same(name, programs, traces, steps, sizes, label_digits=2,
              literal_digits=3)


# ------------------------------------------------------------- broken promises
CHANGES = ("label", "target", "literal", "register", "value")


@pytest.mark.parametrize("name", NAMES)
def test_broken_promise_overflows(name):
  programs, traces, _ = edge_rows()
  # row 0 intact, row i + 1 broken by CHANGES[i]
  rows = [0] * (1 + len(CHANGES))
  programs = jax.tree_util.tree_map(lambda x: np.copy(np.asarray(x)[rows]),
                                    programs)
  traces = jax.tree_util.tree_map(lambda x: np.copy(np.asarray(x)[rows]),
                                  traces)
  programs.label[1, 2] = 100          # a 3-digit label under label_digits=2
  programs.target_label[2, 12] = 123
  programs.lit[3, 0] = 1000           # a 4-digit literal, literal_digits=3
  programs.regs[4, 3, 1] = 8          # R8
  traces.regs[5, :, 7] = 2000         # a register value out of range
  t_in, t_out = _max_sizes(name, 16, 16, 2, 3)
  out, = _both(programs, traces, np.zeros(len(rows), np.int32), name=name,
               sizes=((t_in, t_out),),
               digits=(("label_digits", 2), ("literal_digits", 3)))[0]
  n_in, n_out = np.asarray(out.input.length), np.asarray(out.target.length)
  assert n_in[0] <= t_in and n_out[0] <= t_out
  for i, change in enumerate(CHANGES, 1):
    if change == "value":
      # the direct render shows no register
      assert n_out[i] == (t_out + 1 if name != "direct" else n_out[0])
    else:
      assert n_in[i] == t_in + 1, change


# ------------------------------------------------------------- building blocks
def test_instruction_windows_equal_slots():
  programs, _, _ = edge_rows()
  program = jax.tree_util.tree_map(lambda x: x[0], programs)
  toks, count, ok = jax.jit(functools.partial(
      render_windows.instruction_windows, label_digits=2, literal_digits=3))(
          program)
  slot_t, slot_m = jax.jit(render_slots.instruction_slots)(program)
  assert bool(ok)
  assert toks.shape == (16, render_windows.instruction_width(2, 3)) == (16, 14)
  for i in range(16):
    want = np.asarray(slot_t[i])[np.asarray(slot_m[i])].tolist()
    assert np.asarray(toks[i, :int(count[i])]).tolist() == want
    assert not np.asarray(toks[i, int(count[i]):]).any()


def test_register_windows():
  regs = jnp.array([[0, 5, -3, 1023, -1024, 10, -99, 100]], jnp.int32)
  show = jnp.array([[True, True, False, True, True, False, True, False]])
  windows = jax.jit(render_windows.register_windows)
  toks, count, ok = windows(regs, show)
  slot_t, slot_m = jax.jit(render_slots.register_slots)(regs, show)
  want = np.asarray(slot_t[0])[np.asarray(slot_m[0])].tolist() + [
      isa.TOK_NEWLINE]
  assert np.asarray(toks[0, :int(count[0])]).tolist() == want
  assert bool(ok[0])
  _, _, ok = windows(regs.at[0, 2].set(5000), show)
  assert bool(ok[0])   # a hidden register may hold anything
  _, _, ok = windows(regs.at[0, 1].set(5000), show)
  assert not bool(ok[0])


# ------------------------------------------------------------- bad input
def test_bad_promise_arguments():
  programs, traces, _ = edge_rows()
  one = lambda x: x[0]
  program = jax.tree_util.tree_map(one, programs)
  trace = jax.tree_util.tree_map(one, traces)
  sizes = dict(max_input_len=64, max_target_len=64)
  for k, v in (("label_digits", 5), ("literal_digits", -1),
               ("label_digits", 2.0), ("literal_digits", True)):
    with pytest.raises(ValueError, match=k):
      render_lib.render_cot(program, trace, mode="full", **sizes, **{k: v})
    with pytest.raises(ValueError, match=k):
      render_lib.render("probe_query", program, trace, step=0, **sizes,
                        **{k: v})
    with pytest.raises(ValueError, match=k):
      render_lib.render("cot_modified", program, trace, **sizes, **{k: v})
