"""In-graph throughput: generate + run + render rows per second.

Times one jitted function that calls `sample_batch` (sample axes, generate
the program, run it, render it) for a batch of B rows and returns what a
training step consumes (input/target ids and masks, per-step registers),
with no host round-trip in between. Rows are built `--block` at a time
(`sample_batch(block_size=...)`, which keeps a block's intermediates in
cache). With `--devices=2` the XLA host platform is split into two CPU
devices (set before JAX starts) and each samples half of the rows under
`shard_map` (`first_row` keeps the rows those of one device). Reports wall-clock rows/s and rows per CPU-second of this process
(time.process_time, steadier on a shared machine), both best of `--repeats`,
and the load average while measuring. `--profile` also times the prefixes
gen, gen+run, gen+run+render (one device, one block) and reports each stage's CPU
microseconds a row, so the bound is visible. Ends with one JSON line.

  python benchmarks/throughput.py --tier=tier1
  python benchmarks/throughput.py --tier=tier1 --devices=2 --batch=16384
  python benchmarks/throughput.py --tier=tier1 --batch=16384 --profile
"""

import argparse
import json
import os
import sys
import time


def parse_args():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--tier", default="tier1")
  ap.add_argument("--bucket", default=None, help="eval bucket (fixed axes)")
  ap.add_argument("--batch", type=int, default=8192)
  ap.add_argument("--repeats", type=int, default=7)
  ap.add_argument("--devices", type=int, default=1,
                  help="host CPU devices to shard the rows over")
  ap.add_argument("--block", type=int, default=4096,
                  help="sample_batch block_size (rows built at a time on a "
                       "device); 0 for one block")
  ap.add_argument("--profile", action="store_true",
                  help="also time gen, gen+run and gen+run+render alone")
  args = ap.parse_args()
  if args.devices < 1 or args.batch % args.devices:
    sys.exit(f"--batch={args.batch} must split evenly over "
             f"--devices={args.devices}")
  return args


ARGS = parse_args()
if ARGS.devices > 1:  # must precede JAX's backend start
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force"
                             f"_host_platform_device_count={ARGS.devices}")

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
from jax.sharding import PartitionSpec  # pylint: disable=wrong-import-position

import tinyvm_jax  # pylint: disable=wrong-import-position


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
  """Jitted prefixes of `make_row`: gen, gen+run, gen+run+render."""
  shapes = tier.shapes(bucket)
  t_in, t_out = shapes.token_lengths("direct")
  run = (tinyvm_jax.run_straight_line if tier.straight_line else
         tinyvm_jax.run)

  def programs(key, step):
    k = jax.random.fold_in(key, step)
    def one(i):
      row = jax.random.fold_in(k, i)
      axes = tier.sample_axes(tinyvm_jax.axes_key(row))
      return tier.program(tinyvm_jax.program_key(row), axes,
                          max_len=shapes.max_len)
    return jax.vmap(one)(jnp.arange(batch))

  def traces(p):
    return jax.vmap(lambda p: run(p, max_steps=shapes.max_steps))(p)

  def gen(key, step):
    return programs(key, step)
  def gen_run(key, step):
    t = traces(programs(key, step))
    return t.regs, t.num_steps, t.output, t.error
  def gen_run_render(key, step):
    p = programs(key, step)
    t = traces(p)
    r = jax.vmap(lambda p, t: tinyvm_jax.render(
        "direct", p, t, max_input_len=t_in, max_target_len=t_out,
        label_digits=shapes.label_digits,
        literal_digits=shapes.literal_digits))(p, t)
    return r.input.ids, r.target.ids, t.regs, t.error
  return {"gen": jax.jit(gen), "gen+run": jax.jit(gen_run),
          "gen+run+render": jax.jit(gen_run_render)}


def step_function(tier, batch, bucket, devices, block, impl):
  """The timed function: `sample_batch` of `batch` rows, split over
  `devices` host devices with `shard_map` when there are several (keys of
  the PRNG implementation `impl` cross into it as raw key data)."""
  traces = []
  local = batch // devices

  def step_fn(key, step, first_row=0):
    traces.append(1)
    b = tinyvm_jax.sample_batch(jax.random.fold_in(key, step), tier, local,
                              bucket=bucket, first_row=first_row,
                              block_size=block or None)
    return (b.input_ids, b.input_mask, b.target_ids, b.target_mask, b.regs,
            b.step_mask, b.valid)

  if devices == 1:
    return jax.jit(step_fn), traces
  mesh = jax.make_mesh((devices,), ("rows",))

  def sharded(key_data, step):
    key = jax.random.wrap_key_data(key_data, impl=impl)
    return step_fn(key, step, jax.lax.axis_index("rows") * local)

  fn = jax.jit(jax.shard_map(sharded, mesh=mesh,
                             in_specs=(PartitionSpec(), PartitionSpec()),
                             out_specs=PartitionSpec("rows")))
  return (lambda key, step: fn(jax.random.key_data(key), step)), traces


def main():
  args = ARGS
  tier = tinyvm_jax.get_tier(args.tier)
  if len(jax.devices()) < args.devices:
    sys.exit(f"only {len(jax.devices())} devices")
  base = jax.random.key(0)
  fn, traces = step_function(tier, args.batch, args.bucket, args.devices,
                             args.block, jax.random.key_impl(base))
  t0 = time.perf_counter()
  jax.block_until_ready(fn(base, 0))
  compile_s = time.perf_counter() - t0
  load_before = os.getloadavg()[0]
  best, cpu, out = best_time(fn, args.repeats, base)
  load_after = os.getloadavg()[0]
  if len(traces) != 1:
    raise RuntimeError(f"sample_batch retraced: {len(traces)} traces")
  valid, step_mask = out[-1], out[-2]
  if not bool(jnp.all(valid)):
    raise RuntimeError("some rows are invalid (run error or render overflow)")
  steps = int(jnp.sum(step_mask))
  result = {"tier": tier.name, "bucket": args.bucket, "batch": args.batch,
            "devices": args.devices, "block": args.block,
            "rows_per_s": round(args.batch / best, 1),
            "rows_per_cpu_s": round(args.batch / cpu, 1),
            "cpu_us_per_row": round(1e6 * cpu / args.batch, 3),
            "steps_per_s": round(steps / best, 1),
            "best_s": round(best, 4), "compile_s": round(compile_s, 2),
            "load_avg_1min": [round(load_before, 2), round(load_after, 2)],
            "cpu_count": os.cpu_count(),
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
    if args.devices == 1:
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
