"""The chunk tables of the JSONL serializer (`jsonl.rows_to_jsonl`).

Every row is a sequence of *chunks*: ASCII strings of at most 8 bytes, each
stored NUL-padded in one `uint64` of a table. Fixed text (`"regs":[`), small
numbers with their punctuation (register values and pairs of them, pcs,
token ids and pairs, whole instructions, text pieces) are chunks precomputed
once (`tables`); per-row numbers of any size (seeds, axes) are written as
digits with array arithmetic into a per-call part of the table (`Table`).
The functions here turn a batch's arrays into matrices of chunk ids, one
field at a time; `jsonl` lays them out into rows.
"""

import functools
import json
from typing import Sequence

import numpy as np

from tinyvm_jax._src import isa
from tinyvm_jax._src import text as text_lib
from tinyvm_jax._src.types import Program, Trace

_W = 8             # bytes a chunk
# Most chunk slots (about) assembled at a time: a sub-batch's temporaries
# (8 bytes a slot and less) then stay under the emit's mmap threshold
# (`emit.heap`) and are reused instead of mapped and faulted in afresh.
# Measured (emit, JSONL alone, 2 cores): a 20,000-row Tier 2 4.14 M -> 1.82 M
# page faults, 21.2 -> 7.9 system CPU-s, 43.8 -> 29.7 s against 4,000,000;
# 524,288 and 2,097,152 did worse.
BUDGET = 1 << 20
_EMPTY = 0         # id of the empty chunk
_SMALL = 99        # two register values in [-99, 99] share one chunk
MAX_INDEX = 9999  # largest pc / label number / |literal| with chunks
_SUB_BATCH = 1024  # most rows assembled at a time
# Sorting rows by size, and restoring their order, costs about what a third
# of the padding it saves does: sort when the padded slots drop below half.
_SORT_BELOW = 0.5
_LOAD_LIT = 999    # LOADs with |literal| up to this have whole-line chunks

