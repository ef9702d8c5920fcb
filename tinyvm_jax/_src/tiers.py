"""Tiers as data (spec section 12), and the rows they make.

A `Tier` names its axes, its train size and train-axes sampler, its eval
buckets (fixed axes and size), its renders and the static sizes of each split
(`Shapes`: program length `P`, step budget `S`, token lengths). `make_row`
builds one row from a row key; `generate` is the jitted batch function the
dataset pipeline calls; `build` is the host API that rebuilds a row's program
from `meta.seed`.

Row keys (see `keys`): `row_key = fold_in^3(base, split, bucket, index)`;
the axes come from `axes_key(row_key)`, the program from
`program_key(row_key)`: two independent streams.
"""

import dataclasses
import functools
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tinyvm_jax._src import branched
from tinyvm_jax._src import generators
from tinyvm_jax._src import interpreter
from tinyvm_jax._src import isa
from tinyvm_jax._src import keys as keys_lib
from tinyvm_jax._src import render as render_lib
from tinyvm_jax._src.types import Program, Render, Rows, Trace

_LITERAL_DIGITS = 3   # generated literals are in [-127, 127]


@dataclasses.dataclass(frozen=True)
class Shapes:
  """Static sizes of a split: every row of it fits."""
  max_len: int              # P, program length
  max_steps: int            # S, step budget
  max_outputs: int = 1      # most printed values of a row
  label_digits: int = 0     # most digits of a label number (0: no labels)
  literal_digits: int = _LITERAL_DIGITS

  def token_lengths(self, render: str) -> tuple[int, int]:
    """(T_in, T_out): token lengths that every row's `render` fits."""
    # the direct target holds only the printed values; the other renders'
    # targets are bounded by their steps
    outputs = (min(self.max_outputs, self.max_steps) if render == "direct"
               else None)
    return render_lib.max_render_lengths(
        render, max_len=self.max_len, max_steps=self.max_steps,
        label_digits=self.label_digits, literal_digits=self.literal_digits,
        max_outputs=outputs)

  @property
  def max_input_len(self) -> int:
    """T_in of the direct render."""
    return self.token_lengths("direct")[0]

  @property
  def max_target_len(self) -> int:
    """T_out of the direct render."""
    return self.token_lengths("direct")[1]


@dataclasses.dataclass(frozen=True)
class EvalBucket:
  name: str
  axes: tuple[int, ...]   # fixed axes, in the tier's axis order
  size: int               # rows
  shapes: Shapes


