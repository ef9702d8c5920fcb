"""Static sizes of Tier 4 rows, declared once for the generator, the renders,
the writers and the checker.

A row holds `E` programs (its demos, then the target). A program *with
symbol* is a Tier 2 skeleton (`gen_branched` with n' = max(n - 2, 4),
k = max(2, n_args), b = 0, l = 0, one stack frame if use_stack) plus the
call, so its length is 9, plus max(2, n' // 2) + 2 with a stack frame
(`expected_length`); demos draw n in [DEMO_N_MIN, DEMO_N_MAX].
"""

import dataclasses

import jax.numpy as jnp

from tinyvm_jax._src import branched
from tinyvm_jax._src import checks
from tinyvm_jax._src import isa
from tinyvm_jax._src import render as render_lib

RENDER_NAMES = ("userop_direct", "userop_with_decomposition")
DEMO_N_MIN, DEMO_N_MAX = 8, 12     # demos: n = 8 + uniform[0, 4]
_LITERAL_DIGITS = 3                # generated literals are in [-127, 127]


@dataclasses.dataclass(frozen=True)
class UseropShapes:
  """Static sizes that every generated row of a (userop table, k_demos,
  n_max) fits."""
  max_len: int       # P, with-symbol programs
  base_len: int      # base programs
  max_steps: int     # S (straight-line programs: one step an instruction)
  input_lens: tuple  # ((render name, T_in), ...)
  target_len: int    # T_out (one printed value)

  def token_lengths(self, render: str) -> tuple[int, int]:
    """(T_in, T_out) of a render."""
    lens = dict(self.input_lens)
    if render not in lens:
      raise ValueError(f"unknown userop render {render!r}; expected one of "
                       f"{RENDER_NAMES}")
    return lens[render], self.target_len


def skeleton_n(n):
  """n' of the skeleton of a program with symbol of n (traced or int)."""
  return max(n - 2, 4) if checks.is_int(n) else jnp.maximum(n - 2, 4)


def userop_shapes(table_rows: int, *, k_demos: int, n_max: int
                  ) -> UseropShapes:
  """Sizes for rows with `k_demos` demos and n_target <= n_max, of any
  userop whose table has `table_rows` rows (`UserOp.table`)."""
  checks.check_int("table_rows", table_rows, lo=1)
  checks.check_int("k_demos", k_demos, lo=0)
  checks.check_int("n_max", n_max, lo=0)
  n_skel = skeleton_n(max(int(n_max), DEMO_N_MAX))
  p = branched.max_program_len(n_skel, isa.MAX_REG_ARGS, 0, 0, 1) + 1  # call
  base = p + table_rows - 1
  e = k_demos + 1
  line = render_lib.instruction_width(0, _LITERAL_DIGITS)    # `LOAD R -127 NEWLINE`
  direct = 2 + e * p * line + k_demos * render_lib.output_width()
  dec = 1 + table_rows * line                       # DECOMP + instructions
  return UseropShapes(
      max_len=p, base_len=base, max_steps=base,
      input_lens=(("userop_direct", direct),
                  ("userop_with_decomposition", direct + k_demos * dec)),
      target_len=2 + render_lib.output_width())


def expected_length(n: int, use_stack: bool) -> int:
  """Length of a generated with-symbol program: 9 rows, plus a stack frame
  of max(2, n' // 2) fill rows and PUSH/POP when use_stack."""
  return 9 + (2 + max(2, skeleton_n(n) // 2) if use_stack else 0)
