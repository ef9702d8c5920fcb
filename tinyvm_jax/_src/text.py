"""Token ids to text, with the reference's quirks (spec section 7). Host, numpy.

Rules, left to right: BOS, EOS and PAD are dropped; NEWLINE is `\\n`; COLON,
EQUALS and MINUS first delete one trailing space, then append `:`, `=`, `-`;
L and digits append themselves with no space; every other token (opcodes,
registers, `?`, DECOMP, userop symbols, reserved ids) appends its name and a
space.

Since only pieces that end in a space can lose it, and only to the next kept
token, a token's text depends on nothing but itself and the next kept token:
`detokenize_batch` uses that to build all strings with array operations.
"""

from typing import Sequence

import numpy as np

from tinyvm_jax._src import isa

_DROPPED = (isa.TOK_BOS, isa.TOK_EOS, isa.TOK_PAD)
_DELETERS = (isa.TOK_COLON, isa.TOK_EQUALS, isa.TOK_MINUS)


def _piece(tok: int) -> str:
  """The text a token appends (before any later deletion)."""
  if tok in _DROPPED:
    return ""
  if tok == isa.TOK_NEWLINE:
    return "\n"
  if tok == isa.TOK_COLON:
    return ":"
  if tok == isa.TOK_EQUALS:
    return "="
  if tok == isa.TOK_MINUS:
    return "-"
  if tok == isa.TOK_L or isa.TOK_DIGIT0 <= tok < isa.TOK_DIGIT0 + 10:
    return isa.TOKENS[tok]
  return isa.TOKENS[tok] + " "  # opcodes, registers, ?, DECOMP, symbols


_PIECES = tuple(_piece(t) for t in range(isa.VOCAB_SIZE))


def _check_ids(ids: np.ndarray, valid: np.ndarray | None = None) -> None:
  bad = (ids < 0) | (ids >= isa.VOCAB_SIZE)
  if valid is not None:
    bad &= valid
  if bad.any():
    where = tuple(int(i) for i in np.argwhere(bad)[0])
    raise ValueError(f"token id {int(ids[where])} at position {where} is "
                     f"outside the vocabulary [0, {isa.VOCAB_SIZE})")


def detokenize(ids: Sequence[int]) -> str:
  """The reference's text of one token id sequence.

  Raises:
    ValueError: for an id outside the vocabulary, naming its position.
  """
  arr = np.asarray(ids, np.int64)
  if arr.ndim != 1:
    raise ValueError(f"detokenize takes one sequence of ids, got shape "
                     f"{arr.shape}; use detokenize_batch for batches")
  _check_ids(arr)
  out: list[str] = []
  for tok in arr.tolist():
    if tok in _DELETERS and out and out[-1].endswith(" "):
      out[-1] = out[-1][:-1]
    piece = _PIECES[tok]
    if piece:
      out.append(piece)
  return "".join(out)


# Two variants per id, as is (id) and without its trailing space (id + V),
# each packed into 8 bytes padded with NUL (which `bytes.translate` removes).
# Only the reserved ids have longer pieces; rows holding one take the slow path.
_VARIANTS = [p.encode("ascii") for p in _PIECES] + [
    p.encode("ascii")[:-1] if p.endswith(" ") else p.encode("ascii")
    for p in _PIECES]
_WIDE = np.array([len(p) > 8 for p in _VARIANTS[:isa.VOCAB_SIZE]])  # [V]
_PACKED = np.frombuffer(b"".join(p[:8].ljust(8, b"\0") for p in _VARIANTS),
                        np.uint64)                                   # [2V]
_PACKED_LEN = np.array([min(len(p), 8) for p in _VARIANTS], np.int64)  # [2V]
_IS_DROPPED = np.isin(np.arange(isa.VOCAB_SIZE), _DROPPED)          # [V]
_IS_DELETER = np.isin(np.arange(isa.VOCAB_SIZE), _DELETERS)         # [V]


def detokenize_batch(ids: np.ndarray, lengths: np.ndarray | None = None
                     ) -> list[str]:
  """The reference's text of each row of a padded batch, vectorised.

  Args:
    ids: [B, T] int token ids.
    lengths: [B] int, tokens of each row to read (the rest is ignored);
      defaults to all T (PAD is dropped anyway).

  Returns:
    B strings, each equal to `detokenize(ids[b, :lengths[b]])`.

  Raises:
    ValueError: for shape mismatches or an id outside the vocabulary.
  """
  ids = np.asarray(ids)
  if ids.ndim != 2:
    raise ValueError(f"ids must be [B, T], got shape {ids.shape}")
  b, t = ids.shape
  if lengths is None:
    lengths = np.full(b, t, np.int64)
  lengths = np.asarray(lengths)
  if lengths.shape != (b,):
    raise ValueError(f"lengths must be [B]=({b},), got shape {lengths.shape}")
  valid = np.arange(t)[None, :] < lengths[:, None]                  # [B, T]
  _check_ids(ids, valid)
  safe = np.where(valid, ids, isa.TOK_PAD).astype(np.intp)          # [B, T]
  keep = ~_IS_DROPPED[safe]
  tok = safe[keep]                                  # [N] kept tokens, row-major
  ends = np.cumsum(keep.sum(axis=1))                # [B] end of each row in tok
  # A piece loses its trailing space when the next kept token of its row is
  # a deleter.
  strip = np.zeros(tok.shape, bool)
  strip[:-1] = _IS_DELETER[tok[1:]]
  strip[ends[ends > 0] - 1] = False
  variant = tok + isa.VOCAB_SIZE * strip
  text = _PACKED[variant].tobytes().translate(None, b"\0").decode("ascii")
  char_end = np.concatenate([[0], np.cumsum(_PACKED_LEN[variant])])[ends]
  bounds = [0] + char_end.tolist()
  out = [text[bounds[i]:bounds[i + 1]] for i in range(b)]
  for i in np.nonzero(_WIDE[safe].any(axis=1))[0]:
    out[i] = detokenize(ids[i, :lengths[i]])
  return out
