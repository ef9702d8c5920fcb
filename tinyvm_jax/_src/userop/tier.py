"""Tier 4 as a tier: its axes, sizes and eval buckets as data (`UseropTier`,
`TIER4`), and its rows by (seed base, split, bucket, index) as for Tiers 0-2
(`generate`, `build`).

Axes (`AXIS_NAMES`, [4] int32 a row):
- `userop`: index into the default userops, DOUBLE MAX ABS MOD SIGN (= slot
  - 16); train: uniform over the five.
- `k_demos`: demos shown; train: uniform in [1, 4].
- `n_target`: the target's n; train: uniform in [8, 32]. It only sets the
  length of the stack frame, so it matters only with use_stack.
- `use_stack`: 0/1, one stack frame in every program; train: p = 0.5.

A row's key is `keys.row_key(seed_base, split, bucket, index)`; its axes
come from `axes_key(key)` (stream 1: words (0, 1), (1, 1); the demos' n use
stream 0), its programs from `program_key(key)` (see `generate`). An eval
bucket fixes some axes and draws the others as train rows do (from the same
words, so fixing an axis does not move the others).

Eval buckets (`TIER4.eval_buckets`), chosen to answer two questions, how
each userop is learnt and what more demos buy, plus one of length:
- `<userop>_k<k>` for each default userop and k in {1, 2, 4}: userop and
  k_demos fixed, n_target and use_stack drawn (15 buckets);
- `ood_len_64`: n_target = 64 (twice the train maximum) with use_stack = 1
  (else n has no effect) and k_demos = 2; userop drawn.

Sizes: 100,000 train rows (5 userops x 4 demo counts x 2 stack settings
make 40 cells of about 2,500 rows) and 1,000 rows an eval bucket (a 95%
interval of about +-3 points on an accuracy; 16,000 rows in all), both set
by the emit's `train_size` and `eval_size` as for every tier.

Shapes: a split's rows share `E` program slots, the most demos of the split
plus the target (train: 5; a bucket fixing k: k + 1); a row of fewer demos
leaves slots k..E-2 empty (length 0; they render to nothing and are not
written to JSON). Program, step and token sizes are `userop_shapes` of the
split's most demos and largest n_target, with the tables of the defaults
(8 rows).
"""

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tinyvm_jax._src import batching
from tinyvm_jax._src import checks
from tinyvm_jax._src import isa
from tinyvm_jax._src import keys as keys_lib
from tinyvm_jax._src import tiers as tiers_lib
from tinyvm_jax._src.userop import binding
from tinyvm_jax._src.userop import generate as generate_lib
from tinyvm_jax._src.userop import shapes as shapes_lib
from tinyvm_jax._src.userop.generate import AXIS_NAMES, UseropRow

_STREAM_AXES = 1       # axes-key words of the row's axes (0: demos' n)
# the values of axis `userop`, in slot order
USEROPS = tuple(binding.DEFAULT_USEROPS[s]
                for s in isa.DEFAULT_USEROP_SYMBOLS)


@dataclasses.dataclass(frozen=True)
class Bucket:
  """An eval bucket: `fixed` ((axis name, value), ...) axes; the others are
  drawn as for train rows."""
  name: str
  fixed: tuple[tuple[str, int], ...]


