"""Host checks and reshaping of row batches, shared by every writer and by
verify: cut a batch to its split's sizes (checking that every row fits),
widen the narrow storage dtypes for the serialisers, and the probe steps of
a batch."""

from typing import Sequence

import jax
import numpy as np

from tinyvm_jax._src import keys as keys_lib
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
