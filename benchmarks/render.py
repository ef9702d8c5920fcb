"""Renders alone: the slot layout (`compact`) against the package's windows.

Generates a batch of real rows of a tier's split once (`tinyvm_jax.generate`
with no renders: programs and traces at the split's own sizes), then times
each render alone: one jitted function mapping the per-example render over
the rows, `--vmap` rows at a time (`lax.map`, as the emit pipeline does).
Reports compile time and the best of `--repeats` runs in microseconds a row,
for the old slot layout (tests/render_slots.py, the tests' reference) and
the package's renders ("new"), checks that both give the same tokens on the
batch, and prints the load average. Ends with one JSON line.

  python benchmarks/render.py                         # tier2 eval 'hard'
  python benchmarks/render.py --bucket=easy --renders=cot
  python benchmarks/render.py --tier=tier1 --split=train --renders=direct
"""

import argparse
import functools
import json
import os
import sys
import time

import jax
import numpy as np

import tinyvm_jax as tvm

# the slot layout lives in tests/ as the tests' reference implementation
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                os.pardir, "tests"))
import render_slots  # pylint: disable=g-import-not-at-top,wrong-import-position

OLD = {
    "direct": render_slots.render_direct,
    "cot": functools.partial(render_slots.render_cot, mode="full"),
    "cot_modified": functools.partial(render_slots.render_cot,
                                      mode="modified"),
}


def parse_args():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--tier", default="tier2")
  ap.add_argument("--split", default="eval", choices=("train", "eval"))
  ap.add_argument("--bucket", default="hard", help="eval bucket")
  ap.add_argument("--rows", type=int, default=256)
  ap.add_argument("--vmap", type=int, default=32, help="rows a lax.map step")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--renders", default="direct,cot,cot_modified")
  return ap.parse_args()


def timed(fn, *args, repeats):
  """(compile + first run seconds, best run seconds, result)."""
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  first = time.perf_counter() - t0
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t0)
  return first, best, out


def main():
  args = parse_args()
  tier = tvm.get_tier(args.tier)
  bucket = args.bucket if args.split == "eval" else None
  shapes = tier.shapes(bucket)
  rows = tvm.generate(tier, 0, args.split, bucket, np.arange(args.rows),
                        renders=())
  data = (rows.program, rows.trace)
  digits = dict(label_digits=shapes.label_digits,
                literal_digits=shapes.literal_digits)
  print(f"{args.tier} {args.split} {bucket}: {shapes}, {args.rows} rows, "
        f"vmap {args.vmap}, mean steps "
        f"{float(np.mean(rows.trace.num_steps)):.0f}")
  results = {}
  for name in args.renders.split(","):
    t_in, t_out = shapes.token_lengths(name)
    sizes = dict(max_input_len=t_in, max_target_len=t_out)
    paths = {"old": functools.partial(OLD[name], **sizes),
             "new": functools.partial(tvm.render, name, **sizes, **digits)}
    outs = {}
    for path, fn in paths.items():
      batched = jax.jit(lambda p, t, fn=fn: jax.lax.map(
          lambda x: fn(*x), (p, t), batch_size=args.vmap))
      first, best, outs[path] = timed(batched, *data, repeats=args.repeats)
      us = best / args.rows * 1e6
      results[f"{name}_{path}_us_per_row"] = round(us, 1)
      results[f"{name}_{path}_compile_s"] = round(first - best, 2)
      print(f"  {name:13s} {path}: {us:7.1f} us/row  (compile+run "
            f"{first:.1f}s)  T=({t_in}, {t_out})")
    same = all(np.array_equal(a, b) for a, b in zip(
        jax.tree_util.tree_leaves(outs["old"]),
        jax.tree_util.tree_leaves(outs["new"])))
    speedup = (results[f"{name}_old_us_per_row"]
               / results[f"{name}_new_us_per_row"])
    results[f"{name}_speedup"] = round(speedup, 2)
    results[f"{name}_same_tokens"] = same
    print(f"  {name:13s} speedup {speedup:.1f}x, same tokens: {same}")
  load = os.getloadavg()[0]
  print(f"load average (1 min): {load:.2f}")
  print(json.dumps({"tier": args.tier, "split": args.split,
                    "bucket": bucket, "rows": args.rows, "vmap": args.vmap,
                    "max_len": shapes.max_len, "max_steps": shapes.max_steps,
                    "load_1min": round(load, 2), **results}))


if __name__ == "__main__":
  main()
