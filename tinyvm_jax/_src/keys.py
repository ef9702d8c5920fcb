"""Row keys, row seeds and counter-based random words.

A row's key is a pure function of (seed base, split, bucket, row index):

    base    = threefry key with data [seed_base >> 32, seed_base & 0xffffffff]
    row key = fold_in(fold_in(fold_in(base, split_id), bucket_id), index)

with `split_id` 0 for train and 1 for eval, and `bucket_id` the CRC-32 of the
bucket name (31 bits; 0 for no bucket), so adding or renaming one bucket does
not move the rows of another. For seed bases below 2**32 the base key is
`jax.random.key(seed_base)`; building it from its two words also gives 64-bit
seed bases their own keys (`jax.random.key` truncates them without x64).

`meta.seed` is the row key's raw 64 bits, `hi << 32 | lo`: an unsigned
64-bit integer from which `seed_to_key` rebuilds the key. A row then splits
its key into two independent streams, `axes_key` and `program_key`, so the
axes never leak into the program (the reference's defect, spec section 15).

Random words come from `random_words`: threefry-2x32 in counter mode, the
counter pair being (counter, stream). A word's value depends only on the key,
its counter and its stream, never on how many words are drawn, the batch size
or the device, which is what makes programs independent of their padded
length.
"""

import zlib

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import random as jex_random

IMPL = "threefry2x32"
SPLITS = {"train": 0, "eval": 1}

_AXES_STREAM = 0
_PROGRAM_STREAM = 1


def split_id(split: str) -> int:
  """0 for "train", 1 for "eval"; ValueError otherwise."""
  if split not in SPLITS:
    raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
  return SPLITS[split]


def bucket_id(bucket: str | None) -> int:
  """The 31-bit CRC-32 of a bucket name; 0 for no bucket (train)."""
  if bucket is None:
    return 0
  if not isinstance(bucket, str) or not bucket:
    raise ValueError(f"bucket must be a non-empty name or None, got {bucket!r}")
  return zlib.crc32(bucket.encode()) & 0x7FFFFFFF


def _check_u64(value, what: str) -> int:
  if isinstance(value, (bool, np.bool_)) or not isinstance(
      value, (int, np.integer)) or not 0 <= int(value) < 2 ** 64:
    raise ValueError(f"{what} must be an integer in [0, 2**64), got {value!r}")
  return int(value)


def _u64_words(value: int) -> np.ndarray:
  return np.array([value >> 32, value & 0xFFFFFFFF], np.uint32)


def base_key(seed_base) -> jax.Array:
  """The dataset's base key (host; `seed_base` an int in [0, 2**64))."""
  seed_base = _check_u64(seed_base, "seed_base")
  return jax.random.wrap_key_data(_u64_words(seed_base), impl=IMPL)


def split_key(seed_base, split: str, bucket: str | None) -> jax.Array:
  """The key of one split (host): `fold_in(fold_in(key(seed_base), split),
  crc32(bucket))`; its rows' keys fold in their index."""
  key = base_key(seed_base)
  key = jax.random.fold_in(key, split_id(split))
  return jax.random.fold_in(key, bucket_id(bucket))


def split_key_data(seed_base, split: str, bucket: str | None) -> np.ndarray:
  """[2] uint32 key data of `split_key` (host)."""
  return np.asarray(jax.random.key_data(split_key(seed_base, split, bucket)))


def row_key(seed_base, split: str, bucket: str | None,
            index: jax.Array) -> jax.Array:
  """The key of one row; `index` may be traced ([] int32/uint32), vmap for
  batches. `seed_base`, `split` and `bucket` are host values."""
  return jax.random.fold_in(split_key(seed_base, split, bucket), index)


def seed_to_key(seed) -> jax.Array:
  """The row key whose raw 64 bits are `seed` (meta.seed); host."""
  seed = _check_u64(seed, "seed")
  return jax.random.wrap_key_data(_u64_words(seed), impl=IMPL)


def key_to_seed(key: jax.Array) -> int:
  """meta.seed of one (unbatched, concrete) row key: `hi << 32 | lo`."""
  data = np.asarray(jax.random.key_data(key))
  if data.shape != (2,):
    raise ValueError(f"expected one threefry key (data shape (2,)), got "
                     f"data shape {data.shape}")
  return int(data[0]) << 32 | int(data[1])


def seeds_from_key_data(key_data) -> np.ndarray:
  """[...] uint64 `meta.seed`s (hi << 32 | lo) of [..., 2] key data (host,
  vectorised; int32 key data is read as its uint32 bits)."""
  d = np.asarray(key_data).astype(np.uint32).astype(np.uint64)
  return (d[..., 0] << np.uint64(32)) | d[..., 1]