VMIN, VMAX = isa.VALUE_MIN, isa.VALUE_MAX
_NV = VMAX - VMIN + 1       # values in a value family
_NULL = _NV                   # index of `null` after them
_NE = _NV + 1                 # values and null
_NP = (2 * _SMALL + 1) ** 2   # small pairs
V = isa.VOCAB_SIZE
_NO_LABEL = MAX_INDEX + 1
_IS_DROPPED = np.isin(np.arange(V), (isa.TOK_BOS, isa.TOK_EOS, isa.TOK_PAD))
_IS_DELETER = np.isin(np.arange(V),
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


def _value_chunks(st: "_Chunks", t: dict) -> None:
  """Values and pairs of values, step heads and tails (the trace)."""
  vals = [str(v) for v in range(VMIN, VMAX + 1)]
  t["val"] = st.family(vals, ["," + v for v in vals])          # [2 * NV]
  small = range(-_SMALL, _SMALL + 1)
  t["pair"] = st.family([f"{a},{b}" for a in small for b in small],
                        [f",{a},{b}" for a in small for b in small])
  # Pairs by key (a - VMIN) * NV + b - VMIN: the pair's index in "pair",
  # or _NP (an empty chunk after each variant) when either value is outside
  # [-99, 99].
  by_key = np.full((_NV, _NV), _NP, np.uint16)
  sl = slice(-VMIN - _SMALL, -VMIN + _SMALL + 1)
  by_key[sl, sl] = np.arange(_NP).reshape(len(small), -1)
  t["pair_index_by_key"] = by_key.ravel()                      # [NV^2]
  first, later = t["pair"][:_NP], t["pair"][_NP:]
  t["pair"] = np.concatenate([first, [_EMPTY], later, [_EMPTY]])
  idx = range(MAX_INDEX + 1)
  t["step_head"] = st.family(['{"pc":%d,"regs":[' % p for p in idx],
                             [',{"pc":%d,"regs":[' % p for p in idx])
  emitted = vals + ["null"]
  # stack empty, then not empty; value - VMIN, or _NULL for null
  t["emit_tail"] = st.family(
      ['],"stack":[],"emitted":%s}' % e for e in emitted],
      ['],"emitted":%s}' % e for e in emitted])                # [2 * NE, 4]
  t["stack_open"] = st.strings(['],"stack":['])[0]


def _instruction_chunks(st: "_Chunks", t: dict) -> None:
  """Instructions: general layout pieces and whole label-free ones."""
  idx = range(MAX_INDEX + 1)
  # Instructions, general layout: head, registers, literal, label, target.
  t["instr_head"] = st.family(
      ['{"op":"%s","args":[' % o for o in isa.OP_NAMES],
      [',{"op":"%s","args":[' % o for o in isa.OP_NAMES])
  combos = [(c >> 6, (c >> 3) & 7, c & 7) for c in range(512)]
  arg_text = lambda o, c: ",".join(map(str, c[:isa.REG_ARGS[o]]))
  t["args"] = st.family([arg_text(o, c) for o in range(isa.NUM_OPS)
                         for c in combos])                     # [21 * 512]
  lits = range(-MAX_INDEX, MAX_INDEX + 1)
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


def _token_chunks(st: "_Chunks", t: dict) -> None:
  """Token ids and pairs of them, text pieces (escaped and raw)."""
  ids = range(V)
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


@functools.cache
def tables():
  """The static chunk families (built once, about 0.3 s) and their table.

  Lists come in two variants, the first item ("v") and the others (",v"):
  the second variant of a family of n strings starts at index n.
  """
  st = _Chunks()
  t = {}
  _value_chunks(st, t)
  _instruction_chunks(st, t)
  _token_chunks(st, t)
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


class Table:
  """The chunk table of one call: static chunks, the call's fixed strings,
  then a region rewritten for each sub-batch (seeds, axes, given texts)."""

  def __init__(self, consts: Sequence[str]):
    self.t, static = tables()
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


def ints(table: Table, values: np.ndarray) -> np.ndarray:
  """Chunk ids [B, 3] of the decimal text of non-negative integers [B]."""
  v = values.astype(np.uint64)
  pows = np.uint64(10) ** np.arange(19, -1, -1, dtype=np.uint64)  # [20]
  digits = (v[:, None] // pows) % np.uint64(10)                    # [B, 20]
  lead = np.cumsum(digits != 0, axis=1) == 0
  lead[:, -1] = False                      # 0 is written "0"
  mat = np.where(lead, 0, digits + ord("0")).astype(np.uint8)
  return table.put(_matrix(mat))


def texts(table: Table, texts: Sequence[str]) -> np.ndarray:
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


def value_list(t, vals: np.ndarray, count: np.ndarray) -> np.ndarray:
  """Chunk ids [B, N] of the list items `vals[b, :count[b]]`."""
  n = vals.shape[1]
  ids = t["val"].take(vals + (_later(n, _NV) - VMIN))         # [B, N]
  return np.where(np.arange(n) < count[:, None], ids, _EMPTY)


def _register_file(t, regs: np.ndarray) -> np.ndarray:
  """Chunk ids [..., 8] of register files [..., 8] written `a,b,...`: two
  values in [-99, 99] share a chunk (the other id is empty), larger ones
  take one chunk each."""
  a, b = regs[..., 0::2], regs[..., 1::2]                      # [..., 4]
  key = a * _NV
  key += b
  key += -VMIN * _NV - VMIN
  index = t["pair_index_by_key"].take(key)                     # [..., 4]
  big = np.flatnonzero(index == _NP)                           # [N] flat
  pair = t["pair"].take(index + _later(4, _NP + 1))            # "," variants
  out = np.zeros(regs.shape, np.int32)
  out[..., 0::2] = pair
  if big.size:  # pair (a, b) number f is at 2 f, 2 f + 1 of the flat file
    flat_regs, flat_out = regs.reshape(-1), out.reshape(-1)
    flat_out[2 * big] = t["val"].take(
        flat_regs[2 * big] - VMIN + np.where(big % 4 > 0, _NV, 0))
    flat_out[2 * big + 1] = t["val"].take(flat_regs[2 * big + 1]
                                          - VMIN + _NV)
  return out


def program_ids(t, p: Program) -> np.ndarray:
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
                   t["lit"].take(p.lit + MAX_INDEX), _EMPTY)
    label = t["label"].take(np.where(p.label >= 0, p.label, _NO_LABEL),
                            axis=0)
    target = t["target"].take(np.where(p.target_label >= 0, p.target_label,
                                       _NO_LABEL))
    ids = np.concatenate([head, args[..., None], lit[..., None], label,
                          target[..., None]], axis=-1)
  ids *= valid[..., None]
  return ids.reshape(b, -1)


def steps_ids(t, tr: Trace) -> np.ndarray:
  """Chunk ids [B, X] of the step records of `"steps":[...]`."""
  b, s = tr.pc.shape
  parts = [t["step_head"].take(tr.pc + _later(s, MAX_INDEX + 1), axis=0),
           _register_file(t, tr.regs)]
  has_stack = tr.depth > 0                                     # [B, S]
  cap = int(tr.depth.max())
  if cap:
    parts.append(np.where(has_stack[..., None], t["stack_open"], _EMPTY))
    items = t["val"].take(tr.stack[..., :cap] + (_later(cap, _NV) - VMIN))
    parts.append(np.where(np.arange(cap) < tr.depth[..., None], items,
                          _EMPTY))
  emitted = np.where(tr.emit_mask, tr.emitted - VMIN, _NULL)
  parts.append(t["emit_tail"].take(emitted + has_stack * _NE, axis=0))
  ids = np.concatenate(parts, axis=-1)                         # [B, S, c]
  ids *= (np.arange(s) < tr.num_steps[:, None])[..., None]
  return ids.reshape(b, -1)


def token_list(t, ids: np.ndarray, length: np.ndarray) -> np.ndarray:
  """Chunk ids [B, X] of a token id list's items (pairs share a chunk)."""
  b, n = ids.shape
  if n % 2:
    ids = np.concatenate([ids, np.zeros((b, 1), ids.dtype)], axis=1)
  n2 = ids.shape[1] // 2
  pairs = ids[:, 0::2] * V + ids[:, 1::2] + _later(n2, V * V)
  out = np.where(np.arange(n2) < length[:, None] // 2,
                 t["tok_pair"].take(pairs), _EMPTY)            # [B, N2]
  odd = np.nonzero(length % 2)[0]
  if odd.size:
    j = length[odd] // 2
    out[odd, j] = t["tok"].take(ids[odd, 2 * j] + np.where(j > 0, V, 0))
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
  return tok + V * strip


def text_ids(t, ids: np.ndarray, length: np.ndarray, raw: bool = False
              ) -> np.ndarray:
  """Chunk ids [B, X] of the text of token ids (see `text`), JSON-escaped
  unless `raw`."""
  return _variant_text_ids(t, _text_variants(ids, length), raw)


def _variant_text_ids(t, var: np.ndarray, raw: bool) -> np.ndarray:
  """`text_ids` of text variants [B, T] (`_text_variants`)."""
  b, n = var.shape
  if n % 2:
    var = np.concatenate([var, np.full((b, 1), isa.TOK_PAD)], axis=1)
  name = "raw_pair" if raw else "text_pair"
  if not _IS_RESERVED.take(var % V).any():
    name += "_short"
  pairs = var[:, 0::2] * (2 * V) + var[:, 1::2]
  return t[name].take(pairs, axis=0).reshape(b, -1)


def texts_arrow_buffers(ids: np.ndarray, length: np.ndarray
                        ) -> tuple[np.ndarray, bytes]:
  """The texts of a batch of token id sequences as one buffer: [B + 1]
  int64 offsets and the UTF-8 (ASCII) bytes, for `pyarrow` string arrays.

  Args:
    ids: [B, T] token ids; length: [B], tokens of each row to read.
  """
  t, data = tables()
  b = ids.shape[0]
  counts = np.zeros(b, np.int64)
  out = []
  step = max(1, BUDGET // max(1, ids.shape[1]))
  for lo in range(0, b, step):
    sl = slice(lo, min(b, lo + step))
    n = max(1, int(length[sl].max()))
    sub_ids, sub_len = ids[sl, :n], length[sl]
    in_range("token id", sub_ids, np.arange(n) < sub_len[:, None], 0,
              V - 1, lo)
    var = _text_variants(sub_ids, sub_len)                     # [b, n]
    counts[sl] = t["raw_len"].take(var).sum(1)
    flat = _variant_text_ids(t, var, raw=True).ravel()
    flat = np.compress(flat != _EMPTY, flat)
    out.append(data.take(flat).tobytes().translate(None, b"\0"))
  offsets = np.zeros(b + 1, np.int64)
  np.cumsum(counts, out=offsets[1:])
  return offsets, b"".join(out)


# ------------------------------------------------------------------ checks
def probe_targets(t, tr: Trace) -> np.ndarray:
  """Chunk ids [B, X] of `[[regs after step 0],[...],...]` items."""
  b, s = tr.pc.shape
  opener = np.broadcast_to(t["open_bracket"].take(_later(s, 1)), (b, s))
  closer = np.full((b, s), t["close_bracket"], np.int32)
  ids = np.concatenate([opener[..., None], _register_file(t, tr.regs),
                        closer[..., None]], axis=-1)
  ids *= (np.arange(s) < tr.num_steps[:, None])[..., None]
  return ids.reshape(b, -1)


# ------------------------------------------------------------------ reading

def in_range(name: str, x: np.ndarray, valid, lo: int, hi: int,
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
