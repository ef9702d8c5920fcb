"""Tier 2 distribution: `gen_branched` against the reference's stats.json.

Generates rows for Tier 2 train (axes drawn as in spec section 12) and each
eval bucket, runs them, and compares every figure of the `tier2_*` entries of
tests/data/stats.json (axes, opcode and destination frequencies, LOAD literal
signs, printed values, program length, trace steps, direct input tokens).
The reference figures come from 1,000 rows each, so a figure's standard error
is estimated by resampling 1,000 of our rows (`se_ref`) and the table shows
z = (ours - ref) / sqrt(se_ref^2 + se_ours^2); min and max are shown without z.
Also measures generation speed (jitted, vmapped). Ends with one JSON line.

    python benchmarks/tier2_distribution.py [--rows 20000] [--batch 1024]
"""

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

import tinyvm_jax
from tinyvm_jax import isa

STATS = pathlib.Path(__file__).resolve().parents[1] / "tests/data/stats.json"
AXES = ("n", "k", "b", "l", "use_stack", "stack_frames")
BUCKETS = {"easy": (32, 4, 1, 0, 0, 0), "medium": (64, 4, 2, 4, 0, 0),
           "hard": (128, 6, 4, 8, 1, 1), "ood_len_256": (256, 4, 2, 4, 0, 0)}
TIER2 = tinyvm_jax.get_tier("tier2")
MAX_LEN = TIER2.train_shapes.max_len        # 524
MAX_STEPS = TIER2.train_shapes.max_steps    # 1615


def train_axes(key: jax.Array) -> jax.Array:
  """[6] int32 Tier 2 train axes (spec section 12), from their own stream."""
  kn, kk, kb, kl, ks, kf = jax.random.split(key, 6)
  return jnp.stack([
      jax.random.randint(kn, (), 16, 257),
      jnp.array([4, 6, 8])[jax.random.randint(kk, (), 0, 3)],
      jax.random.randint(kb, (), 1, 9), jax.random.randint(kl, (), 0, 17),
      jax.random.bernoulli(ks).astype(jnp.int32),
      jax.random.randint(kf, (), 0, 3)]).astype(jnp.int32)


def make_batch_fn(max_steps: int):
  """jit(vmap) of axes -> (program, final figures of its run)."""
  def one(key, axes):
    prog = tinyvm_jax.gen_branched(key, *axes, max_len=MAX_LEN)
    trace = tinyvm_jax.run(prog, max_steps=max_steps)
    return prog, trace.output[0], trace.num_output, trace.num_steps, \
        trace.error
  return jax.jit(jax.vmap(one))


def _digits(x: np.ndarray) -> np.ndarray:
  a = np.abs(x)
  return 1 + (a >= 10) + (a >= 100) + (a >= 1000)


def row_summaries(prog, out, n_out, steps, err, axes) -> dict:
  """Per-row counts from which every figure is a ratio of sums."""
  prog = jax.tree_util.tree_map(np.asarray, prog)
  assert (np.asarray(err) == 0).all() and (np.asarray(n_out) == 1).all()
  valid = np.arange(prog.op.shape[1]) < prog.length[:, None]
  op = np.where(valid, prog.op, -1)
  writes = valid & isa.WRITES_REG[prog.op]
  lit = prog.lit
  is_load = op == isa.LOAD
  toks = (1 + isa.REG_ARGS[prog.op]
          + isa.LIT_ARGS[prog.op] * (_digits(lit) + (lit < 0))
          + (prog.label >= 0) * (2 + _digits(prog.label))
          + (prog.target_label >= 0) * (1 + _digits(prog.target_label)) + 1)
  return {
      "axes": np.asarray(axes),
      "op": np.stack([(op == o).sum(1) for o in range(isa.NUM_OPS)], 1),
      "dst": np.stack([(writes & (prog.regs[..., 0] == r)).sum(1)
                       for r in range(isa.NUM_REGS)], 1),
      "sign": np.stack([(is_load & (lit > 0)).sum(1),
                        (is_load & (lit < 0)).sum(1),
                        (is_load & (lit == 0)).sum(1)], 1),
      "out": np.asarray(out), "len": prog.length.astype(np.int64),
      "steps": np.asarray(steps).astype(np.int64),
      "tokens": 2 + (toks * valid).sum(1),
  }