@dataclasses.dataclass(frozen=True)
class Tier:
  """A tier: its axes, splits, renders and generator.

  `sample_axes_fn(key) -> [A] int32` draws train axes; `program_fn(key,
  axes, *, max_len) -> Program` builds one program from a program key and
  [A] axes. `straight_line`: the programs hold only fill ops, PRINT, NOP
  and HALT (Tier 0/1), so rows run on `interpreter.run_straight_line`,
  whose traces equal `run`'s for such programs at about a third of the
  cost. `row_bounds_fn(axes [N, A] numpy) -> (P [N], S [N])`: per-row
  program length and step bounds (host, vectorised), so that a pipeline
  can compute each row at sizes near its own instead of the split's.
  """
  name: str
  axis_names: tuple[str, ...]
  train_size: int
  train_shapes: Shapes
  eval_buckets: tuple[EvalBucket, ...]
  renders: tuple[str, ...]
  sample_axes_fn: Callable[[jax.Array], jax.Array]
  program_fn: Callable[..., Program]
  shapes_fn: Callable[[Sequence[int]], Shapes]  # concrete axes -> Shapes
  row_bounds_fn: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
  straight_line: bool = False

  def row_bounds(self, axes) -> tuple[np.ndarray, np.ndarray]:
    """([N] P, [N] S): each row's program length and step bounds from its
    [N, A] concrete axes (host)."""
    axes = np.asarray(axes)
    if axes.ndim != 2 or axes.shape[1] != self.num_axes:
      raise ValueError(f"tier {self.name!r}: axes must be [N, "
                       f"{self.num_axes}], got {axes.shape}")
    p, s = self.row_bounds_fn(axes)
    return np.asarray(p, np.int64), np.asarray(s, np.int64)

  @property
  def num_axes(self) -> int:
    return len(self.axis_names)

  @property
  def bucket_names(self) -> tuple[str, ...]:
    return tuple(b.name for b in self.eval_buckets)

  @property
  def max_shapes(self) -> Shapes:
    """Sizes that fit every split of the tier."""
    every = [self.train_shapes] + [b.shapes for b in self.eval_buckets]
    return Shapes(**{f.name: max(getattr(s, f.name) for s in every)
                     for f in dataclasses.fields(Shapes)})

  def bucket(self, name: str) -> EvalBucket:
    for b in self.eval_buckets:
      if b.name == name:
        return b
    raise ValueError(f"tier {self.name!r} has no eval bucket {name!r}; "
                     f"expected one of {self.bucket_names}")

  def shapes(self, bucket: str | None = None) -> Shapes:
    """Sizes of the train split (bucket None) or of an eval bucket."""
    return self.train_shapes if bucket is None else self.bucket(bucket).shapes

  def sample_axes(self, key: jax.Array) -> jax.Array:
    """[A] int32 train axes drawn from an axes key (consumed)."""
    return self.sample_axes_fn(key)

  def program(self, key: jax.Array, axes: jax.Array, *,
              max_len: int) -> Program:
    """One program from a program key (consumed) and [A] axes."""
    return self.program_fn(key, axes, max_len=max_len)


# ------------------------------------------------------------- tier 0 / 1
def _straight_line_shapes(n: int) -> Shapes:
  """Tier 0/1: n fill instructions, PRINT, HALT; one step each."""
  return Shapes(max_len=n + 2, max_steps=n + 2)


def _tier0_axes(key: jax.Array) -> jax.Array:
  w = keys_lib.random_words(key, jnp.arange(1), 0)[0]
  return jnp.stack([4 + keys_lib.uniform_int(w[0], 5)])


def _straight_line_bounds(axes: np.ndarray):
  n = np.asarray(axes, np.int64)[:, 0] + 2
  return n, n


def _tier0_program(key, axes, *, max_len):
  return generators.gen_counter(key, axes[0], max_len=max_len)


_TIER1_K = np.array([2, 4, 8], np.int32)


def _tier1_axes(key: jax.Array) -> jax.Array:
  w = keys_lib.random_words(key, jnp.arange(1), 0)[0]
  return jnp.stack([8 + keys_lib.uniform_int(w[0], 25),
                    jnp.asarray(_TIER1_K)[keys_lib.uniform_int(w[1], 3)]])


def _tier1_program(key, axes, *, max_len):
  return generators.gen_register_trace(key, axes[0], axes[1],
                                       max_len=max_len)


def _tier0() -> Tier:
  return Tier(
      name="tier0", axis_names=("n",), train_size=100_000,
      train_shapes=_straight_line_shapes(8),
      eval_buckets=(EvalBucket("all", (8,), 10_000, _straight_line_shapes(8)),),
      renders=("direct",), sample_axes_fn=_tier0_axes,
      program_fn=_tier0_program,
      shapes_fn=lambda axes: _straight_line_shapes(int(axes[0])),
      row_bounds_fn=_straight_line_bounds, straight_line=True)


def _tier1() -> Tier:
  buckets = tuple(EvalBucket(f"len_{n}", (n, 4), 20_000,
                             _straight_line_shapes(n))
                  for n in (8, 16, 32, 48, 64, 96, 128))
  return Tier(
      name="tier1", axis_names=("n", "k"), train_size=200_000,
      train_shapes=_straight_line_shapes(32), eval_buckets=buckets,
      renders=("direct",), sample_axes_fn=_tier1_axes,
      program_fn=_tier1_program,
      shapes_fn=lambda axes: _straight_line_shapes(int(axes[0])),
      row_bounds_fn=_straight_line_bounds, straight_line=True)


