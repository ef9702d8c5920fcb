"""Replay and rebuild checks of Tier 4 rows (`check_userop_rows`), on the
check layer's `Mismatch` records; `check_userop_zarr` for zarr stores.

For each demo and the target: `substitute(with_symbol)` must equal the
stored base, running the base must give the stored trace, both programs
must be valid (the with-symbol one with the userop's `writes`), and the
program must have a generated row's shape (lengths from n_target and
use_stack, one call before `PRINT dest; HALT`); every stored render is
rebuilt from the with-symbol programs and base traces and compared, ids and
text. With `rebuild`, the programs are regenerated from meta.seed, and for
dataset rows (meta.split given) the axes too: a train row's userop,
k_demos, n_target and use_stack must be those its seed draws, an eval row's
those of its bucket.
"""

import functools
import itertools
import json
from typing import Any, Callable, Iterable, Iterator, Mapping

import jax
import numpy as np

from tinyvm_jax._src import checks
from tinyvm_jax._src import interpreter
from tinyvm_jax._src import isa
from tinyvm_jax._src import program as program_lib
from tinyvm_jax._src import text as text_lib
from tinyvm_jax._src import tiers as tiers_lib
from tinyvm_jax._src import validate as validate_lib
from tinyvm_jax._src.check.replay import Mismatch, compare_trace
from tinyvm_jax._src.check.replay import first_diff
from tinyvm_jax._src.batching import round_up
from tinyvm_jax._src.program import ProgramError
from tinyvm_jax._src.userop import binding
from tinyvm_jax._src.userop import formats
from tinyvm_jax._src.userop import generate as generate_lib
from tinyvm_jax._src.userop import renders as renders_lib
from tinyvm_jax._src.userop import shapes as shapes_lib
from tinyvm_jax._src.userop import tier as tier_lib
from tinyvm_jax._src.userop.substitution import substitute_arrays


@functools.partial(jax.jit, static_argnames=("base_len", "max_steps",
                                             "sizes"))
def _replay(with_symbol, tables, *, base_len, max_steps, sizes):
  def one(ws, dec):
    base = jax.vmap(lambda p: substitute_arrays(p, dec, base_len))(ws)
    trace = jax.vmap(lambda p: interpreter.run(p, max_steps=max_steps))(base)
    out = {name: renders_lib.render_userop(
        name, ws, trace, dec, max_input_len=t_in, max_target_len=t_out)
           for name, t_in, t_out in sizes}
    return base, trace, out
  return jax.vmap(one)(with_symbol, tables)


def _len(x) -> int:
  return len(x) if isinstance(x, list) else 0


def _parse(line: int, row: Any):
  """(userop, [(where, part, with-symbol Program)]) or a list of
  mismatches."""
  bad = lambda field, detail: [Mismatch(line, field, detail)]
  if not isinstance(row, Mapping):
    return bad("row", "not an object")
  missing = [k for k in ("meta", "demos", "target", "renders") if k not in row]
  if missing:
    return bad("row", f"missing keys {missing}")
  meta = row["meta"]
  if not isinstance(meta, Mapping):
    return bad("meta", "not an object")
  if not isinstance(row["renders"], Mapping) or not all(
      isinstance(r, Mapping) for r in row["renders"].values()):
    return bad("renders", "not an object of render objects")
  if not isinstance(meta.get("renders"), list):
    return bad("meta.renders", f"not a list: {meta.get('renders')!r}")
  if meta.get("tier") != formats.TIER:
    return bad("meta.tier", f"expected {formats.TIER!r}, got "
               f"{meta.get('tier')!r}")
  try:
    userop = _userop(meta.get("opcode_spec"))
  except ValueError as e:
    return bad("meta.opcode_spec", str(e))
  demos = row["demos"]
  if not isinstance(demos, list) or meta.get("k_demos") != len(demos):
    return bad("meta.k_demos", f"{meta.get('k_demos')!r} but "
               f"{len(demos) if isinstance(demos, list) else 'no'} demos")
  out = []
  for where, part in [(f"demos[{j}]", d) for j, d in enumerate(demos)] + [
      ("target", row["target"])]:
    if not isinstance(part, Mapping) or not {"with_symbol", "base",
                                             "trace"} <= set(part):
      return bad(where, "needs with_symbol, base and trace")
    if not isinstance(part["trace"], Mapping):
      return bad(f"{where}.trace", "not an object")
    try:
      out.append((where, part, program_lib.from_json(part["with_symbol"])))
    except ProgramError as e:
      return bad(f"{where}.with_symbol", str(e))
  return userop, out


@functools.lru_cache(maxsize=64)
def _userop_of(spec_json: str) -> binding.UserOp:
  return binding.UserOp.from_spec(json.loads(spec_json))


