"""Rows as JSON Lines, byte for byte as the reference writes them (spec 13).

`rows_to_jsonl` serialises a batch of fixed-shape `Rows` with array
operations only, never a Python object per row. Every row is a sequence of
*chunks*: ASCII strings of at most 8 bytes, each stored NUL-padded in one
`uint64` of a table. Fixed text (`"regs":[`), small numbers with their
punctuation (register values and pairs of them, pcs, token ids and pairs,
whole instructions, text pieces) are chunks precomputed once; per-row numbers
of any size (seeds, axes) are written as digits with array arithmetic into a
per-call part of the table. A batch's layout is a matrix of chunk ids with a
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

import functools
import json
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from tinyvm_jax._src import interpreter
from tinyvm_jax._src import isa
from tinyvm_jax._src import keys as keys_lib
from tinyvm_jax._src import program as program_lib
from tinyvm_jax._src import text as text_lib
from tinyvm_jax._src.types import Program, Render, Rows, Tokens, Trace

_W = 8             # bytes a chunk
_EMPTY = 0         # id of the empty chunk
_SMALL = 99        # two register values in [-99, 99] share one chunk
_MAX_INDEX = 9999  # largest pc / label number / |literal| with chunks
_SUB_BATCH = 1024  # most rows assembled at a time
_BUDGET = 4_000_000  # most chunk slots (about) assembled at a time
# Sorting rows by size, and restoring their order, costs about what a third
# of the padding it saves does: sort when the padded slots drop below half.
_SORT_BELOW = 0.5
_LOAD_LIT = 999    # LOADs with |literal| up to this have whole-line chunks

_VMIN, _VMAX = isa.VALUE_MIN, isa.VALUE_MAX
_NV = _VMAX - _VMIN + 1       # values in a value family
_NULL = _NV                   # index of `null` after them
_NE = _NV + 1                 # values and null
_NP = (2 * _SMALL + 1) ** 2   # small pairs
_V = isa.VOCAB_SIZE
_NO_LABEL = _MAX_INDEX + 1
_IS_DROPPED = np.isin(np.arange(_V), (isa.TOK_BOS, isa.TOK_EOS, isa.TOK_PAD))
_IS_DELETER = np.isin(np.arange(_V),
                      (isa.TOK_COLON, isa.TOK_EQUALS, isa.TOK_MINUS))
_IS_RESERVED = np.array([t.startswith("RESERVED") for t in isa.TOKENS])


class _Chunks:
  """An append-only table of NUL-padded 8-byte chunks; id 0 is empty."""

  def __init__(self):
    self._parts = [np.zeros(1, np.uint64)]
    self.size = 1

  def add(self, chunks: np.ndarray) -> np.ndarray:
    """Appends uint64 chunks [...]; returns their ids (EMPTY where zero)."""
    ids = self.size + np.arange(chunks.size).reshape(chunks.shape)
    self._parts.append(chunks.ravel())
    self.size += chunks.size
    return np.where(chunks != 0, ids, _EMPTY).astype(np.int32)

  def strings(self, strings: Sequence[str], min_chunks: int = 1
              ) -> np.ndarray:
    """Chunk ids [V, C] of ASCII strings."""
    enc = [s.encode("ascii") for s in strings]
    c = max([min_chunks] + [-(-len(e) // _W) for e in enc])
    data = np.frombuffer(b"".join(e.ljust(c * _W, b"\0") for e in enc),
                         np.uint64).reshape(len(enc), c)
    return self.add(data)

  def family(self, *string_lists: Sequence[str]) -> np.ndarray:
    """Chunk ids of lists of strings, one list after the other: [N, C], or
    [N] when every string fits one chunk (N = the strings in all lists)."""
    fams = [self.strings(s) for s in string_lists]
    c = max(f.shape[1] for f in fams)
    fam = np.concatenate([np.pad(f, ((0, 0), (0, c - f.shape[1])))
                          for f in fams])
    return np.ascontiguousarray(fam[:, 0] if c == 1 else fam)

  def array(self) -> np.ndarray:
    return np.concatenate(self._parts)


@functools.cache
def _tables():
  """The static chunk families (built once, about 0.3 s) and their table.

  Lists come in two variants, the first item ("v") and the others (",v"):
  the second variant of a family of n strings starts at index n.
  """
  st = _Chunks()
  t = {}
  vals = [str(v) for v in range(_VMIN, _VMAX + 1)]
  t["val"] = st.family(vals, ["," + v for v in vals])          # [2 * NV]
  small = range(-_SMALL, _SMALL + 1)
  t["pair"] = st.family([f"{a},{b}" for a in small for b in small],
                        [f",{a},{b}" for a in small for b in small])
  # Pairs by key (a - VMIN) * NV + b - VMIN: the pair's index in "pair",
  # or _NP (an empty chunk after each variant) when either value is outside
  # [-99, 99].
  by_key = np.full((_NV, _NV), _NP, np.uint16)
  sl = slice(-_VMIN - _SMALL, -_VMIN + _SMALL + 1)
  by_key[sl, sl] = np.arange(_NP).reshape(len(small), -1)
  t["pair_index_by_key"] = by_key.ravel()                      # [NV^2]
  first, later = t["pair"][:_NP], t["pair"][_NP:]
  t["pair"] = np.concatenate([first, [_EMPTY], later, [_EMPTY]])
  idx = range(_MAX_INDEX + 1)
  t["step_head"] = st.family(['{"pc":%d,"regs":[' % p for p in idx],
                             [',{"pc":%d,"regs":[' % p for p in idx])
  emitted = vals + ["null"]
  # stack empty, then not empty; value - VMIN, or _NULL for null
  t["emit_tail"] = st.family(
      ['],"stack":[],"emitted":%s}' % e for e in emitted],
      ['],"emitted":%s}' % e for e in emitted])                # [2 * NE, 4]
  t["stack_open"] = st.strings(['],"stack":['])[0]
  # Instructions, general layout: head, registers, literal, label, target.
  t["instr_head"] = st.family(
      ['{"op":"%s","args":[' % o for o in isa.OP_NAMES],
      [',{"op":"%s","args":[' % o for o in isa.OP_NAMES])
  combos = [(c >> 6, (c >> 3) & 7, c & 7) for c in range(512)]
  arg_text = lambda o, c: ",".join(map(str, c[:isa.REG_ARGS[o]]))
  t["args"] = st.family([arg_text(o, c) for o in range(isa.NUM_OPS)
                         for c in combos])                     # [21 * 512]
  lits = range(-_MAX_INDEX, _MAX_INDEX + 1)
  t["lit"] = st.family(["," + str(v) for v in lits])
  t["label"] = st.family(['],"label":"L%d","target":' % n for n in idx]
                         + ['],"label":null,"target":'])
  t["target"] = st.family(['"L%d"}' % n for n in idx] + ["null}"])
  # Whole instructions without labels, by `code`: base opcodes by their
  # registers (op * 512 + r0 * 64 + r1 * 8 + r2), then LOADs with a literal
  # in [-_LOAD_LIT, _LOAD_LIT].
  whole = ['{"op":"%s","args":[%s],"label":null,"target":null}'
           % (isa.OP_NAMES[o], arg_text(o, c))
           for o in range(isa.NUM_BASE_OPS) for c in combos]
  whole += ['{"op":"LOAD","args":[%d,%d],"label":null,"target":null}'
            % (r, v) for r in range(8)
            for v in range(-_LOAD_LIT, _LOAD_LIT + 1)]
  t["whole"] = st.family(whole, ["," + w for w in whole])      # [2 * I, 8]
  ids = range(_V)
  t["tok"] = st.family([str(a) for a in ids], ["," + str(a) for a in ids])
  t["tok_pair"] = st.family([f"{a},{b}" for a in ids for b in ids],
                            [f",{a},{b}" for a in ids for b in ids])
  # Text pieces, JSON-escaped, in pairs of variants v = id + V * strip
  # (strip: the piece without its trailing space).
  pieces = [text_lib.detokenize([a]) for a in ids]
  variants = [json.dumps(p)[1:-1] for p in pieces] + [
      json.dumps(p[:-1] if p.endswith(" ") else p)[1:-1] for p in pieces]
  pair = st.family([a + b for a in variants for b in variants])
  t["text_pair"] = pair                                        # [4V^2, 3]
  # without reserved ids no pair needs a third chunk
  t["text_pair_short"] = np.ascontiguousarray(pair[:, :2])
  # the same, not escaped (for Parquet), and the length of each variant
  raw = [p for p in pieces] + [p[:-1] if p.endswith(" ") else p
                               for p in pieces]
  t["raw_pair"] = st.family([a + b for a in raw for b in raw])
  t["raw_pair_short"] = np.ascontiguousarray(t["raw_pair"][:, :2])
  t["raw_len"] = np.array([len(p) for p in raw], np.int64)    # [2V]
  t["halted"] = st.strings(['],"halted":false},"renders":{',
                            '],"halted":true},"renders":{'])
  t["open_bracket"] = st.family(["[", ",["])
  t["close_bracket"] = st.strings(["]"])[0, 0]
  # The same chunk recurs in many strings (`"label":null`...): keep one.
  data, inverse = np.unique(st.array(), return_inverse=True)   # data[0] = 0
  inverse = inverse.astype(np.int32)
  not_ids = ("pair_index_by_key", "raw_len")
  t = {k: v if k in not_ids else inverse.take(v) for k, v in t.items()}
  return t, data


class _Table:
  """The chunk table of one call: static chunks, the call's fixed strings,
  then a region rewritten for each sub-batch (seeds, axes, given texts)."""

  def __init__(self, consts: Sequence[str]):
    self.t, static = _tables()
    extra = _Chunks()
    extra.size = static.size  # its chunks follow the static ones
    self.const = {s: extra.strings([s])[0] for s in consts}
    fixed = extra.array()[1:]
    self._fixed = static.size + fixed.size
    self.data = np.zeros(self._fixed + 65536, np.uint64)
    self.data[:static.size] = static
    self.data[static.size:self._fixed] = fixed
    self._used = self._fixed

  def put(self, chunks: np.ndarray) -> np.ndarray:
    """Chunk ids of per-row chunks [B, C] for the current sub-batch."""
    n = chunks.size
    if self._used + n > self.data.size:
      grown = np.zeros(2 * (self._used + n), np.uint64)
      grown[:self._used] = self.data[:self._used]
      self.data = grown
    self.data[self._used:self._used + n] = chunks.ravel()
    ids = self._used + np.arange(n).reshape(chunks.shape)
    self._used += n
    return np.where(chunks != 0, ids, _EMPTY).astype(np.int32)

  def assemble(self, ids: np.ndarray) -> bytes:
    """The bytes of chunk ids [B, X] in row-major order; frees the
    sub-batch region."""
    self._used = self._fixed
    flat = ids.ravel()
    flat = np.compress(flat != _EMPTY, flat)
    return self.data.take(flat).tobytes().translate(None, b"\0")


def _matrix(mat: np.ndarray) -> np.ndarray:
  """uint8 [B, W] NUL-padded per-row bytes as uint64 chunks [B, C]."""
  b, w = mat.shape
  c = -(-w // _W)
  if w != c * _W:
    mat = np.concatenate([mat, np.zeros((b, c * _W - w), np.uint8)], axis=1)
  return np.ascontiguousarray(mat).view(np.uint64)


def _ints(table: _Table, values: np.ndarray) -> np.ndarray:
  """Chunk ids [B, 3] of the decimal text of non-negative integers [B]."""
  v = values.astype(np.uint64)
  pows = np.uint64(10) ** np.arange(19, -1, -1, dtype=np.uint64)  # [20]
  digits = (v[:, None] // pows) % np.uint64(10)                    # [B, 20]
  lead = np.cumsum(digits != 0, axis=1) == 0
  lead[:, -1] = False                      # 0 is written "0"
  mat = np.where(lead, 0, digits + ord("0")).astype(np.uint8)
  return table.put(_matrix(mat))


def _texts(table: _Table, texts: Sequence[str]) -> np.ndarray:
  """Chunk ids [B, C] of given strings, JSON-escaped (ensure_ascii)."""
  enc = [json.dumps(s)[1:-1].encode("ascii") for s in texts]
  w = max([len(e) for e in enc] + [1])
  w = -(-w // _W) * _W
  mat = np.frombuffer(b"".join(e.ljust(w, b"\0") for e in enc),
                      np.uint8).reshape(len(enc), w)
  return table.put(_matrix(mat))


# ------------------------------------------------------------------ sections
def _later(n: int, size: int) -> np.ndarray:
  """[N] int32 offsets into a list family of `size` strings a variant: 0
  for the first item, `size` for the others."""
  return np.where(np.arange(n) > 0, size, 0).astype(np.int32)


def _value_list(t, vals: np.ndarray, count: np.ndarray) -> np.ndarray:
  """Chunk ids [B, N] of the list items `vals[b, :count[b]]`."""
  n = vals.shape[1]
  ids = t["val"].take(vals + (_later(n, _NV) - _VMIN))         # [B, N]
  return np.where(np.arange(n) < count[:, None], ids, _EMPTY)


def _register_file(t, regs: np.ndarray) -> np.ndarray:
  """Chunk ids [..., 8] of register files [..., 8] written `a,b,...`: two
  values in [-99, 99] share a chunk (the other id is empty), larger ones
  take one chunk each."""
  a, b = regs[..., 0::2], regs[..., 1::2]                      # [..., 4]
  key = a * _NV
  key += b
  key += -_VMIN * _NV - _VMIN
  index = t["pair_index_by_key"].take(key)                     # [..., 4]
  big = np.flatnonzero(index == _NP)                           # [N] flat
  pair = t["pair"].take(index + _later(4, _NP + 1))            # "," variants
  out = np.zeros(regs.shape, np.int32)
  out[..., 0::2] = pair
  if big.size:  # pair (a, b) number f is at 2 f, 2 f + 1 of the flat file
    flat_regs, flat_out = regs.reshape(-1), out.reshape(-1)
    flat_out[2 * big] = t["val"].take(
        flat_regs[2 * big] - _VMIN + np.where(big % 4 > 0, _NV, 0))
    flat_out[2 * big + 1] = t["val"].take(flat_regs[2 * big + 1]
                                          - _VMIN + _NV)
  return out


def _program_ids(t, p: Program) -> np.ndarray:
  """Chunk ids [B, X] of the instructions of `"program":[...]`."""
  b, n = p.op.shape
  valid = np.arange(n) < p.length[:, None]                     # [B, P]
  n_regs = isa.REG_ARGS.take(p.op)                               # [B, P]
  regs = np.where(np.arange(3) < n_regs[..., None], p.regs, 0)
  combo = regs[..., 0] * 64 + regs[..., 1] * 8 + regs[..., 2]  # [B, P]
  is_load = p.op == isa.LOAD
  simple = not ((p.label >= 0) | (p.target_label >= 0)
                | (p.op >= isa.NUM_BASE_OPS)
                | (is_load & (np.abs(p.lit) > _LOAD_LIT)))[valid].any()
  if simple:
    load = (isa.NUM_BASE_OPS * 512 + regs[..., 0] * (2 * _LOAD_LIT + 1)
            + p.lit + _LOAD_LIT)
    code = np.where(is_load, load, p.op * 512 + combo)
    size = t["whole"].shape[0] // 2
    ids = t["whole"].take(code + _later(n, size), axis=0)      # [B, P, 8]
  else:
    n_ops = isa.NUM_OPS
    head = t["instr_head"].take(p.op + _later(n, n_ops), axis=0)
    args = t["args"].take(p.op * 512 + combo)
    lit = np.where(isa.LIT_ARGS.take(p.op) > 0,
                   t["lit"].take(p.lit + _MAX_INDEX), _EMPTY)
    label = t["label"].take(np.where(p.label >= 0, p.label, _NO_LABEL),
                            axis=0)
    target = t["target"].take(np.where(p.target_label >= 0, p.target_label,
                                       _NO_LABEL))
    ids = np.concatenate([head, args[..., None], lit[..., None], label,
                          target[..., None]], axis=-1)
  ids *= valid[..., None]
  return ids.reshape(b, -1)


def _steps_ids(t, tr: Trace) -> np.ndarray:
  """Chunk ids [B, X] of the step records of `"steps":[...]`."""
  b, s = tr.pc.shape
  parts = [t["step_head"].take(tr.pc + _later(s, _MAX_INDEX + 1), axis=0),
           _register_file(t, tr.regs)]
  has_stack = tr.depth > 0                                     # [B, S]
  cap = int(tr.depth.max())
  if cap:
    parts.append(np.where(has_stack[..., None], t["stack_open"], _EMPTY))
    items = t["val"].take(tr.stack[..., :cap] + (_later(cap, _NV) - _VMIN))
    parts.append(np.where(np.arange(cap) < tr.depth[..., None], items,
                          _EMPTY))
  emitted = np.where(tr.emit_mask, tr.emitted - _VMIN, _NULL)
  parts.append(t["emit_tail"].take(emitted + has_stack * _NE, axis=0))
  ids = np.concatenate(parts, axis=-1)                         # [B, S, c]
  ids *= (np.arange(s) < tr.num_steps[:, None])[..., None]
  return ids.reshape(b, -1)


def _token_list(t, ids: np.ndarray, length: np.ndarray) -> np.ndarray:
  """Chunk ids [B, X] of a token id list's items (pairs share a chunk)."""
  b, n = ids.shape
  if n % 2:
    ids = np.concatenate([ids, np.zeros((b, 1), ids.dtype)], axis=1)
  n2 = ids.shape[1] // 2
  pairs = ids[:, 0::2] * _V + ids[:, 1::2] + _later(n2, _V * _V)
  out = np.where(np.arange(n2) < length[:, None] // 2,
                 t["tok_pair"].take(pairs), _EMPTY)            # [B, N2]
  odd = np.nonzero(length % 2)[0]
  if odd.size:
    j = length[odd] // 2
    out[odd, j] = t["tok"].take(ids[odd, 2 * j] + np.where(j > 0, _V, 0))
  return out