@dataclasses.dataclass(frozen=True)
class UseropTier:
  """Tier 4: sizes, train axis ranges (inclusive) and eval buckets."""
  name: str = "tier4"
  train_size: int = 100_000
  eval_size: int = 1_000                       # rows of every eval bucket
  k_demos: tuple[int, int] = (1, 4)
  n_target: tuple[int, int] = (8, 32)
  eval_buckets: tuple[Bucket, ...] = ()
  renders: tuple[str, ...] = shapes_lib.RENDER_NAMES
  axis_names: tuple[str, ...] = AXIS_NAMES

  @property
  def bucket_names(self) -> tuple[str, ...]:
    return tuple(b.name for b in self.eval_buckets)

  def bucket(self, name: str) -> Bucket:
    for b in self.eval_buckets:
      if b.name == name:
        return b
    raise ValueError(f"tier {self.name!r} has no eval bucket {name!r}; "
                     f"expected one of {self.bucket_names}")

  def fixed_axes(self, bucket: str | None) -> tuple[np.ndarray, np.ndarray]:
    """([4] bool which axes the split fixes, [4] int32 their values)."""
    fixed = dict(self.bucket(bucket).fixed) if bucket is not None else {}
    return (np.array([a in fixed for a in AXIS_NAMES]),
            np.array([fixed.get(a, 0) for a in AXIS_NAMES], np.int32))

  def num_programs(self, bucket: str | None = None) -> int:
    """E: program slots of the split's rows (its most demos + 1)."""
    mask, value = self.fixed_axes(bucket)
    return 1 + (int(value[1]) if mask[1] else self.k_demos[1])

  def shapes(self, bucket: str | None = None) -> shapes_lib.UseropShapes:
    """Static sizes of the train split (bucket None) or of an eval bucket."""
    mask, value = self.fixed_axes(bucket)
    n_max = int(value[2]) if mask[2] else self.n_target[1]
    return shapes_lib.userop_shapes(binding.table_rows(USEROPS),
                                    k_demos=self.num_programs(bucket) - 1,
                                    n_max=n_max)

  def sample_axes(self, key: jax.Array, bucket: str | None = None, *,
                  fixed: tuple[jax.Array, jax.Array] | None = None
                  ) -> jax.Array:
    """[4] int32 axes of a row from its axes key (consumed): drawn, then
    the bucket's fixed ones put in (`fixed`: its `fixed_axes`, may be
    traced, in place of `bucket`)."""
    w = keys_lib.random_words(key, jnp.arange(2), _STREAM_AXES)
    (k_lo, k_hi), (n_lo, n_hi) = self.k_demos, self.n_target
    drawn = jnp.stack([
        keys_lib.uniform_int(w[0, 0], len(USEROPS)),
        k_lo + keys_lib.uniform_int(w[0, 1], k_hi - k_lo + 1),
        n_lo + keys_lib.uniform_int(w[1, 0], n_hi - n_lo + 1),
        keys_lib.uniform_int(w[1, 1], 2)])
    mask, value = self.fixed_axes(bucket) if fixed is None else fixed
    return jnp.where(mask, value, drawn).astype(jnp.int32)


def _tier4() -> UseropTier:
  buckets = [Bucket(f"{u.name.lower()}_k{k}", (("userop", i), ("k_demos", k)))
             for i, u in enumerate(USEROPS) for k in (1, 2, 4)]
  buckets.append(Bucket("ood_len_64", (("k_demos", 2), ("n_target", 64),
                                       ("use_stack", 1))))
  return UseropTier(eval_buckets=tuple(buckets))


TIER4 = _tier4()


def make_row(tier: UseropTier, key: jax.Array, *, bucket: str | None,
             renders: Sequence[str]) -> UseropRow:
  """One Tier 4 row (unbatched `UseropRow`, the split's shapes) from its
  row key (consumed); vmap for batches."""
  return _make_row(tier, key, tier.fixed_axes(bucket),
                   shapes=tier.shapes(bucket),
                   num_programs=tier.num_programs(bucket), renders=renders)


def _make_row(tier, key, fixed, *, shapes, num_programs, renders):
  """`make_row` with the bucket as its (maybe traced) `fixed_axes` and
  static sizes: splits of equal sizes share one compilation."""
  axes = tier.sample_axes(keys_lib.axes_key(key), fixed=fixed)
  tables = binding.stack_tables(USEROPS)
  dec = jax.tree_util.tree_map(lambda x: jnp.asarray(x)[axes[0]], tables)
  return generate_lib.make_row(key, dec, axes, shapes=shapes,
                               num_programs=num_programs, renders=renders)


@functools.partial(jax.jit, static_argnames=("tier", "shapes",
                                             "num_programs", "renders"))
def _rows(tier, key_data, mask, value, *, shapes, num_programs, renders):
  """[B] rows of [B, 2] row key data and a split's [4] fixed axes (`mask`,
  `value`): the one kernel of `generate` and `build`."""
  return jax.vmap(lambda d: _make_row(
      tier, jax.random.wrap_key_data(d, impl=keys_lib.IMPL), (mask, value),
      shapes=shapes, num_programs=num_programs, renders=renders))(key_data)


