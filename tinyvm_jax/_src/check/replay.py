"""Replay verification: rebuild each row's program, run and render it, and
compare with what the row stores (trace, every render's ids and text, the
probe, and optionally the program rebuilt from `meta.seed`)."""

import dataclasses
import functools
import itertools
from typing import Any, Callable, Iterable, Iterator, Sequence

import jax
import numpy as np

from tinyvm_jax._src import batching
from tinyvm_jax._src import interpreter
from tinyvm_jax._src import isa
from tinyvm_jax._src import program as program_lib
from tinyvm_jax._src import render as render_lib
from tinyvm_jax._src import text as text_lib

_REQUIRED = ("meta", "program", "trace", "renders")


@dataclasses.dataclass(frozen=True)
class Mismatch:
  """One disagreement: `line` is the 1-based row number in its source."""
  line: int
  field: str
  detail: str


# rebuild(rows) -> for each row dict, its program rebuilt from its meta (an
# instruction list), or the ValueError saying why it cannot be.
Rebuild = Callable[[Sequence[dict]], Sequence[list | ValueError]]


@functools.partial(jax.jit, static_argnames=("names", "max_steps", "sizes"))
def _run_and_render(programs, steps, *, names, max_steps, sizes):
  def one(program, step):
    trace = interpreter.run(program, max_steps=max_steps)
    out = {}
    for name, (t_in, t_out) in zip(names, sizes):
      out[name] = render_lib.render(
          name, program, trace, max_input_len=t_in, max_target_len=t_out,
          step=step if name == "probe_query" else None)
    return trace, out
  return jax.vmap(one)(programs, steps)


def first_diff(got: list, want: Any) -> str:
  """Where the list `got` first differs from the stored `want`."""
  if not isinstance(want, list):
    return f"stored {type(want).__name__}, not a list"
  for i, (g, w) in enumerate(zip(got, want)):
    if g != w:
      return f"first difference at index {i}: got {g!r}, stored {w!r}"
  return f"length: got {len(got)}, stored {len(want)}"


def compare_trace(line: int, got: dict, want: Any, field: str = "trace"
                  ) -> Iterator[Mismatch]:
  """Mismatches of a replayed trace (`trace_to_json`) against the stored
  one, named `field`.<key>."""
  if not isinstance(want, dict):
    yield Mismatch(line, field, "not an object")
    return
  for key in ("steps", "output", "halted"):
    if got[key] != want.get(key):
      detail = (first_diff(got[key], want[key])
                if isinstance(want.get(key), list) else
                f"got {got[key]!r}, stored {want.get(key)!r}")
      yield Mismatch(line, f"{field}.{key}", detail)


def _parse(batch: list[tuple[int, dict]], parsed: list) -> Iterator[Mismatch]:
  """Appends (line, row, Program) of each well-formed row to `parsed`;
  yields the others' mismatches."""
  for line, row in batch:
    missing = [k for k in _REQUIRED if k not in row]
    if missing:
      yield Mismatch(line, "row", f"missing keys {missing}")
      continue
    try:
      prog = program_lib.from_json(row["program"])
    except program_lib.ProgramError as e:
      yield Mismatch(line, "program", str(e))
      continue
    parsed.append((line, row, prog))


def _replayed(parsed: list) -> tuple[Any, dict]:
  """(traces, {render: Render}) of the rows' programs, run and rendered in
  one jitted call at sizes rounded up from the stored rows' (few
  compilations)."""
  max_len = batching.round_up(max(int(p.length) for _, _, p in parsed), 64)
  traces = [r["trace"] for _, r, _ in parsed if isinstance(r["trace"], dict)]
  stored_steps = max((len(t.get("steps", [])) for t in traces), default=0)
  max_steps = batching.round_up(stored_steps + 1, 128)
  names = sorted({n for _, r, _ in parsed for n in r["renders"]
                  if n in render_lib.RENDERS})
  sizes = []
  for name in names:
    lens = [(len(r["renders"][name].get("input_ids", [])),
             len(r["renders"][name].get("target_ids", [])))
            for _, r, _ in parsed if name in r["renders"]]
    sizes.append((batching.round_up(max(a for a, _ in lens) + 1, 256),
                  batching.round_up(max(b for _, b in lens) + 1, 64)))
  padded = batching.round_up(len(parsed), 64)
  progs = program_lib.stack([program_lib.pad_to(p, max_len)
                             for _, _, p in parsed])
  steps = np.zeros(padded, np.int32)
  for i, (_, r, _) in enumerate(parsed):
    steps[i] = (r.get("probe") or {}).get("step_t", 0)
  return jax.device_get(_run_and_render(
      batching.pad_rows(progs, padded), steps, names=tuple(names),
      max_steps=max_steps, sizes=tuple(sizes)))