def figures(s: dict, ref: dict) -> dict:
  """The figures of `ref` (a stats.json entry), computed from summaries."""
  f = {}
  for name in ref.get("axes_freq", {}):
    ax, val = name.split("=")
    v = {"True": 1, "False": 0}.get(val, None)
    v = int(val) if v is None else v
    f[f"axes_freq/{name}"] = float((s["axes"][:, AXES.index(ax)] == v).mean())
  ops = s["op"].sum(0)
  for o, name in enumerate(isa.OP_NAMES):
    if name in ref["op_freq"] or ops[o]:
      f[f"op_freq/{name}"] = ops[o] / ops.sum()
  dst = s["dst"].sum(0)
  for r in range(isa.NUM_REGS):
    f[f"dst_reg_freq/R{r}"] = dst[r] / dst.sum()
  sign = s["sign"].sum(0)
  for i, name in enumerate(("pos", "neg", "zero")):
    f[f"load_literal_sign/{name}"] = sign[i] / sign.sum()
  f["output_zero_frac"] = float((s["out"] == 0).mean())
  buckets = s["out"] // 100
  names = set(ref["output_bucket_freq(value//100)"]) | {
      str(b) for b in np.unique(buckets)}
  for name in sorted(names, key=int):
    f[f"output_bucket_freq/{name}"] = float((buckets == int(name)).mean())
  for key, col in (("program_len", "len"), ("trace_steps", "steps"),
                   ("direct_input_tokens", "tokens")):
    for stat in ref[key]:
      f[f"{key}/{stat}"] = float(getattr(np, stat)(s[col]))
  return f


def ref_figures(ref: dict) -> dict:
  f = {}
  for key in ("axes_freq", "op_freq", "dst_reg_freq", "load_literal_sign"):
    f.update({f"{key}/{k}": v for k, v in ref.get(key, {}).items()})
  f["output_zero_frac"] = ref["output_zero_frac"]
  f.update({f"output_bucket_freq/{k}": v for k, v in
            ref["output_bucket_freq(value//100)"].items()})
  for key in ("program_len", "trace_steps", "direct_input_tokens"):
    f.update({f"{key}/{k}": v for k, v in ref[key].items()})
  return f


def compare(s: dict, ref: dict, *, resamples: int = 200, seed: int = 0):
  """Rows (figure, ours, ref, z) with z from resampled standard errors."""
  ours = figures(s, ref)
  refs = ref_figures(ref)
  n_ref, n = ref["rows"], len(s["len"])
  rng = np.random.default_rng(seed)
  boot = [figures({k: v[idx] for k, v in s.items()}, ref)
          for idx in rng.integers(0, n, (resamples, n_ref))]
  table = []
  for name in sorted(set(ours) | set(refs)):
    o, r = ours.get(name, 0.0), refs.get(name, 0.0)
    z = None
    if not name.endswith(("/min", "/max")):
      se_ref = np.std([b.get(name, 0.0) for b in boot])
      se = np.hypot(se_ref, se_ref * np.sqrt(n_ref / n))
      if not name.endswith(("/mean", "/median")):
        # a rare value: at least the se of one count in the reference's rows
        se = max(se, np.sqrt(max(r, 1 / n_ref) / n_ref))
      z = (o - r) / se
    table.append((name, float(o), float(r), z))
  return table