def key_data_from_seeds(seeds) -> np.ndarray:
  """[..., 2] uint32 key data of [...] uint64 `meta.seed`s (host; the
  inverse of `seeds_from_key_data`)."""
  seed = np.asarray(seeds, np.uint64)
  return np.stack([(seed >> np.uint64(32)).astype(np.uint32),
                   (seed & np.uint64(0xFFFFFFFF)).astype(np.uint32)], -1)


def probe_step(key_data: jax.Array, num_steps: jax.Array) -> jax.Array:
  """[] int32 step a probe_query render asks about: `meta.seed % num_steps`
  (as the reference's probe rows choose it), in-graph for one [2] uint32
  key; `num_steps` in [1, 2**16) (0 is read as 1)."""
  m = jnp.maximum(num_steps, 1).astype(jnp.uint32)
  wrap = (jnp.uint32(0xFFFFFFFF) % m + 1) % m          # 2**32 mod m
  hi, lo = key_data[0] % m, key_data[1] % m
  return ((hi * wrap + lo) % m).astype(jnp.int32)


def probe_steps(key_data: np.ndarray, num_steps: np.ndarray) -> np.ndarray:
  """[B] int32 `probe_step` of [B, 2] key data on the host."""
  steps = np.maximum(np.asarray(num_steps), 1).astype(np.uint64)
  return (seeds_from_key_data(key_data) % steps).astype(np.int32)


def axes_key(key: jax.Array) -> jax.Array:
  """The row's stream for its axes."""
  return jax.random.fold_in(key, _AXES_STREAM)


def program_key(key: jax.Array) -> jax.Array:
  """The row's stream for its program."""
  return jax.random.fold_in(key, _PROGRAM_STREAM)


def random_words(key: jax.Array, counters: jax.Array,
                 stream: int) -> jax.Array:
  """Two random uint32 words for each counter: threefry(key, (c, stream)).

  Args:
    key: one threefry key (consumed for this stream).
    counters: [N] int32/uint32 counters, distinct within a stream.
    stream: static int naming the purpose of the words.

  Returns:
    [N, 2] uint32; row i depends only on (key, counters[i], stream).
  """
  k1, k2 = jax.random.key_data(key)
  c = jnp.asarray(counters).astype(jnp.uint32)
  s = jnp.full(c.shape, stream, jnp.uint32)
  w1, w2 = jex_random.threefry2x32_p.bind(k1, k2, c, s)
  return jnp.stack([w1, w2], axis=-1)


def uniform_int(word: jax.Array, n: jax.Array) -> jax.Array:
  """floor(word * n / 2**32): an integer uniform in [0, n) from a uint32 word.

  `n` (traced or static, broadcast against `word`) must be in [1, 2**16);
  each outcome has probability 1/n within a relative error of n / 2**32.
  Computed in 32-bit arithmetic (16-bit halves), so it needs no x64.
  """
  n = jnp.asarray(n).astype(jnp.uint32)
  hi = word >> 16
  lo = word & jnp.uint32(0xFFFF)
  return ((hi * n + ((lo * n) >> 16)) >> 16).astype(jnp.int32)


def uniform_int32(word: jax.Array, n: jax.Array) -> jax.Array:
  """`uniform_int` for any `n` in [1, 2**32): the high word of word * n
  (32 x 32 -> 64-bit product in 16-bit limbs); returns uint32."""
  n = jnp.asarray(n).astype(jnp.uint32)
  mask = jnp.uint32(0xFFFF)
  a_hi, a_lo = word >> 16, word & mask
  b_hi, b_lo = n >> 16, n & mask
  mid1 = a_hi * b_lo + ((a_lo * b_lo) >> 16)
  mid2 = a_lo * b_hi + (mid1 & mask)
  return a_hi * b_hi + (mid1 >> 16) + (mid2 >> 16)


def next_fraction(word: jax.Array, n: jax.Array) -> jax.Array:
  """The bits of `word` left after `uniform_int(word, n)`: word * n mod 2**32.

  Chaining `uniform_int(w, n1)`, `w = next_fraction(w, n1)`,
  `uniform_int(w, n2)`, ... draws a mixed-radix tuple, uniform over the
  n1 * n2 * ... outcomes within a relative error of (n1 * n2 * ...) / 2**32.
  """
  return word * jnp.asarray(n).astype(jnp.uint32)