def _userop(spec: Any) -> binding.UserOp:
  """`UserOp.from_spec`, memoized on the spec's JSON (rows repeat a few)."""
  try:
    key = json.dumps(spec, sort_keys=True)
  except (TypeError, ValueError):
    return binding.UserOp.from_spec(spec)
  return _userop_of(key)


def _shape_ok(ws: list, userop: binding.UserOp) -> bool:
  """One call of distinct registers, then `PRINT dest; HALT`."""
  calls = [i for i, ins in enumerate(ws) if ins.get("op") == userop.op_name]
  return (len(calls) == 1 and calls[0] == len(ws) - 3
          and ws[-2].get("op") == "PRINT" and ws[-1].get("op") == "HALT"
          and ws[-2].get("args") == ws[calls[0]].get("args", [None])[:1]
          and len(set(ws[calls[0]]["args"])) == userop.n_args)


def _structure(line, meta, userop: binding.UserOp, parts
               ) -> Iterator[Mismatch]:
  """The shape of a generated row: lengths from n and use_stack, one call
  of distinct registers before `PRINT dest; HALT`, every program valid."""
  use_stack, n_target = meta.get("use_stack"), meta.get("n_target")
  if not isinstance(use_stack, bool):
    yield Mismatch(line, "meta.use_stack", f"not a bool: {use_stack!r}")
    return
  if not checks.is_int(n_target) or n_target < 0:
    yield Mismatch(line, "meta.n_target", f"not an int >= 0: {n_target!r}")
    return
  demo_lens = {shapes_lib.expected_length(n, use_stack) for n in range(
      shapes_lib.DEMO_N_MIN, shapes_lib.DEMO_N_MAX + 1)}
  writes = {userop.op_name: userop.writes}
  for where, part, parsed in parts:
    ws = part["with_symbol"]
    want = ({shapes_lib.expected_length(n_target, use_stack)}
            if where == "target" else demo_lens)
    if len(ws) not in want:
      yield Mismatch(line, f"{where}.with_symbol", f"{len(ws)} instructions,"
                     f" expected {sorted(want)} for use_stack={use_stack}"
                     + (f", n={n_target}" if where == "target" else ""))
    if not _shape_ok(ws, userop):
      yield Mismatch(line, f"{where}.with_symbol", f"expected one "
                     f"{userop.op_name} of distinct registers followed by "
                     f"PRINT of its destination and HALT")
    for form, prog, kw in (("with_symbol", parsed,
                            {"userop_writes": writes}),
                           ("base", part["base"], {})):
      try:
        issues = validate_lib.find_issues(prog, **kw)
      except (TypeError, ProgramError) as e:
        issues = [str(e)]
      if issues:
        yield Mismatch(line, f"{where}.{form}", f"not valid: {issues[0]}")


def _compare_part(line, where, part, base, trace) -> Iterator[Mismatch]:
  got = program_lib.to_json(base)
  if got != part["base"]:
    yield Mismatch(line, f"{where}.base",
                   "differs from substitute(with_symbol): "
                   + first_diff(got, part["base"]))
  if int(trace.error):
    yield Mismatch(line, f"{where}.trace", "base run ended in error: "
                   + isa.ERROR_MESSAGES[int(trace.error)])
  yield from compare_trace(line, interpreter.trace_to_json(trace),
                           part["trace"], f"{where}.trace")


def _compare_renders(line, row, renders, i) -> Iterator[Mismatch]:
  for name, stored in row["renders"].items():
    if name not in shapes_lib.RENDER_NAMES:
      yield Mismatch(line, f"renders.{name}", "unknown render")
      continue
    r = renders[name]
    for part, tok in (("input", r.input), ("target", r.target)):
      ids = tok.ids[i, :int(tok.length[i])].tolist()
      if ids != stored.get(f"{part}_ids"):
        yield Mismatch(line, f"renders.{name}.{part}_ids",
                       first_diff(ids, stored.get(f"{part}_ids")))
      text = text_lib.detokenize(ids)
      if text != stored.get(f"{part}_text"):
        yield Mismatch(line, f"renders.{name}.{part}_text",
                       f"got {text[:60]!r}..., stored "
                       f"{str(stored.get(f'{part}_text'))[:60]!r}...")
  if row["meta"]["renders"] != list(row["renders"]):
    yield Mismatch(line, "meta.renders", f"{row['meta'].get('renders')!r} "
                   f"but renders {list(row['renders'])}")


