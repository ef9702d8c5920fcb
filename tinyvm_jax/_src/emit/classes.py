"""Row classes: the one cost model of how rows are grouped into static sizes.

The rows of one split differ in size: a Tier 2 train row needs P from 34 to
506 rows and S from 28 to 1,510 steps (`Tier.row_bounds`), the split's
static sizes being the maxima; computed at those, most of the work would be
padding. So every row is computed at the sizes of its *class*: a few static
(P, S) pairs chosen for the whole emit from a sample of the rows' bounds
(`row_classes`), one compilation each. A row does not depend on the sizes
it is computed at, so classes change the speed, never the bytes.

The cost model: a compilation costs `_COMPILE_SECONDS`; a row computed at
`Shapes` costs `class_units(shapes) * _UNIT_SECONDS`. `group_sizes` cuts a
cost-ordered list of sizes into groups computed at their largest member's
sizes, minimising the total; row classes, the split of parts between
processes and verify's zarr replay all use it.
"""

import dataclasses
import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tinyvm_jax._src import keys as keys_lib
from tinyvm_jax._src import tiers
from tinyvm_jax._src.emit.plan import Plan, SplitPlan

_SAMPLE_ROWS = 4096       # rows of each split sampled to choose the classes
_QUANTILES = 48           # candidate cut points of the choice
_COMPILE_SECONDS = 4.0    # about one compilation
_UNIT_SECONDS = 0.15e-6   # about the CPU time of one unit of `class_units`
_AXES_BLOCK = 4096        # rows a call of `_axes_batch`


def class_units(shapes: tiers.Shapes, renders: Sequence[str]) -> float:
  """A row's rough cost at `shapes`: P + S + (the renders' tokens) / 8."""
  u = shapes.max_len + shapes.max_steps
  for r in renders:
    t_in, t_out = shapes.token_lengths(r)
    u += (t_in + t_out) / 8
  return float(u)


def max_shapes(shapes: Sequence[tiers.Shapes]) -> tiers.Shapes:
  """Sizes that fit each of `shapes` (the field-wise maximum)."""
  return tiers.Shapes(*(max(getattr(s, f.name) for s in shapes)
                        for f in dataclasses.fields(tiers.Shapes)))


def _best_cut(cuts: int, cost: Callable[[int, int], float],
              max_groups: int) -> list[tuple[int, int]]:
  """Cuts positions 0 .. cuts - 1 into at most `max_groups` contiguous
  groups (j, i) minimising the sum of `cost(j, i)` (dynamic programming);
  returns the groups, last first."""
  inf = float("inf")
  best = [[inf] * cuts for _ in range(max_groups + 1)]
  back = [[0] * cuts for _ in range(max_groups + 1)]
  best[0][0] = 0.0
  for g in range(1, max_groups + 1):
    for i in range(1, cuts):
      for j in range(i):
        if best[g - 1][j] < inf and best[g - 1][j] + cost(j, i) < best[g][i]:
          best[g][i], back[g][i] = best[g - 1][j] + cost(j, i), j
  g = min(range(1, max_groups + 1), key=lambda g: best[g][cuts - 1])
  out, i = [], cuts - 1
  while g > 0:
    j = back[g][i]
    out.append((j, i))
    i, g = j, g - 1
  return out


def group_sizes(items: Sequence[tuple[tiers.Shapes, int]],
                renders: Sequence[str]) -> list[tiers.Shapes]:
  """The sizes each of `items` ((its sizes, its rows)) is computed at:
  items are grouped, in order of cost, to minimise compilations plus padded
  work, each group at the largest sizes of its members."""
  order = sorted(range(len(items)), key=lambda k: class_units(
      items[k][0], renders))
  tops = {}

  def cost(j, i):
    group = [items[k] for k in order[j:i]]
    tops[j, i] = max_shapes([s for s, _ in group])
    return _COMPILE_SECONDS + _UNIT_SECONDS * sum(n for _, n in group) * (
        class_units(tops[j, i], renders))
  out = [None] * len(items)
  for j, i in _best_cut(len(items) + 1, cost, len(items)):
    for k in order[j:i]:
      out[k] = tops[j, i]
  return out


@functools.partial(jax.jit, static_argnames=("tier",))
def _axes_batch(tier, split_key_data, indices):
  split_key = jax.random.wrap_key_data(split_key_data, impl=keys_lib.IMPL)
  return jax.vmap(lambda i: tier.sample_axes(keys_lib.axes_key(
      jax.random.fold_in(split_key, i))))(indices)


def rows_axes(plan: Plan, sp: SplitPlan, start: int, stop: int
              ) -> np.ndarray:
  """[stop - start, A] int64 axes of rows `start:stop` of a split (host)."""
  n = stop - start
  if sp.axes is not None:
    return np.broadcast_to(np.asarray(sp.axes, np.int64),
                           (n, plan.tier.num_axes))
  kd = jnp.asarray(keys_lib.split_key_data(plan.seed_base, sp.split,
                                           sp.bucket))
  out = []
  for lo in range(start, stop, _AXES_BLOCK):
    idx = np.arange(lo, lo + _AXES_BLOCK, dtype=np.int32)
    got = np.asarray(_axes_batch(plan.tier, kd, jnp.asarray(idx)))
    out.append(got[:min(_AXES_BLOCK, stop - lo)])
  return np.concatenate(out).astype(np.int64) if out else np.zeros(
      (0, plan.tier.num_axes), np.int64)


