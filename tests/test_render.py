"""Renders and their text against every reference row in tests/data."""

import functools
import glob
import gzip
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import render_slots
from tinyvm_jax._src import interpreter, isa
from tinyvm_jax._src import program as prog
from tinyvm_jax._src import render as R
from tinyvm_jax._src import render_windows
from tinyvm_jax._src.text import detokenize, detokenize_batch

DATA = os.path.join(os.path.dirname(__file__), "data")
FILES = sorted(os.path.basename(f)[:-len(".jsonl.gz")]
               for f in glob.glob(os.path.join(DATA, "*.jsonl.gz")))


@functools.lru_cache(maxsize=None)
def load(name):
  with gzip.open(os.path.join(DATA, name + ".jsonl.gz"), "rt") as f:
    return [json.loads(line) for line in f]


def groups():
  """{(tier, render name): [file, ...]} over the files with these renders;
  a group is rendered as one batch, so it compiles once."""
  out = {}
  for name in FILES:
    rows = load(name)
    if "program" not in rows[0]:
      continue  # userop few-shot rows: not these renders
    for r in rows[0]["renders"]:
      if r in R.RENDERS:
        out.setdefault((name.split("_")[0], r), []).append(name)
  return out


GROUPS = groups()


@functools.lru_cache(maxsize=None)
def batch(*names):
  """Rows, programs [B, P] and traces [B, S] of files, P and S their maxima."""
  rows = [r for n in names for r in load(n)]
  p = max(len(r["program"]) for r in rows)
  s = max(len(r["trace"]["steps"]) for r in rows)
  programs = prog.stack([prog.from_json(r["program"], max_len=p)
                         for r in rows])
  traces = [interpreter.trace_from_json(r["trace"], max_steps=s)
            for r in rows]
  traces = jax.tree_util.tree_map(lambda *x: np.stack(x), *traces)
  steps = np.array([r.get("probe", {}).get("step_t", -1) for r in rows],
                   np.int32)
  return rows, programs, traces, steps, p, s


@functools.lru_cache(maxsize=None)
def jitted_render(render_name, max_input_len, max_target_len):
  def one(program, trace, step):
    step = step if render_name == "probe_query" else None
    return R.render(render_name, program, trace, step=step,
                    max_input_len=max_input_len, max_target_len=max_target_len)
  return jax.jit(jax.vmap(one))


def render_batch(render_name, programs, traces, steps, sizes):
  return jitted_render(render_name, sizes["max_input_len"],
                       sizes["max_target_len"])(programs, traces, steps)


def unpad(tokens):
  ids, length = np.asarray(tokens.ids), np.asarray(tokens.length)
  assert np.all(length <= ids.shape[-1])
  return [row[:n].tolist() for row, n in zip(ids, length)]


def test_every_render_of_the_data_is_checked():
  assert {r for _, r in GROUPS} == set(R.RENDERS)
  assert sum(len(files) for files in GROUPS.values()) >= 20


@pytest.mark.parametrize("tier,render_name", sorted(GROUPS))
def test_reference_rows(tier, render_name):
  rows, programs, traces, steps, p, s = batch(*GROUPS[tier, render_name])
  max_in, max_tgt = R.max_render_lengths(render_name, max_len=p, max_steps=s)
  out = render_batch(render_name, programs, traces, steps,
                     dict(max_input_len=max_in, max_target_len=max_tgt))
  for side, tokens in (("input", out.input), ("target", out.target)):
    ids = unpad(tokens)
    texts = detokenize_batch(np.asarray(tokens.ids),
                             np.asarray(tokens.length))
    for i, row in enumerate(rows):
      ref = row["renders"][render_name]
      where = (row["meta"]["seed"], side)
      assert ids[i] == ref[f"{side}_ids"], where
      assert texts[i] == ref[f"{side}_text"], where
      assert detokenize(ref[f"{side}_ids"]) == ref[f"{side}_text"]


