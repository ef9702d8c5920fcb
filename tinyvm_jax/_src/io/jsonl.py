"""Rows as JSON Lines, byte for byte as the reference writes them (spec 13).

`rows_to_jsonl` serialises a batch of fixed-shape `Rows` with array
operations only, never a Python object per row. Every row is a sequence of
*chunks* (`jsonl_chunks`: ASCII strings of at most 8 bytes, each one
`uint64` of a table). A batch's layout is a matrix of chunk ids with a
column for every piece a row may hold (id 0, the empty chunk, where a row has
none); its bytes are one gather from the table, after which the NUL padding
is deleted (JSON text never holds a NUL byte). Text is built from token ids
by the rules of `text.detokenize`.

Rows are assembled in sub-batches whose padded dimensions are cut to their
longest row; rows of very different sizes (Tier 2) are sorted by size first
and put back in order at the end (each row ends in its only newline: text
newlines are escaped). Measured with benchmarks/serialize.py: about 50,000
Tier 1 train rows (170 MB) a second on one core.

`parse_rows` and `rows_from_json` read rows back into dicts and arrays.
"""

import json
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from tinyvm_jax._src import interpreter
from tinyvm_jax._src.io import jsonl_chunks as ch
from tinyvm_jax._src.io import rows as rows_lib
from tinyvm_jax._src import isa
from tinyvm_jax._src import keys as keys_lib
from tinyvm_jax._src import program as program_lib
from tinyvm_jax._src.types import Program, Render, Rows, Tokens, Trace

_SUB_BATCH = 1024  # most rows assembled at a time
# Sorting rows by size, and restoring their order, costs about what a third
# of the padding it saves does: sort when the padded slots drop below half.
_SORT_BELOW = 0.5

