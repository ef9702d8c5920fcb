"""Host checks and reshaping of row batches, shared by every writer and by
verify: cut a batch to its split's sizes (checking that every row fits),
widen the narrow storage dtypes for the serialisers, and the probe steps of
a batch."""

from typing import Sequence

import jax
import numpy as np

from tinyvm_jax._src import isa
from tinyvm_jax._src import keys as keys_lib
from tinyvm_jax._src.io import jsonl_chunks as ch
from tinyvm_jax._src import tiers
from tinyvm_jax._src.types import Program, Render, Rows, Tokens, Trace

_TRACE_SCALARS = ("num_output", "num_steps", "halted", "error")


class TrimError(ValueError):
  """A row that does not fit its split's sizes, or ended in error."""


def _check_fits(rows: Rows, shapes: tiers.Shapes, count: int) -> None:
  p, s = shapes.max_len, shapes.max_steps
  pr, tr = rows.program, rows.trace
  if (pr.length[:count] > p).any() or (tr.num_steps[:count] > s).any():
    raise TrimError(f"a row does not fit the split's sizes P={p}, S={s}")
  bad = np.flatnonzero(tr.error[:count])
  if bad.size:
    raise TrimError(f"row {int(bad[0])} of a batch ended in error "
                    f"{int(tr.error[bad[0]])}")


def trim(rows: Rows, shapes: tiers.Shapes, count: int, *,
         check: bool = True) -> Rows:
  """The first `count` rows of a host batch, cut to `shapes`' sizes.

  Raises:
    TrimError: (when `check`) if a row does not fit (a program, trace or
      render longer than its split's static size, or a run that ended in
      error).
  """
  if check:
    _check_fits(rows, shapes, count)
  p, s = shapes.max_len, shapes.max_steps
  pr, tr = rows.program, rows.trace
  program = Program(**{f: (getattr(pr, f)[:count] if f == "length" else
                           getattr(pr, f)[:count, :p])
                       for f in Program.__dataclass_fields__})
  trace = Trace(**{f: (getattr(tr, f)[:count] if f in _TRACE_SCALARS else
                       getattr(tr, f)[:count, :s])
                   for f in Trace.__dataclass_fields__})
  renders = {}
  for name, r in rows.renders.items():
    toks = []
    for tok, t in zip((r.input, r.target), shapes.token_lengths(name)):
      if check and (tok.length[:count] > t).any():
        raise TrimError(f"a {name} render is longer than {t} tokens")
      toks.append(Tokens(ids=tok.ids[:count, :t], length=tok.length[:count]))
    renders[name] = Render(input=toks[0], target=toks[1])
  return Rows(key_data=rows.key_data[:count], axes=rows.axes[:count],
              program=program, trace=trace, renders=renders)


def widen(rows: Rows) -> Rows:
  """Host rows with int32 integer leaves (after the emit's in-graph
  narrowing to storage dtypes; bool, uint32 key data stay): what the JSONL
  and Parquet serialisers compute with."""
  def up(x):
    x = np.asarray(x)
    return x if x.dtype in (np.bool_, np.uint32, np.int32) else x.astype(
        np.int32)
  return jax.tree.map(up, rows)


def probe_steps(renders: Sequence[str], rows: Rows) -> np.ndarray | None:
  """[B] the step a probe_query render asks about: meta.seed % steps (as
  `tiers.render_row` chooses it); None without that render."""
  if "probe_query" not in renders:
    return None
  return keys_lib.probe_steps(rows.key_data, rows.trace.num_steps)


def _np_tree(x):
  return type(x)(**{f: np.asarray(getattr(x, f))
                    for f in x.__dataclass_fields__})


def _to_numpy(rows: Rows) -> Rows:
  return Rows(key_data=np.asarray(rows.key_data), axes=np.asarray(rows.axes),
              program=_np_tree(rows.program), trace=_np_tree(rows.trace),
              renders={k: Render(input=_np_tree(r.input),
                                 target=_np_tree(r.target))
                       for k, r in rows.renders.items()})



