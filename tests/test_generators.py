"""Tier 0 / Tier 1 generators: structure, knobs, P-independence, jit/vmap."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tinyvm_jax._src import generators
from tinyvm_jax._src import interpreter
from tinyvm_jax._src import isa
from tinyvm_jax._src import program as program_lib
from tinyvm_jax._src import validate

KEYS = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(7), i))(
    jnp.arange(256))


@functools.partial(jax.jit, static_argnames=("max_len", "knobs"))
def _trace_batch(keys, n, k, *, max_len, knobs=()):
  progs = jax.vmap(lambda key, n, k: generators.gen_register_trace(
      key, n, k, max_len=max_len, **dict(knobs)))(keys, n, k)
  traces = jax.vmap(lambda p: interpreter.run(p, max_steps=max_len))(progs)
  return progs, traces


@functools.partial(jax.jit, static_argnames=("max_len",))
def _gen_batch(keys, n, k, *, max_len):
  return jax.vmap(lambda key, n, k: generators.gen_register_trace(
      key, n, k, max_len=max_len))(keys, n, k)


@functools.partial(jax.jit, static_argnames=("max_len",))
def _counter_batch(keys, n, *, max_len):
  return jax.vmap(lambda key, n: generators.gen_counter(
      key, n, max_len=max_len))(keys, n)


def _host(tree, i):
  return jax.tree_util.tree_map(lambda x: np.asarray(x[i]), tree)


def _active(key, k):
  """`active` of a program key, as the generator draws it."""
  packed = int(generators.sample_active(generators._misc_words(key)[:8]))
  return [(packed >> (4 * i)) & 0xF for i in range(k)]


def _check_padding(p, n):
  assert int(p.length) == n + 2
  assert (p.op[n + 2:] == isa.NOP).all() and (p.regs[n + 2:] == 0).all()
  assert (p.label == -1).all() and (p.target == -1).all()
  assert (p.target_label == -1).all()
  # the padding and unused operands are those of program.from_json
  again = program_lib.from_json(program_lib.to_json(p), max_len=p.op.shape[0])
  for f in ("op", "regs", "lit", "target", "target_label", "label", "length"):
    np.testing.assert_array_equal(getattr(again, f), getattr(p, f))


def test_counter_structure():
  n = np.arange(256) % 8 + 1
  progs = _counter_batch(KEYS, n, max_len=10)
  lits = []
  for i in range(256):
    p = _host(progs, i)
    assert p.op[0] == isa.LOAD
    lits.append(int(p.lit[0]))
    assert set(p.op[1:n[i]].tolist()) <= {isa.ADD, isa.SUB, isa.NEG, isa.MOV}
    assert p.op[n[i]] == isa.PRINT and p.op[n[i] + 1] == isa.HALT
    assert (p.regs == 0).all() and (p.lit[1:] == 0).all()
    _check_padding(p, n[i])
  assert min(lits) >= -127 and max(lits) <= 127 and len(set(lits)) > 100


# every (n, k) of a grid, 6 rows each, all at P = 34
_GRID_N, _GRID_K = (np.array(x).ravel() for x in np.meshgrid(
    [1, 2, 8, 20, 32], np.arange(1, 9), np.arange(6), indexing="ij")[:2])


def test_register_trace_structure():
  m = len(_GRID_N)
  progs, traces = _trace_batch(KEYS[:m], _GRID_N, _GRID_K, max_len=34)
  for i in range(m):
    n, k = int(_GRID_N[i]), int(_GRID_K[i])
    p, t = _host(progs, i), _host(traces, i)
    assert set(p.op[:n].tolist()) <= set(isa.FILL_OPS)
    assert p.op[n] == isa.PRINT and p.op[n + 1] == isa.HALT
    active = _active(jax.random.fold_in(jax.random.key(7), i), k)
    used = {int(r) for j in range(n) for r in p.regs[j, :isa.REG_ARGS[p.op[j]]]}
    assert used <= set(active)
    assert p.regs[n, 0] == p.regs[n - 1, 0]      # prints the last write
    assert (p.lit[p.op != isa.LOAD] == 0).all()
    assert ((p.lit >= -127) & (p.lit <= 127)).all()
    _check_padding(p, n)
    assert validate.find_issues(p) == []
    assert t.error == 0 and t.halted and t.num_output == 1
    assert t.output[0] == t.regs[n - 1, p.regs[n, 0]]


def test_program_does_not_depend_on_max_len():
  n, k = np.full(64, 20), np.full(64, 8)
  a = _gen_batch(KEYS[:64], n, k, max_len=22)
  b = _gen_batch(KEYS[:64], n, k, max_len=34)
  c = _counter_batch(KEYS[:64], np.full(64, 6), max_len=8)
  d = _counter_batch(KEYS[:64], np.full(64, 6), max_len=30)
  for i in range(64):
    assert (program_lib.to_json(_host(a, i)) ==
            program_lib.to_json(_host(b, i)))
    assert (program_lib.to_json(_host(c, i)) ==
            program_lib.to_json(_host(d, i)))


def test_active_is_an_ordered_sample_without_replacement():
  words = jax.vmap(lambda key: generators._misc_words(key)[:8])(
      jax.vmap(lambda i: jax.random.fold_in(jax.random.key(1), i))(
          jnp.arange(8000)))
  packed = np.asarray(jax.vmap(generators.sample_active)(words))
  perms = np.stack([(packed >> (4 * i)) & 0xF for i in range(8)], axis=1)
  assert (np.sort(perms, axis=1) == np.arange(8)).all()
  # every register is equally likely at every position (5 sigma)
  for pos in range(8):
    freq = np.bincount(perms[:, pos], minlength=8) / len(perms)
    assert np.abs(freq - 1 / 8).max() < 5 * math.sqrt(1 / 8 * 7 / 8 / 8000)


@pytest.mark.parametrize("d", [1, 3, 10])
def test_distractors_are_never_printed(d):
  m = len(_GRID_N)
  progs, traces = _trace_batch(KEYS[:m], _GRID_N, _GRID_K, max_len=34,
                               knobs=(("distractor_regs", d),))
  for i in range(m):
    n, k = int(_GRID_N[i]), int(_GRID_K[i])
    p = _host(progs, i)
    active = _active(jax.random.fold_in(jax.random.key(7), i), k)
    distract = set(active[:min(d, k - 1)])
    printed = int(p.regs[n, 0])
    assert printed not in distract
    # the most recent write of a non-distractor
    last = max(j for j in range(n) if int(p.regs[j, 0]) not in distract)
    assert printed == p.regs[last, 0]
    assert validate.find_issues(p) == []
  assert (np.asarray(traces.error) == 0).all()


def test_randomize_print_target():
  n, k, count = 16, 8, 2000
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(2), i))(
      jnp.arange(count))
  progs, traces = _trace_batch(keys, np.full(count, n), np.full(count, k),
                               max_len=34,
                               knobs=(("randomize_print_target", True),))
  op = np.asarray(progs.regs)
  printed, dests = op[:, n, 0], op[:, :n, 0]
  assert all(printed[i] in dests[i] for i in range(count))
  # a uniform fill slot: P(its destination is the last one's) = 1/n +
  # (n - 1)/n * 1/k
  same = np.mean(printed == dests[:, -1])
  expect = 1 / n + (n - 1) / n / k
  assert abs(same - expect) < 5 * math.sqrt(expect * (1 - expect) / count)
  # weighted by write count: P(printed == R) = mean share of R's writes
  share = np.mean([np.mean(dests[i] == printed[i]) for i in range(count)])
  assert share > 1 / k
  assert (np.asarray(traces.error) == 0).all()


def test_flat_output_histogram_flattens():
  count, n, k = 512, 20, 4
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(3), i))(
      jnp.arange(count))
  plain_p, plain_t = _trace_batch(keys, np.full(count, n), np.full(count, k),
                                  max_len=n + 2)
  flat_p, flat_t = _trace_batch(
      keys, np.full(count, n), np.full(count, k), max_len=n + 2,
      knobs=(("flat_output_histogram", True), ("flat_candidates", 16)))
  def hist(t):
    b = np.asarray(generators.value_bucket(t.output[:, 0]))
    return np.bincount(b, minlength=generators.NUM_BUCKETS) / count
  plain, flat = hist(plain_t), hist(flat_t)
  assert plain[11] > 0.7 and flat[11] < 0.45       # bucket [0, 100)
  assert (flat > 0).sum() > (plain > 0).sum()
  tv = lambda q: 0.5 * np.abs(q - 1 / len(q)).sum()
  assert tv(flat) < tv(plain) - 0.1
  for i in range(0, count, 37):
    p = _host(flat_p, i)
    assert validate.find_issues(p) == [] and p.regs[n, 0] == p.regs[n - 1, 0]
  assert (np.asarray(flat_t.error) == 0).all()


def test_jit_vmap_traced_axes_no_retrace():
  traces = 0
  def f(keys, n, k):
    nonlocal traces
    traces += 1
    return jax.vmap(lambda key, n, k: generators.gen_register_trace(
        key, n, k, max_len=34))(keys, n, k)
  g = jax.jit(f)
  a = g(KEYS[:8], jnp.arange(8) + 8, jnp.full(8, 2))
  b = g(KEYS[:8], jnp.arange(8) + 20, jnp.full(8, 8))
  assert traces == 1
  assert (np.asarray(a.length) == np.arange(8) + 10).all()
  assert (np.asarray(b.length) == np.arange(8) + 22).all()


def test_out_of_range_axes_are_clipped():
  p = generators.gen_register_trace(KEYS[0], 100, 20, max_len=10)
  assert int(p.length) == 10
  assert int(generators.gen_counter(KEYS[0], 0, max_len=10).length) == 3


@pytest.mark.parametrize("kwargs,match", [
    (dict(max_len=2), "max_len >= 3"),
    (dict(max_len=10, distractor_regs=-1), "distractor_regs must be >= 0"),
    (dict(max_len=10, flat_output_histogram=True, flat_candidates=0),
     "flat_candidates must be in"),
    (dict(max_len=10, flat_output_histogram=True, flat_candidates=10 ** 6),
     "flat_candidates must be in")])
def test_bad_inputs(kwargs, match):
  with pytest.raises(ValueError, match=match):
    generators.gen_register_trace(KEYS[0], 4, 4, **kwargs)


def test_counter_bad_max_len():
  with pytest.raises(ValueError, match="max_len >= 3"):
    generators.gen_counter(KEYS[0], 4, max_len=2)