def generate(fn, key, axes: np.ndarray, batch: int):
  """Runs `fn` over rows in batches; returns summaries and rows/s of gen."""
  parts = []
  for lo in range(0, len(axes), batch):
    ax = axes[lo:lo + batch]
    if len(ax) < batch:  # keep one compiled shape
      ax = np.concatenate([ax, np.repeat(ax[:1], batch - len(ax), 0)])
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(
        jnp.arange(lo, lo + batch))
    res = jax.device_get(fn(keys, jnp.asarray(ax)))
    m = min(batch, len(axes) - lo)
    res = jax.tree_util.tree_map(lambda x: x[:m], res)
    parts.append(row_summaries(*res, axes[lo:lo + m]))
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def gen_speed(batch: int, repeats: int = 5) -> float:
  """Rows/s of jit(vmap(gen_branched)) alone on Tier 2 train axes."""
  key = jax.random.key(1)
  axes = jax.vmap(train_axes)(jax.random.split(key, batch))
  gen = jax.jit(jax.vmap(
      lambda k, a: tinyvm_jax.gen_branched(k, *a, max_len=MAX_LEN)))
  jax.block_until_ready(gen(jax.random.split(key, batch), axes))
  best = float("inf")
  for r in range(repeats):
    keys = jax.random.split(jax.random.key(100 + r), batch)
    t = time.perf_counter()
    jax.block_until_ready(gen(keys, axes))
    best = min(best, time.perf_counter() - t)
  return batch / best


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--rows", type=int, default=20000)
  ap.add_argument("--batch", type=int, default=1024)
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args()
  stats = json.loads(STATS.read_text())
  root = jax.random.key(args.seed)
  summary = {"rows_per_group": args.rows, "max_len": MAX_LEN,
             "max_steps": MAX_STEPS, "groups": {}}
  all_z = []
  for group in ("train",) + tuple(BUCKETS):
    name = ("tier2_train_1000" if group == "train"
            else f"tier2_eval_{group}_1000")
    gkey = jax.random.fold_in(root, len(summary["groups"]))
    if group == "train":
      akeys = jax.random.split(jax.random.fold_in(gkey, 1), args.rows)
      axes = np.asarray(jax.vmap(train_axes)(akeys))
      steps = MAX_STEPS
    else:
      axes = np.tile(np.array(BUCKETS[group], np.int32), (args.rows, 1))
      steps = TIER2.shapes(group).max_steps
    s = generate(make_batch_fn(steps), jax.random.fold_in(gkey, 0), axes,
                 args.batch)
    table = compare(s, stats[name])
    print(f"\n== {name} ({args.rows} rows, step budget {steps})")
    print(f"{'figure':44s} {'ours':>10s} {'ref':>10s} {'z':>6s}")
    for fig, o, r, z in table:
      if fig.startswith("axes_freq/n="):
        continue  # 241 values; summarised below
      zs = "" if z is None else f"{z:6.2f}"
      print(f"{fig:44s} {o:10.5f} {r:10.5f} {zs}")
    zs = [abs(z) for _, _, _, z in table if z is not None]
    nz = [abs(z) for f, _, _, z in table if f.startswith("axes_freq/n=")]
    if nz:
      print(f"axes_freq/n=*: {len(nz)} values, max |z| {max(nz):.2f}")
    all_z += zs
    summary["groups"][group] = {
        "figures": len(zs), "max_abs_z": round(max(zs), 2),
        "over_3": int(sum(z > 3 for z in zs)),
        "over_4": int(sum(z > 4 for z in zs))}
  summary["gen_rows_per_s"] = round(gen_speed(args.batch))
  summary["batch"] = args.batch
  summary["max_abs_z"] = round(max(all_z), 2)
  summary["figures"] = len(all_z)
  print(f"\ngen_branched (jit, vmap, batch {args.batch}): "
        f"{summary['gen_rows_per_s']} rows/s on {jax.devices()[0].platform}")
  print(json.dumps(summary))


if __name__ == "__main__":
  main()