def _check_shapes(rows: Rows, axis_names, render_names, probe_step):
  b = rows.key_data.shape[0] if rows.key_data.ndim else 0
  shapes = {"key_data": (rows.key_data.shape, (b, 2)),
            "axes": (rows.axes.shape, (b, len(axis_names)))}
  p, tr = rows.program, rows.trace
  n, s = p.op.shape[-1], tr.pc.shape[-1]
  for f in Program.__dataclass_fields__:
    want = {"regs": (b, n, 3), "length": (b,)}.get(f, (b, n))
    shapes[f"program.{f}"] = (getattr(p, f).shape, want)
  for f in Trace.__dataclass_fields__:
    want = {"regs": (b, s, isa.NUM_REGS),
            "stack": (b, s, tr.stack.shape[-1])}.get(f, (b, s))
    if f in ("num_output", "num_steps", "halted", "error"):
      want = (b,)
    shapes[f"trace.{f}"] = (getattr(tr, f).shape, want)
  if tuple(render_names) != tuple(dict.fromkeys(render_names)) or set(
      render_names) != set(rows.renders):
    raise ValueError(f"render_names {tuple(render_names)} must name each "
                     f"render of the rows {tuple(rows.renders)} once")
  for name in render_names:
    for part in ("input", "target"):
      tok = getattr(rows.renders[name], part)
      t = tok.ids.shape[-1]
      shapes[f"renders[{name!r}].{part}.ids"] = (tok.ids.shape, (b, t))
      shapes[f"renders[{name!r}].{part}.length"] = (tok.length.shape, (b,))
  if probe_step is not None:
    shapes["probe_step"] = (probe_step.shape, (b,))
  for what, (got, want) in shapes.items():
    if tuple(got) != tuple(want):
      raise ValueError(f"{what} has shape {tuple(got)}, expected "
                       f"{tuple(want)}")
  if (tr.error != 0).any():
    i = int(np.argmax(tr.error != 0))
    raise ValueError(f"row {i}: its trace ended with an error "
                     f"({isa.ERROR_MESSAGES.get(int(tr.error[i]), 'unknown')})"
                     f"; such a row cannot be written")
  ch.in_range("program length", p.length, True, 0, n)
  ch.in_range("number of steps", tr.num_steps, True, 0, s)
  ch.in_range("number of outputs", tr.num_output, True, 0, s)
  ch.in_range("stack depth", tr.depth, True, 0, tr.stack.shape[-1])
  for name in render_names:
    for part in ("input", "target"):
      tok = getattr(rows.renders[name], part)
      ch.in_range(f"renders[{name!r}].{part} length (longer than its "
                f"{tok.ids.shape[-1]} ids: the render overflowed)",
                tok.length, True, 0, tok.ids.shape[-1])
  if probe_step is not None:
    bad = (probe_step < 0) | (probe_step >= tr.num_steps)
    if bad.any():
      i = int(np.argmax(bad))
      raise ValueError(f"row {i}: probe_step {int(probe_step[i])} is not one "
                       f"of its {int(tr.num_steps[i])} steps")


