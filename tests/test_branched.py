"""Tier 2 generator `gen_branched`: structure, validity, runs, distribution."""

import collections
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_rows
from tinyvm_jax._src import branched as B
from tinyvm_jax._src import interpreter
from tinyvm_jax._src import isa
from tinyvm_jax._src import program as P
from tinyvm_jax._src import validate

AXES = ("n", "k", "b", "l", "use_stack", "stack_frames")
BUCKETS = {"easy": (32, 4, 1, 0, 0, 0), "medium": (64, 4, 2, 4, 0, 0),
           "hard": (128, 6, 4, 8, 1, 1), "ood_len_256": (256, 4, 2, 4, 0, 0)}
MAX_LEN = B.max_program_len(256, 8, 8, 16, 2, b_min=1)
MAX_STEPS = B.max_trace_steps(256, 8, 8, 16, 2, b_min=1)
ROWS = {"train": 1000, "easy": 400, "medium": 400, "hard": 400,
        "ood_len_256": 400}
HOST_ROWS = 80      # per group: JSON round trip, validate, parse
FILL = {"LOAD", "MOV", "ADD", "SUB", "MUL", "DIV", "NEG", "EQ", "LT"}


def _train_axes(rng, n):
  return np.stack([rng.integers(16, 257, n), rng.choice([4, 6, 8], n),
                   rng.integers(1, 9, n), rng.integers(0, 17, n),
                   rng.integers(0, 2, n), rng.integers(0, 3, n)], 1)


def _gen_and_run(keys, axes):
  prog = B.gen_branched(keys, *axes, max_len=MAX_LEN)
  trace = interpreter.run(prog, max_steps=MAX_STEPS)
  return prog, trace.output[0], trace.num_output, trace.num_steps, \
      trace.error, trace.halted


@pytest.fixture(scope="module")
def groups():
  """group -> (axes [N, 6], programs, first output, #outputs, steps, error,
  halted), all numpy; one compiled generator and interpreter for all."""
  rng = np.random.default_rng(0)
  axes = {"train": _train_axes(rng, ROWS["train"])}
  for name, ax in BUCKETS.items():
    axes[name] = np.tile(np.array(ax), (ROWS[name], 1))
  all_axes = np.concatenate(list(axes.values())).astype(np.int32)
  keys = jax.random.split(jax.random.key(2024), len(all_axes))
  res = jax.device_get(jax.jit(jax.vmap(_gen_and_run))(keys, all_axes))
  out, lo = {}, 0
  for name, ax in axes.items():
    part = jax.tree_util.tree_map(lambda x: x[lo:lo + len(ax)], res)
    out[name] = (ax,) + tuple(part)
    lo += len(ax)
  return out


def _program(progs, i):
  return jax.tree_util.tree_map(lambda x: np.asarray(x[i]), progs)


def _axes_dict(ax):
  d = dict(zip(AXES, (int(v) for v in ax)))
  d["use_stack"] = bool(d["use_stack"])
  return d


# ------------------------------------------------------ template parser
class Mismatch(Exception):
  pass


def _need(cond, msg):
  if not cond:
    raise Mismatch(msg)


def parse(prog, axes):
  """Reads a Tier 2 program (reference JSON) back into the spec's regions.

  Tries each loop number m; returns the structure of the first that fits
  exactly, else raises Mismatch. Checks every row: templates, register
  roles and exclusions, label numbers in program order, fill rows.
  """
  errors = []
  for m in range(min(4, max(axes["l"], 0)) + 1):
    try:
      return _parse(prog, axes, m)
    except Mismatch as e:
      errors.append(f"m={m}: {e}")
  raise Mismatch("; ".join(errors))


