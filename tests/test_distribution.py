"""The generated distribution matches the reference's stats.json within
sampling error, on a small sample (benchmarks/distribution.py runs the full
comparison on 440,000 rows).

Tolerances are 5 standard errors of the difference of two samples (ours and
the reference's, of their sizes), see tinyvm_jax/_src/stats.py. Destination
registers are compared with the uniform distribution, and Tier 0 train's
printed values with their exact distribution, because the reference's
seeding defect skews both (spec section 15).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tinyvm_jax._src import keys as keys_lib
from tinyvm_jax._src import stats as stats_lib
from tinyvm_jax._src import tiers

# rows per split: small, but every figure is still tested
ROWS = {"tier0_train": 4000, "tier1_train": 6000, "tier1_eval": 1500}


@functools.partial(jax.jit, static_argnames=("tier",))
def _rows(tier, split_key_data, indices, fixed_axes, sample):
  """Rows of one split, all tiers' splits at the tier's largest shapes (one
  compilation a tier; a row does not depend on its padding)."""
  split_key = jax.random.wrap_key_data(split_key_data, impl=keys_lib.IMPL)
  def one(index):
    key = jax.random.fold_in(split_key, index)
    drawn = tier.sample_axes(keys_lib.axes_key(key))
    return tiers.make_row(tier, key, axes=jnp.where(sample, drawn, fixed_axes),
                          shapes=tier.max_shapes, renders=("direct",))
  return jax.vmap(one)(indices)


@functools.lru_cache(maxsize=None)
def _summary(tier_name, bucket, count):
  tier = tiers.get_tier(tier_name)
  split = "train" if bucket is None else "eval"
  key = keys_lib.base_key(0)
  key = jax.random.fold_in(key, keys_lib.split_id(split))
  key = jax.random.fold_in(key, keys_lib.bucket_id(bucket))
  fixed = np.zeros(tier.num_axes, np.int32) if bucket is None else np.asarray(
      tier.bucket(bucket).axes, np.int32)
  rows = _rows(tier, jax.random.key_data(key), jnp.arange(count),
               jnp.asarray(fixed), bucket is None)
  return stats_lib.summarize(rows, tier.axis_names)


def _check(summary, ref, **kwargs):
  checks = stats_lib.compare(summary, ref, z=5.0, **kwargs)
  bad = [str(c) for c in checks if not c.ok]
  assert not bad, "\n".join(bad)
  assert (summary["error"] == 0).all()
  return checks


def test_tier0_train(stats):
  s = _summary("tier0", None, ROWS["tier0_train"])
  exact = stats_lib.counter_output_distribution(range(4, 9))
  checks = _check(s, stats["tier0_train_100000"], dst_support=(0,),
                  exact_outputs=exact)
  assert len(checks) > 40


def test_tier1_train(stats):
  s = _summary("tier1", None, ROWS["tier1_train"])
  checks = _check(s, stats["tier1_train_200000"])
  assert len(checks) > 70


@pytest.mark.parametrize("n", [8, 16, 32, 48, 64, 96, 128])
def test_tier1_eval(stats, n):
  s = _summary("tier1", f"len_{n}", ROWS["tier1_eval"])
  _check(s, stats[f"tier1_eval_len_{n}_20000"])


def test_reference_defect_is_detected(stats):
  """The comparison has teeth: destinations drawn with the reference's
  skewed frequencies (its seeding defect) fail the uniformity check."""
  ref = stats["tier1_train_200000"]
  s = _summary("tier1", None, ROWS["tier1_train"])
  freq = np.array([ref["dst_reg_freq"][f"R{r}"] for r in range(8)])
  rng = np.random.default_rng(0)
  writes = s["dst_counts"].sum(1)
  skewed = np.stack([rng.multinomial(w, freq / freq.sum()) for w in writes])
  bad = [c.name for c in stats_lib.compare(dict(s, dst_counts=skewed), ref)
         if not c.ok]
  assert "dst_reg_freq[R0] (uniform)" in bad
  assert all(name.startswith("dst_reg_freq") for name in bad)
