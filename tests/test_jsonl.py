"""JSONL writer: byte-exact against the reference rows and a slow writer."""

import gzip
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import DATA, row_files
from tinyvm_jax._src import interpreter
from tinyvm_jax._src import isa
from tinyvm_jax._src import keys
from tinyvm_jax._src.io import jsonl
from tinyvm_jax._src.io import jsonl_chunks
from tinyvm_jax._src import program as program_lib
from tinyvm_jax._src import text
from tinyvm_jax._src.types import Program, Render, Rows, Tokens, Trace


def read_file(name):
  with gzip.open(DATA / f"{name}.jsonl.gz", "rb") as f:
    return f.read()


def write(batch: jsonl.JsonBatch, rows=None, **kw):
  return jsonl.rows_to_jsonl(
      batch.rows if rows is None else rows, tier=batch.tier,
      split=batch.split, bucket=batch.bucket, axis_names=batch.axis_names,
      render_names=batch.render_names, probe_step=batch.probe_step, **kw)


@pytest.fixture(scope="module", params=row_files())
def reference(request):
  raw = read_file(request.param)
  return raw, jsonl.rows_from_json(jsonl.parse_rows(raw))


def test_every_reference_row_byte_for_byte(reference):
  raw, batch = reference
  assert write(batch) == raw


def test_given_texts_are_written_as_given(reference):
  raw, batch = reference
  rows = jsonl.parse_rows(raw)
  texts = {name: ([r["renders"][name]["input_text"] for r in rows],
                  [r["renders"][name]["target_text"] for r in rows])
           for name in batch.render_names}
  assert write(batch, texts=texts) == raw


@pytest.mark.parametrize("name,sub_batch,budget,sorted_", [
    ("tier1_train", 16, jsonl_chunks.BUDGET, True),
    ("tier2_train", 4, jsonl_chunks.BUDGET, True),
    ("tier2_train", 4, 20_000, False),   # one row a sub-batch
    ("tier0_train", 7, jsonl_chunks.BUDGET, False),
])
def test_sub_batches_and_size_order(monkeypatch, name, sub_batch, budget,
                                    sorted_):
  """Rows in several sub-batches, sorted by size or not, come out in order."""
  raw = read_file(name)
  batch = jsonl.rows_from_json(jsonl.parse_rows(raw))
  monkeypatch.setattr(jsonl, "_SUB_BATCH", sub_batch)
  monkeypatch.setattr(jsonl_chunks, "BUDGET", budget)
  monkeypatch.setattr(jsonl, "_SORT_BELOW", 1.0 if sorted_ else 0.0)
  batches, order = jsonl._plan(batch.rows)
  assert (order is not None) == sorted_ and len(batches) > 3
  assert write(batch) == raw


def test_device_arrays():
  raw = read_file("tier1_eval_len_8")
  batch = jsonl.rows_from_json(jsonl.parse_rows(raw))
  rows = jax.tree_util.tree_map(jnp.asarray, batch.rows)
  assert write(batch, rows) == raw


def test_seed_of_int32_key_data():
  key_data = np.array([[-1, -2], [0, 1], [7, -2 ** 31]], np.int32)
  assert keys.seeds_from_key_data(key_data).tolist() == [
      (2 ** 32 - 1) << 32 | (2 ** 32 - 2), 1, 7 << 32 | 2 ** 31]


def test_empty_batch():
  batch = jsonl.rows_from_json(jsonl.parse_rows(read_file("tier0_train")))
  empty = jax.tree_util.tree_map(lambda x: x[:0], batch.rows)
  assert write(batch, empty) == b""


# ------------------------------------------- random arrays vs a slow writer
def slow_line(rows: Rows, i: int, *, tier, split, bucket, axis_names,
              render_names, probe_step=None) -> bytes:
  """The row as the reference builds it: dicts, then json.dumps."""
  pick = lambda tree: jax.tree_util.tree_map(lambda x: np.asarray(x)[i],
                                             tree)
  tr = pick(rows.trace)
  hi, lo = (int(x) for x in rows.key_data[i])
  axes = {a: bool(v) if a == "use_stack" else int(v)
          for a, v in zip(axis_names, rows.axes[i])}
  renders = {}
  for name in render_names:
    r = pick(rows.renders[name])
    ids = [np.asarray(t.ids)[:int(t.length)] for t in (r.input, r.target)]
    renders[name] = {"input_ids": ids[0].tolist(),
                     "target_ids": ids[1].tolist(),
                     "input_text": text.detokenize(ids[0]),
                     "target_text": text.detokenize(ids[1])}
  row = {"meta": {"tier": tier, "split": split, "bucket": bucket,
                  "seed": hi << 32 | lo, "axes": axes,
                  "renders": list(render_names)},
         "program": program_lib.to_json(pick(rows.program)),
         "trace": interpreter.trace_to_json(tr), "renders": renders}
  if probe_step is not None:
    s = int(probe_step[i])
    row["probe"] = {"step_t": s, "executed_pc": int(tr.pc[s]),
                    "probe_targets": tr.regs[:int(tr.num_steps)].tolist()}
  return json.dumps(row, separators=(",", ":")).encode() + b"\n"