def take_rows(rows: Rows, sel: slice | np.ndarray) -> Rows:
  """Rows `sel` (a slice, or row indices), padded dimensions cut to what
  they use, values checked to fit the format (padding replaced by safe
  values)."""
  index = np.arange(rows.key_data.shape[0])[sel]
  lo = index  # rows named in errors
  p, tr = rows.program, rows.trace
  n = max(1, int(p.length[sel].max()))
  s = max(1, int(tr.num_steps[sel].max()))
  o = max(1, int(tr.num_output[sel].max()))
  length = p.length[sel]
  valid = np.arange(n) < length[:, None]                        # [B, P]
  op = ch.in_range("opcode", p.op[sel, :n], valid, 0, isa.NUM_OPS - 1, lo)
  used = (np.arange(3) < isa.REG_ARGS[op][..., None]) & valid[..., None]
  prog = Program(
      op=op, length=length,
      regs=ch.in_range("register operand", p.regs[sel, :n], used, 0, 7, lo),
      lit=ch.in_range("literal", p.lit[sel, :n], valid, -ch.MAX_INDEX,
                    ch.MAX_INDEX, lo),
      target=p.target[sel, :n],
      target_label=ch.in_range("target label", p.target_label[sel, :n], valid,
                             -1, ch.MAX_INDEX, lo),
      label=ch.in_range("label", p.label[sel, :n], valid, -1, ch.MAX_INDEX, lo))
  num_steps = tr.num_steps[sel]
  steps = np.arange(s) < num_steps[:, None]                     # [B, S]
  depth = np.where(steps, tr.depth[sel, :s], 0)
  k = int(depth.max())
  in_stack = (np.arange(k) < depth[..., None])
  emit = tr.emit_mask[sel, :s] & steps
  outs = np.arange(o) < tr.num_output[sel, None]
  value = lambda name, x, ok: ch.in_range(name, x, ok, ch.VMIN, ch.VMAX, lo)
  trace = Trace(
      pc=ch.in_range("pc", tr.pc[sel, :s], steps, 0, ch.MAX_INDEX, lo),
      regs=value("register value", tr.regs[sel, :s], steps[..., None]),
      stack=value("stack value", tr.stack[sel, :s, :k], in_stack),
      depth=depth, emitted=value("printed value", tr.emitted[sel, :s], emit),
      emit_mask=emit,
      output=value("output value", tr.output[sel, :o], outs),
      num_output=tr.num_output[sel], num_steps=num_steps,
      halted=tr.halted[sel], error=tr.error[sel])
  renders = {}
  for name, r in rows.renders.items():
    toks = []
    for part, tok in (("input", r.input), ("target", r.target)):
      t = max(1, int(tok.length[sel].max()))
      ids = ch.in_range(f"renders[{name!r}].{part} token id", tok.ids[sel, :t],
                      np.arange(t) < tok.length[sel, None], 0, ch.V - 1, lo)
      toks.append(Tokens(ids=ids, length=tok.length[sel]))
    renders[name] = Render(input=toks[0], target=toks[1])
  return Rows(key_data=rows.key_data[sel], axes=rows.axes[sel],
              program=prog, trace=trace, renders=renders)


def checked_rows(rows: Rows, *, axis_names: tuple[str, ...],
                 render_names: tuple[str, ...], texts, probe_step):
  """Host (numpy) copies of a batch to write, and of `texts` (a dict) and
  `probe_step`, after checking what does not depend on the sub-batch.

  Raises:
    TypeError: when `rows` is not a `Rows`.
    ValueError: see `rows_to_jsonl`.
  """
  if not isinstance(rows, Rows):
    raise TypeError(f"rows must be a Rows batch, got {type(rows).__name__}")
  rows = _to_numpy(rows)
  if probe_step is not None:
    probe_step = np.asarray(probe_step)
  _check_shapes(rows, axis_names, render_names, probe_step)
  b = rows.key_data.shape[0]
  texts = dict(texts or {})
  for name, pair in texts.items():
    if name not in render_names:
      raise ValueError(f"texts given for {name!r}, not one of the renders "
                       f"{render_names}")
    if len(pair) != 2 or any(len(x) != b for x in pair):
      raise ValueError(f"texts[{name!r}] must be (inputs, targets), {b} "
                       f"strings each")
  negative = (rows.axes < 0).any(axis=1)
  if negative.any():
    i = int(np.argmax(negative))
    raise ValueError(f"row {i}: axes must be >= 0, got {rows.axes[i]}")
  return rows, texts, probe_step