def _parse(prog, axes, m):
  n, k, b, l = axes["n"], axes["k"], axes["b"], axes["l"]
  frames = axes["stack_frames"] if axes["use_stack"] else 0
  f = max(1, n // (b + m + 1))
  labels = (f"L{i}" for i in itertools.count())
  where = {x["label"]: i for i, x in enumerate(prog) if x["label"]}
  fills = []   # (start, length, exclude countup roles too, label of row 0)

  def row(i, op=None, args=None, label=None, target=None):
    _need(i < len(prog), f"{i}: past the end")
    x = prog[i]
    _need(op is None or x["op"] == op, f"{i}: {x['op']} is not {op}")
    _need(args is None or x["args"] == args, f"{i}: args {x['args']}")
    _need(x["label"] == label, f"{i}: label {x['label']} is not {label}")
    _need(x["target"] == target, f"{i}: target {x['target']}")
    return x

  r_one = row(0, "LOAD")["args"][0]
  _need(prog[0]["args"][1] == 1, "LOAD r_one 1")
  p = row(1, "LOAD")["args"][0]
  _need(p != r_one, "p is r_one")
  fills.append((2, max(k, 4), False, None))
  pos = 2 + max(k, 4)
  branches = []
  for _ in range(b):
    head = row(pos)
    _need(head["op"] in ("ADD", "SUB", "MUL", "MOV", "LT", "EQ"),
          f"{pos}: branch head {head['op']}")
    rc, *src = head["args"]
    jz = prog[pos + 1]
    _need(jz["op"] == "JZ" and jz["args"] == [rc], f"{pos + 1}: JZ rc")
    if_else = (head["op"] in ("LT", "EQ") and where.get(jz["target"]) ==
               pos + 3 + f and prog[pos + 2 + f]["op"] == "JMP")
    if if_else:
      l_else, l_after = next(labels), next(labels)
      row(pos + 1, "JZ", [rc], None, l_else)
      row(pos + 2 + f, "JMP", [], None, l_after)
      fills += [(pos + 2, f, False, None), (pos + 3 + f, f, False, l_else)]
      row(pos + 3 + 2 * f, "NOP", [], l_after)
      pos += 2 * f + 4
      tpl = "if-else"
    else:
      l_after = next(labels)
      row(pos + 1, "JZ", [rc], None, l_after)
      fills.append((pos + 2, f, False, None))
      row(pos + 2 + f, "NOP", [], l_after)
      pos += f + 3
      tpl = "if" if head["op"] in ("LT", "EQ") else "arith-zero"
    _need(rc != r_one and rc not in src, "rc is r_one, ri or rj")
    _need(len(set(src)) == len(src), "ri == rj")
    branches.append((tpl, head["op"]))
  loops = []
  cup_roles = set()
  for _ in range(m):
    c, count = row(pos, "LOAD")["args"]
    l_top, l_done = next(labels), next(labels)
    if count == 0:   # countup
      r_k, count = row(pos + 1, "LOAD")["args"]
      fills.append((pos + 2, f, True, l_top))
      row(pos + 2 + f, "ADD", [c, c, r_one])
      r_diff = row(pos + 3 + f, "SUB")["args"][0]
      row(pos + 3 + f, "SUB", [r_diff, r_k, c])
      row(pos + 4 + f, "JZ", [r_diff], None, l_done)
      row(pos + 5 + f, "JMP", [], None, l_top)
      row(pos + 6 + f, "NOP", [], l_done)
      cup_roles |= {r_k, r_diff}
      tpl, pos = "countup", pos + f + 7
    elif prog[pos + 1]["op"] == "JZ":
      row(pos + 1, "JZ", [c], l_top, l_done)
      fills.append((pos + 2, f, False, None))
      row(pos + 2 + f, "SUB", [c, c, r_one])
      row(pos + 3 + f, "JMP", [], None, l_top)
      row(pos + 4 + f, "NOP", [], l_done)
      tpl, pos = "test-at-top", pos + f + 5
    else:
      fills.append((pos + 1, f, False, l_top))
      row(pos + 1 + f, "SUB", [c, c, r_one])
      row(pos + 2 + f, "JZ", [c], None, l_done)
      row(pos + 3 + f, "JMP", [], None, l_top)
      row(pos + 4 + f, "NOP", [], l_done)
      tpl, pos = "countdown", pos + f + 5
    loops.append((tpl, c, count))
  for _ in range(frames):
    row(pos, "PUSH")
    g = max(2, f // 2)
    fills.append((pos + 1, g, False, None))
    row(pos + 1 + g, "POP")
    pos += g + 2
  row(pos, "PRINT", [p])
  row(pos + 1, "HALT", [])
  _need(len(prog) == pos + 2, "length")
  counters = [c for _, c, _ in loops]
  _need(len(set(counters + [r_one])) == m + 1, "counters not distinct")
  _need(cup_roles.isdisjoint(counters + [r_one]), "r_k/r_diff reserved")
  if m:
    _need(sum(c for _, _, c in loops) == l, "loop counts do not sum to l")
    _need(min(c for _, _, c in loops) >= 1, "a loop count below 1")
  _need(not cup_roles or k >= m + 4, "countup without a free register")
  for start, size, cup, label in fills:
    for i in range(start, start + size):
      x = row(i, None, None, label if i == start else None, None)
      _need(x["op"] in FILL, f"{i}: {x['op']} in a fill block")
      dest = x["args"][0]
      _need(dest not in counters + [r_one], f"{i}: destination reserved")
      _need(not cup or dest not in cup_roles, f"{i}: countup destination")
      if x["op"] == "LOAD":
        _need(-127 <= x["args"][1] <= 127, f"{i}: literal")
  used = {r for x in prog for r in x["args"][:isa.REG_ARGS[isa.OP_IDS[x["op"]]]]}
  _need(len(used) <= k, "more than k registers")
  return {"m": m, "f": f, "branches": branches, "loops": loops, "k": k}


@pytest.mark.parametrize("name", ["tier2_train", "tier2_eval_easy",
                                  "tier2_eval_medium", "tier2_eval_hard",
                                  "tier2_eval_ood_len_256"])
def test_parser_reads_every_reference_row(name):
  for r in load_rows(name):
    parse(r["program"], r["meta"]["axes"])


def test_parser_rejects_a_changed_row():
  r = load_rows("tier2_eval_medium")[0]
  prog = [dict(x) for x in r["program"]]
  prog[0] = {**prog[0], "args": [prog[0]["args"][0], 2]}
  with pytest.raises(Mismatch):
    parse(prog, r["meta"]["axes"])


# ------------------------------------------------------ every program
@pytest.mark.parametrize("group", list(ROWS))
def test_programs_round_trip_validate_and_follow_the_templates(groups,
                                                               group):
  axes, progs = groups[group][:2]
  for i in range(HOST_ROWS):
    prog = _program(progs, i)
    js = P.to_json(prog)
    back = P.from_json(js, max_len=MAX_LEN)
    for field in P.Program.__dataclass_fields__:
      np.testing.assert_array_equal(getattr(back, field), getattr(prog, field),
                                    err_msg=f"row {i} {field}")
    assert validate.find_issues(prog) == [], f"row {i}"
    parse(js, _axes_dict(axes[i]))


@pytest.mark.parametrize("group", list(ROWS))
def test_programs_run_within_their_bounds(groups, group):
  axes, progs, _, n_out, steps, error, halted = groups[group]
  assert (error == 0).all() and halted.all() and (n_out == 1).all()
  for ax, length, st in zip(axes, progs.length, steps):
    frames = ax[5] if ax[4] else 0
    assert length <= B.max_program_len(*ax[:4], frames, b_min=ax[2])
    assert st <= B.max_trace_steps(*ax[:4], frames, b_min=ax[2])


def test_static_maxima():
  assert (MAX_LEN, MAX_STEPS) == (524, 1615)
  assert B.max_trace_steps(256, 8, 8, 16, 2) == 2258   # b = 0 allowed
  got = {name: (B.max_program_len(*ax[:4], ax[5], b_min=ax[2]),
                B.max_trace_steps(*ax[:4], ax[5], b_min=ax[2]))
         for name, ax in BUCKETS.items()}
  # easy and medium are reached by the reference's own rows (stats.json)
  assert got == {"easy": (44, 28), "medium": (101, 127), "hard": (240, 324),
                 "ood_len_256": (356, 415)}


def test_maxima_are_reached(groups):
  """The longest easy program (if-else) has exactly the bound's length."""
  assert groups["easy"][1].length.max() == 44
  assert groups["easy"][4].max() == 28


# ------------------------------------------------------ exact probabilities
def _tally(counter):
  total = sum(counter.values())
  return {k: v / total for k, v in counter.items()}, total


def _assert_freqs(counter, expected, z=4.5):
  freq, total = _tally(counter)
  assert set(freq) <= set(expected), (freq, expected)
  for key, p in expected.items():
    se = math.sqrt(p * (1 - p) / total)
    assert abs(freq.get(key, 0.0) - p) <= z * se + 1e-9, (key, freq, expected)


@pytest.fixture(scope="module")
def parsed(groups):
  out = []
  for axes, progs, *_ in groups.values():
    for i in range(150):
      out.append(parse(P.to_json(_program(progs, i)), _axes_dict(axes[i])))
  return out


def test_branch_templates_and_ops(parsed):
  tpl = collections.Counter(t for s in parsed for t, _ in s["branches"])
  _assert_freqs(tpl, {"arith-zero": 0.2, "if": 0.4, "if-else": 0.4})
  az = collections.Counter(o for s in parsed for t, o in s["branches"]
                           if t == "arith-zero")
  _assert_freqs(az, dict.fromkeys(("ADD", "SUB", "MUL", "MOV"), 0.25))
  cmp = collections.Counter(o for s in parsed for t, o in s["branches"]
                            if t != "arith-zero")
  _assert_freqs(cmp, {"LT": 0.5, "EQ": 0.5})


def test_loop_templates(parsed):
  with_up = collections.Counter()
  without = collections.Counter()
  for s in parsed:
    for tpl, _, _ in s["loops"]:
      (with_up if s["k"] >= s["m"] + 4 else without)[tpl] += 1
  _assert_freqs(with_up, dict.fromkeys(("countdown", "test-at-top",
                                        "countup"), 1 / 3))
  _assert_freqs(without, {"countdown": 0.5, "test-at-top": 0.5})


def _exact_loop_counts(k, l):
  """{(m, counts): probability} of step 2, by enumeration."""
  out = collections.defaultdict(float)
  if l <= 0:
    return {(0, ()): 1.0}
  top = min(4, l)
  for m0 in range(1, top + 1):
    m = m0 if 1 + m0 + 2 <= k else max(0, k - 3)
    if m <= 1:
      out[(m, (l,) * m)] += 1 / top
      continue
    subsets = list(itertools.combinations(range(1, l), m - 1))
    for cuts in subsets:
      b = (0,) + cuts + (l,)
      out[(m, tuple(b[i + 1] - b[i] for i in range(m)))] += (
          1 / top / len(subsets))
  return dict(out)


@pytest.mark.parametrize("k,l", [(4, 5), (6, 4), (6, 3), (8, 6), (8, 16),
                                 (3, 5), (8, 0), (8, 2), (2, 7)])
def test_loop_number_and_counts_match_enumeration(k, l):
  n = 6000
  words = jax.random.bits(jax.random.key(k * 100 + l), (n, B.MAX_LOOPS),
                          jnp.uint32)
  m, counts = jax.jit(jax.vmap(
      lambda w: B._loop_counts(w, jnp.int32(k), jnp.int32(l))))(words)
  got = collections.Counter(
      (int(mi), tuple(int(c) for c in ci[:mi]))
      for mi, ci in zip(np.asarray(m), np.asarray(counts)))
  _assert_freqs(got, _exact_loop_counts(k, l))


# ------------------------------------------------------ vs stats.json
def _figures(axes, progs, out, steps, group):
  """stats.json figures (means and frequencies) with standard errors."""
  valid = np.arange(progs.op.shape[1]) < progs.length[:, None]
  op = np.where(valid, progs.op, -1)
  figs = {}

  def ratio(name, num, den):     # a ratio of per-row sums, delta-method se
    r = num.sum() / den.sum()
    se = np.std(num - r * den) / den.mean() / math.sqrt(len(den))
    figs[name] = (r, se)

  def mean(name, x):
    figs[name] = (x.mean(), x.std() / math.sqrt(len(x)))

  n_ins = valid.sum(1)
  for o, name in enumerate(isa.OP_NAMES):
    ratio(f"op_freq/{name}", (op == o).sum(1), n_ins)
  writes = valid & isa.WRITES_REG[progs.op]
  for r in range(isa.NUM_REGS):
    ratio(f"dst_reg_freq/R{r}", (writes & (progs.regs[..., 0] == r)).sum(1),
          writes.sum(1))
  load = op == isa.LOAD
  for name, sel in (("pos", progs.lit > 0), ("neg", progs.lit < 0),
                    ("zero", progs.lit == 0)):
    ratio(f"load_literal_sign/{name}", (load & sel).sum(1), load.sum(1))
  mean("output_zero_frac", out == 0)
  for v in range(-11, 11):
    mean(f"output_bucket_freq(value//100)/{v}", out // 100 == v)
  mean("program_len/mean", progs.length)
  mean("trace_steps/mean", steps)
  digits = lambda x: 1 + (abs(x) >= 10) + (abs(x) >= 100) + (abs(x) >= 1000)
  toks = (2 + isa.REG_ARGS[progs.op] + isa.LIT_ARGS[progs.op] * (
      digits(progs.lit) + (progs.lit < 0))
          + (progs.label >= 0) * (2 + digits(progs.label))
          + (progs.target_label >= 0) * (1 + digits(progs.target_label)))
  mean("direct_input_tokens/mean", 2 + (toks * valid).sum(1))
  if group == "train":
    for i, ax in enumerate(AXES):
      for v in np.unique(axes[:, i]):
        label = ("True" if v else "False") if ax == "use_stack" else int(v)
        mean(f"axes_freq/{ax}={label}", axes[:, i] == v)
  return figs


@pytest.mark.parametrize("group", list(ROWS))
def test_distribution_matches_stats_json(groups, stats, group):
  axes, progs, out, _, steps, _, _ = groups[group]
  ref = stats[f"tier2_{'train' if group == 'train' else 'eval_' + group}_1000"]
  n_ref, n = ref["rows"], len(axes)
  flat = {}
  for key, val in ref.items():
    if isinstance(val, dict):
      flat.update({f"{key}/{k}": v for k, v in val.items()})
    else:
      flat[key] = val
  checked = 0
  for name, (ours, se) in _figures(axes, progs, out, steps, group).items():
    theirs = flat.get(name, 0.0)
    if name.startswith("axes_freq/n="):
      continue   # 241 values of about 0.004 each: too few rows to compare
    # the reference's standard error is ours scaled to its 1,000 rows; a
    # frequency it never saw gets the se of one count in 1,000
    se_all = se * math.sqrt(1 + n / n_ref)
    if not name.endswith("/mean"):
      se_all = max(se_all, math.sqrt(max(theirs, 1 / n_ref) / n_ref))
    assert abs(ours - theirs) <= 4.5 * se_all, (name, ours, theirs, se_all)
    checked += 1
  assert checked > 40


# ------------------------------------------------------ API behaviour
_TRACES = []


def _one(key, axes, max_len):
  _TRACES.append(max_len)
  return B.gen_branched(key, *axes, max_len=max_len)


_GEN = jax.jit(_one, static_argnames="max_len")


def test_jitted_generator_does_not_retrace():
  a = _GEN(jax.random.key(0), jnp.array([64, 4, 2, 4, 0, 0]), MAX_LEN)
  before = len(_TRACES)
  b = _GEN(jax.random.key(1), jnp.array([200, 8, 7, 13, 1, 2]), MAX_LEN)
  assert len(_TRACES) == before
  assert int(a.length) != int(b.length)


def test_same_key_same_program_whatever_max_len_or_batching(groups):
  """Row i of the hard bucket again, alone and with a shorter P."""
  lo = ROWS["train"] + ROWS["easy"] + ROWS["medium"]
  keys = jax.random.split(jax.random.key(2024), sum(ROWS.values()))
  axes, progs = groups["hard"][:2]
  for i in range(3):
    a = _GEN(keys[lo + i], jnp.asarray(axes[i]), 240)
    b = _program(progs, i)
    n = int(a.length)
    assert n == int(b.length)
    for field in ("op", "regs", "lit", "target", "target_label", "label"):
      np.testing.assert_array_equal(getattr(a, field), getattr(b, field)[:240])
    assert (b.op[n:] == isa.NOP).all() and (b.label[n:] == -1).all()
    assert (b.target[n:] == -1).all() and (b.regs[n:] == 0).all()
  assert P.to_json(_program(progs, 0)) != P.to_json(_program(progs, 1))


def test_traced_out_of_range_axes_are_clipped():
  prog = _GEN(jax.random.key(3), jnp.array([64, 12, 20, 0, 0, 0]), MAX_LEN)
  parse(P.to_json(prog), {"n": 64, "k": 8, "b": 8, "l": 0,
                          "use_stack": False, "stack_frames": 0})


@pytest.mark.parametrize("kwargs,match", [
    (dict(k=1), "k must be in"),
    (dict(k=9), "k must be in"),
    (dict(b=9), "b must be in"),
    (dict(n=-1), "n must be in"),
    (dict(stack_frames=3), "stack_frames must be in"),
    (dict(max_len=0), "max_len must be a positive int"),
    (dict(max_len=43), "too short"),
    (dict(n=jnp.ones(2, jnp.int32)), "n must be an integer scalar"),
    (dict(l=1.5), "l must be an integer scalar"),
    (dict(key=jax.random.split(jax.random.key(0), 2)), "one PRNG key"),
])
def test_bad_inputs_raise(kwargs, match):
  args = dict(key=jax.random.key(0), n=32, k=4, b=1, l=0, use_stack=False,
              stack_frames=0, max_len=44)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    B.gen_branched(**args)


def test_traced_axes_must_be_scalars():
  fn = jax.jit(lambda n: B.gen_branched(jax.random.key(0), n, 4, 1, 0, 0, 0,
                                        max_len=44))
  with pytest.raises(ValueError, match="n must be an integer scalar"):
    fn(jnp.ones(3, jnp.int32))


@pytest.mark.parametrize("fn", [B.max_program_len, B.max_trace_steps])
def test_bound_functions_reject_bad_input(fn):
  with pytest.raises(ValueError, match="k_max must be an integer >= 2"):
    fn(256, 1, 8, 16, 2)
  with pytest.raises(ValueError, match="b_min=3 is above b_max=2"):
    fn(256, 8, 2, 16, 2, b_min=3)
