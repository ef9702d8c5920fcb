"""The soft (differentiable) interpreter: exactness on one-hot programs,
the relaxations' limits, finite gradients, finite differences, and the
program-recovery demo's building blocks."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from conftest import load_rows, row_files
from pyvm import div as py_div
from tinyvm_jax._src import isa
from tinyvm_jax._src import program as P
from tinyvm_jax._src import recovery
from tinyvm_jax._src import soft
from tinyvm_jax._src.interpreter import run, trace_from_json

_TRACES = []


def _soft_batch(programs, max_steps, temperature, straight_through):
  _TRACES.append(max_steps)
  return jax.vmap(lambda p: soft.soft_run(
      soft.soft_from_program(p), max_steps=max_steps, temperature=temperature,
      straight_through=straight_through))(programs)


soft_batch = jax.jit(_soft_batch, static_argnums=(1, 2, 3))
exact_batch = jax.jit(
    lambda programs, max_steps: jax.vmap(
        lambda p: run(p, max_steps=max_steps))(programs), static_argnums=1)


def _round_up(x, m):
  return -(-x // m) * m


def _straight_line_rows():
  """(name, index, row) of every Tier 0 and Tier 1 reference row."""
  return [(name, i, row) for name in row_files()
          if name.startswith(("tier0", "tier1"))
          for i, row in enumerate(load_rows(name))]


@functools.lru_cache(maxsize=None)
def _straight_line_buckets():
  """Rows grouped by padded program length (two shapes to compile)."""
  buckets = {}
  for name, i, row in _straight_line_rows():
    p = 34 if len(row["program"]) <= 34 else 130
    buckets.setdefault(p, []).append((f"{name} row {i}", row))
  return buckets


def _assert_matches(got, want, names, atol=0.0):
  """A batched SoftTrace against a batched exact Trace (numpy), every field
  on the executed steps; names the first row and field that differ."""
  got = jax.tree_util.tree_map(np.asarray, got)
  b, s = want.pc.shape
  ran = np.arange(s)[None] < want.num_steps[:, None]          # [B, S]
  has = np.arange(s)[None] < want.num_output[:, None]         # [B, O]
  pc = np.eye(got.pc.shape[-1])[want.pc] * ran[..., None]
  depth = np.eye(isa.STACK_SIZE + 1)[want.depth]
  err = {
      "pc": np.abs(got.pc - pc).max((1, 2)),   # after the end: all zero
      "regs": (np.abs(got.regs - want.regs) * ran[..., None]).max((1, 2)),
      "stack": (np.abs(got.stack - want.stack) * ran[..., None]).max((1, 2)),
      "depth": (np.abs(got.depth - depth) * ran[..., None]).max((1, 2)),
      "emitted": (np.abs(got.emitted - want.emitted) * ran).max(1),
      "emit_prob": (np.abs(got.emit_prob - want.emit_mask) * ran).max(1),
      "output": np.abs(got.output - want.output).max(1),
      "output_prob": np.abs(got.output_prob - has).max(1),
      "num_output": np.abs(got.num_output - want.num_output),
      "halted": np.abs(got.halted - want.halted),
      "fault": np.abs(got.fault),
  }
  for field, e in err.items():
    bad = np.flatnonzero(~(e <= atol))
    assert not bad.size, (f"{names[bad[0]]}: {field} off by {e[bad[0]]} "
                          f"({bad.size} rows)")


def _stack_traces(traces):
  return jax.tree_util.tree_map(lambda *x: np.stack(x), *traces)


def _tier2_programs(names, *, drop_jumps):
  out = []
  for name in names:
    for i, row in enumerate(load_rows(name)):
      prog = row["program"]
      if drop_jumps:
        prog = [dict(ins, label=None, target=None) for ins in prog
                if ins["op"] not in ("JZ", "JMP")]
      out.append((f"{name} row {i}", prog, row["trace"]))
  return out


def test_branch_free_tier2_fragments_agree_with_exact_interpreter():
  # every Tier 2 program with its jumps deleted: straight-line code with
  # the stack frames (PUSH/POP) kept.
  rows = _tier2_programs(["tier2_eval_easy", "tier2_eval_medium",
                          "tier2_eval_hard"], drop_jumps=True)
  p = _round_up(max(len(prog) for _, prog, _ in rows), 64)
  progs = P.stack([P.from_json(prog, max_len=p) for _, prog, _ in rows])
  assert (np.asarray(progs.op) == isa.PUSH).any()
  want = jax.tree_util.tree_map(np.asarray, exact_batch(progs, p))
  assert not want.error.any()
  _assert_matches(soft_batch(progs, p, 0.0, False), want,
                  [what for what, _, _ in rows])


def test_soft_pc_follows_jumps_exactly_on_one_hot_tier2():
  rows = _tier2_programs(["tier2_eval_easy", "tier2_eval_medium"],
                         drop_jumps=False)
  p = _round_up(max(len(prog) for _, prog, _ in rows), 32)
  s = _round_up(max(len(tr["steps"]) for _, _, tr in rows) + 1, 32)
  progs = P.stack([P.from_json(prog, max_len=p) for _, prog, _ in rows])
  want = _stack_traces([trace_from_json(tr, max_steps=s)
                        for _, _, tr in rows])
  _assert_matches(soft_batch(progs, s, 0.0, False), want,
                  [what for what, _, _ in rows])


def test_second_call_does_not_retrace():
  rows = load_rows("tier1_eval_len_8")
  progs = P.stack([P.from_json(r["program"], max_len=16) for r in rows])
  soft_batch(progs, 16, 0.3, False)
  before = len(_TRACES)
  soft_batch(jax.tree_util.tree_map(lambda x: x[::-1].copy(), progs), 16,
             0.3, False)
  assert len(_TRACES) == before


# ------------------------------------------------------------ relaxations
_GRID = np.array(sorted(set(range(-40, 41)) | {-1024, -1023, -1000, -512,
                                               511, 1000, 1022, 1023}),
                 np.float64)


def _exact(name, a, b):
  if name == "div":
    return np.vectorize(lambda x, y: max(-1024, min(1023, py_div(int(x),
                                                               int(y)))))(a, b)
  return {"eq": a == b, "lt": a < b}[name].astype(np.float64)


_OPS = {"div": soft.soft_div, "eq": soft.soft_eq, "lt": soft.soft_lt}


@pytest.mark.parametrize("name", sorted(_OPS))
def test_relaxation_recovers_exact_op_as_temperature_goes_to_zero(name):
  a, b = np.meshgrid(_GRID, _GRID)
  want = _exact(name, a, b)
  errors = []
  with jax.enable_x64(True):
    np.testing.assert_array_equal(_OPS[name](a, b, 0.0), want)
    for t in (0.3, 0.1, 0.03, 0.01):
      errors.append(float(np.abs(_OPS[name](a, b, t) - want).max()))
  assert errors == sorted(errors, reverse=True), errors
  assert errors[-1] < 1e-12 and errors[0] > 1e-6, errors


def test_clamp_recovers_clip_on_integers_as_temperature_goes_to_zero():
  x = np.arange(-1100, 1100, dtype=np.float64)
  want = np.clip(x, -1024, 1023)
  with jax.enable_x64(True):
    np.testing.assert_array_equal(soft.soft_clamp(x, 0.0), want)
    err = [float(np.abs(soft.soft_clamp(x, t) - want).max())
           for t in (0.3, 0.1, 0.01)]
    big = soft.soft_clamp(np.array([1e9, -1e9]), 0.05)
  assert err == sorted(err, reverse=True) and err[-1] < 1e-12, err
  np.testing.assert_array_equal(big, [1023, -1024])   # no cancellation


def test_exact_mode_tolerates_rounding_off_integers():
  # t = 0 uses half-integer thresholds, so near-integers act as integers
  eps = 1e-4
  assert float(soft.soft_eq(3 + eps, 3, 0.0)) == 1.0
  assert float(soft.soft_lt(3 - eps, 3, 0.0)) == 0.0
  assert float(soft.soft_div(7 - eps, 2 + eps, 0.0)) == 3.0
  assert float(soft.soft_div(7, eps, 0.0)) == 0.0


@functools.partial(jax.jit, static_argnums=2)
def _relaxation_grads(a, b, straight_through, t):
  kw = dict(temperature=t, straight_through=straight_through)
  out = [jax.grad(lambda a, b, fn=fn: fn(a, b, **kw).sum(), argnums=(0, 1))(
      a, b) for fn in (soft.soft_div, soft.soft_eq, soft.soft_lt)]
  return out + [jax.grad(lambda x: soft.soft_clamp(x, **kw).sum())(a)]


@pytest.mark.parametrize("straight_through", [False, True])
def test_relaxation_gradients_finite_at_edges(straight_through):
  # division by zero, zero numerators, clamp edges and far outside them,
  # at temperatures from 0 (exact) through the clipped extremes
  pts = jnp.array([0.0, 1e-30, 0.3, 0.5, 1.0, -1.0, 1023.0, 1023.5, 1024.0,
                   -1024.0, -1024.5, 1e6, -1e6])
  a, b = jnp.meshgrid(pts, pts)
  for t in (0.0, 1e-30, 1e-8, 1e-3, 0.5, 10.0, 1e30):
    grads = jax.tree_util.tree_leaves(
        _relaxation_grads(a, b, straight_through, jnp.float32(t)))
    assert all(bool(jnp.isfinite(g).all()) for g in grads), t
  # and the Python-number (static) paths
  for t in (0.0, 1e-30, 1e30):
    g = jax.grad(lambda b: soft.soft_div(3.0, b, t,
                                         straight_through=straight_through))
    assert np.isfinite(float(g(0.0))), t


def test_traced_temperature_zero_is_exact_mode():
  f = jax.jit(lambda a, b, t: soft.soft_div(a, b, t))
  assert float(f(7.0, 2.0, 0.0)) == 3.0 and float(f(7.0, 0.0, 0.0)) == 0.0
  g = jax.grad(lambda b: f(7.0, b, 0.0))(0.0)
  assert np.isfinite(float(g))


# ------------------------------------------------------------ gradients
def _random_soft_program(key, p, dtype=jnp.float32, scale=2.0):
  k = jax.random.split(key, 4)
  return (scale * jax.random.normal(k[0], (p, isa.NUM_OPS), dtype),
          scale * jax.random.normal(k[1], (p, 3, isa.NUM_REGS), dtype),
          jax.random.normal(k[2], (p, p), dtype),
          jax.random.randint(k[3], (p,), -127, 128).astype(dtype))


def _loss(op_logits, reg_logits, target_logits, lit, *, temperature,
          straight_through=False, steps=12):
  sp = soft.soft_from_logits(op_logits, reg_logits, lit, lit.shape[0],
                             target_logits=target_logits)
  tr = soft.soft_run(sp, max_steps=steps, temperature=temperature,
                     straight_through=straight_through)
  return (jnp.arcsinh(tr.regs[-1] / 10).sum()
          + jnp.arcsinh(tr.output / 10).sum() + tr.halted
          + tr.stack[-1].sum() / 100)


# one compile: the temperature is traced (straight-through gradients are
# checked op by op in test_relaxation_gradients_finite_at_edges)
_grad = jax.jit(jax.grad(_loss, argnums=(0, 1, 2)),
                static_argnames=("straight_through", "steps"))
_TEMPERATURES = (0.0, 1e-30, 1e-8, 0.05, 1.0, 1e6, 1e30)


def test_gradients_finite_and_nonzero_on_random_programs():
  for i in range(3):
    op_l, reg_l, tgt_l, lit = _random_soft_program(jax.random.key(i), 10)
    for t in _TEMPERATURES:
      grads = _grad(op_l, reg_l, tgt_l, lit, temperature=jnp.float32(t))
      for name, g in zip(("op", "regs", "target"), grads):
        assert jnp.isfinite(g).all(), (i, t, name)
        assert float(jnp.abs(g).max()) > 1e-6, (i, t, name)


def test_gradients_finite_through_division_by_zero_and_clamps():
  # LOAD R1 1000; MUL R2 R1 R1 (clamps); SUB R3 R2 R2 (= 0); DIV R4 R1 R3;
  # EQ R5 R3 R0; PRINT R4; HALT...; the logits are random around that.
  ops = [isa.LOAD, isa.MUL, isa.SUB, isa.DIV, isa.EQ, isa.PRINT] + [
      isa.HALT] * 4
  regs = [[1, 0, 0], [2, 1, 1], [3, 2, 2], [4, 1, 3], [5, 3, 0],
          [4, 0, 0]] + [[0, 0, 0]] * 4
  op_l = 8.0 * jax.nn.one_hot(jnp.array(ops), isa.NUM_OPS)
  op_l = op_l + jax.random.normal(jax.random.key(0), op_l.shape)
  reg_l = 8.0 * jax.nn.one_hot(jnp.array(regs), isa.NUM_REGS)
  lit = jnp.array([1000.0] + [0.0] * 9)
  for t in _TEMPERATURES:
    grads = _grad(op_l, reg_l, jnp.zeros((10, 10)), lit,
                  temperature=jnp.float32(t))
    for g in grads[:2]:
      assert jnp.isfinite(g).all() and float(jnp.abs(g).max()) > 0, t


def test_gradients_match_finite_differences():
  # float64, at a temperature where every relaxation is smooth
  with jax.enable_x64(True):
    f = jax.jit(functools.partial(_loss, temperature=0.7, steps=9))
    for i in range(2):
      op_l, reg_l, tgt_l, lit = _random_soft_program(
          jax.random.key(10 + i), 7, jnp.float64, scale=1.0)
      check_grads(f, (op_l, reg_l, tgt_l, lit / 8), order=1, modes=["rev"],
                  eps=1e-6, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(_OPS))
def test_relaxation_gradients_match_finite_differences(name):
  rng = np.random.default_rng(0)
  with jax.enable_x64(True):
    a = rng.uniform(-40, 40, 64)
    b = rng.uniform(-6, 6, 64)
    f = jax.jit(lambda a, b, t: _OPS[name](a, b, t))
    for t in (0.3, 1.0, 4.0):
      check_grads(lambda a, b, t=t: f(a, b, t), (a, b), order=1,
                  modes=["rev"], eps=1e-6, atol=1e-4, rtol=1e-4)
    if name == "div":
      x = rng.uniform(-1100, 1100, 64)
      check_grads(jax.jit(lambda x: soft.soft_clamp(x, 0.7)), (x,), order=1,
                  modes=["rev"], eps=1e-6)


# ------------------------------------------------------------ conversions
def test_program_from_soft_inverts_soft_from_program():
  rows = load_rows("tier2_eval_easy")
  progs = P.stack([P.from_json(r["program"], max_len=64) for r in rows])
  back = jax.tree_util.tree_map(np.asarray, jax.jit(jax.vmap(
      lambda p: soft.program_from_soft(soft.soft_from_program(p))))(progs))
  for f in ("op", "regs", "lit", "target", "length"):
    np.testing.assert_array_equal(getattr(back, f), getattr(progs, f), f)
  # labels are renumbered, so compare what the programs do
  a, b = exact_batch(progs, 64), exact_batch(back, 64)
  np.testing.assert_array_equal(a.regs, b.regs)
  np.testing.assert_array_equal(b.output[:, 0],
                                [r["trace"]["output"][0] for r in rows])
  first = jax.tree_util.tree_map(lambda x: x[0], back)
  assert P.to_json(first)   # converts back to JSON with its labels


def test_soft_from_logits_straight_through_is_one_hot_forward():
  op_l, reg_l, tgt_l, lit = _random_soft_program(jax.random.key(3), 6)

  @jax.jit
  def both(op_l, reg_l, tgt_l, lit):
    sp = soft.soft_from_logits(op_l, reg_l, lit, 6, target_logits=tgt_l,
                               straight_through=True)
    return sp, soft.harden(soft.soft_from_logits(op_l, reg_l, lit, 6,
                                                 target_logits=tgt_l))
  sp, h = both(op_l, reg_l, tgt_l, lit)
  for f in ("op", "regs", "target"):
    np.testing.assert_array_equal(getattr(sp, f), getattr(h, f))


# ------------------------------------------------------------ bad input
def _one_hot_program(p=4):
  prog = P.from_json([{"op": "LOAD", "args": [0, 1]}], max_len=p)
  return soft.soft_from_program(jax.tree_util.tree_map(jnp.asarray, prog))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(max_steps=0), ValueError, "max_steps must be an int >= 1"),
    (dict(max_steps=4, temperature=-1.0), ValueError, "temperature must be"),
    (dict(max_steps=4, temperature=float("nan")), ValueError,
     "temperature must be"),
    (dict(max_steps=4, init_regs=jnp.zeros(3)), ValueError,
     "init_regs must have shape"),
])
def test_soft_run_rejects_bad_arguments(kwargs, error, match):
  with pytest.raises(error, match=match):
    soft.soft_run(_one_hot_program(), **kwargs)


def test_soft_run_rejects_bad_programs():
  sp = _one_hot_program()
  batched = jax.tree_util.tree_map(lambda x: jnp.stack([x, x]), sp)
  with pytest.raises(ValueError, match="unbatched; vmap for batches"):
    soft.soft_run(batched, max_steps=4)
  with pytest.raises(ValueError, match=r"SoftProgram.target must have shape"):
    soft.soft_run(sp.replace(target=sp.target[:2]), max_steps=4)
  with pytest.raises(TypeError, match="expected a SoftProgram"):
    soft.soft_run(P.from_json([{"op": "HALT", "args": []}]), max_steps=4)


@pytest.mark.parametrize("which, shape", [
    ("op_logits", (4, 16)), ("reg_logits", (4, 3, 7)), ("lit", (5,)),
    ("target_logits", (4, 3)),
])
def test_soft_from_logits_rejects_bad_shapes(which, shape):
  args = dict(op_logits=jnp.zeros((4, isa.NUM_OPS)),
              reg_logits=jnp.zeros((4, 3, 8)), lit=jnp.zeros(4),
              target_logits=jnp.zeros((4, 4)))
  args[which] = jnp.zeros(shape)
  with pytest.raises(ValueError, match=f"{which} must have shape"):
    soft.soft_from_logits(length=4, **args)


def test_relaxations_reject_negative_temperature():
  with pytest.raises(ValueError, match="temperature must be finite and >= 0"):
    soft.soft_eq(1.0, 2.0, -0.1)


def test_faults_are_counted_not_raised():
  prog = P.from_json([{"op": "POP", "args": [0]},
                      {"op": "USEROP_0", "args": [0, 1]},
                      {"op": "JMP", "args": [], "target": "L3"}], max_len=4)
  tr = soft.soft_run(soft.soft_from_program(
      jax.tree_util.tree_map(jnp.asarray, prog)), max_steps=4)
  assert float(tr.fault) == 3.0 and float(tr.halted) == 1.0


# ------------------------------------------------------------ recovery demo
_SMALL = recovery.RecoveryConfig(n_min=2, n_max=3, n_train=4, n_test=4,
                                 restarts=2, steps=40)


@functools.lru_cache(maxsize=None)
def _tasks():
  c = _SMALL
  return jax.jit(jax.vmap(lambda k: recovery.sample_task(
      k, n_min=c.n_min, n_max=c.n_max, k=c.k,
      n_examples=c.n_train + c.n_test, input_range=c.input_range)))(
          jax.random.split(jax.random.key(7), 6))


@pytest.mark.parametrize("hide", recovery.HIDE_MODES)
def test_hidden_program_has_zero_loss_and_decodes_to_itself(hide):
  tasks = _tasks()

  def check(task):
    prog = task.program
    if hide == "ops":
      choice = jnp.clip(prog.op, 0, len(isa.FILL_OPS) - 1)
    else:
      choice = prog.regs[:, 1:]
    shape = recovery.logits_shape(hide, prog.max_len)
    probs = jax.nn.one_hot(choice, shape[-1])
    loss = recovery.example_loss(probs, task, 0.0, hide=hide, n_train=8)
    same = recovery.decode(prog, probs, hide=hide).op == prog.op
    return loss, same.all()
  loss, same = jax.vmap(check)(tasks)
  assert float(loss.max()) == 0.0 and bool(same.all())


def test_examples_agree_with_soft_machine_started_from_inputs():
  task = jax.tree_util.tree_map(lambda x: x[0], _tasks())
  sp = soft.soft_from_program(task.program)
  tr = jax.vmap(lambda x: soft.soft_run(
      sp, max_steps=task.program.max_len, init_regs=x))(
          task.inputs.astype(jnp.float32))
  np.testing.assert_array_equal(tr.regs[:, -1], task.final)
  np.testing.assert_array_equal(tr.output[:, 0], task.output)


def test_live_rows():
  prog = P.from_json([
      {"op": "LOAD", "args": [1, 5]},       # dead: R1 overwritten unread
      {"op": "LOAD", "args": [1, 6]},       # live: read by ADD
      {"op": "ADD", "args": [2, 1, 1]},     # dead: R2 overwritten unread
      {"op": "MOV", "args": [2, 3]},        # live: in the final registers
      {"op": "PRINT", "args": [2]}, {"op": "HALT", "args": []}])
  live = recovery.live_rows(jax.tree_util.tree_map(jnp.asarray, prog))
  assert np.asarray(live).tolist() == [False, True, False, True, False,
                                       False]


def test_fit_recovers_short_programs():
  c = _SMALL

  def one(task, key):
    logits, loss = recovery.fit(
        task, key, hide=c.hide, restarts=c.restarts, steps=c.steps, lr=c.lr,
        t_start=c.t_start, t_end=c.t_end, n_train=c.n_train,
        init_scale=c.init_scale, hard_frac=c.hard_frac)
    return recovery.evaluate(task, logits, loss, hide=c.hide,
                             n_train=c.n_train)
  tasks = _tasks()
  res = jax.jit(jax.vmap(one))(tasks, jax.random.split(jax.random.key(1), 6))
  assert set(res) == {"solved", "train_fit", "same_program", "same_live",
                      "loss", "n"}
  assert all(v.shape == (6,) for v in res.values())
  assert bool(jnp.all(res["train_fit"] | ~res["solved"]))
  # programs of 2-3 fill instructions are easy: most are recovered
  assert int(res["solved"].sum()) >= 4


@pytest.mark.parametrize("config, match", [
    (dict(hide="dest"), "hide must be one of"),
    (dict(n_min=5, n_max=4), "n_min <= n_max"),
    (dict(k=9), "k must be in"),
    (dict(input_range=200), "input_range"),
    (dict(steps=0), ">= 1"),
])
def test_recovery_rejects_bad_config(config, match):
  with pytest.raises(ValueError, match=match):
    recovery.recovery_summary(n_targets=1,
                      config=recovery.RecoveryConfig(**config))


def test_run_demo_rejects_bad_n_targets():
  with pytest.raises(ValueError, match="n_targets must be an int >= 1"):
    recovery.recovery_summary(n_targets=0)
