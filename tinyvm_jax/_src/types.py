"""Pytrees that cross module borders.

Dimensions: `B` batch, `P` program length (static maximum), `S` steps (static
budget), `R` registers (8), `K` stack capacity (16), `T` tokens.
"""

import chex
import jax


@chex.dataclass(frozen=True, mappable_dataclass=False)
class Program:
  """One program padded to a static maximum length `P`.

  Rows at index >= `length` are padding (opcode NOP, everything else zero or
  -1) and are never executed: running past `length` halts the machine.
  """
  op: jax.Array            # [P] int32, opcode 0..20
  regs: jax.Array          # [P, 3] int32, register operands in order (0 if unused)
  lit: jax.Array           # [P] int32, the literal of LOAD (0 otherwise)
  target: jax.Array        # [P] int32, instruction index jumped to; -1 none/undefined
  target_label: jax.Array  # [P] int32, label number named as target; -1 none
  label: jax.Array         # [P] int32, label number defined here; -1 none
  length: jax.Array        # [] int32, number of real instructions

  @property
  def max_len(self) -> int:
    return self.op.shape[-1]


@chex.dataclass(frozen=True, mappable_dataclass=False)
class Trace:
  """The execution of one program over a static budget of `S` steps.

  Step `t` is valid when `t < num_steps`; its record is the state *after*
  the instruction ran (spec section 3).
  """
  pc: jax.Array          # [S] int32, index of the instruction executed
  regs: jax.Array        # [S, R] int32, register file after the step
  stack: jax.Array       # [S, K] int32, stack after the step, bottom first, 0-padded
  depth: jax.Array       # [S] int32, stack depth after the step
  emitted: jax.Array     # [S] int32, printed value (0 where nothing printed)
  emit_mask: jax.Array   # [S] bool, whether the step printed
  output: jax.Array      # [S] int32, the output stream, 0-padded
  num_output: jax.Array  # [] int32
  num_steps: jax.Array   # [] int32, steps executed
  halted: jax.Array      # [] bool, HALT or ran past the end
  error: jax.Array       # [] int32, an ERR_* code of isa; 0 when fine

  @property
  def step_mask(self) -> jax.Array:
    """[S] bool: which steps were executed."""
    return jax.numpy.arange(self.pc.shape[-1]) < self.num_steps[..., None]


@chex.dataclass(frozen=True, mappable_dataclass=False)
class Tokens:
  """A rendered sequence: token ids padded with PAD to a static length `T`."""
  ids: jax.Array     # [T] int32, PAD (42) after `length`
  length: jax.Array  # [] int32, true length; > T means the render overflowed


@chex.dataclass(frozen=True, mappable_dataclass=False)
class Render:
  """One render of a row: model input and target."""
  input: Tokens
  target: Tokens


@chex.dataclass(frozen=True, mappable_dataclass=False)
class Rows:
  """A batch of dataset rows, all fixed-shape arrays (device or host).

  `A` is the number of the tier's axes, in the tier's axis order (a subset of
  n, k, b, l, use_stack, stack_frames).
  """
  key_data: jax.Array  # [B, 2] uint32, the row's threefry key; meta.seed = hi << 32 | lo
  axes: jax.Array      # [B, A] int32
  program: Program     # [B, P] ...
  trace: Trace         # [B, S] ...
  renders: dict        # render name -> Render with [B, T] ids and [B] lengths
