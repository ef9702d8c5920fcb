"""Benchmark: the exact interpreter on a jitted batch of Tier 1-sized programs.

Runs a vmapped runner under `jit` on B random straight-line programs of the
Tier 1 shape (n fill instructions, PRINT, HALT; P = S = n + 2), checks that
the second call does not retrace, and reports executed steps per second and
per CPU-second of this process. `--runner`: `run` (the general machine) or
`straight_line` (`run_straight_line`, the Tier 0/1 fast path).

  python benchmarks/interpreter.py --batch=65536 --n=32
  python benchmarks/interpreter.py --batch=8192 --runner=straight_line
"""

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from tinyvm_jax import isa
from tinyvm_jax import Program
from tinyvm_jax import run
from tinyvm_jax import run_straight_line


def random_programs(rng, batch, n):
  p = n + 2
  op = np.full((batch, p), isa.NOP, np.int32)
  op[:, :n] = rng.choice(np.array(isa.FILL_OPS), size=(batch, n))
  op[:, n], op[:, n + 1] = isa.PRINT, isa.HALT
  regs = rng.integers(0, isa.NUM_REGS, size=(batch, p, 3), dtype=np.int32)
  lit = rng.integers(isa.LITERAL_MIN, isa.LITERAL_MAX + 1, size=(batch, p),
                     dtype=np.int32)
  neg = np.full((batch, p), -1, np.int32)
  return Program(op=op, regs=regs, lit=lit, target=neg, target_label=neg,
                 label=neg, length=np.full(batch, p, np.int32))


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--batch", type=int, default=65536)
  ap.add_argument("--n", type=int, default=32)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--runner", default="run",
                  choices=["run", "straight_line"])
  args = ap.parse_args()
  traces = 0
  runner = {"run": run,
            "straight_line": run_straight_line}[args.runner]

  def batched(programs):
    nonlocal traces
    traces += 1
    t = jax.vmap(lambda p: runner(p, max_steps=args.n + 2))(programs)
    return t.num_steps, t.error, t.output[:, 0], t.regs

  fn = jax.jit(batched)
  progs = jax.device_put(random_programs(np.random.default_rng(0), args.batch,
                                         args.n))
  t0 = time.perf_counter()
  jax.block_until_ready(fn(progs))
  compile_s = time.perf_counter() - t0
  times, cpu = [], []
  for _ in range(args.repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    steps, err, _, _ = jax.block_until_ready(fn(progs))
    times.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
  assert traces == 1, f"retraced: {traces} traces"
  assert int(jnp.max(err)) == 0
  best = min(times)
  total_steps = int(jnp.sum(steps))
  res = {"batch": args.batch, "n": args.n, "compile_s": round(compile_s, 3),
         "best_s": round(best, 4), "programs_per_s": round(args.batch / best, 1),
         "steps_per_s": round(total_steps / best, 1),
         "cpu_us_per_program": round(1e6 * min(cpu) / args.batch, 3),
         "traces": traces, "runner": args.runner,
         "load_avg_1min": round(os.getloadavg()[0], 2),
         "device": str(jax.devices()[0].platform)}
  print(f"{args.batch} programs x {args.n + 2} steps ({args.runner}): best "
        f"{best:.3f} s, {res['steps_per_s']:.3g} steps/s, "
        f"{res['cpu_us_per_program']} CPU us/program, compile "
        f"{compile_s:.2f} s, traces {traces}")
  print(json.dumps(res))


if __name__ == "__main__":
  main()
