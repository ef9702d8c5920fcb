"""Program recovery: gradient descent on instruction logits through the soft
machine, from input/output examples (the soft-execution demonstration).

A task is a hidden Tier 1 program (`gen_register_trace(n, k)`: n fill
instructions over k active registers, `PRINT` the last destination, `HALT`)
and examples of what it computes: an input register file `x` (the program is
run after `LOAD Ri x_i` for every register, so every example is a valid
Tiny-VM program run by the exact interpreter) with the final register file
and the printed value. Part of the program is hidden:

- `hide="ops"`: the opcode of every fill instruction (one of the 9 fill ops);
  its register operands and literal are shown. Unused operand slots and the
  literals of non-LOAD instructions hold random decoys, so the shown fields
  do not give the opcode away.
- `hide="srcs"`: both source registers of every fill instruction (over all 8
  registers); opcodes, destinations and literals are shown.

The fit: softmax logits for the hidden choices (several random restarts per
task), Adam on the squared asinh error of the final registers and printed
value over the training examples (the soft machine starts from the input
register file, `soft_run(init_regs=x)`, the same as running the LOAD
prefix), the machine's temperature decayed geometrically; the last part of
the run is straight-through (the argmax program forward, the softmax's
gradient back), so the fit commits to one program rather than a mean-field
mixture. The recovered program is the argmax; it succeeds when the exact
interpreter reproduces the final registers and output of every training
*and* held-out example (functional recovery: a different but equivalent
program counts, e.g. one that changes an instruction whose result is
overwritten unread, or swaps the sources of an ADD). The restart kept is
the one that fits the most training examples exactly, ties broken by the
lower soft loss.
"""

import dataclasses
import time
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from tinyvm_jax._src import generators
from tinyvm_jax._src import interpreter
from tinyvm_jax._src import isa
from tinyvm_jax._src import soft
from tinyvm_jax._src.types import Program

HIDE_MODES = ("ops", "srcs")
_N_FILL = len(isa.FILL_OPS)
_R = isa.NUM_REGS
# fold_in constants of a task key
_KEY_PROGRAM, _KEY_SIZE, _KEY_DECOY, _KEY_INPUTS = range(4)


@chex.dataclass(frozen=True, mappable_dataclass=False)
class Task:
  """One hidden program and its examples (`E` = train + test examples)."""
  program: Program   # [P] the hidden program, P = n_max + 2, with decoys
  inputs: jax.Array  # [E, R] int32 input register files
  final: jax.Array   # [E, R] int32 final register files (exact interpreter)
  output: jax.Array  # [E] int32 printed value


def with_inputs(program: Program, x: jax.Array) -> Program:
  """`LOAD Ri x_i` for i = 0..7, then `program` ([P] -> [P + 8])."""
  i = jnp.arange(_R, dtype=jnp.int32)
  none = jnp.full(_R, -1, jnp.int32)
  shift = lambda t: jnp.where(t >= 0, t + _R, -1)
  return Program(
      op=jnp.concatenate([jnp.full(_R, isa.LOAD, jnp.int32), program.op]),
      regs=jnp.concatenate([jnp.stack([i, 0 * i, 0 * i], -1), program.regs]),
      lit=jnp.concatenate([x.astype(jnp.int32), program.lit]),
      target=jnp.concatenate([none, shift(program.target)]),
      target_label=jnp.concatenate([none, program.target_label]),
      label=jnp.concatenate([none, program.label]),
      length=program.length + _R)


def run_examples(program: Program, inputs: jax.Array):
  """Exact final register files [E, R] and printed values [E] of `program`
  on each input register file of `inputs` [E, R]."""
  steps = program.max_len + _R

  def one(x):
    tr = interpreter.run(with_inputs(program, x), max_steps=steps)
    return tr.regs[tr.num_steps - 1], tr.output[0]
  return jax.vmap(one)(inputs)