@pytest.mark.parametrize("tier", sorted({t for t, _ in GROUPS}))
def test_encode_program_matches_host(tier):
  files = sorted({f for (t, _), fs in GROUPS.items() if t == tier for f in fs})
  _, programs, _, _, p, _ = batch(*files)
  max_in, _ = R.max_render_lengths("direct", max_len=p, max_steps=1)
  encode = jax.jit(jax.vmap(functools.partial(R.encode_program,
                                              max_tokens=max_in)))
  got = unpad(encode(programs))
  for i in range(programs.op.shape[0]):
    one = jax.tree_util.tree_map(lambda x: x[i], programs)
    assert got[i] == prog.encode(one)


def test_golden_source_text():
  with gzip.open(os.path.join(DATA, "golden.json.gz"), "rt") as f:
    golden = json.load(f)
  programs = [g["program_ir"]["instructions"] for g in golden]
  p = max(len(x) for x in programs)
  programs = prog.stack([prog.from_json(x, max_len=p) for x in programs])
  encode = functools.partial(R.encode_program, max_tokens=20 * p)
  tokens = jax.jit(jax.vmap(encode))(programs)
  texts = detokenize_batch(np.asarray(tokens.ids), np.asarray(tokens.length))
  assert texts == [g["source_text"] for g in golden]


@pytest.mark.parametrize("render_name", list(R.RENDERS))
def test_batch_equals_per_example(render_name):
  _, programs, traces, steps, p, s = batch(*GROUPS["tier2", render_name])
  sizes = dict(zip(("max_input_len", "max_target_len"),
                   R.max_render_lengths(render_name, max_len=p, max_steps=s)))
  out = render_batch(render_name, programs, traces, steps, sizes)
  def one_render(program, trace, step):
    step = step if render_name == "probe_query" else None
    return R.render(render_name, program, trace, step=step, **sizes)
  one_render = jax.jit(one_render)
  for i in (0, 3):
    one = lambda x: x[i]
    single = one_render(jax.tree_util.tree_map(one, programs),
                        jax.tree_util.tree_map(one, traces), steps[i])
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_array_equal(np.asarray(a)[i], b),
        out, single)


def test_traces_from_the_interpreter():
  rows, programs, _, _, p, s = batch("tier2_eval_easy")
  traces = jax.jit(jax.vmap(functools.partial(interpreter.run,
                                              max_steps=s)))(programs)
  sizes = dict(zip(("max_input_len", "max_target_len"),
                   R.max_render_lengths("cot", max_len=p, max_steps=s)))
  out = jax.jit(jax.vmap(functools.partial(R.render_cot, mode="full",
                                           **sizes)))(programs, traces)
  assert unpad(out.target) == [r["renders"]["cot"]["target_ids"] for r in rows]


def test_second_call_does_not_retrace():
  _, programs, traces, _, p, s = batch("tier1_cot_full")
  count = []

  @jax.jit
  def go(programs, traces):
    count.append(1)
    return jax.vmap(functools.partial(
        R.render_cot, mode="modified", max_input_len=256,
        max_target_len=512))(programs, traces)

  first = go(programs, traces)
  shift = lambda x: np.roll(x, 1, axis=0)
  second = go(jax.tree_util.tree_map(shift, programs),
              jax.tree_util.tree_map(shift, traces))
  assert len(count) == 1
  np.testing.assert_array_equal(second.target.ids[1], first.target.ids[0])


def test_overflow_keeps_prefix_and_true_length():
  rows, programs, traces, steps, p, s = batch("tier1_train")
  out = render_batch("direct", programs, traces, steps,
                     dict(max_input_len=16, max_target_len=3))
  ref = rows[0]["renders"]["direct"]
  assert int(out.input.length[0]) == len(ref["input_ids"]) > 16
  assert np.asarray(out.input.ids[0]).tolist() == ref["input_ids"][:16]
  assert np.asarray(out.target.ids[0]).tolist() == ref["target_ids"][:3]


