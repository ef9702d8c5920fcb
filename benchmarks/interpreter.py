"""Benchmark: the exact interpreter on a jitted batch of Tier 1-sized programs.

Runs `vmap(run)` under `jit` on B random straight-line programs of the Tier 1
shape (n fill instructions, PRINT, HALT; P = S = n + 2), checks that the
second call does not retrace, and reports executed steps per second.

  python benchmarks/interpreter.py --batch=65536 --n=32
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from tinyvm_jax._src import isa
from tinyvm_jax._src.interpreter import run
from tinyvm_jax._src.types import Program


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
  ap.add_argument("--straight_line", action="store_true",
                  help="use run(..., straight_line=True), the Tier 0/1 path")
  args = ap.parse_args()
  traces = 0

  def batched(programs):
    nonlocal traces
    traces += 1
    t = jax.vmap(lambda p: run(p, max_steps=args.n + 2,
                                 straight_line=args.straight_line))(programs)
    return t.num_steps, t.error, t.output[:, 0]

  fn = jax.jit(batched)
  progs = jax.device_put(random_programs(np.random.default_rng(0), args.batch,
                                         args.n))
  t0 = time.perf_counter()
  jax.block_until_ready(fn(progs))
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    steps, err, _ = jax.block_until_ready(fn(progs))
    times.append(time.perf_counter() - t0)
  assert traces == 1, f"retraced: {traces} traces"
  assert int(jnp.max(err)) == 0
  best = min(times)
  total_steps = int(jnp.sum(steps))
  res = {"batch": args.batch, "n": args.n, "compile_s": round(compile_s, 3),
         "best_s": round(best, 4), "programs_per_s": round(args.batch / best, 1),
         "steps_per_s": round(total_steps / best, 1), "traces": traces,
         "straight_line": args.straight_line,
         "device": str(jax.devices()[0].platform)}
  print(f"{args.batch} programs x {args.n + 2} steps: best {best:.3f} s, "
        f"{res['steps_per_s']:.3g} steps/s, compile {compile_s:.2f} s, "
        f"traces {traces}")
  print(json.dumps(res))


if __name__ == "__main__":
  main()