def random_rows(rng, *, b=40, p=12, s=10, t=30, labels=True, big=True):
  """Arrays in every corner of the format (not runnable programs)."""
  length = rng.integers(0, p + 1, b)
  ops = isa.NUM_OPS if labels else isa.NUM_BASE_OPS
  lit_max = 9999 if big else 999
  lab = lambda: np.where(rng.random((b, p)) < 0.3,
                         rng.integers(0, 10_000, (b, p)), -1) if labels \
      else np.full((b, p), -1)
  prog = Program(op=rng.integers(0, ops, (b, p)),
                 regs=rng.integers(0, 8, (b, p, 3)),
                 lit=rng.integers(-lit_max, lit_max + 1, (b, p)),
                 target=np.full((b, p), -1), target_label=lab(), label=lab(),
                 length=length)
  small = rng.random((b, s, 8)) < 0.7
  value = lambda shape: rng.integers(isa.VALUE_MIN, isa.VALUE_MAX + 1, shape)
  regs = np.where(small, rng.integers(-99, 100, (b, s, 8)), value((b, s, 8)))
  depth = rng.integers(0, isa.STACK_SIZE + 1, (b, s))
  stack = np.where(np.arange(16) < depth[..., None], value((b, s, 16)), 0)
  trace = Trace(pc=rng.integers(0, 10_000, (b, s)), regs=regs, stack=stack,
                depth=depth, emitted=value((b, s)),
                emit_mask=rng.random((b, s)) < 0.3, output=value((b, s)),
                num_output=rng.integers(0, s + 1, b),
                num_steps=rng.integers(1, s + 1, b),
                halted=rng.random(b) < 0.5, error=np.zeros(b, np.int32))
  trace = jax.tree_util.tree_map(lambda x: np.asarray(x, x.dtype), trace)

  def tokens():
    return Tokens(ids=rng.integers(0, isa.VOCAB_SIZE, (b, t)),
                  length=rng.integers(0, t + 1, b))

  renders = {"direct": Render(input=tokens(), target=tokens()),
             "cot": Render(input=tokens(), target=tokens())}
  key_data = rng.integers(0, 2 ** 32, (b, 2), dtype=np.uint64)
  key_data[0] = [2 ** 32 - 1, 2 ** 32 - 1]
  key_data[1] = [0, 0]
  axes = np.stack([rng.integers(0, 10 ** 6, b), rng.integers(0, 2, b)], 1)
  return Rows(key_data=key_data.astype(np.uint32), axes=axes, program=prog,
              trace=trace, renders=renders)


@pytest.mark.parametrize("labels,big,probe", [
    (False, False, False),   # whole-instruction chunks
    (True, True, False),     # general instruction layout
    (True, True, True),      # probe rows
])
def test_random_rows_match_slow_writer(labels, big, probe):
  rng = np.random.default_rng(int(labels) * 4 + int(big) * 2 + int(probe))
  rows = random_rows(rng, labels=labels, big=big)
  b = rows.key_data.shape[0]
  probe_step = (rng.integers(0, 1 << 30, b) % rows.trace.num_steps
                if probe else None)
  kw = dict(tier="tier9", split="train", bucket=None,
            axis_names=("n", "use_stack"), render_names=("direct", "cot"),
            probe_step=probe_step)
  got = jsonl.rows_to_jsonl(rows, **kw).splitlines(keepends=True)
  assert len(got) == b
  for i in range(b):
    assert got[i] == slow_line(rows, i, **kw), f"row {i}"


def test_text_with_inner_dropped_and_reserved_ids():
  ids = np.array([[40, 0, 42, 34, 41, 16, 36, 49, 37, 63, 34, 25, 40, 39],
                  [16, 36, 41, 41, 41, 41, 41, 41, 41, 41, 41, 41, 41, 41]])
  length = np.array([14, 3])
  t, _ = jsonl_chunks.tables()
  for raw in (False, True):
    chunks = jsonl_chunks.text_ids(t, ids, length, raw=raw)
    data = jsonl_chunks.tables()[1]
    for i in range(2):
      got = data.take(chunks[i][chunks[i] != 0]).tobytes().replace(b"\0", b"")
      want = text.detokenize(ids[i, :length[i]])
      assert got.decode() == (want if raw else json.dumps(want)[1:-1])
  offsets, blob = jsonl_chunks.texts_arrow_buffers(ids, length)
  assert [blob[offsets[i]:offsets[i + 1]].decode() for i in range(2)] == [
      text.detokenize(ids[i, :length[i]]) for i in range(2)]


