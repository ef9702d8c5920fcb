"""In-graph throughput: generate + run + render rows per second.

Times one jitted function that calls `sample_batch` (sample axes, generate
the program, run it, render it) for a batch of B rows and returns what a
training step consumes (input/target ids and masks, per-step registers),
with no host round-trip in between. Reports wall-clock rows/s and rows per
CPU-second of this process (steadier on a shared machine). `--profile` also
times the prefixes gen, gen+run, gen+run+render and reports each stage's
CPU microseconds a row, so the bound is visible. Ends with one JSON line.

  python benchmarks/throughput.py --tier=tier1
  python benchmarks/throughput.py --tier=tier1 --batch=16384 --profile
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp

from tinyvm_jax._src import interpreter
from tinyvm_jax._src import keys as keys_lib
from tinyvm_jax._src import render as render_lib
from tinyvm_jax._src import sampling
from tinyvm_jax._src import tiers as tiers_lib


def best_time(fn, repeats, *args):
  """Best wall time and best process CPU time of `fn(*args, step)` over
  `repeats` calls (after a warm-up call)."""
  out = jax.block_until_ready(fn(*args, 0))
  wall, cpu = [], []
  for i in range(repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    out = jax.block_until_ready(fn(*args, i + 1))
    wall.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
  return min(wall), min(cpu), out


def stage_functions(tier, batch, bucket):
  """Jitted prefixes of the pipeline: gen, gen+run, gen+run+render."""
  shapes = tier.shapes(bucket)
  t_in, t_out = shapes.token_lengths("direct")

  def programs(key, step):
    k = jax.random.fold_in(key, step)
    def one(i):
      row = jax.random.fold_in(k, i)
      axes = tier.sample_axes(keys_lib.axes_key(row))
      return tier.program(keys_lib.program_key(row), axes,
                          max_len=shapes.max_len)
    return jax.vmap(one)(jnp.arange(batch))

  def gen(key, step):
    return programs(key, step)
  def gen_run(key, step):
    t = jax.vmap(lambda p: interpreter.run(p, max_steps=shapes.max_steps))(
        programs(key, step))
    return t.regs, t.num_steps
  def gen_run_render(key, step):
    p = programs(key, step)
    t = jax.vmap(lambda p: interpreter.run(p, max_steps=shapes.max_steps))(p)
    r = jax.vmap(lambda p, t: render_lib.render_direct(
        p, t, max_input_len=t_in, max_target_len=t_out))(p, t)
    return r.input.ids, r.target.ids, t.regs
  return {"gen": jax.jit(gen), "gen+run": jax.jit(gen_run),
          "gen+run+render": jax.jit(gen_run_render)}


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--tier", default="tier1")
  ap.add_argument("--bucket", default=None, help="eval bucket (fixed axes)")
  ap.add_argument("--batch", type=int, default=8192)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--profile", action="store_true",
                  help="also time gen, gen+run and gen+run+render alone")
  args = ap.parse_args()
  tier = tiers_lib.get_tier(args.tier)
  base = jax.random.key(0)
  traces = 0

  def step_fn(key, step):
    nonlocal traces
    traces += 1
    b = sampling.sample_batch(jax.random.fold_in(key, step), tier,
                              args.batch, bucket=args.bucket)
    return (b.input_ids, b.input_mask, b.target_ids, b.target_mask, b.regs,
            b.step_mask, b.valid)

  fn = jax.jit(step_fn)
  t0 = time.perf_counter()
  jax.block_until_ready(fn(base, 0))
  compile_s = time.perf_counter() - t0
  best, cpu, out = best_time(fn, args.repeats, base)
  if traces != 1:
    raise RuntimeError(f"sample_batch retraced: {traces} traces")
  valid, step_mask = out[-1], out[-2]
  if not bool(jnp.all(valid)):
    raise RuntimeError("some rows are invalid (run error or render overflow)")
  steps = int(jnp.sum(step_mask))
  result = {"tier": tier.name, "bucket": args.bucket, "batch": args.batch,
            "rows_per_s": round(args.batch / best, 1),
            "steps_per_s": round(steps / best, 1),
            "rows_per_cpu_s": round(args.batch / cpu, 1),
            "best_s": round(best, 4), "compile_s": round(compile_s, 2),
            "device": str(jax.devices()[0].device_kind),
            "platform": jax.devices()[0].platform}
  if args.profile:
    # CPU microseconds a row of each stage: the differences of the prefixes
    prev = 0.0
    for name, f in stage_functions(tier, args.batch, args.bucket).items():
      t, c, _ = best_time(f, args.repeats, base)
      result[f"{name}_rows_per_s"] = round(args.batch / t, 1)
      us = 1e6 * c / args.batch
      result[f"cpu_us_per_row[{name.split('+')[-1]}]"] = round(us - prev, 3)
      prev = us
    result["cpu_us_per_row[sample_batch extras]"] = round(
        1e6 * cpu / args.batch - prev, 3)
  for k, v in result.items():
    if k.endswith("rows_per_s") or k.endswith("rows_per_cpu_s"):
      print(f"{k:40s} {v:12,.0f}")
    elif k.startswith("cpu_us_per_row"):
      print(f"{k:40s} {v:12.2f}")
  print(json.dumps(result))


if __name__ == "__main__":
  main()