def _plan(rows: Rows) -> tuple[list, np.ndarray | None]:
  """Sub-batches of rows to assemble together, and the order they follow.

  Each padded dimension of a sub-batch is cut to its longest row, so rows
  of very different sizes are first sorted by size (when that saves much
  padding: Tier 2), and a sub-batch holds at most `_SUB_BATCH` rows and about
  `ch.BUDGET` chunk slots.

  Returns:
    A list of slices or index arrays, and the row order (None: as given).
  """
  b = rows.key_data.shape[0]
  sizes = [rows.trace.num_steps * 15, rows.program.length * 8,
           rows.trace.num_output]
  for r in rows.renders.values():
    sizes += [r.input.length * 3 // 2, r.target.length * 3 // 2]
  sizes = np.stack(sizes, axis=1).astype(np.int64)             # [B, K]
  total = sizes.sum(axis=1)

  def windows(order):
    cost = total if order is None else total[order]
    out, i = [], 0
    while i < b:
      n = _SUB_BATCH
      while n > 1 and n * cost[i:i + n].max() > ch.BUDGET:
        n //= 2
      out.append(slice(i, min(b, i + n)))
      i += n
    return out

  def padded(order, wins):
    s = sizes if order is None else sizes[order]
    return sum((w.stop - w.start) * s[w].max(axis=0).sum() for w in wins)

  plain = windows(None)
  if b <= 1:
    return plain, None
  order = np.argsort(total, kind="stable")
  ordered = windows(order)
  if padded(order, ordered) < _SORT_BELOW * padded(None, plain):
    return [order[w] for w in ordered], order
  return plain, None


# ------------------------------------------------------------------ public
def rows_to_jsonl(rows: Rows, *, tier: str, split: str, bucket: str | None,
                  axis_names: Sequence[str], render_names: Sequence[str],
                  texts: Mapping[str, tuple[Sequence[str], Sequence[str]]]
                  | None = None,
                  probe_step: np.ndarray | None = None) -> bytes:
  """The reference's JSONL bytes of a batch of rows (spec section 13).

  One compact JSON object a row, each ending in a newline: `meta` (tier,
  split, bucket, seed = hi << 32 | lo of `key_data`, axes, render names),
  `program`, `trace` and `renders` (ids and text of each render), then
  `probe` when `probe_step` is given.

  Args:
    rows: a batch of `B` rows (host or device arrays).
    tier, split, bucket: written in `meta` (bucket None for train rows).
    axis_names: names of the `A` columns of `rows.axes`, in order;
      `use_stack` is written as a JSON bool, the others as integers >= 0.
    render_names: the keys of `rows.renders`, in the order to write them.
    texts: optional `{name: (input_texts, target_texts)}`, B strings each,
      written instead of the text computed from the token ids (which is
      `text.detokenize` of them, as the reference's renders are).
    probe_step: [B] int, the step each row's probe query asks about; adds
      the key `probe` = `{step_t, executed_pc, probe_targets}`, the targets
      being the register file after every step.

  Returns:
    The ASCII bytes of the B lines.

  Raises:
    TypeError: when `rows` is not a `Rows`.
    ValueError: naming the first row and field that cannot be written: a
      shape mismatch, a trace that ended in an error, a render longer than
      its padding, a value outside what the format holds.
  """
  axis_names, render_names = tuple(axis_names), tuple(render_names)
  rows, texts, probe_step = rows_lib.checked_rows(
      rows, axis_names=axis_names, render_names=render_names, texts=texts,
      probe_step=probe_step)
  layout = _Layout(tier, split, bucket, axis_names, render_names,
                   probe_step is not None)
  batches, order = _plan(rows)
  out = []
  for sel in batches:
    sub_texts = {k: (_pick(v[0], sel), _pick(v[1], sel))
                 for k, v in texts.items()}
    sub_probe = None if probe_step is None else probe_step[sel]
    out.append(layout.serialise(rows_lib.take_rows(rows, sel), sub_texts, sub_probe))
  if order is None:
    return b"".join(out)
  # Back to the given order: each row ends in the only newline it holds.
  lines = b"".join(out).split(b"\n")
  lines.pop()
  back = np.argsort(order).tolist()
  return b"\n".join([lines[i] for i in back]) + b"\n"


def _pick(seq: Sequence[str], sel) -> Sequence[str]:
  return seq[sel] if isinstance(sel, slice) else [seq[i] for i in sel]


class _Layout:
  """The fixed strings of one call's rows, and how to fill in the rest."""

  def __init__(self, tier, split, bucket, axis_names, render_names, probe):
    dump = lambda x: json.dumps(x, separators=(",", ":"))
    meta = dump({"tier": tier, "split": split, "bucket": bucket})[:-1]
    self.head = '{"meta":' + meta + ',"seed":'
    self.axis_keys = [("," if j else "") + dump(a) + ":"
                      for j, a in enumerate(axis_names)]
    self.axis_names = axis_names
    self.render_names = render_names
    self.mid = '},"renders":' + dump(list(render_names)) + '},"program":['
    self.render_heads = [("," if r else "") + dump(name) + ':{"input_ids":['
                         for r, name in enumerate(render_names)]
    consts = [self.head, ',"axes":{', *self.axis_keys, self.mid,
              '],"trace":{"steps":[', '],"output":[', *self.render_heads,
              '],"target_ids":[', '],"input_text":"', '","target_text":"',
              '"}', "}}\n", "false", "true", '},"probe":{"step_t":',
              ',"executed_pc":', ',"probe_targets":[', "]}}\n"]
    self.table = ch.Table(consts)

  def serialise(self, rows: Rows, texts, probe_step) -> bytes:
    table = self.table
    t, c = table.t, table.const
    b = rows.key_data.shape[0]
    full = lambda s: np.broadcast_to(c[s], (b, c[s].shape[-1]))
    parts = [full(self.head), ch.ints(table, keys_lib.seeds_from_key_data(rows.key_data)),
             full(',"axes":{')]
    for j, name in enumerate(self.axis_names):
      parts.append(full(self.axis_keys[j]))
      if name == "use_stack":
        bools = np.stack([c["false"], c["true"]])               # [2, 1]
        parts.append(bools[(rows.axes[:, j] != 0).astype(np.intp)])
      else:
        parts.append(ch.ints(table, rows.axes[:, j]))
    parts += [full(self.mid), ch.program_ids(t, rows.program),
              full('],"trace":{"steps":['), ch.steps_ids(t, rows.trace),
              full('],"output":[')]
    tr = rows.trace
    parts.append(ch.value_list(t, tr.output, tr.num_output))
    parts.append(t["halted"].take(tr.halted.astype(np.intp), axis=0))
    for r, name in enumerate(self.render_names):
      rend = rows.renders[name]
      if name in texts:
        in_text, out_text = (ch.texts(table, x) for x in texts[name])
      else:
        in_text = ch.text_ids(t, rend.input.ids, rend.input.length)
        out_text = ch.text_ids(t, rend.target.ids, rend.target.length)
      parts += [full(self.render_heads[r]),
                ch.token_list(t, rend.input.ids, rend.input.length),
                full('],"target_ids":['),
                ch.token_list(t, rend.target.ids, rend.target.length),
                full('],"input_text":"'), in_text,
                full('","target_text":"'), out_text, full('"}')]
    if probe_step is None:
      parts.append(full("}}\n"))
    else:
      pc = np.take_along_axis(tr.pc, probe_step[:, None].astype(np.intp),
                              axis=1)[:, 0]
      parts += [full('},"probe":{"step_t":'), ch.ints(table, probe_step),
                full(',"executed_pc":'), ch.ints(table, pc),
                full(',"probe_targets":['), ch.probe_targets(t, tr),
                full("]}}\n")]
    return table.assemble(np.concatenate(parts, axis=1))



def parse_rows(lines: bytes | str | Iterable[bytes | str]) -> list[dict]:
  """Rows of JSONL (a whole blob, or an iterable of lines) as dicts.

  Raises:
    ValueError: naming the first line that is not a JSON object.
  """
  if isinstance(lines, (bytes, str)):
    lines = lines.splitlines()
  out = []
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"line {i + 1}: not JSON ({e})") from None
    if not isinstance(row, dict):
      raise ValueError(f"line {i + 1}: a row must be a JSON object")
    out.append(row)
  return out