# ------------------------------------------------------------- tier 2
_TIER2_K = np.array([4, 6, 8], np.int32)
_TIER2_AXES = ("n", "k", "b", "l", "use_stack", "stack_frames")


def _branched_shapes(n: int, k: int, b: int, l: int, frames: int, *,
                     b_min: int) -> Shapes:
  """Tier 2: exact worst cases of `gen_branched` over the axes' ranges."""
  return Shapes(
      max_len=branched.max_program_len(n, k, b, l, frames, b_min=b_min),
      max_steps=branched.max_trace_steps(n, k, b, l, frames, b_min=b_min),
      label_digits=2)


def _tier2_axes(key: jax.Array) -> jax.Array:
  w = keys_lib.random_words(key, jnp.arange(3), 0)
  return jnp.stack([16 + keys_lib.uniform_int(w[0, 0], 241),
                    jnp.asarray(_TIER2_K)[keys_lib.uniform_int(w[0, 1], 3)],
                    1 + keys_lib.uniform_int(w[1, 0], 8),
                    keys_lib.uniform_int(w[1, 1], 17),
                    keys_lib.uniform_int(w[2, 0], 2),
                    keys_lib.uniform_int(w[2, 1], 3)])


def _tier2_program(key, axes, *, max_len):
  return branched.gen_branched(key, *(axes[i] for i in range(6)),
                               max_len=max_len)


def _tier2() -> Tier:
  def bucket(name, n, k, b, l, use_stack, frames):
    return EvalBucket(name, (n, k, b, l, use_stack, frames), 10_000,
                      _branched_shapes(n, k, b, l, frames, b_min=b))
  buckets = (bucket("easy", 32, 4, 1, 0, 0, 0),
             bucket("medium", 64, 4, 2, 4, 0, 0),
             bucket("hard", 128, 6, 4, 8, 1, 1),
             bucket("ood_len_256", 256, 4, 2, 4, 0, 0))
  return Tier(
      name="tier2", axis_names=_TIER2_AXES, train_size=500_000,
      train_shapes=_branched_shapes(256, 8, 8, 16, 2, b_min=1),
      eval_buckets=buckets, renders=("direct", "cot"),
      sample_axes_fn=_tier2_axes, program_fn=_tier2_program,
      shapes_fn=lambda a: _branched_shapes(*(int(a[i]) for i in (0, 1, 2, 3, 5)),
                                           b_min=int(a[2])),
      row_bounds_fn=branched.row_bounds)


TIERS: dict[str, Tier] = {"tier0": _tier0(), "tier1": _tier1(),
                          "tier2": _tier2()}


def get_tier(name) -> Tier:
  """The tier called `name` ('tier0', 'tier1', 'tier2'); a `Tier` passes
  through."""
  if isinstance(name, Tier):
    return name
  if name not in TIERS:
    raise ValueError(f"unknown tier {name!r}; expected one of {sorted(TIERS)}")
  return TIERS[name]


# ------------------------------------------------------------- rows
def render_row(name: str, program: Program, trace: Trace,
               key_data: jax.Array, *, max_input_len: int,
               max_target_len: int, label_digits: int = isa.MAX_LABEL_DIGITS,
               literal_digits: int = isa.MAX_LITERAL_DIGITS) -> Render:
  """One render of a row by name; 'probe_query' probes the step
  `meta.seed % num_steps`, as the reference's probe rows do.
  `label_digits`, `literal_digits`: static promise on the program (a
  split's `Shapes`); 0 label digits selects the cheaper plain layout of
  the direct render, with identical tokens."""
  step = (keys_lib.probe_step(key_data, trace.num_steps) if name == "probe_query"
          else None)
  return render_lib.render(name, program, trace, max_input_len=max_input_len,
                           max_target_len=max_target_len, step=step,
                           label_digits=label_digits,
                           literal_digits=literal_digits)