# ------------------------------------------------------------- bad inputs
def good():
  raw = read_file("tier1_eval_len_8")
  return jsonl.rows_from_json(jsonl.parse_rows(raw))


def replace(rows, **kw):
  fields = {f: getattr(rows, f) for f in Rows.__dataclass_fields__}
  fields.update(kw)
  return Rows(**fields)


def set_in(dc, field, fn):
  fields = {f: getattr(dc, f) for f in type(dc).__dataclass_fields__}
  fields[field] = fn(np.array(fields[field]))
  return type(dc)(**fields)


def with_(arr, index, value):
  arr[index] = value
  return arr


@pytest.mark.parametrize("change,message", [
    (lambda b: dict(axis_names=("n",)), "axes has shape"),
    (lambda b: dict(render_names=("direct", "cot")), "render_names"),
    (lambda b: dict(rows=replace(b.rows, trace=set_in(
        b.rows.trace, "error", lambda e: with_(e, 3, 4)))),
     "row 3: its trace ended with an error"),
    (lambda b: dict(rows=replace(b.rows, trace=set_in(
        b.rows.trace, "regs", lambda r: with_(r, (2, 1, 5), 5000)))),
     r"row 2: register value 5000"),
    (lambda b: dict(rows=replace(b.rows, program=set_in(
        b.rows.program, "regs", lambda r: with_(r, (4, 0, 0), 9)))),
     "row 4: register operand 9"),
    (lambda b: dict(rows=replace(b.rows, renders={"direct": Render(
        input=set_in(b.rows.renders["direct"].input, "ids",
                     lambda r: with_(r, (1, 0), 64)),
        target=b.rows.renders["direct"].target)})),
     r"row 1: renders\['direct'\].input token id 64"),
    (lambda b: dict(rows=replace(b.rows, renders={"direct": Render(
        input=set_in(b.rows.renders["direct"].input, "length",
                     lambda r: with_(r, 0, 10 ** 4)),
        target=b.rows.renders["direct"].target)})), "overflowed"),
    (lambda b: dict(rows=replace(b.rows, axes=-b.rows.axes)), "axes must"),
    (lambda b: dict(rows=replace(b.rows, key_data=b.rows.key_data[:, :1])),
     "key_data has shape"),
    (lambda b: dict(probe_step=np.full(50, 999)), "probe_step 999"),
    (lambda b: dict(probe_step=np.zeros(3, int)), "probe_step has shape"),
    (lambda b: dict(texts={"direct": (["x"], ["y"])}), "2 strings|strings"),
    (lambda b: dict(texts={"cot": ([], [])}), "not one of the renders"),
])
def test_bad_input_is_a_clear_error(change, message):
  b = good()
  kw = dict(rows=b.rows, tier=b.tier, split=b.split, bucket=b.bucket,
            axis_names=b.axis_names, render_names=b.render_names)
  kw.update(change(b))
  with pytest.raises(ValueError, match=message):
    jsonl.rows_to_jsonl(**kw)


def test_not_rows_is_a_type_error():
  with pytest.raises(TypeError, match="Rows batch"):
    jsonl.rows_to_jsonl({}, tier="t", split="s", bucket=None, axis_names=(),
                        render_names=())


# ------------------------------------------------------------------ reading
def test_parse_rows_blob_and_lines():
  raw = read_file("tier0_eval_all")
  rows = jsonl.parse_rows(raw)
  assert rows == jsonl.parse_rows(raw.decode().splitlines())
  assert len(rows) == raw.count(b"\n")
  program, trace = jsonl.row_to_arrays(rows[0])
  assert program_lib.to_json(program) == rows[0]["program"]
  assert interpreter.trace_to_json(trace) == rows[0]["trace"]


@pytest.mark.parametrize("lines,message", [
    ([b'{"meta": 1}', b"{oops"], "line 2: not JSON"),
    ([b"[1, 2]"], "line 1: a row must be a JSON object"),
])
def test_parse_rows_bad_input(lines, message):
  with pytest.raises(ValueError, match=message):
    jsonl.parse_rows(lines)


def test_rows_from_json_bad_input():
  rows = jsonl.parse_rows(read_file("tier0_train"))[:2]
  with pytest.raises(ValueError, match="at least one row"):
    jsonl.rows_from_json([])
  other = json.loads(json.dumps(rows[1]))
  other["meta"]["split"] = "eval"
  with pytest.raises(ValueError, match="row 1: meta differs"):
    jsonl.rows_from_json([rows[0], other])
  with pytest.raises(ValueError, match="more than max_tokens"):
    jsonl.rows_from_json(rows, max_tokens=3)