def _text_variants(ids: np.ndarray, length: np.ndarray) -> np.ndarray:
  """[B, T] int: each token's text variant, id + V * strip (strip: its
  piece loses its trailing space); PAD past `length`."""
  b, n = ids.shape
  pos = np.arange(n)
  tok = np.where(pos < length[:, None], ids, isa.TOK_PAD)      # [B, T]
  dropped = _IS_DROPPED.take(tok)
  # A piece loses its trailing space when the next kept token is a deleter.
  # Usually no token is dropped but the first and those from the last on
  # (BOS ... EOS PAD ...): then the next kept token is the next token.
  inner = dropped[:, 1:-1] & (pos[1:-1] < length[:, None] - 1)
  if not inner.any():
    strip = np.zeros((b, n), bool)
    strip[:, :-1] = _IS_DELETER.take(tok[:, 1:])
  else:
    nxt = np.where(dropped, n, pos)
    nxt = np.minimum.accumulate(nxt[:, ::-1], axis=1)[:, ::-1]
    nxt = np.concatenate([nxt[:, 1:], np.full((b, 1), n)], axis=1)
    is_del = np.concatenate([_IS_DELETER.take(tok),
                             np.zeros((b, 1), bool)], axis=1)
    strip = np.take_along_axis(is_del, nxt, axis=1)
  return tok + _V * strip