def make_row(tier: Tier, key: jax.Array, *, bucket: str | None = None,
             axes: jax.Array | None = None, shapes: Shapes | None = None,
             renders: Sequence[str] | None = None,
             token_lengths: Mapping[str, tuple[int, int]] | None = None
             ) -> Rows:
  """One row (unbatched `Rows`) from its row key; vmap for batches.

  Args:
    tier: the `Tier`.
    key: the row key (consumed): axes from `axes_key(key)`, program from
      `program_key(key)`.
    bucket: an eval bucket name, whose fixed axes the row takes; None for a
      train row, whose axes are sampled.
    axes: [A] int32 axes overriding both (then pass `shapes` that fit them).
    shapes: static sizes; default the split's.
    renders: render names; default the tier's.
    token_lengths: {render: (T_in, T_out)} overriding `shapes.token_lengths`.

  Returns:
    `Rows` without the batch dimension: key_data [2], axes [A], program [P],
    trace [S], renders {name: Render}.
  """
  shapes = shapes or tier.shapes(bucket)
  renders = tier.renders if renders is None else tuple(renders)
  if axes is None:
    axes = (tier.sample_axes(keys_lib.axes_key(key)) if bucket is None else
            jnp.asarray(tier.bucket(bucket).axes, jnp.int32))
  axes = jnp.asarray(axes, jnp.int32)
  program = tier.program(keys_lib.program_key(key), axes,
                         max_len=shapes.max_len)
  run = (interpreter.run_straight_line if tier.straight_line else
         interpreter.run)
  trace = run(program, max_steps=shapes.max_steps)
  key_data = jax.random.key_data(key)
  out = {}
  for r in renders:
    t_in, t_out = (token_lengths or {}).get(r) or shapes.token_lengths(r)
    out[r] = render_row(r, program, trace, key_data, max_input_len=t_in,
                        max_target_len=t_out,
                        label_digits=shapes.label_digits,
                        literal_digits=shapes.literal_digits)
  return Rows(key_data=key_data, axes=axes, program=program, trace=trace,
              renders=out)


@functools.partial(jax.jit, static_argnames=("tier", "bucket", "renders"))
def _generate(tier, split_key_data, indices, *, bucket, renders):
  split_key = jax.random.wrap_key_data(split_key_data, impl=keys_lib.IMPL)
  def one(index):
    return make_row(tier, jax.random.fold_in(split_key, index),
                    bucket=bucket, renders=renders)
  return jax.vmap(one)(indices)


def check_split(tier, split: str, bucket: str | None) -> None:
  """ValueError unless (split, bucket) names a split of `tier` (any object
  with a `bucket(name)` lookup: a `Tier`, or Tier 4's)."""
  keys_lib.split_id(split)
  if (split == "train") != (bucket is None):
    raise ValueError(f"split {split!r} needs "
                     f"{'no bucket' if split == 'train' else 'a bucket'}, "
                     f"got bucket={bucket!r}")
  if bucket is not None:
    tier.bucket(bucket)


def generate(tier, seed_base: int, split: str, bucket: str | None,
             indices, *, renders: Sequence[str] | None = None) -> Rows:
  """A batch of dataset rows (jitted; one compilation per tier and split).

  Args:
    tier: a `Tier` or its name.
    seed_base: the dataset's seed base, an int in [0, 2**64).
    split: "train" or "eval".
    bucket: None for train, an eval bucket name for eval.
    indices: [B] int32 row indices within the split.
    renders: render names; default the tier's.

  Returns:
    `Rows` with a leading batch dimension B. Row i is a function of
    (seed_base, split, bucket, indices[i]) only.
  """
  tier = get_tier(tier)
  check_split(tier, split, bucket)
  renders = tier.renders if renders is None else tuple(renders)
  for r in renders:
    if r not in render_lib.RENDERS:
      raise ValueError(f"unknown render {r!r}; expected one of "
                       f"{render_lib.RENDER_NAMES}")
  indices = np.asarray(indices)
  if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer) or (
      indices.size and (indices.min() < 0 or indices.max() >= 2 ** 31)):
    raise ValueError("indices must be a 1-D array of integers in [0, 2**31)")
  return _generate(tier, keys_lib.split_key_data(seed_base, split, bucket),
                   jnp.asarray(indices, jnp.int32), bucket=bucket,
                   renders=renders)