def _replay_sizes(items) -> dict[str, Any]:
  """Static sizes (few compilations) that every row of `items` fits."""
  p = round_up(max(int(pr.length) for *_, parts in items
                   for _, _, pr in parts), 32)
  m = items[0][2].table().op.shape[0]
  calls = max(int(np.sum(np.asarray(pr.op) == u.slot))
              for _, _, u, parts in items for _, _, pr in parts)
  base_len = round_up(p + calls * (m - 1), 16)
  stored_steps = max((_len(part["trace"].get("steps"))
                      for *_, parts in items for _, part, _ in parts),
                     default=0)
  sizes = []
  for name in shapes_lib.RENDER_NAMES:
    lens = [(_len(r["renders"][name].get("input_ids")),
             _len(r["renders"][name].get("target_ids")))
            for _, r, *_ in items if name in r["renders"]]
    if lens:
      sizes.append((name, round_up(max(a for a, _ in lens) + 1, 512),
                    round_up(max(b for _, b in lens) + 1, 16)))
  return dict(p=p, base_len=base_len, sizes=tuple(sizes),
              max_steps=round_up(max(base_len, stored_steps) + 1, 64))


def _slot(j: int, num_parts: int, e: int) -> int:
  """The program slot of part j of a row of `num_parts` parts: demos keep
  their index, the target takes the last of `e` slots (as generated)."""
  return e - 1 if j == num_parts - 1 else j


def _programs(parts, e: int, p: int):
  """[E, p] Program of a row's parts, in slots (empty ones between)."""
  progs = [program_lib.pad_to(pr, p) for _, _, pr in parts]
  empty = program_lib.from_json([], max_len=p)
  return program_lib.stack(progs[:-1] + [empty] * (e - len(progs))
                           + progs[-1:])


def _check_group(items, rebuild: bool) -> Iterator[tuple[int, Mismatch]]:
  """Replays rows (line, row, userop, parts) sharing the table size in one
  jitted call (rows of fewer demos leave slots empty, as generated rows
  do); yields (index in items, mismatch)."""
  size = _replay_sizes(items)
  e = max(len(parts) for *_, parts in items)
  b = round_up(len(items), 64)        # few compilations
  progs = [_programs(parts, e, size["p"]) for *_, parts in items]
  tables = [u.table() for _, _, u, _ in items]
  progs += [progs[-1]] * (b - len(items))
  tables += [tables[-1]] * (b - len(items))
  stack = lambda *x: np.stack(x)
  base, trace, renders = jax.device_get(_replay(
      jax.tree_util.tree_map(stack, *progs),
      jax.tree_util.tree_map(stack, *tables), base_len=size["base_len"],
      max_steps=size["max_steps"], sizes=size["sizes"]))
  for i, (line, row, userop, parts) in enumerate(items):
    yield from ((i, x) for x in _compare_renders(line, row, renders, i))
    for j, (where, part, _) in enumerate(parts):
      take = lambda x, s=_slot(j, len(parts), e): x[i, s]
      yield from ((i, x) for x in _compare_part(
          line, where, part, jax.tree_util.tree_map(take, base),
          jax.tree_util.tree_map(take, trace)))
    yield from ((i, x) for x in _structure(line, row["meta"], userop, parts))
  if rebuild:
    yield from _rebuild(items, e)


def _rebuild_meta(meta, userop: binding.UserOp) -> list[int] | str:
  """[seed, userop, k_demos, n_target, use_stack] to rebuild from, or what
  is wrong."""
  n, stack, seed = (meta.get("n_target"), meta.get("use_stack"),
                    meta.get("seed"))
  if not isinstance(stack, bool) or not checks.is_int(n) or n < 0 or (
      not checks.is_int(seed) or not 0 <= seed < 2 ** 64):
    return ("cannot rebuild: needs an unsigned 64-bit seed, an int "
            "n_target >= 0 and a bool use_stack")
  return [int(seed), userop.slot - isa.USEROP_0, meta["k_demos"], int(n),
          int(stack)]


def _rebuild(items, e: int) -> Iterator[tuple[int, Mismatch]]:
  """Regenerates the programs of rows (line, row, userop, parts) from
  meta.seed and their axes in one call, and checks dataset rows' axes;
  yields (index, mismatch)."""
  ok, args = [], []
  for i, (line, row, userop, _) in enumerate(items):
    got = _rebuild_meta(row["meta"], userop)
    if isinstance(got, str):
      yield i, Mismatch(line, "meta", got)
      continue
    ok.append(i)
    args.append(got)
  if not ok:
    return
  b = round_up(len(ok), 64)          # few compilations
  args += [args[-1]] * (b - len(ok))
  args = np.array(args, np.uint64)
  userops = [items[i][2] for i in ok]
  got = generate_lib.rebuild_programs(
      userops + userops[-1:] * (b - len(ok)), args[:, 0],
      args[:, 1:].astype(np.int32), num_programs=e)
  for r, i in enumerate(ok):
    line, _, _, parts = items[i]
    for j, (where, part, _) in enumerate(parts):
      ws = program_lib.to_json(jax.tree_util.tree_map(
          lambda x, r=r, s=_slot(j, len(parts), e): x[r, s], got))
      if ws != part["with_symbol"]:
        yield i, Mismatch(line, f"{where}.with_symbol", "differs from the "
                          "program rebuilt from meta.seed: " + first_diff(
                              ws, part["with_symbol"]))
  yield from _check_axes([items[i] for i in ok], ok)


