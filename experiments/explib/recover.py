"""A sweep of gradient-based program recovery over program lengths.

`sweep` runs `tinyvm_jax.recovery_experiment` (the soft-execution recovery)
on `n_targets` tasks whose fill length n is uniform in [n_min, n_max], all
in one jitted call (one compilation for every length), and returns per task
its n, whether it was solved, and the hidden and the recovered program, so
the notebook can plot the success rate against n. Settings not given take
`tinyvm_jax.RecoveryConfig`'s defaults.
"""

import dataclasses
import functools

import jax
import numpy as np
import tinyvm_jax


def defaults() -> dict:
  """The recovery's default settings (`tinyvm_jax.RecoveryConfig`)."""
  return dataclasses.asdict(tinyvm_jax.RecoveryConfig())


_sweep = jax.jit(functools.partial(tinyvm_jax.recovery_experiment,
                                   programs=True),
                 static_argnums=(1, 2))


def sweep(seed: int, n_targets: int, **settings) -> dict:
  """Host: per-task results ([n_targets] arrays, numpy), see module doc.

  Args:
    seed: the sweep's key seed.
    n_targets: tasks.
    **settings: fields of `tinyvm_jax.RecoveryConfig` (hide, n_min, n_max,
      restarts, steps, ...); the others keep their defaults.
  """
  unknown = set(settings) - set(defaults())
  if unknown:
    raise ValueError(f"unknown settings {sorted(unknown)}; expected some of "
                     f"{sorted(defaults())}")
  if isinstance(n_targets, bool) or not isinstance(n_targets, int) or (
      n_targets < 1):
    raise ValueError(f"n_targets must be a positive int, got {n_targets!r}")
  config = tinyvm_jax.RecoveryConfig(**settings)
  config.check()
  out = _sweep(jax.random.key(seed), n_targets, config)
  return jax.tree_util.tree_map(np.asarray, out)


def success_by_length(res: dict) -> dict[int, tuple[float, int]]:
  """{n: (success rate, tasks)} from `sweep`'s results."""
  out = {}
  for n in np.unique(res["n"]):
    sel = res["n"] == n
    out[int(n)] = (float(res["solved"][sel].mean()), int(sel.sum()))
  return out