def test_tight_lengths_for_generated_tier1():
  _, programs, traces, steps, p, s = batch("tier1_eval_len_128")
  max_in, max_tgt = R.max_render_lengths(
      "direct", max_len=p, max_steps=s, label_digits=0, literal_digits=3)
  assert max_in == 2 + 7 * p
  assert R.max_render_lengths("direct", max_len=p, max_steps=s,
                              max_outputs=1)[1] == 2 + 6
  out = render_batch("direct", programs, traces, steps,
                     dict(max_input_len=max_in, max_target_len=max_tgt))
  assert int(out.input.length.max()) <= max_in


@pytest.mark.parametrize("step", [-1, 10_000])
def test_probe_step_out_of_range_is_empty(step):
  _, programs, traces, _, _, _ = batch("tier1_probe_query")
  one = lambda x: x[0]
  probe = jax.jit(functools.partial(R.render_probe_query, max_input_len=200,
                                    max_target_len=64))
  out = probe(jax.tree_util.tree_map(one, programs),
              jax.tree_util.tree_map(one, traces), jnp.int32(step))
  assert int(out.input.length) == 0 and int(out.target.length) == 0
  assert np.all(np.asarray(out.input.ids) == isa.TOK_PAD)


def test_number_tokens():
  values = jnp.array([0, 7, -42, 1023, -1024, 100, 9999])
  toks, mask = render_slots.number_slots(values)   # the tests' reference
  for v, t, m in zip(values.tolist(), np.asarray(toks), np.asarray(mask)):
    assert t[m].tolist() == prog.number_tokens(v)
  # the package's windows: output values, and literals as LOAD operands
  n = values.shape[0]
  program = prog.from_json([{"op": "LOAD", "args": [0, v], "label": None,
                             "target": None} for v in values.tolist()],
                           max_len=n)
  trace = interpreter.run(jax.tree_util.tree_map(jnp.asarray, program),
                          max_steps=n).replace(output=values,
                                               num_output=jnp.int32(n))
  win, count, total = render_windows.output_windows(trace, n)
  ins, ins_count, ok = render_windows.instruction_windows(
      program, label_digits=0, literal_digits=4)
  assert bool(ok) and int(total) == int(count.sum())
  for i, v in enumerate(values.tolist()):
    want = prog.number_tokens(v)
    assert np.asarray(win[i, :int(count[i])]).tolist() == want + [
        isa.TOK_NEWLINE]
    assert np.asarray(ins[i, 2:int(ins_count[i])]).tolist() == want + [
        isa.TOK_NEWLINE]


# ----------------------------------------------------------------- text
def T(*names):
  return [isa.TOKENS.index(n) for n in names]


TEXT_CASES = [  # spec section 7
    (T("ADD", "R3", "R7", "R3", "NEWLINE"), "ADD R3 R7 R3 \n"),
    (T("LOAD", "R2", "MINUS", "4", "2", "NEWLINE"), "LOAD R2-42\n"),
    (T("L", "4", "COLON", "JMP", "L", "7", "NEWLINE"), "L4:JMP L7\n"),
    (T("JZ", "R0", "L", "3", "NEWLINE"), "JZ R0 L3\n"),
    (T("R0", "EQUALS", "5", "R1", "EQUALS", "0", "R2", "EQUALS", "MINUS", "3",
       "R3", "EQUALS", "0"), "R0=5R1=0R2=-3R3=0"),
    (T("BOS", "PRINT", "R1", "NEWLINE", "?", "EOS", "PAD"), "PRINT R1 \n? "),
    (T("DOUBLE", "R0", "R1", "NEWLINE", "DECOMP", "ADD"),
     "DOUBLE R0 R1 \nDECOMP ADD "),
    (T("?", "COLON", "DECOMP", "EQUALS", "NEWLINE", "MINUS"), "?:DECOMP=\n-"),
    (T("MINUS", "MINUS", "R0", "BOS", "MINUS"), "--R0-"),  # BOS kept nothing
    (T("RESERVED_3", "EQUALS", "RESERVED_14"), "RESERVED_3=RESERVED_14 "),
    ([], ""),
]


@pytest.mark.parametrize("ids,text", TEXT_CASES)
def test_text(ids, text):
  assert detokenize(ids) == text