def sample_task(key: jax.Array, *, n_min: int, n_max: int, k: int,
                n_examples: int, input_range: int) -> Task:
  """One task (the key is consumed): n uniform in [n_min, n_max], k active
  registers, inputs uniform in [-input_range, input_range]."""
  n = jax.random.randint(jax.random.fold_in(key, _KEY_SIZE), (), n_min,
                         n_max + 1)
  prog = generators.gen_register_trace(
      jax.random.fold_in(key, _KEY_PROGRAM), n, k, max_len=n_max + 2)
  # decoys: unused register slots get registers the program uses, non-LOAD
  # fill instructions get literals.
  kd = jax.random.fold_in(key, _KEY_DECOY)
  p = n_max + 2
  fill = jnp.arange(p) < n
  used = (jnp.arange(isa.MAX_REG_ARGS)[None, :]
          < jnp.asarray(isa.REG_ARGS)[prog.op][:, None])           # [P, 3]
  pool = jnp.where(used & fill[:, None], prog.regs, -1).reshape(-1)
  pick = jax.random.choice(jax.random.fold_in(kd, 0), pool, (p, 3),
                           p=(pool >= 0) / (pool >= 0).sum())
  regs = jnp.where(used | ~fill[:, None], prog.regs, pick)
  decoy_lit = jax.random.randint(jax.random.fold_in(kd, 1), (p,),
                                 isa.LITERAL_MIN, isa.LITERAL_MAX + 1)
  lit = jnp.where(fill & (prog.op != isa.LOAD), decoy_lit, prog.lit)
  prog = prog.replace(regs=regs, lit=lit)
  inputs = jax.random.randint(jax.random.fold_in(key, _KEY_INPUTS),
                              (n_examples, _R), -input_range, input_range + 1)
  final, output = run_examples(prog, inputs)
  return Task(program=prog, inputs=inputs, final=final, output=output)


def _hidden_rows(program: Program) -> jax.Array:
  return jnp.arange(program.max_len) < program.length - 2      # fill rows


def logits_shape(hide: str, max_len: int) -> tuple[int, ...]:
  """Shape of one task's hidden logits: [P, 9] opcodes or [P, 2, R]
  sources (rows past the fill block are ignored)."""
  if hide == "ops":
    return (max_len, _N_FILL)
  if hide == "srcs":
    return (max_len, 2, _R)
  raise ValueError(f"hide must be one of {HIDE_MODES}, got {hide!r}")


def candidate(program: Program, probs: jax.Array, *, hide: str
              ) -> soft.SoftProgram:
  """The soft program: `program` one-hot, the hidden fields from `probs`
  (distributions shaped `logits_shape`)."""
  exact = soft.soft_from_program(program, dtype=probs.dtype)
  rows = _hidden_rows(program)
  if hide == "ops":
    op = jnp.zeros_like(exact.op).at[:, :_N_FILL].set(probs)
    return exact.replace(op=jnp.where(rows[:, None], op, exact.op))
  srcs = jnp.where(rows[:, None, None], probs, exact.regs[:, 1:])
  return exact.replace(regs=exact.regs.at[:, 1:].set(srcs))


def decode(program: Program, logits: jax.Array, *, hide: str) -> Program:
  """The exact program of the argmax choices."""
  rows = _hidden_rows(program)
  choice = jnp.argmax(logits, -1).astype(jnp.int32)
  if hide == "ops":
    return program.replace(op=jnp.where(rows, choice, program.op))
  srcs = jnp.where(rows[:, None], choice, program.regs[:, 1:])
  return program.replace(regs=program.regs.at[:, 1:].set(srcs))


def live_rows(program: Program) -> jax.Array:
  """[P] bool: fill instructions whose result reaches the final register
  file (backward liveness with every register observed at the end)."""
  rows = _hidden_rows(program)
  n_src = jnp.asarray(isa.REG_ARGS)[program.op] - 1               # [P]

  def back(live, i):
    d = program.regs[i, 0]
    is_live = rows[i] & live[d]
    reads = (jnp.arange(_R)[:, None] == program.regs[i, 1:]).T  # [2, R]
    reads = (reads & (jnp.arange(2) < n_src[i])[:, None]).any(0)
    new = jnp.where(is_live, live.at[d].set(False) | reads, live)
    return new, is_live
  _, live = jax.lax.scan(back, jnp.ones(_R, bool),
                         jnp.arange(program.max_len), reverse=True)
  return live


def _symlog(x):
  return jnp.arcsinh(x)


def example_loss(probs, task: Task, temperature, *, hide: str, n_train: int):
  """Mean squared asinh error of final registers and output over the
  first `n_train` examples, for the hidden distributions `probs`."""
  sp = candidate(task.program, probs, hide=hide)
  steps = task.program.max_len
  run = lambda x: soft.soft_run(sp, max_steps=steps, temperature=temperature,
                                init_regs=x)
  tr = jax.vmap(run)(task.inputs[:n_train].astype(probs.dtype))
  err_regs = _symlog(tr.regs[:, -1]) - _symlog(task.final[:n_train])
  err_out = _symlog(tr.output[:, 0]) - _symlog(task.output[:n_train])
  return jnp.mean(err_regs ** 2) + jnp.mean(err_out ** 2)


