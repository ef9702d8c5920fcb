"""Renders: programs and traces as token ids (spec sections 5-7), in JAX.

Every render is a per-example function of one `Program` ([P] arrays) and its
`Trace` ([S] arrays); `vmap` it for batches and `jit` it at the entry point,
passing the static token lengths as Python ints.

A render is built from token windows (`render_windows`): each instruction,
each step's register file line and each output value compacted in a short
window, the windows added into place in a PAD-filled array of static length
`T`. The true count is returned as `length`; `length > T` means the render
did not fit (the tokens past `T` are dropped) and is for the host to check.
The window widths come from a static promise on the programs
(`label_digits`, `literal_digits`, as in `max_render_lengths`); a program
that breaks it gets an overflowing length for the host to reject.
`literal_digits == 0` (no literal fits) promises nothing: the widest
windows, unchecked. The tests compare every render with an independent
slot layout (tests/render_slots.py).
"""

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from tinyvm_jax._src import checks
from tinyvm_jax._src import isa
from tinyvm_jax._src.render_windows import place_groups
from tinyvm_jax._src.render_windows import instruction_width
from tinyvm_jax._src.render_windows import instruction_windows
from tinyvm_jax._src.render_windows import output_width
from tinyvm_jax._src.render_windows import output_windows
from tinyvm_jax._src.render_windows import place_windows
from tinyvm_jax._src.render_windows import register_line_width
from tinyvm_jax._src.render_windows import register_windows
from tinyvm_jax._src.types import Program, Render, Tokens, Trace
# for userop, which builds its few-shot rows with them (for now)
from tinyvm_jax._src.render_windows import compact
from tinyvm_jax._src.render_windows import instruction_slots
from tinyvm_jax._src.render_windows import output_slots

COT_MODES = ("full", "modified")


# ------------------------------------------------------------- checks
def _check_size(name: str, value) -> None:
  if not checks.is_int(value) or (
      value < 1):
    raise ValueError(f"{name} must be a positive Python int (static), "
                     f"got {value!r}")


def _check_digits(**digits) -> None:
  for k, v in digits.items():
    hi = isa.MAX_LABEL_DIGITS if k == "label_digits" else (
        isa.MAX_LITERAL_DIGITS if k == "literal_digits" else
        isa.MAX_VALUE_DIGITS)
    if not checks.is_int(v) or not 0 <= v <= hi:
      raise ValueError(f"{k} must be an int in [0, {hi}], got {v!r}")


def _check_unbatched(x, cls, lead: str, wide: str, width: int) -> None:
  """One unbatched `cls` (Program or Trace): `lead` of rank 1, `wide` of
  shape [len(lead), width]."""
  name = cls.__name__
  if not isinstance(x, cls):
    raise ValueError(f"expected a {name}, got {type(x).__name__}")
  first = getattr(x, lead)
  if jnp.ndim(first) != 1:
    raise ValueError(
        f"expected one unbatched {name} ({lead} of rank 1), got {lead} of "
        f"shape {jnp.shape(first)}; vmap the render for batches")
  want = (first.shape[0], width)
  if jnp.shape(getattr(x, wide)) != want:
    raise ValueError(f"{name.lower()}.{wide} must have shape {want}, got "
                     f"{jnp.shape(getattr(x, wide))}")


def _check_program(program: Program) -> None:
  _check_unbatched(program, Program, "op", "regs", isa.MAX_REG_ARGS)


def _check_trace(trace: Trace) -> None:
  _check_unbatched(trace, Trace, "pc", "regs", isa.NUM_REGS)


def _check_render(program: Program, trace: Trace, max_input_len,
                  max_target_len, label_digits, literal_digits) -> None:
  _check_program(program)
  _check_trace(trace)
  _check_size("max_input_len", max_input_len)
  _check_size("max_target_len", max_target_len)
  _check_digits(label_digits=label_digits, literal_digits=literal_digits)


# ------------------------------------------------------------- renders
def _windows(program: Program, label_digits: int, literal_digits: int
             ) -> tuple[jax.Array, jax.Array, jax.Array, bool]:
  """`instruction_windows` under the promise, and whether it is checked.

  `literal_digits == 0` (no literal fits) promises nothing: the widest
  windows, unchecked, exact for every program within the encoding's
  capacities.
  """
  checked = literal_digits > 0
  if not checked:
    label_digits, literal_digits = (isa.MAX_LABEL_DIGITS,
                                    isa.MAX_LITERAL_DIGITS)
  win, count, ok = instruction_windows(program, label_digits=label_digits,
                                       literal_digits=literal_digits)
  return win, count, ok, checked