def row_sizes(plan: Plan, sp: SplitPlan, axes: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
  """([N] P, [N] S) bounds of rows with these axes, within the split's."""
  p, s = plan.tier.row_bounds(axes)
  return (np.minimum(p, sp.shapes.max_len),
          np.minimum(s, sp.shapes.max_steps))


def _sampled_sizes(plan: Plan) -> tuple[np.ndarray, np.ndarray]:
  """([K, 2] distinct (P, S) bounds of a sample of every split's rows,
  [K] their weights: the rows of the dataset each stands for)."""
  ps, ss, ws = [], [], []
  for sp in plan.splits:
    n = min(sp.num_rows, _SAMPLE_ROWS)
    p, s = row_sizes(plan, sp, rows_axes(plan, sp, 0, n))
    ps.append(p)
    ss.append(s)
    ws.append(np.full(n, sp.num_rows / n))
  pairs, inverse = np.unique(np.stack([np.concatenate(ps),
                                       np.concatenate(ss)], 1),
                             axis=0, return_inverse=True)
  return pairs, np.bincount(inverse.ravel(), weights=np.concatenate(ws))


def row_classes(plan: Plan, *, max_classes: int = 8
                ) -> tuple[tiers.Shapes, ...]:
  """Up to `max_classes` static sizes rows are computed at, cheapest first.

  The (P, S) bounds of a sample of every split's rows, weighted by the
  split's size and ordered by cost, are cut into contiguous groups; each
  group is computed at its largest P and S. The cut minimises compilations
  plus padded work (`_COMPILE_SECONDS`, `_UNIT_SECONDS`), by dynamic
  programming over weighted quantiles. `max_classes=0`: no classes (every
  row at its split's sizes).
  """
  if max_classes <= 0:
    return ()
  base = max_shapes([sp.shapes for sp in plan.splits])
  pairs, weight = _sampled_sizes(plan)
  make = lambda p, s: dataclasses.replace(base, max_len=int(p),
                                          max_steps=int(s))
  units = np.array([class_units(make(p, s), plan.renders) for p, s in pairs])
  order = np.argsort(units, kind="stable")
  pairs, weight = pairs[order], weight[order]
  cum = np.cumsum(weight) / weight.sum()
  cuts = sorted({0, len(pairs)} | {
      int(np.searchsorted(cum, q, side="left")) + 1
      for q in np.linspace(0, 1, _QUANTILES + 1)[1:-1]})
  cuts = [c for c in cuts if c <= len(pairs)]
  group = {}
  for j in range(len(cuts)):
    for i in range(j + 1, len(cuts)):
      a, b = cuts[j], cuts[i]
      shp = make(pairs[a:b, 0].max(), pairs[a:b, 1].max())
      group[j, i] = (_COMPILE_SECONDS + _UNIT_SECONDS * weight[a:b].sum()
                     * class_units(shp, plan.renders), shp)
  chosen = _best_cut(len(cuts), lambda j, i: group[j, i][0], max_classes)
  out = sorted({group[g][1] for g in chosen},
               key=lambda s: class_units(s, plan.renders))
  # the sample may miss a split's largest rows: the costliest class takes
  # every size, so that no row falls back to a class of its own
  out[-1] = dataclasses.replace(out[-1], max_len=base.max_len,
                                max_steps=base.max_steps)
  return tuple(out)


def assign_classes(classes: Sequence[tiers.Shapes], p: np.ndarray,
                   s: np.ndarray) -> np.ndarray:
  """[N] int: each row's cheapest class that fits its (P, S) bounds
  (`classes` cheapest first), -1 where none does (the split's sizes)."""
  out = np.full(p.shape, -1, np.int64)
  for c, shp in enumerate(classes):
    out = np.where((out < 0) & (p <= shp.max_len) & (s <= shp.max_steps), c,
                   out)
  return out


def fit(shapes: tiers.Shapes, sp: SplitPlan) -> tiers.Shapes:
  """The sizes a row of `sp` computed at `shapes` is cut to: the smaller
  of the two in P and S (the row fits both), the split's other fields."""
  return dataclasses.replace(
      sp.shapes, max_len=min(shapes.max_len, sp.shapes.max_len),
      max_steps=min(shapes.max_steps, sp.shapes.max_steps))


def part_batches(plan: Plan, sp: SplitPlan, part: int,
                 classes: Sequence[tiers.Shapes], batch: int
                 ) -> list[tuple[tiers.Shapes, np.ndarray]]:
  """A part's rows as (static sizes, [<= batch] ascending row indices)
  batches, grouped by row class."""
  lo, hi = sp.part_range(part, plan.part_rows)
  cls = np.full(hi - lo, -1)
  if classes:
    p, s = row_sizes(plan, sp, rows_axes(plan, sp, lo, hi))
    cls = assign_classes(classes, p, s)
  out = []
  for c in np.unique(cls):
    shapes = classes[c] if c >= 0 else sp.shapes
    rows = np.flatnonzero(cls == c) + lo
    out += [(shapes, rows[i:i + batch]) for i in range(0, len(rows), batch)]
  return out


def part_assignment(plan: Plan, num_processes: int
                    ) -> list[list[tuple[SplitPlan, int]]]:
  """The parts of each process: the dataset's parts in order (splits in
  plan order, parts ascending), cut into `num_processes` contiguous runs of
  about equal work (rows times the split's `class_units`)."""
  parts = plan.parts()
  cost = np.array([np.diff(sp.part_range(k, plan.part_rows))[0]
                   * class_units(sp.shapes, plan.renders) for sp, k in parts])
  edges = np.cumsum(cost) - cost / 2     # a part goes where its middle is
  owner = np.minimum((edges / cost.sum() * num_processes).astype(int),
                     num_processes - 1)
  return [[p for p, o in zip(parts, owner) if o == i]
          for i in range(num_processes)]