def fit(task: Task, key: jax.Array, *, hide: str, restarts: int, steps: int,
        lr: float, t_start: float, t_end: float, n_train: int,
        init_scale: float, hard_frac: float):
  """Adam on `restarts` random logit initialisations (key consumed).

  The machine's temperature decays geometrically from `t_start` to `t_end`.
  The last `hard_frac` of the steps run the argmax program forward and take
  the softmax's gradient backward (straight-through), which makes the fit
  commit to one program instead of a mean-field mixture of several.

  Returns:
    (logits [restarts, ...], final soft loss [restarts]).
  """
  shape = logits_shape(hide, task.program.max_len)
  logits = init_scale * jax.random.normal(key, (restarts,) + shape)
  loss_fn = lambda p, t: example_loss(p, task, t, hide=hide, n_train=n_train)
  n_hard = int(round(hard_frac * steps))

  def objective(l, t, hard):
    probs = jax.nn.softmax(l, -1)
    one_hot = jax.nn.one_hot(jnp.argmax(l, -1), l.shape[-1], dtype=l.dtype)
    probs = jnp.where(hard, one_hot + probs - jax.lax.stop_gradient(probs),
                      probs)
    return loss_fn(probs, t)
  grad_fn = jax.vmap(jax.grad(objective), in_axes=(0, None, None))
  b1, b2, eps = 0.9, 0.999, 1e-8
  decay = (t_end / t_start) ** (1 / max(steps - 1, 1))

  def update(carry, i):
    x, m, v = carry
    t = t_start * decay ** i
    g = grad_fn(x, t, i >= steps - n_hard)
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    step = i + 1.0
    mhat, vhat = m / (1 - b1 ** step), v / (1 - b2 ** step)
    return (x - lr * mhat / (jnp.sqrt(vhat) + eps), m, v), None

  zeros = jnp.zeros_like(logits)
  (logits, _, _), _ = jax.lax.scan(update, (logits, zeros, zeros),
                                   jnp.arange(steps, dtype=logits.dtype))
  final_loss = jax.vmap(loss_fn, in_axes=(0, None))(
      jax.nn.softmax(logits, -1), t_end)
  return logits, final_loss


def _kept_restart(task: Task, logits: jax.Array, loss: jax.Array, *,
                  hide: str, n_train: int):
  """Every restart's argmax program, which examples each reproduces
  ([restarts, E] bool), and the index of the restart kept: the most training
  examples fitted, ties broken by the lower soft loss."""
  progs = jax.vmap(lambda l: decode(task.program, l, hide=hide))(logits)
  final, output = jax.vmap(lambda p: run_examples(p, task.inputs))(progs)
  ok = jnp.all(final == task.final, -1) & (output == task.output)  # [R, E]
  n_fit = ok[:, :n_train].sum(-1)
  return progs, ok, jnp.lexsort((loss, -n_fit))[0]


def evaluate(task: Task, logits: jax.Array, loss: jax.Array, *, hide: str,
             n_train: int) -> dict[str, jax.Array]:
  """Picks a restart and checks its argmax program exactly.

  Returns:
    `solved` (all examples reproduced), `train_fit` (all training
    examples), `same_program` (the hidden fields equal the target's; for
    sources, the ones the opcode reads),
    `same_live` (equal on the live instructions, see `live_rows`), `loss`
    of the kept restart, and the task's fill length `n`; all [] arrays.
  """
  progs, ok, best = _kept_restart(task, logits, loss, hide=hide,
                                  n_train=n_train)
  if hide == "ops":
    same = progs.op[best] == task.program.op
  else:
    n_src = jnp.asarray(isa.REG_ARGS)[task.program.op] - 1          # [P]
    used = jnp.arange(2)[None, :] < n_src[:, None]                 # [P, 2]
    same = jnp.all((progs.regs[best, :, 1:] == task.program.regs[:, 1:])
                   | ~used, -1)
  return {"solved": ok[best].all(), "train_fit": ok[best, :n_train].all(),
          "same_program": jnp.where(_hidden_rows(task.program), same,
                                    True).all(),
          "same_live": jnp.where(live_rows(task.program), same, True).all(),
          "loss": loss[best], "n": task.program.length - 2}