def test_text_batch_equals_per_row():
  width = max(len(ids) for ids, _ in TEXT_CASES) + 2
  ids = np.full((len(TEXT_CASES), width), isa.TOK_PAD)
  for i, (row, _) in enumerate(TEXT_CASES):
    ids[i, :len(row)] = row
  ids[0, -1] = isa.TOK_COLON  # past the length: must be ignored
  lengths = np.array([len(r) for r, _ in TEXT_CASES])
  assert detokenize_batch(ids, lengths) == [t for _, t in TEXT_CASES]
  rng = np.random.default_rng(0)
  noise = rng.integers(0, isa.VOCAB_SIZE, (50, 30))
  lengths = rng.integers(0, 31, 50)
  assert detokenize_batch(noise, lengths) == [
      detokenize(r[:n]) for r, n in zip(noise, lengths)]


# ------------------------------------------------------------ bad input
def one_example():
  _, programs, traces, _, _, _ = batch("tier1_probe_query")
  one = lambda x: x[0]
  return (jax.tree_util.tree_map(one, programs),
          jax.tree_util.tree_map(one, traces), programs, traces)


def test_bad_render_arguments():
  program, trace, programs, traces = one_example()
  sizes = dict(max_input_len=200, max_target_len=64)
  with pytest.raises(ValueError, match="unknown render 'cot_full'"):
    R.render("cot_full", program, trace, **sizes)
  with pytest.raises(ValueError, match="unknown render"):
    R.max_render_lengths("nope", max_len=4, max_steps=4)
  with pytest.raises(ValueError, match="cot mode"):
    R.render_cot(program, trace, mode="partial", **sizes)
  with pytest.raises(ValueError, match="needs a step"):
    R.render("probe_query", program, trace, **sizes)
  with pytest.raises(ValueError, match="takes no step"):
    R.render("direct", program, trace, step=0, **sizes)
  with pytest.raises(ValueError, match="max_input_len"):
    R.render_direct(program, trace, max_input_len=0, max_target_len=8)
  with pytest.raises(ValueError, match="max_target_len"):
    R.render_direct(program, trace, max_input_len=8, max_target_len=8.0)
  with pytest.raises(ValueError, match="max_tokens"):
    R.encode_program(program, max_tokens=None)
  with pytest.raises(ValueError, match="unbatched Program"):
    R.render_direct(programs, trace, **sizes)
  with pytest.raises(ValueError, match="unbatched Trace"):
    R.render_direct(program, traces, **sizes)
  with pytest.raises(ValueError, match="expected a Trace"):
    R.render_direct(program, program, **sizes)
  with pytest.raises(ValueError, match="step must be a scalar"):
    R.render_probe_query(program, trace, jnp.zeros(2, jnp.int32), **sizes)
  with pytest.raises(ValueError, match="program.regs"):
    R.encode_program(program.replace(regs=program.regs[:, :2]),
                     max_tokens=8)
  with pytest.raises(ValueError, match="max_outputs"):
    R.max_render_lengths("direct", max_len=4, max_steps=4, max_outputs=5)
  with pytest.raises(ValueError, match="label_digits"):
    R.max_render_lengths("direct", max_len=4, max_steps=4, label_digits=5)


def test_bad_text_arguments():
  with pytest.raises(ValueError, match="outside the vocabulary"):
    detokenize([40, 64])
  with pytest.raises(ValueError, match="detokenize_batch"):
    detokenize(np.zeros((2, 2), int))
  with pytest.raises(ValueError, match=r"\[B, T\]"):
    detokenize_batch(np.zeros(3, int))
  with pytest.raises(ValueError, match="lengths"):
    detokenize_batch(np.zeros((2, 3), int), np.zeros(3, int))
  with pytest.raises(ValueError, match="outside the vocabulary"):
    detokenize_batch(np.array([[40, -1]]), np.array([2]))
  # ids past a row's length are not read, so they may be anything
  assert detokenize_batch(np.array([[40, -1]]), np.array([1])) == [""]
