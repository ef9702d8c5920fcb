"""score_output against the reference's loose parser (spec section 8)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinyvm_jax._src import isa
from tinyvm_jax._src.score import score, score_output

BOS, EOS, PAD = isa.TOK_BOS, isa.TOK_EOS, isa.TOK_PAD
NL, MINUS = isa.TOK_NEWLINE, isa.TOK_MINUS
R0 = isa.TOK_R0


def D(*digits):
  return [isa.TOK_DIGIT0 + d for d in digits]


def reference_parse(ids):
  """The reference's parser; None where it would loop forever or an id is
  outside the vocabulary."""
  ids = list(ids)
  if any(not 0 <= t < isa.VOCAB_SIZE for t in ids):
    return None
  if ids and ids[0] == BOS:
    ids = ids[1:]
  if ids and ids[-1] == EOS:
    ids = ids[:-1]
  out, i = [], 0
  is_digit = lambda t: isa.TOK_DIGIT0 <= t < isa.TOK_DIGIT0 + 10
  while i < len(ids):
    if ids[i] == NL:
      i += 1
      continue
    neg = ids[i] == MINUS
    i += neg
    j = i
    while j < len(ids) and is_digit(ids[j]):
      j += 1
    if j > i:
      v = int("".join(str(t - isa.TOK_DIGIT0) for t in ids[i:j]))
      out.append(-v if neg else v)
    elif not neg:
      return None  # no progress: the reference spins here
    i = j
  return out


def reference_score(pred, target):
  a, b = reference_parse(pred), reference_parse(target)
  return float(a is not None and b is not None and a == b)


CASES = [  # (pred, target, score): the cases of spec section 8
    ([BOS] + D(5) + [EOS], [BOS] + D(5) + [NL, EOS], 1.0),
    (D(1) + [MINUS] + D(2), [BOS] + D(1) + [NL, MINUS] + D(2) + [NL, EOS], 1.0),
    ([MINUS, MINUS] + D(5), [MINUS] + D(5), 1.0),
    ([MINUS], [], 1.0),                           # a lone MINUS is ignored
    ([BOS] + D(0, 0, 7) + [EOS], D(7), 1.0),      # leading zeros
    ([], [BOS, EOS], 1.0),
    ([MINUS] + D(0), D(0), 1.0),                  # -0 == 0
    ([BOS] + D(5) + [EOS], [BOS] + D(6) + [EOS], 0.0),
    ([BOS] + D(5) + [EOS], [BOS] + D(5) + [NL] + D(5) + [EOS], 0.0),
    ([BOS] + D(5) + [EOS], [BOS, MINUS] + D(5) + [EOS], 0.0),
    ([BOS, R0] + D(5) + [EOS], [BOS] + D(5) + [EOS], 0.0),  # register: hangs
    ([BOS] + D(5) + [MINUS, R0, EOS], D(5), 0.0),
    ([BOS, BOS] + D(5) + [EOS], D(5), 0.0),       # a second BOS hangs
    ([BOS] + D(5) + [NL, PAD, PAD], D(5), 0.0),   # PAD before any EOS hangs
    ([BOS] + D(5) + [64, EOS], D(5), 0.0),        # outside the vocabulary
    ([BOS] + D(5) + [-1, EOS], D(5), 0.0),
    ([BOS] + D(1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2) + [EOS],
     D(1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2), 1.0),  # beyond int32, exact
    ([BOS] + D(1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2) + [EOS],
     D(1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 3), 0.0),
]


@pytest.mark.parametrize("pred,target,expected", CASES)
def test_spec_cases(pred, target, expected):
  assert reference_score(pred, target) == expected
  assert score(pred, target) == expected
  assert score(target, pred) == expected


def test_padding_after_eos_is_ignored():
  pred = jnp.array([BOS] + D(5) + [EOS, PAD, PAD, R0, 99])
  target = jnp.array([BOS] + D(5) + [NL, EOS, PAD])
  assert float(jax.jit(score_output)(pred, target)) == 1.0


def test_jit_vmap_matches_per_example():
  rows = [(p, t) for p, t, _ in CASES]
  width = max(len(x) for r in rows for x in r) + 1
  padded = lambda x: x + [EOS] + [PAD] * (width - len(x) - 1)
  preds = jnp.array([padded(p) for p, _ in rows])
  targets = jnp.array([padded(t) for _, t in rows])
  traces = []

  @jax.jit
  def batch(p, t):
    traces.append(1)
    return jax.vmap(score_output)(p, t)

  got = np.asarray(batch(preds, targets))
  np.testing.assert_array_equal(got, [s for _, _, s in CASES])
  batch(targets, preds)
  assert len(traces) == 1
  assert got.dtype == np.float32


ALPHABET = st.sampled_from(D(*range(10)) * 2 + [MINUS, MINUS, NL, NL, BOS,
                                                 EOS, R0, PAD, 70])


@settings(max_examples=300, deadline=None)
@given(st.lists(ALPHABET, max_size=12), st.lists(ALPHABET, max_size=12),
       st.booleans())
def test_matches_reference_parser(pred, target, add_bos):
  # Where a sequence holds no EOS but perhaps a last one, our reading and the
  # reference's agree exactly (hangs included, as 0.0).
  def clean(x):
    x = [t for t in x if t != EOS]
    return ([BOS] if add_bos else []) + x
  pred, target = clean(pred), clean(target) + [EOS]
  assert score(pred, target) == reference_score(pred, target)


@pytest.mark.parametrize("pred,target", [
    (jnp.zeros((2, 3), jnp.int32), jnp.zeros(3, jnp.int32)),
    (jnp.zeros(3, jnp.float32), jnp.zeros(3, jnp.int32)),
])
def test_bad_input_arrays(pred, target):
  with pytest.raises(ValueError, match="pred_ids"):
    score_output(pred, target)


@pytest.mark.parametrize("pred", ["12", [1.5], [True], 5])
def test_bad_input_host(pred):
  with pytest.raises(ValueError, match="pred_ids"):
    score(pred, [BOS, EOS])