@dataclasses.dataclass(frozen=True)
class RecoveryConfig:
  """The demo's settings (hashable, so it can be a static jit argument)."""
  hide: str = "ops"         # "ops" or "srcs"
  n_min: int = 4            # fill length n, uniform in [n_min, n_max]
  n_max: int = 8
  k: int = 4                # active registers
  n_train: int = 8          # examples fitted
  n_test: int = 8           # held-out examples
  input_range: int = 16     # inputs uniform in [-input_range, input_range]
  restarts: int = 4         # random initialisations per task
  steps: int = 300          # Adam steps
  lr: float = 0.3
  t_start: float = 1.0      # machine temperature, decayed geometrically
  t_end: float = 0.05
  init_scale: float = 1.0   # std of the initial logits
  hard_frac: float = 0.6    # final fraction of steps run straight-through

  def check(self) -> None:
    """Raises ValueError on settings the demo cannot run."""
    logits_shape(self.hide, self.n_max + 2)
    if not 1 <= self.n_min <= self.n_max:
      raise ValueError(f"need 1 <= n_min <= n_max, got {self.n_min}, "
                       f"{self.n_max}")
    if not 1 <= self.k <= _R:
      raise ValueError(f"k must be in 1..{_R}, got {self.k}")
    if self.n_train < 1 or self.n_test < 0 or self.restarts < 1 or (
        self.steps < 1):
      raise ValueError("n_train, restarts and steps must be >= 1, n_test "
                       ">= 0")
    if not 0 <= self.input_range <= isa.LITERAL_MAX:
      raise ValueError(f"input_range must be in 0..{isa.LITERAL_MAX}, got "
                       f"{self.input_range}")
    if not (0 < self.t_end and 0 < self.t_start and 0 <= self.hard_frac <= 1):
      raise ValueError("temperatures must be > 0 and hard_frac in [0, 1]")


def recovery_experiment(key: jax.Array, n_targets: int,
                        config: RecoveryConfig = RecoveryConfig(), *,
                        programs: bool = False) -> dict[str, jax.Array]:
  """Samples `n_targets` tasks and fits each (key consumed).

  Returns:
    The per-task results of `evaluate`, as [n_targets] arrays; with
    `programs`, also the hidden `program` and the kept restart's argmax
    `found_program` ([n_targets, P] `Program`s). Jit this with `n_targets`,
    `config` and `programs` static.
  """
  c = config
  c.check()

  def one(i):
    task = sample_task(jax.random.fold_in(jax.random.fold_in(key, 0), i),
                       n_min=c.n_min, n_max=c.n_max, k=c.k,
                       n_examples=c.n_train + c.n_test,
                       input_range=c.input_range)
    logits, loss = fit(task, jax.random.fold_in(jax.random.fold_in(key, 1), i),
                       hide=c.hide, restarts=c.restarts, steps=c.steps,
                       lr=c.lr, t_start=c.t_start, t_end=c.t_end,
                       n_train=c.n_train, init_scale=c.init_scale,
                       hard_frac=c.hard_frac)
    res = evaluate(task, logits, loss, hide=c.hide, n_train=c.n_train)
    if programs:
      progs, _, best = _kept_restart(task, logits, loss, hide=c.hide,
                                     n_train=c.n_train)
      res.update(program=task.program, found_program=jax.tree_util.tree_map(
          lambda x: x[best], progs))
    return res
  return jax.vmap(one)(jnp.arange(n_targets))


def recovery_summary(seed: int = 0, n_targets: int = 100,
             config: RecoveryConfig = RecoveryConfig()) -> dict[str, Any]:
  """Host entry point: runs `recovery_experiment` jitted, returns a
  JSON-ready summary: the success rate, wall time (compile included, and
  reported apart), process CPU time, and the settings."""
  if not isinstance(n_targets, int) or n_targets < 1:
    raise ValueError(f"n_targets must be an int >= 1, got {n_targets!r}")
  config.check()
  fn = jax.jit(recovery_experiment, static_argnums=(1, 2))
  key = jax.random.key(seed)
  t0, c0 = time.perf_counter(), time.process_time()
  compiled = fn.lower(key, n_targets, config).compile()
  t1 = time.perf_counter()
  res = jax.tree_util.tree_map(np.asarray, compiled(key))
  t2, c2 = time.perf_counter(), time.process_time()
  by_n = {str(n): round(float(res["solved"][res["n"] == n].mean()), 4)
          for n in np.unique(res["n"])}
  return {
      "success_rate": float(res["solved"].mean()),
      "n_targets": n_targets,
      "wall_s": round(t2 - t0, 2),
      "compile_s": round(t1 - t0, 2),
      "run_s": round(t2 - t1, 2),
      "cpu_s": round(c2 - c0, 2),
      "train_fit_rate": float(res["train_fit"].mean()),
      "same_program_rate": float(res["same_program"].mean()),
      "same_live_rate": float(res["same_live"].mean()),
      "success_by_n": by_n,
      "median_loss": float(np.median(res["loss"])),
      "seed": seed, "device": jax.devices()[0].platform,
      **dataclasses.asdict(config),
  }