def _text_ids(t, ids: np.ndarray, length: np.ndarray, raw: bool = False
              ) -> np.ndarray:
  """Chunk ids [B, X] of the text of token ids (see `text`), JSON-escaped
  unless `raw`."""
  b, n = ids.shape
  var = _text_variants(ids, length)                            # [B, T]
  if n % 2:
    var = np.concatenate([var, np.full((b, 1), isa.TOK_PAD)], axis=1)
  name = "raw_pair" if raw else "text_pair"
  if not _IS_RESERVED.take(var % _V).any():
    name += "_short"
  pairs = var[:, 0::2] * (2 * _V) + var[:, 1::2]
  return t[name].take(pairs, axis=0).reshape(b, -1)


def texts_arrow_buffers(ids: np.ndarray, length: np.ndarray
                        ) -> tuple[np.ndarray, bytes]:
  """The texts of a batch of token id sequences as one buffer: [B + 1]
  int64 offsets and the UTF-8 (ASCII) bytes, for `pyarrow` string arrays.

  Args:
    ids: [B, T] token ids; length: [B], tokens of each row to read.
  """
  t, data = _tables()
  b = ids.shape[0]
  counts = np.zeros(b, np.int64)
  out = []
  step = max(1, _BUDGET // max(1, ids.shape[1]))
  for lo in range(0, b, step):
    sl = slice(lo, min(b, lo + step))
    n = max(1, int(length[sl].max()))
    sub_ids, sub_len = ids[sl, :n], length[sl]
    _in_range("token id", sub_ids, np.arange(n) < sub_len[:, None], 0,
              _V - 1, lo)
    counts[sl] = t["raw_len"].take(_text_variants(sub_ids, sub_len)).sum(1)
    flat = _text_ids(t, sub_ids, sub_len, raw=True).ravel()
    flat = np.compress(flat != _EMPTY, flat)
    out.append(data.take(flat).tobytes().translate(None, b"\0"))
  offsets = np.zeros(b + 1, np.int64)
  np.cumsum(counts, out=offsets[1:])
  return offsets, b"".join(out)


# ------------------------------------------------------------------ checks
def _np_tree(x):
  return type(x)(**{f: np.asarray(getattr(x, f))
                    for f in x.__dataclass_fields__})


def _to_numpy(rows: Rows) -> Rows:
  return Rows(key_data=np.asarray(rows.key_data), axes=np.asarray(rows.axes),
              program=_np_tree(rows.program), trace=_np_tree(rows.trace),
              renders={k: Render(input=_np_tree(r.input),
                                 target=_np_tree(r.target))
                       for k, r in rows.renders.items()})


def _in_range(name: str, x: np.ndarray, valid, lo: int, hi: int,
              row0: int | np.ndarray = 0) -> np.ndarray:
  """`x` where `valid` (broadcast), checked to lie in [lo, hi]; elsewhere
  (padding, which may hold anything) replaced by `lo`.

  Raises:
    ValueError: naming the first row out of range (row i of `x` is row
      `row0 + i` of the batch, or `row0[i]` when `row0` is an array).
  """
  if x.size == 0 or (x.min() >= lo and x.max() <= hi):
    return x  # fast path: padding included, everything is in range
  valid = np.broadcast_to(valid, x.shape)
  bad = ((x < lo) | (x > hi)) & valid
  if bad.any():
    where = tuple(int(i) for i in np.argwhere(bad)[0])
    row = (int(row0[where[0]]) if isinstance(row0, np.ndarray)
           else row0 + where[0])
    raise ValueError(f"row {row}: {name} {int(x[where])} at "
                     f"{where[1:]} is outside [{lo}, {hi}]")
  return np.where(valid, x, lo)


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
  _in_range("program length", p.length, True, 0, n)
  _in_range("number of steps", tr.num_steps, True, 0, s)
  _in_range("number of outputs", tr.num_output, True, 0, s)
  _in_range("stack depth", tr.depth, True, 0, tr.stack.shape[-1])
  for name in render_names:
    for part in ("input", "target"):
      tok = getattr(rows.renders[name], part)
      _in_range(f"renders[{name!r}].{part} length (longer than its "
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
  op = _in_range("opcode", p.op[sel, :n], valid, 0, isa.NUM_OPS - 1, lo)
  used = (np.arange(3) < isa.REG_ARGS[op][..., None]) & valid[..., None]
  prog = Program(
      op=op, length=length,
      regs=_in_range("register operand", p.regs[sel, :n], used, 0, 7, lo),
      lit=_in_range("literal", p.lit[sel, :n], valid, -_MAX_INDEX,
                    _MAX_INDEX, lo),
      target=p.target[sel, :n],
      target_label=_in_range("target label", p.target_label[sel, :n], valid,
                             -1, _MAX_INDEX, lo),
      label=_in_range("label", p.label[sel, :n], valid, -1, _MAX_INDEX, lo))
  num_steps = tr.num_steps[sel]
  steps = np.arange(s) < num_steps[:, None]                     # [B, S]
  depth = np.where(steps, tr.depth[sel, :s], 0)
  k = int(depth.max())
  in_stack = (np.arange(k) < depth[..., None])
  emit = tr.emit_mask[sel, :s] & steps
  outs = np.arange(o) < tr.num_output[sel, None]
  value = lambda name, x, ok: _in_range(name, x, ok, _VMIN, _VMAX, lo)
  trace = Trace(
      pc=_in_range("pc", tr.pc[sel, :s], steps, 0, _MAX_INDEX, lo),
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
      ids = _in_range(f"renders[{name!r}].{part} token id", tok.ids[sel, :t],
                      np.arange(t) < tok.length[sel, None], 0, _V - 1, lo)
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


def _plan(rows: Rows) -> tuple[list, np.ndarray | None]:
  """Sub-batches of rows to assemble together, and the order they follow.

  Each padded dimension of a sub-batch is cut to its longest row, so rows
  of very different sizes are first sorted by size (when that saves much
  padding: Tier 2), and a sub-batch holds at most `_SUB_BATCH` rows and about
  `_BUDGET` chunk slots.

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
      while n > 1 and n * cost[i:i + n].max() > _BUDGET:
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
  rows, texts, probe_step = checked_rows(
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
    out.append(layout.serialise(take_rows(rows, sel), sub_texts, sub_probe))
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
    self.table = _Table(consts)

  def serialise(self, rows: Rows, texts, probe_step) -> bytes:
    table = self.table
    t, c = table.t, table.const
    b = rows.key_data.shape[0]
    full = lambda s: np.broadcast_to(c[s], (b, c[s].shape[-1]))
    parts = [full(self.head), _ints(table, keys_lib.seeds_from_key_data(rows.key_data)),
             full(',"axes":{')]
    for j, name in enumerate(self.axis_names):
      parts.append(full(self.axis_keys[j]))
      if name == "use_stack":
        bools = np.stack([c["false"], c["true"]])               # [2, 1]
        parts.append(bools[(rows.axes[:, j] != 0).astype(np.intp)])
      else:
        parts.append(_ints(table, rows.axes[:, j]))
    parts += [full(self.mid), _program_ids(t, rows.program),
              full('],"trace":{"steps":['), _steps_ids(t, rows.trace),
              full('],"output":[')]
    tr = rows.trace
    parts.append(_value_list(t, tr.output, tr.num_output))
    parts.append(t["halted"].take(tr.halted.astype(np.intp), axis=0))
    for r, name in enumerate(self.render_names):
      rend = rows.renders[name]
      if name in texts:
        in_text, out_text = (_texts(table, x) for x in texts[name])
      else:
        in_text = _text_ids(t, rend.input.ids, rend.input.length)
        out_text = _text_ids(t, rend.target.ids, rend.target.length)
      parts += [full(self.render_heads[r]),
                _token_list(t, rend.input.ids, rend.input.length),
                full('],"target_ids":['),
                _token_list(t, rend.target.ids, rend.target.length),
                full('],"input_text":"'), in_text,
                full('","target_text":"'), out_text, full('"}')]
    if probe_step is None:
      parts.append(full("}}\n"))
    else:
      pc = np.take_along_axis(tr.pc, probe_step[:, None].astype(np.intp),
                              axis=1)[:, 0]
      parts += [full('},"probe":{"step_t":'), _ints(table, probe_step),
                full(',"executed_pc":'), _ints(table, pc),
                full(',"probe_targets":['), _probe_targets(t, tr),
                full("]}}\n")]
    return table.assemble(np.concatenate(parts, axis=1))


def _probe_targets(t, tr: Trace) -> np.ndarray:
  """Chunk ids [B, X] of `[[regs after step 0],[...],...]` items."""
  b, s = tr.pc.shape
  opener = np.broadcast_to(t["open_bracket"].take(_later(s, 1)), (b, s))
  closer = np.full((b, s), t["close_bracket"], np.int32)
  ids = np.concatenate([opener[..., None], _register_file(t, tr.regs),
                        closer[..., None]], axis=-1)
  ids *= (np.arange(s) < tr.num_steps[:, None])[..., None]
  return ids.reshape(b, -1)


# ------------------------------------------------------------------ reading
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