def _compare_renders(line: int, row: dict, renders: dict, i: int
                     ) -> Iterator[Mismatch]:
  for name, stored in row["renders"].items():
    if name not in render_lib.RENDERS:
      yield Mismatch(line, f"renders.{name}", "unknown render")
      continue
    r = renders[name]
    for part, tokens in (("input", r.input), ("target", r.target)):
      n = int(tokens.length[i])
      ids = tokens.ids[i, :n].tolist()
      if ids != stored.get(f"{part}_ids"):
        yield Mismatch(line, f"renders.{name}.{part}_ids",
                       first_diff(ids, stored.get(f"{part}_ids") or []))
      text = text_lib.detokenize(ids)
      if text != stored.get(f"{part}_text"):
        yield Mismatch(line, f"renders.{name}.{part}_text",
                       f"got {text[:60]!r}..., stored "
                       f"{str(stored.get(f'{part}_text'))[:60]!r}...")


def _check_batch(batch: list[tuple[int, dict]], rebuild: Rebuild | None
                 ) -> Iterator[Mismatch]:
  parsed = []
  yield from _parse(batch, parsed)
  if not parsed:
    return
  traces, renders = _replayed(parsed)
  rebuilt = (rebuild([row for _, row, _ in parsed]) if rebuild is not None
             else None)
  for i, (line, row, _) in enumerate(parsed):
    trace = jax.tree_util.tree_map(lambda x, i=i: x[i], traces)
    got = interpreter.trace_to_json(trace)
    yield from compare_trace(line, got, row["trace"])
    if int(trace.error):
      yield Mismatch(line, "trace", "run ended in error: "
                     f"{isa.ERROR_MESSAGES[int(trace.error)]}")
    yield from _compare_renders(line, row, renders, i)
    if "probe" in row:
      yield from _check_probe(line, row, got)
    if rebuilt is not None:
      yield from _check_rebuilt(line, row, rebuilt[i])


def _check_rebuilt(line: int, row: dict, rebuilt: list | ValueError
                   ) -> Iterator[Mismatch]:
  if isinstance(rebuilt, ValueError):
    yield Mismatch(line, "meta", f"cannot rebuild: {rebuilt}")
  elif rebuilt != row["program"]:
    yield Mismatch(line, "program", "differs from the program rebuilt "
                   "from meta.seed and meta.axes: "
                   + first_diff(rebuilt, row["program"]))


def _check_probe(line: int, row: dict, trace: dict) -> Iterator[Mismatch]:
  probe = row["probe"]
  steps = trace["steps"]
  t = probe.get("step_t")
  want = {"step_t": t,
          "executed_pc": steps[t]["pc"] if isinstance(t, int) and
          0 <= t < len(steps) else None,
          "probe_targets": [s["regs"] for s in steps]}
  for key, value in want.items():
    if probe.get(key) != value:
      yield Mismatch(line, f"probe.{key}", f"got {str(value)[:60]}, stored "
                     f"{str(probe.get(key))[:60]}")


def check_rows(rows: Iterable[tuple[int, dict[str, Any]]], *,
               rebuild: Rebuild | None = None,
               batch_size: int = 256) -> Iterator[Mismatch]:
  """Replays rows and yields every mismatch.

  Args:
    rows: (line number, row dict) pairs, e.g. from a JSONL file.
    rebuild: optional function from a batch of row dicts to, for each, the
      program (instruction list) rebuilt from its `meta.seed` and
      `meta.axes`, or a ValueError saying why it cannot be
      (`rebuild.Rebuilder`).
    batch_size: rows run together in one jitted call.

  Yields:
    `Mismatch` records, in row order.
  """
  it = iter(rows)
  while batch := list(itertools.islice(it, batch_size)):
    yield from _check_batch(batch, rebuild)