def rebuild_row(tier: Tier, key_data: jax.Array, axes: jax.Array, *,
                max_len: int) -> tuple[jax.Array, Program]:
  """The program-rebuild kernel (in-graph, one row; vmap for batches):
  every caller that regenerates programs from seeds uses it.

  Args:
    tier: the `Tier`.
    key_data: [2] uint32 data of the row key (meta.seed's two words).
    axes: [A] int32 axes the program is built at (a train row's drawn axes,
      an eval row's bucket axes).
    max_len: static program length `P`.

  Returns:
    ([A] int32 train axes drawn from the key, the [P] `Program` built from
    the key at `axes`): what `make_row` computes for that key.
  """
  key = jax.random.wrap_key_data(key_data, impl=keys_lib.IMPL)
  drawn = tier.sample_axes(keys_lib.axes_key(key))
  return drawn, tier.program(keys_lib.program_key(key), axes,
                             max_len=max_len)


@functools.partial(jax.jit, static_argnames=("tier", "max_len"))
def _build(tier, key_data, axes, *, max_len):
  return rebuild_row(tier, key_data, axes, max_len=max_len)[1]


@functools.partial(jax.jit, static_argnames=("tier",))
def _train_axes(tier, key_data):
  key = jax.random.wrap_key_data(key_data, impl=keys_lib.IMPL)
  return tier.sample_axes(keys_lib.axes_key(key))


def row_axes(tier, seed: int, axes: Sequence[int] | Mapping[str, int] | None
             = None) -> np.ndarray:
  """A row's [A] axes (host): `axes` as given (a sequence in the tier's
  order, or meta.axes' dict), else the train axes drawn from `seed`."""
  tier = get_tier(tier)
  if axes is None:
    data = jax.random.key_data(keys_lib.seed_to_key(seed))
    return np.asarray(_train_axes(tier, data))
  if isinstance(axes, Mapping):
    missing = [a for a in tier.axis_names if a not in axes]
    if missing:
      raise ValueError(f"axes {dict(axes)} lack {missing} of tier "
                       f"{tier.name!r}")
    axes = [axes[a] for a in tier.axis_names]
  axes = np.asarray(axes)
  if axes.shape != (tier.num_axes,) or not np.issubdtype(axes.dtype,
                                                         np.integer):
    raise ValueError(f"tier {tier.name!r} takes {tier.num_axes} integer axes "
                     f"{tier.axis_names}, got {axes.tolist()}")
  return axes.astype(np.int32)


def build(tier, seed: int, axes=None, *, max_len: int | None = None
          ) -> Program:
  """Rebuilds a row's program from `meta.seed` (host; numpy arrays).

  Args:
    tier: a `Tier` or its name.
    seed: meta.seed, the row key's 64 bits.
    axes: the row's axes (meta.axes dict or a sequence); None for a train
      row, whose axes are redrawn from the seed.
    max_len: static program length to pad to; default the train split's
      for train rows, the tight length for given axes. A program does not
      depend on the length it is padded to.

  Returns:
    The unbatched `Program`, identical to the row's.
  """
  tier = get_tier(tier)
  train = axes is None
  axes = row_axes(tier, seed, axes)
  need = tier.shapes_fn(axes).max_len
  if max_len is None:
    # one compilation for all train rows: the train split's length
    max_len = tier.train_shapes.max_len if train else need
  elif max_len < need:
    raise ValueError(f"max_len={max_len} is too short for axes "
                     f"{axes.tolist()} (needs {need})")
  data = jax.random.key_data(keys_lib.seed_to_key(seed))
  prog = _build(tier, data, jnp.asarray(axes), max_len=max_len)
  return jax.tree_util.tree_map(np.asarray, prog)