def _overflow(tokens: Tokens, ok: jax.Array, size: int, checked: bool
              ) -> Tokens:
  """`tokens` with length `size + 1` (an overflow the host rejects) unless
  `ok` or not `checked`."""
  if not checked:
    return tokens
  return tokens.replace(length=jnp.where(ok, tokens.length, size + 1))


def encode_program(program: Program, *, max_tokens: int) -> Tokens:
  """Token ids of a whole program, no BOS/EOS (spec section 6).

  Args:
    program: one `Program` ([P] arrays).
    max_tokens: static length `T` of the result.

  Returns:
    `Tokens` ([T] ids); equal to `program.encode` on the host.
  """
  _check_program(program)
  _check_size("max_tokens", max_tokens)
  win, count, _, _ = _windows(program, 0, 0)    # no promise
  return place_windows(win, count, max_tokens, bos=False, eos=False)


def direct_target(trace: Trace, size: int) -> Tokens:
  """`BOS + (digits(v) NEWLINE for each output v) + EOS`."""
  # output k starts at or after 1 + 2k: only the first T_out // 2 show
  shown = min(trace.output.shape[0], size // 2)
  owin, ocount, total = output_windows(trace, shown)
  target = place_windows(owin, ocount, size)
  return target.replace(length=2 + total)


def render_direct(program: Program, trace: Trace, *, max_input_len: int,
                  max_target_len: int, label_digits: int = isa.MAX_LABEL_DIGITS,
                  literal_digits: int = isa.MAX_LITERAL_DIGITS) -> Render:
  """The `direct` render: the program in, its output values out.

  Args:
    program: one `Program` ([P] arrays).
    trace: its `Trace` ([S] arrays).
    max_input_len, max_target_len: static lengths of input and target.
    label_digits, literal_digits: static promise on the program (as in
      `max_render_lengths`): the instructions are built in windows of
      `instruction_width(label_digits, literal_digits)` tokens (no label
      slots when `label_digits == 0`: Tier 0/1). A program that breaks the
      promise (a label or literal of more digits, a register operand outside
      R0..R7) gets input length `max_input_len + 1`, an overflow the host
      rejects; `literal_digits == 0` promises nothing.

  Returns:
    `Render`: input `BOS + encode(program) + EOS`; target
    `BOS + (digits(v) NEWLINE for each output v) + EOS`.
  """
  _check_render(program, trace, max_input_len, max_target_len, label_digits,
                literal_digits)
  win, count, ok, checked = _windows(program, label_digits, literal_digits)
  inp = _overflow(place_windows(win, count, max_input_len), ok,
                  max_input_len, checked)
  return Render(input=inp, target=direct_target(trace, max_target_len))


def _shown_registers(trace: Trace, mode: str) -> jax.Array:
  """[S, R] bool: the registers a cot step writes out: all ("full"), or
  those whose value differs from the step before ("modified"; the first
  step compares with all zeros)."""
  if mode == "full":
    return jnp.ones(trace.regs.shape, bool)
  prev = jnp.concatenate(
      [jnp.zeros((1, isa.NUM_REGS), trace.regs.dtype), trace.regs[:-1]])
  return trace.regs != prev


def _cot_target(trace: Trace, win: jax.Array, count: jax.Array, mode: str,
                size: int) -> tuple[Tokens, jax.Array]:
  """The cot target from the instruction windows [P, W] and counts [P]:
  per step the executed instruction's window and its register file line,
  then the output values; and whether every shown value is in range."""
  s = trace.pc.shape[0]
  live = jnp.arange(s) < trace.num_steps                            # [S]
  pc = jnp.clip(trace.pc, 0, win.shape[0] - 1)
  ins = jnp.where(live[:, None], win[pc], 0)                        # [S, W]
  ins_n = jnp.where(live, count[pc], 0)
  show = _shown_registers(trace, mode)                              # [S, R]
  reg, reg_n, reg_ok = register_windows(trace.regs, show)           # [S, 57]
  reg = jnp.where(live[:, None], reg, 0)
  reg_n = jnp.where(live, reg_n, 0)
  owin, out_n, _ = output_windows(trace, s)                         # [S, 6]
  line_end = jnp.cumsum(ins_n + reg_n, dtype=jnp.int32)
  line_start = 1 + line_end - ins_n - reg_n
  steps = line_end[-1]
  out_end = jnp.cumsum(out_n, dtype=jnp.int32)
  target = place_groups([(ins, line_start), (reg, line_start + ins_n),
                         (owin, 1 + steps + out_end - out_n)],
                        steps + out_end[-1], size, bos=True, eos=True)
  return target, jnp.all(reg_ok | ~live)


def render_cot(program: Program, trace: Trace, *, mode: str,
               max_input_len: int, max_target_len: int,
               label_digits: int = isa.MAX_LABEL_DIGITS,
               literal_digits: int = isa.MAX_LITERAL_DIGITS) -> Render:
  """The chain-of-thought render (spec section 7).

  Args:
    program: one `Program` ([P] arrays).
    trace: its `Trace` ([S] arrays).
    mode: "full" (every register each step) or "modified" (only registers
      whose value differs from the previous step, the first step comparing
      with all zeros).
    max_input_len, max_target_len: static lengths of input and target.
    label_digits, literal_digits: static promise on the program, as in
      `render_direct`; a program breaking it, or a trace with a register
      value outside [VALUE_MIN, VALUE_MAX], gets lengths `max_input_len + 1`
      and `max_target_len + 1`, overflows the host rejects.

  Returns:
    `Render`: input as in `render_direct`; target `BOS`, then per executed
    step the executed instruction's encoding, the register file after it and
    NEWLINE; then the output values as in `render_direct`; then `EOS`.
  """
  if mode not in COT_MODES:
    raise ValueError(f"cot mode must be one of {COT_MODES}, got {mode!r}")
  _check_render(program, trace, max_input_len, max_target_len, label_digits,
                literal_digits)
  win, count, ok, checked = _windows(program, label_digits, literal_digits)
  inp = _overflow(place_windows(win, count, max_input_len), ok,
                  max_input_len, checked)
  target, steps_ok = _cot_target(trace, win, count, mode, max_target_len)
  return Render(input=inp, target=_overflow(target, ok & steps_ok,
                                            max_target_len, checked))


def render_probe_query(program: Program, trace: Trace, step: jax.Array, *,
                       max_input_len: int, max_target_len: int,
                       label_digits: int = isa.MAX_LABEL_DIGITS,
                       literal_digits: int = isa.MAX_LITERAL_DIGITS
                       ) -> Render:
  """The `probe_query` render at step `step` (spec section 7).

  Args:
    program: one `Program` ([P] arrays).
    trace: its `Trace` ([S] arrays).
    step: [] int32 (traced), the step t probed; 0 <= t < trace.num_steps.
    max_input_len, max_target_len: static lengths of input and target.
    label_digits, literal_digits: static promise on the program, as in
      `render_cot` (a break gives lengths `max_*_len + 1`).

  Returns:
    `Render`: input `BOS + encode(instructions 0..pc_t) + ? + EOS`; target
    `BOS + R0=.. R7=.. (register file after step t) + NEWLINE + EOS`. When
    `step` is outside [0, num_steps) both sequences are empty: all PAD with
    `length` 0 (a valid render is never empty), for the host to check.
  """
  _check_render(program, trace, max_input_len, max_target_len, label_digits,
                literal_digits)
  if jnp.ndim(step) != 0:
    raise ValueError(f"step must be a scalar, got shape {jnp.shape(step)}; "
                     f"vmap the render for batches")
  in_range = (step >= 0) & (step < trace.num_steps)
  t = jnp.clip(step, 0, trace.pc.shape[0] - 1)
  keep = (jnp.arange(program.op.shape[0]) <= trace.pc[t]) & in_range
  win, count, ok, checked = _windows(program, label_digits, literal_digits)
  inp = place_windows(win, jnp.where(keep, count, 0), max_input_len,
                      eos=False)
  i = jnp.arange(max_input_len)
  ids = jnp.where(i == inp.length, isa.TOK_QUERY, jnp.where(
      i == inp.length + 1, isa.TOK_EOS, inp.ids))
  inp = _overflow(Tokens(ids=ids, length=inp.length + 2), ok, max_input_len,
                  checked)
  reg, reg_n, reg_ok = register_windows(trace.regs[t],
                                        jnp.ones(isa.NUM_REGS, bool))
  target = _overflow(place_windows(reg[None], reg_n[None], max_target_len),
                     reg_ok, max_target_len, checked)
  return _empty_unless(in_range, Render(input=inp, target=target))


def _empty_unless(ok: jax.Array, render: Render) -> Render:
  """Both sequences all PAD with length 0 unless `ok`."""
  def empty(x: Tokens) -> Tokens:
    return Tokens(ids=jnp.where(ok, x.ids, isa.TOK_PAD),
                  length=jnp.where(ok, x.length, 0))
  return Render(input=empty(render.input), target=empty(render.target))


# ------------------------------------------------------------- by name
RENDERS: dict[str, Callable[..., Render]] = {
    "direct": render_direct,
    "cot": functools.partial(render_cot, mode="full"),
    "cot_modified": functools.partial(render_cot, mode="modified"),
    "probe_query": render_probe_query,
}
RENDER_NAMES = tuple(RENDERS)


def render(name: str, program: Program, trace: Trace, *, max_input_len: int,
           max_target_len: int, step: jax.Array | None = None,
           label_digits: int = isa.MAX_LABEL_DIGITS,
           literal_digits: int = isa.MAX_LITERAL_DIGITS) -> Render:
  """Renders by name: 'direct', 'cot' (mode full), 'cot_modified' or
  'probe_query' (which needs `step`, a [] int32; the others take none).
  `label_digits`, `literal_digits`: the static promise on the program
  (see `render_direct`)."""
  if name not in RENDERS:
    raise ValueError(f"unknown render {name!r}; expected one of {RENDER_NAMES}")
  sizes = dict(max_input_len=max_input_len, max_target_len=max_target_len)
  if name == "probe_query":
    if step is None:
      raise ValueError("render 'probe_query' needs a step")
    return render_probe_query(program, trace, step, label_digits=label_digits,
                              literal_digits=literal_digits, **sizes)
  if step is not None:
    raise ValueError(f"render {name!r} takes no step")
  return RENDERS[name](program, trace, label_digits=label_digits,
                       literal_digits=literal_digits, **sizes)


def max_render_lengths(name: str, *, max_len: int, max_steps: int,
                       label_digits: int = isa.MAX_LABEL_DIGITS,
                       literal_digits: int = isa.MAX_LITERAL_DIGITS,
                       value_digits: int = isa.MAX_VALUE_DIGITS,
                       max_outputs: int | None = None,
                       ) -> tuple[int, int]:
  """Static (input, target) token lengths that no render can exceed.

  Args:
    name: a render name of `RENDERS`.
    max_len: the programs' static length `P`.
    max_steps: the traces' static step budget `S`.
    label_digits: the most digits of a label number; 0 when the programs
      define and name no labels (Tier 0/1).
    literal_digits: the most digits of a LOAD literal (3 for generated
      programs, whose literals are in [-127, 127]).
    value_digits: the most digits of a register value (4: [-1024, 1023]).
    max_outputs: the most values a trace prints; defaults to `max_steps`
      (Tier 0-2 programs print once).

  Returns:
    (max_input_len, max_target_len): safe for any program within the bounds
    (an instruction may both define a label and name a target).
  """
  if name not in RENDERS:
    raise ValueError(f"unknown render {name!r}; expected one of {RENDER_NAMES}")
  _check_size("max_len", max_len)
  _check_size("max_steps", max_steps)
  outputs = max_steps if max_outputs is None else max_outputs
  if not checks.is_int(outputs) or not (
      0 <= outputs <= max_steps):
    raise ValueError(f"max_outputs must be an int in [0, max_steps], got "
                     f"{max_outputs!r}")
  _check_digits(label_digits=label_digits, literal_digits=literal_digits,
                value_digits=value_digits)
  instruction = instruction_width(label_digits, literal_digits)
  line = register_line_width(value_digits)
  output = output_width(value_digits)
  program = max_len * instruction
  if name == "direct":
    return 2 + program, 2 + outputs * output
  if name in ("cot", "cot_modified"):
    return (2 + program,
            2 + max_steps * (instruction + line) + outputs * output)
  return 3 + program, 2 + line  # probe_query