@jax.jit
def _row_key_data(split_key_data, indices):
  split_key = jax.random.wrap_key_data(split_key_data, impl=keys_lib.IMPL)
  return jax.vmap(lambda i: jax.random.key_data(
      jax.random.fold_in(split_key, i)))(indices)


def _host_rows(tier, key_data: np.ndarray, bucket, renders) -> UseropRow:
  """`_rows` on the host, the batch padded to a multiple of 8 rows (few
  compilations; rows do not depend on their batch)."""
  b = key_data.shape[0]
  padded = batching.pad_rows(key_data, batching.round_up(b, 8))
  mask, value = tier.fixed_axes(bucket)
  out = _rows(tier, jnp.asarray(padded), mask, value,
              shapes=tier.shapes(bucket),
              num_programs=tier.num_programs(bucket), renders=renders)
  return jax.tree_util.tree_map(lambda x: np.asarray(x)[:b], out)


def generate(seed_base: int, split: str, bucket: str | None, indices, *,
             tier: UseropTier = TIER4,
             renders: Sequence[str] | None = None) -> UseropRow:
  """A batch of Tier 4 dataset rows (jitted; one compilation for splits of
  the same sizes (`tier.shapes`, `tier.num_programs`) and batch size
  rounded up to 8; host numpy result).

  Args:
    seed_base: the dataset's seed base, an int in [0, 2**64).
    split: "train" or "eval".
    bucket: None for train, an eval bucket name for eval.
    indices: [B] row indices within the split, in [0, 2**31).
    tier: the `UseropTier`.
    renders: render names; default the tier's.

  Returns:
    `UseropRow` [B, ...] with `tier.shapes(bucket)` and
    `tier.num_programs(bucket)` slots. Row i is a function of (seed_base,
    split, bucket, indices[i]) only; `formats` writes it.
  """
  tiers_lib.check_split(tier, split, bucket)
  renders = generate_lib.check_renders(
      tier.renders if renders is None else renders, "generate")
  indices = np.asarray(indices)
  if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer) or (
      indices.size and (indices.min() < 0 or indices.max() >= 2 ** 31)):
    raise ValueError("indices must be a 1-D array of integers in [0, 2**31)")
  if not indices.size:
    raise ValueError("generate: no rows (indices is empty)")
  key_data = _row_key_data(keys_lib.split_key_data(seed_base, split, bucket),
                           jnp.asarray(indices, jnp.int32))
  return _host_rows(tier, np.asarray(key_data), bucket, renders)


@functools.partial(jax.jit, static_argnames=("tier",))
def _axes(tier, key_data, mask, value):
  def one(kd):
    key = jax.random.wrap_key_data(kd, impl=keys_lib.IMPL)
    return tier.sample_axes(keys_lib.axes_key(key), fixed=(mask, value))
  return jax.vmap(one)(key_data)


def seed_axes(seeds, *, bucket: str | None, tier: UseropTier = TIER4
              ) -> np.ndarray:
  """[B, 4] int32 axes that rows of [B] uint64 `meta.seed`s draw in a split
  (bucket None: train) (host)."""
  kd = generate_lib.key_data_of(np.asarray(seeds, np.uint64))
  mask, value = tier.fixed_axes(bucket)
  return np.asarray(_axes(tier, jnp.asarray(kd), mask, value))


def build(seeds, *, bucket: str | None = None, tier: UseropTier = TIER4,
          renders: Sequence[str] | None = None) -> UseropRow:
  """Rebuilds rows from their `meta.seed`s and split (bucket None: train).

  Args:
    seeds: [B] uint64 meta.seed values (or one int).
    bucket: the rows' eval bucket; None for train rows.
    tier, renders: as in `generate`.

  Returns:
    `UseropRow` [B, ...] (host; unbatched for one int seed), equal to the
    emitted rows.
  """
  one = checks.is_int(seeds)
  if one:
    checks.check_int("seed", seeds, lo=0, hi=2 ** 64 - 1)
  if bucket is not None:
    tier.bucket(bucket)
  renders = generate_lib.check_renders(
      tier.renders if renders is None else renders, "build")
  kd = generate_lib.key_data_of(np.atleast_1d(np.asarray(seeds, np.uint64)))
  out = _host_rows(tier, kd, bucket, renders)
  return jax.tree_util.tree_map(lambda x: x[0], out) if one else out
