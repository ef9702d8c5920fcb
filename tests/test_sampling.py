"""In-graph sampling: `sample_batch` inside jit."""

import functools

import jax
import numpy as np
import pytest

from tinyvm_jax._src import isa
from tinyvm_jax._src import program as program_lib
from tinyvm_jax._src import sampling


@functools.partial(jax.jit, static_argnames=("tier", "batch_size", "render",
                                             "bucket"))
def _sample(key, *, tier="tier1", batch_size=5, render="direct", bucket=None):
  return sampling.sample_batch(key, tier, batch_size, render=render,
                               bucket=bucket)


def test_direct_batch():
  b = _sample(jax.random.key(0), batch_size=9)
  assert b.input_ids.shape == (9, 240) and b.target_ids.shape == (9, 8)
  assert b.regs.shape == (9, 34, 8) and b.step_mask.shape == (9, 34)
  assert np.asarray(b.valid).all()
  for i in range(9):
    ids, mask = np.asarray(b.input_ids[i]), np.asarray(b.input_mask[i])
    n = int(mask.sum())
    assert mask[:n].all() and (ids[n:] == isa.TOK_PAD).all()
    assert ids[0] == isa.TOK_BOS and ids[n - 1] == isa.TOK_EOS
    prog = jax.tree_util.tree_map(lambda x: np.asarray(x[i]), b.rows.program)
    assert program_lib.decode(ids[1:n - 1]).op.tolist() == (
        prog.op[:int(prog.length)].tolist())
    steps = int(np.asarray(b.step_mask[i]).sum())
    assert steps == int(prog.length)
    tgt = np.asarray(b.target_ids[i])[np.asarray(b.target_mask[i])]
    out = int(b.rows.trace.output[i, 0])
    assert tgt.tolist() == ([isa.TOK_BOS] + program_lib.number_tokens(out) +
                            [isa.TOK_NEWLINE, isa.TOK_EOS])
    # the register states are the trace's: the printed value is the last
    # write's
    assert int(b.regs[i, steps - 1, prog.regs[steps - 2, 0]]) == out


def test_rows_do_not_depend_on_batch_size():
  a = _sample(jax.random.key(4), batch_size=3)
  b = _sample(jax.random.key(4), batch_size=5)
  np.testing.assert_array_equal(a.input_ids, b.input_ids[:3])
  np.testing.assert_array_equal(a.regs, b.regs[:3])


def test_no_retrace():
  traces = 0
  def step(key):
    nonlocal traces
    traces += 1
    return sampling.sample_batch(key, "tier0", 4).input_ids
  f = jax.jit(step)
  x = f(jax.random.key(1))
  y = f(jax.random.key(2))
  assert traces == 1 and not np.array_equal(x, y)


@pytest.mark.parametrize("render", ["cot", "cot_modified", "probe_query"])
def test_other_renders(render):
  b = _sample(jax.random.key(0), tier="tier0", batch_size=3, render=render)
  assert np.asarray(b.valid).all()
  assert (np.asarray(b.target_mask).sum(1) > 4).all()


def test_eval_bucket_and_truncation():
  b = _sample(jax.random.key(0), bucket="len_8", batch_size=2)
  assert (np.asarray(b.rows.axes) == [8, 4]).all()
  short = jax.jit(lambda k: sampling.sample_batch(
      k, "tier1", 2, bucket="len_8", max_input_len=10))(jax.random.key(0))
  assert short.input_ids.shape == (2, 10)
  assert not np.asarray(short.valid).any()


@pytest.mark.parametrize("kwargs,match", [
    (dict(batch_size=0), "batch_size must be a positive int"),
    (dict(render="text"), "unknown render"),
    (dict(bucket="len_7"), "no eval bucket"),
    (dict(tier="tier7"), "unknown tier"),
    (dict(max_input_len=0), "max_input_len must be a positive int"),
])
def test_bad_inputs(kwargs, match):
  args = dict(tier="tier1", batch_size=2) | kwargs
  with pytest.raises(ValueError, match=match):
    sampling.sample_batch(jax.random.key(0), args.pop("tier"),
                          args.pop("batch_size"), **args)
