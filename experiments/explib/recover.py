"""A sweep of gradient-based program recovery over program lengths.

`sweep` runs the soft-execution recovery (`tinyvm_jax._src.recovery`) on
`n_targets` tasks whose fill length n is uniform in [n_min, n_max], all in
one jitted call (one compilation for every length), and returns per task
its n, whether it was solved, and the hidden and the recovered program, so
the notebook can plot the success rate against n. Settings not given take
the recovery module's defaults.
"""

import dataclasses
import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np

from tinyvm_jax._src import recovery


def defaults() -> dict:
  """The recovery module's default settings (`recovery.RecoveryConfig`)."""
  return dataclasses.asdict(recovery.RecoveryConfig())


def _kwargs(fn, cfg: dict) -> dict:
  names = inspect.signature(fn).parameters
  return {k: v for k, v in cfg.items() if k in names}


@functools.partial(jax.jit, static_argnames=("n_targets", "config"))
def _sweep(key, *, n_targets, config):
  # `recovery.recovery_experiment`, also returning the programs for display
  cfg = dataclasses.asdict(config)
  hide, n_train = config.hide, config.n_train
  task_kw = _kwargs(recovery.sample_task, cfg)
  fit_kw = _kwargs(recovery.fit, cfg)

  def one(i):
    task = recovery.sample_task(
        jax.random.fold_in(jax.random.fold_in(key, 0), i),
        n_examples=n_train + config.n_test, **task_kw)
    logits, loss = recovery.fit(
        task, jax.random.fold_in(jax.random.fold_in(key, 1), i), **fit_kw)
    res = recovery.evaluate(task, logits, loss, hide=hide, n_train=n_train)
    # the kept restart, chosen as `evaluate` does
    progs = jax.vmap(lambda l: recovery.decode(task.program, l, hide=hide))(
        logits)
    final, output = jax.vmap(
        lambda p: recovery.run_examples(p, task.inputs))(progs)
    ok = jnp.all(final == task.final, -1) & (output == task.output)
    best = jnp.lexsort((loss, -ok[:, :n_train].sum(-1)))[0]
    found = jax.tree_util.tree_map(lambda x: x[best], progs)
    return dict(res, n=task.program.length - 2, program=task.program,
                found_program=found)
  return jax.vmap(one)(jnp.arange(n_targets))


def sweep(seed: int, n_targets: int, **settings) -> dict:
  """Host: per-task results ([n_targets] arrays, numpy), see module doc.

  Args:
    seed: the sweep's key seed.
    n_targets: tasks.
    **settings: fields of `recovery.RecoveryConfig` (hide, n_min, n_max,
      restarts, steps, ...); the others keep their defaults.
  """
  unknown = set(settings) - set(defaults())
  if unknown:
    raise ValueError(f"unknown settings {sorted(unknown)}; expected some of "
                     f"{sorted(defaults())}")
  if isinstance(n_targets, bool) or not isinstance(n_targets, int) or (
      n_targets < 1):
    raise ValueError(f"n_targets must be a positive int, got {n_targets!r}")
  config = recovery.RecoveryConfig(**settings)
  config.check()
  out = _sweep(jax.random.key(seed), n_targets=n_targets, config=config)
  return jax.tree_util.tree_map(np.asarray, out)


def success_by_length(res: dict) -> dict[int, tuple[float, int]]:
  """{n: (success rate, tasks)} from `sweep`'s results."""
  out = {}
  for n in np.unique(res["n"]):
    sel = res["n"] == n
    out[int(n)] = (float(res["solved"][sel].mean()), int(sel.sum()))
  return out