def _row_axes(meta, userop: binding.UserOp) -> list[int]:
  return [isa.DEFAULT_USEROP_SYMBOLS.index(userop.name), meta["k_demos"],
          meta["n_target"], int(meta["use_stack"])]


def _check_axes(items, index) -> Iterator[tuple[int, Mismatch]]:
  """Dataset rows (meta.split given): the axes and the userop must be the
  ones drawn from meta.seed in the row's split and bucket."""
  groups: dict = {}
  for (line, row, userop, _), i in zip(items, index):
    meta = row["meta"]
    if "split" not in meta:
      continue
    try:
      tiers_lib.check_split(tier_lib.TIER4, meta["split"], meta.get("bucket"))
    except ValueError as e:
      yield i, Mismatch(line, "meta", f"cannot rebuild: {e}")
      continue
    groups.setdefault(meta.get("bucket"), []).append((i, line, meta, userop))
  for bucket, members in groups.items():
    drawn = tier_lib.seed_axes([m["seed"] for _, _, m, _ in members],
                               bucket=bucket)
    for (i, line, meta, userop), want in zip(members, drawn):
      have = _row_axes(meta, userop)
      spec = tier_lib.USEROPS[int(want[0])]
      if have != want.tolist() or userop != spec:
        yield i, Mismatch(line, "meta", "userop, k_demos, n_target and "
                          f"use_stack {have} are not those drawn from "
                          f"meta.seed {want.tolist()} (userop {spec.name})")


def check_userop_rows(rows: Iterable[tuple[int, Any]], *,
                      rebuild: bool = False, batch_size: int = 256
                      ) -> Iterator[Mismatch]:
  """Replays Tier 4 rows (meta.tier == "tier4_userop") and yields every
  mismatch, in row order (what is checked: the module docstring).

  Args:
    rows: (line number, row dict) pairs, e.g. from JSONL or Parquet.
    rebuild: also compare with the rows rebuilt from meta.seed (rows made
      by `tinyvm_jax`; the reference's seeds do not rebuild).
    batch_size: rows replayed a jitted call.
  """
  checks.check_int("batch_size", batch_size, lo=1)
  it = iter(rows)
  while chunk := list(itertools.islice(it, batch_size)):
    found: list[list[Mismatch]] = [[] for _ in chunk]
    groups: dict[tuple, list] = {}
    for i, (line, row) in enumerate(chunk):
      parsed = _parse(line, row)
      if isinstance(parsed, list):
        found[i] = parsed
        continue
      userop, parts = parsed
      groups.setdefault(userop.table().op.shape[0], []).append(
          (i, (line, row, userop, parts)))
    for members in groups.values():
      for j, mismatch in _check_group([m for _, m in members], rebuild):
        found[members[j][0]].append(mismatch)
    for ms in found:
      yield from ms


def check_userop_row(row: Mapping[str, Any], *, line: int = 1,
                     rebuild: bool = False) -> list[Mismatch]:
  """Every mismatch of one Tier 4 row (see `check_userop_rows`)."""
  return list(check_userop_rows([(line, row)], rebuild=rebuild))


def check_userop_zarr(store, *, rebuild: bool = False, batch_size: int = 256,
                      on_batch: Callable[[str, int], None] | None = None
                      ) -> Iterator[tuple[str, Mismatch]]:
  """Yields (group, mismatch) of every row of a Tier 4 zarr store
  (`io.zarr_store.Store`): its arrays read back as rows (`formats`), then
  checked as JSON rows; `line` is the 1-based row index in the group.
  `on_batch(group, rows)` is called after each batch of `rows` rows."""
  for group in store.groups:
    g = store.group_attributes(group)
    for start, arrays in store.iter_batches(group, batch_size):
      rows = formats.rows_to_json(formats.arrays_to_rows(arrays),
                                  split=g["split"], bucket=g["bucket"])
      for m in check_userop_rows(enumerate(rows, start + 1),
                                 rebuild=rebuild, batch_size=batch_size):
        yield group, m
      if on_batch is not None:
        on_batch(group, len(rows))
