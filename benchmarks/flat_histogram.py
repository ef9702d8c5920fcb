"""How flat `flat_output_histogram` makes Tier 1's printed values, and what
it costs.

For each number of candidates R, generates `--rows` Tier 1 train rows (axes
as Tier 1 train) with `gen_register_trace(..., flat_output_histogram=True,
flat_candidates=R)`, runs them, and reports the histogram of printed values
over the 22 buckets value // 100 (-11..10): total variation distance from
uniform, entropy / ln 22, the share of the largest and smallest bucket, the
zero fraction, and rows/s of generate + run (jitted) against the plain
generator. Ends with one JSON line.

  python benchmarks/flat_histogram.py --candidates=1,4,16,64 --rows=20000
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

import tinyvm_jax
from tinyvm_jax import isa

# printed-value buckets value // 100: -11..10
BUCKET_MIN = isa.VALUE_MIN // 100
NUM_BUCKETS = isa.VALUE_MAX // 100 - BUCKET_MIN + 1


def flatness(values: np.ndarray) -> dict:
  b = np.bincount(np.asarray(values) // 100 - BUCKET_MIN,
                  minlength=NUM_BUCKETS) / len(values)
  nz = b[b > 0]
  return {
      "tv_from_uniform": round(float(0.5 * np.abs(b - 1 / b.size).sum()), 4),
      "entropy_ratio": round(float(-(nz * np.log(nz)).sum() / np.log(b.size)),
                             4),
      "max_bucket": round(float(b.max()), 4),
      "min_bucket": round(float(b.min()), 5),
      "bucket_0_99": round(float(b[-BUCKET_MIN]), 4),
      "zero_frac": round(float(np.mean(values == 0)), 4),
      "buckets": [round(float(x), 5) for x in b]}


def make_fn(candidates: int, batch: int, max_len: int):
  tier = tinyvm_jax.get_tier("tier1")
  flat = candidates > 0

  @jax.jit
  def fn(key):
    def one(i):
      row = jax.random.fold_in(key, i)
      axes = tier.sample_axes(tinyvm_jax.axes_key(row))
      prog = tinyvm_jax.gen_register_trace(
          tinyvm_jax.program_key(row), axes[0], axes[1], max_len=max_len,
          flat_output_histogram=flat, flat_candidates=max(candidates, 1))
      return tinyvm_jax.run(prog, max_steps=max_len).output[0]
    return jax.vmap(one)(jnp.arange(batch))
  return fn


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--candidates", default="1,4,16,64")
  ap.add_argument("--rows", type=int, default=20000)
  ap.add_argument("--batch", type=int, default=2048)
  args = ap.parse_args()
  max_len = tinyvm_jax.get_tier("tier1").train_shapes.max_len
  result = {"rows": args.rows, "device": jax.devices()[0].platform,
            "runs": {}}
  for r in [0] + [int(x) for x in args.candidates.split(",")]:
    fn = make_fn(r, args.batch, max_len)
    jax.block_until_ready(fn(jax.random.key(0)))
    values, t0 = [], time.perf_counter()
    for start in range(0, args.rows, args.batch):
      values.append(np.asarray(fn(jax.random.fold_in(jax.random.key(1),
                                                     start))))
    seconds = time.perf_counter() - t0
    values = np.concatenate(values)[:args.rows]
    name = "plain" if r == 0 else f"R={r}"
    res = flatness(values)
    res["rows_per_s"] = round(len(values) / seconds, 1)
    result["runs"][name] = res
    print(f"{name:7s} TV {res['tv_from_uniform']:.3f}  H/ln22 "
          f"{res['entropy_ratio']:.3f}  max {res['max_bucket']:.3f}  min "
          f"{res['min_bucket']:.5f}  [0,100) {res['bucket_0_99']:.3f}  zero "
          f"{res['zero_frac']:.3f}  {res['rows_per_s']:10,.0f} rows/s")
  print(json.dumps(result))


if __name__ == "__main__":
  main()