class JsonBatch(NamedTuple):
  """Arrays of parsed rows, with what `rows_to_jsonl` needs to write them."""
  rows: Rows
  tier: str
  split: str
  bucket: str | None
  axis_names: tuple[str, ...]
  render_names: tuple[str, ...]
  probe_step: np.ndarray | None  # [B] int32, when the rows carry `probe`


def row_to_arrays(row: Mapping[str, Any], *, max_len: int | None = None,
                  max_steps: int | None = None) -> tuple[Program, Trace]:
  """The (unbatched) `Program` and `Trace` of one parsed row."""
  steps = len(row["trace"]["steps"])
  program = program_lib.from_json(row["program"], max_len=max_len)
  trace = interpreter.trace_from_json(
      row["trace"], max_steps=max(steps, 1) if max_steps is None
      else max_steps)
  return program, trace


def _tokens(seqs: Sequence[Sequence[int]], t: int | None) -> Tokens:
  n = max([len(s) for s in seqs] + [1])
  t = n if t is None else t
  if n > t:
    raise ValueError(f"a render has {n} tokens, more than max_tokens={t}")
  ids = np.full((len(seqs), t), isa.TOK_PAD, np.int32)
  for i, s in enumerate(seqs):
    ids[i, :len(s)] = s
  return Tokens(ids=ids, length=np.array([len(s) for s in seqs], np.int32))


def rows_from_json(rows: Sequence[Mapping[str, Any]], *,
                   max_len: int | None = None, max_steps: int | None = None,
                   max_tokens: int | None = None) -> JsonBatch:
  """Stacks parsed rows of one file into a `Rows` batch (host numpy).

  Sizes default to the largest the rows need. All rows must share tier,
  split, bucket, axis names and render names.

  Raises:
    ValueError: when rows disagree on those, or do not fit the sizes given.
  """
  if not rows:
    raise ValueError("rows_from_json needs at least one row")
  m0 = rows[0]["meta"]
  axis_names = tuple(m0["axes"])
  render_names = tuple(m0["renders"])
  for i, r in enumerate(rows):
    m = r["meta"]
    if (m.get("tier"), m.get("split"), m.get("bucket"), tuple(m["axes"]),
        tuple(m["renders"])) != (m0.get("tier"), m0.get("split"),
                                 m0.get("bucket"), axis_names, render_names):
      raise ValueError(f"row {i}: meta differs from row 0 in tier, split, "
                       f"bucket, axis names or render names")
  p = max_len or max(1, max(len(r["program"]) for r in rows))
  s = max_steps or max(1, max(len(r["trace"]["steps"]) for r in rows))
  pairs = [row_to_arrays(r, max_len=p, max_steps=s) for r in rows]
  stack_np = lambda xs, cls: cls(**{f: np.stack([getattr(x, f) for x in xs])
                                    for f in cls.__dataclass_fields__})
  seeds = [int(r["meta"]["seed"]) for r in rows]
  key_data = np.array([[sd >> 32, sd & 0xFFFFFFFF] for sd in seeds],
                      np.uint32)
  axes = np.array([[int(r["meta"]["axes"][a]) for a in axis_names]
                   for r in rows], np.int32).reshape(len(rows), -1)
  renders = {}
  for name in render_names:
    rs = [r["renders"][name] for r in rows]
    renders[name] = Render(
        input=_tokens([x["input_ids"] for x in rs], max_tokens),
        target=_tokens([x["target_ids"] for x in rs], max_tokens))
  probe = None
  if "probe" in rows[0]:
    probe = np.array([r["probe"]["step_t"] for r in rows], np.int32)
  batch = Rows(key_data=key_data, axes=axes,
               program=stack_np([x[0] for x in pairs], Program),
               trace=stack_np([x[1] for x in pairs], Trace), renders=renders)
  return JsonBatch(rows=batch, tier=m0.get("tier"), split=m0.get("split"),
                   bucket=m0.get("bucket"), axis_names=axis_names,
                   render_names=render_names, probe_step=probe)

