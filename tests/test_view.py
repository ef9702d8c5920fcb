"""The viewer's server, row access, comparisons, export and CLI (no browser;
see test_view_browser.py for the pages)."""

import http.client
import json
import os
import random
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest

import view_helpers as vh
from tinyvm_jax._src.view import compare as compare_lib
from tinyvm_jax._src.view import datasets as datasets_lib
from tinyvm_jax._src.view import model

ROOT = Path(__file__).resolve().parents[1]


def get(base: str, path: str, params=None, *, method="GET", body=None,
        headers=None):
  """(status, parsed JSON or raw bytes) of one request."""
  u = urllib.parse.urlsplit(base)
  conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
  target = path + ("?" + urllib.parse.urlencode(params) if params else "")
  conn.request(method, target, body=body, headers=headers or {})
  res = conn.getresponse()
  raw = res.read()
  conn.close()
  if res.getheader("Content-Type", "").startswith("application/json"):
    return res.status, json.loads(raw)
  return res.status, raw


@pytest.fixture(scope="module")
def preds(view_root, tmp_path_factory):
  """A direct predictions file over tier1 len_8 (rows 0, 2 wrong) and a cot
  one over tier2 hard (row 0 wrong at step 3, R4)."""
  d = tmp_path_factory.mktemp("preds")
  t1 = vh.jsonl_rows(view_root / "tier1" / "eval" / "len_8.jsonl")
  rows = [vh.corrupt_value(r, i) if i in (0, 2) else vh.prediction(r, index=i)
          for i, r in enumerate(t1)]
  t2 = vh.jsonl_rows(view_root / "tier2" / "eval" / "hard.jsonl")
  cot = [vh.corrupt_cot(t2[0], 0, 3, 4)] + [
      vh.prediction(r, render="cot", index=i) for i, r in enumerate(t2)][1:]
  return (vh.write(d / "direct.jsonl", rows), vh.write(d / "cot.jsonl", cot))


@pytest.fixture(scope="module")
def server(view_root, preds):
  with vh.running([view_root], preds) as (base, app):
    yield base, app


# ------------------------------------------------------------ rows
def test_catalog_lists_both_tiers_and_formats(server):
  status, cat = get(server[0], "/api/datasets")
  assert status == 200
  by = {d["tier"]: d for d in cat["datasets"]}
  assert by["tier1"]["formats"] == ["zarr", "jsonl", "parquet"]
  assert by["tier2"]["formats"] == ["zarr", "jsonl"]
  groups = {g["name"]: g["rows"] for g in by["tier1"]["groups"]}
  assert groups["train"] == 200 and groups["eval/len_128"] == 20
  assert [p["rows"] for p in cat["predictions"]] == [20, 4]


@pytest.mark.parametrize("fmt", ["zarr", "jsonl", "parquet"])
def test_a_row_is_the_same_in_every_format(server, view_root, fmt):
  truth = vh.jsonl_rows(view_root / "tier1" / "eval" / "len_16.jsonl")[7]
  status, view = get(server[0], "/api/row", {"ds": 0, "group": "eval/len_16",
                                             "i": 7, "fmt": fmt})
  assert status == 200, view
  want = model.row_view(truth)
  for key in ("lines", "steps", "output", "halted", "renders"):
    assert view[key] == want[key], key
  assert view["meta"]["seed"] == str(truth["meta"]["seed"])
  assert view["meta"]["format"] == fmt


def test_step_records_mark_writes_and_clamps():
  out = model.run_source("LOAD R1 127\nMUL R2 R1 R1\nPUSH R2\nPOP R3\n"
                         "PRINT R3\nHALT")
  steps = out["view"]["steps"]
  assert [s["written"] for s in steps] == [1, 2, None, 3, None, None]
  assert [s["clamped"] for s in steps] == [False, True] + [False] * 4
  assert steps[1]["raw"] == 127 * 127 and steps[1]["regs"][2] == 1023
  assert steps[2]["stack"] == [1023] and steps[3]["stack"] == []
  assert out["view"]["output"] == [1023] and out["view"]["fault"] is None


@pytest.mark.parametrize("fmt", ["zarr", "jsonl", "parquet"])
def test_filters_page_and_find(server, view_root, fmt):
  rows = vh.jsonl_rows(view_root / "tier1" / "train.jsonl")
  want = [i for i, r in enumerate(rows) if r["meta"]["axes"]["k"] == 4 and
          8 <= r["meta"]["axes"]["n"] <= 16]
  q = {"ds": 0, "group": "train", "fmt": fmt, "k": "4", "n": "8-16",
       "size": 7, "page": 1}
  status, page = get(server[0], "/api/rows", q)
  assert status == 200, page
  assert page["matched"] == len(want) and page["total"] == 200
  assert [r["index"] for r in page["rows"]] == want[7:14]
  zeros = [i for i, r in enumerate(rows) if r["trace"]["output"] == [0]]
  _, page = get(server[0], "/api/rows", {"group": "train", "fmt": fmt,
                                         "value": "0", "size": 200})
  assert [r["index"] for r in page["rows"]] == zeros
  _, page = get(server[0], "/api/rows", {"group": "train", "error": "any"})
  assert page["matched"] == 0
  seed = rows[123]["meta"]["seed"]
  assert get(server[0], "/api/find", {"group": "train", "fmt": fmt,
                                      "seed": seed}) == (200, {"index": 123})


@pytest.mark.parametrize("params, status, needle", [
    ({"group": "train", "i": 200}, 404, "out of range"),
    ({"group": "eval/nope", "i": 0}, 404, "no group 'eval/nope'"),
    ({"group": "train", "i": "x"}, 400, "must be an integer"),
    ({"group": "train", "i": 10 ** 30}, 400, "must be an integer"),
    ({"ds": 9, "group": "train", "i": 0}, 400, "'ds' must be in [0, 1]"),
    ({"group": "train", "i": 0, "fmt": "csv"}, 400, "unknown format"),
    ({"ds": 1, "group": "train", "i": 0, "fmt": "parquet"}, 404,
     "has no parquet files"),
])
def test_bad_row_requests_are_4xx_json(server, params, status, needle):
  got, body = get(server[0], "/api/row", params)
  assert got == status and needle in body["error"], body


# ------------------------------------------------------------ Playground
@pytest.mark.parametrize("source, line, needle, ran", [
    ("LOAD R0 1\nADD R0 R0\nHALT", 2, "operand 3", False),
    ("LOAD R0 1\nPRINT R3\nHALT", 2, "R3", True),
    ("LOAD R0 500\nPRINT R0", 1, "literal", True),
    ("L1: NOP\nJMP L1", None, None, True),
])
def test_run_diagnostics_are_on_their_line(server, source, line, needle, ran):
  status, out = get(server[0], "/api/run", method="POST",
                    body=json.dumps({"source": source}))
  assert status == 200
  if line is None:
    assert out["diagnostics"] == []
    assert "4,096 steps" in out["view"]["fault"]["message"]
  else:
    d = out["diagnostics"][0]
    assert d["line"] == line and needle in d["message"], out["diagnostics"]
  assert (out["view"] is not None) == ran


def test_every_example_parses_and_runs():
  for ex in model.examples():
    out = model.run_source(ex["source"])
    assert out["view"] is not None, ex["name"]
    assert not [d for d in out["diagnostics"] if d["severity"] == "error"]
    if "fault" in ex["name"]:
      assert "underflow" in out["view"]["fault"]["message"]
    else:
      assert out["diagnostics"] == [] and out["view"]["fault"] is None, ex
      assert out["view"]["halted"]


# ------------------------------------------------------------ Compare
def test_compare_anchors_the_first_divergence(server, view_root):
  rows = vh.jsonl_rows(view_root / "tier1" / "eval" / "len_8.jsonl")
  status, fails = get(server[0], "/api/failures", {"p": 0})
  assert status == 200 and [r["k"] for r in fails["rows"]] == [0, 2]
  _, cat = get(server[0], "/api/datasets")
  assert cat["predictions"][0]["buckets"] == [{
      "group": "eval/len_8", "rows": 20, "exact": 18, "accuracy": 0.9,
      "mean_score": 0.9}]
  status, c = get(server[0], "/api/compare", {"p": 0, "k": 2})
  assert status == 200, c
  printed = [t for t, s in enumerate(rows[2]["trace"]["steps"])
             if s["emitted"] is not None]
  assert c["divergence"] == {"index": 0, "step": printed[0],
                             "unparseable": False}
  assert c["anchor_step"] == printed[0]
  assert c["truth_values"] == rows[2]["trace"]["output"]
  assert c["predicted_values"] == [rows[2]["trace"]["output"][0] + 1]
  assert "dataset tier1" in c["truth_source"]


def test_cot_compare_finds_the_first_wrong_register(server):
  status, c = get(server[0], "/api/compare", {"p": 1, "k": 0})
  assert status == 200, c
  first = c["cot"]["first"]
  assert first["step"] == 3 and first["kind"] == "register"
  assert first["register"] == 4 and first["predicted"] == first["truth"] + 7
  assert c["anchor_step"] == 3 and c["divergence"] is None
  _, ok = get(server[0], "/api/compare", {"p": 1, "k": 1})
  assert ok["cot"]["first"] is None and ok["divergence"] is None


def test_truth_is_rebuilt_from_the_seed_without_a_dataset(view_root, preds):
  with vh.running([], [preds[0]]) as (base, _):
    status, c = get(base, "/api/compare", {"p": 0, "k": 2})
  assert status == 200, c
  assert c["truth_source"] == "rebuilt from its seed"
  row = vh.jsonl_rows(view_root / "tier1" / "eval" / "len_8.jsonl")[2]
  assert c["view"]["lines"] == model.row_view(row)["lines"]
  assert c["divergence"]["index"] == 0


def test_a_seed_mismatch_is_reported(view_root, tmp_path):
  row = vh.jsonl_rows(view_root / "tier1" / "eval" / "len_8.jsonl")[1]
  p = vh.prediction(row, index=1)
  p["seed"] += 1
  path = vh.write(tmp_path / "p.jsonl", [p])
  with vh.running([view_root], [path]) as (base, _):
    status, body = get(base, "/api/compare", {"p": 0, "k": 0})
  assert status == 404 and "seed mismatch" in body["error"]


def test_cot_parsing_of_garbage():
  steps, values, junk = compare_lib.parse_cot("LOAD R0 5\nR0=5\n??\n5\n")
  assert steps == [{"instruction": "LOAD R0 5", "regs": {0: 5}}]
  assert values == [5] and junk == ["??"]
  assert compare_lib.value_divergence([1, 2], [1, 2, 3]) == 2
  assert compare_lib.value_divergence([1], None) == 0
  assert compare_lib.value_divergence([4], [4]) is None


# ------------------------------------------------------------ export
def test_export_is_self_contained(server):
  status, html = get(server[0], "/api/export", {"p": 0, "k": 0})
  assert status == 200
  text = html.decode()
  assert 'id="tinyvm-bundle"' in text and "http://" not in text
  assert "<script src" not in text and "<link" not in text
  bundle = text.split('id="tinyvm-bundle">', 1)[1].split("</script>", 1)[0]
  assert json.loads(bundle)["kind"] == "compare"


# ------------------------------------------------------------ fuzz
def _fuzz_request(rng: random.Random) -> tuple:
  paths = ["/api/row", "/api/rows", "/api/find", "/api/compare",
           "/api/failures", "/api/export", "/api/datasets", "/static/app.js",
           "/", "/api/run"]
  evil = ["/../../etc/passwd", "/static/../secret.txt", "/static/%2e%2e/x",
          "/static/..%2fsecret.txt", "//etc/passwd", "/%00", "/static/",
          "/api/row/../../secret.txt", "/static/app.js/..",
          "/" + "a" * 3000, "/api/%72ow", "\\..\\secret.txt",
          "/static/style.css%00.js", "/secret.txt"]
  method = rng.choice(["GET", "GET", "POST", "HEAD", "PUT", "DELETE",
                       "OPTIONS", "PATCH"])
  path = rng.choice(paths + evil)
  keys = ["ds", "group", "i", "fmt", "page", "size", "seed", "p", "k", "n",
          "value", "error"]
  values = ["0", "-1", "1" * 40, "x", "", "../..", "%00", "1e9", "2-",
            "eval/len_8", "train", "99999999999999999999", "0x10", "1,2",
            "any", " 3", "\u2603", "18446744073709551616", "3--4"]
  params = {rng.choice(keys): rng.choice(values)
            for _ in range(rng.randint(0, 5))}
  body = None
  if method == "POST":
    body = rng.choice([b"", b"{", b"[]", b"null", b'{"source": 5}',
                       json.dumps({"source": rng.choice(
                           ["JMP L9", "POP R0", "LOAD R0", "R9", "\x00",
                            "LOAD R0 1\n" * 300, "L1: L1:", "; only",
                            "".join(rng.choice("LRJ0123 :\n-;")
                                    for _ in range(40))])}).encode(),
                       b"\xff\xfe", b"x" * 70000])
  return method, path, params, body


def test_fuzz_never_5xx_and_serves_nothing_else(view_root, preds):
  secret = view_root / "secret.txt"
  secret.write_text("TOP-SECRET-TOKEN")
  rng = random.Random(0)
  n = 0
  with vh.running([view_root / "tier1"], preds[:1]) as (base, _):
    u = urllib.parse.urlsplit(base)
    for _ in range(1200):
      method, path, params, body = _fuzz_request(rng)
      q = urllib.parse.urlencode(params)
      conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
      conn.putrequest(method, path + ("?" + q if q else ""),
                      skip_accept_encoding=True)
      if rng.random() < 0.03:
        conn.putheader("Host", "evil.example:80")
      if body is not None:
        conn.putheader("Content-Length", str(len(body)))
      conn.endheaders(body)
      res = conn.getresponse()
      raw = res.read()
      conn.close()
      n += 1
      assert res.status < 500, (method, path, params, res.status, raw[:200])
      assert b"TOP-SECRET" not in raw and b"root:" not in raw
      if res.status >= 400 and method != "HEAD":
        assert "error" in json.loads(raw), raw[:200]
  assert n >= 1000


def test_malformed_http_is_4xx(server):
  import socket
  u = urllib.parse.urlsplit(server[0])
  for req in [b"GARBAGE\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n",
              b"GET /api/row?i=0 HTTP/1.1\r\nHost: x\r\n\r\n",
              b"POST /api/run HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"]:
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
      s.sendall(req)
      head = s.recv(4096).split(b"\r\n", 1)[0]
    assert head.split()[1][:1] == b"4", (req, head)


# ------------------------------------------------------------ CLI
def _cli(*args, timeout=120):
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  return subprocess.run([sys.executable, "-m", "tinyvm_jax.view", *args],
                        capture_output=True, text=True, timeout=timeout,
                        cwd=ROOT, env=env)


@pytest.mark.parametrize("args, needle", [
    (["NOWHERE"], "nowhere: no such directory"),
    (["--predictions=BADPRED"], "not a prediction: missing key 'tier'"),
    (["--port=70000"], "--port"),
    (["--row=train:1"], "--row goes with --export"),
    (["DATA", "--export=OUT", "--row=eval/nope:1"], "no group 'eval/nope'"),
])
def test_cli_errors_are_one_line(view_root, tmp_path, args, needle):
  (tmp_path / "empty").mkdir()
  (tmp_path / "bad.jsonl").write_text('{"split": "train"}\n')
  subs = {"NOWHERE": str(tmp_path / "nowhere"),
          "EMPTY": str(tmp_path / "empty"),
          "BADPRED": str(tmp_path / "bad.jsonl"),
          "DATA": str(view_root / "tier1"), "OUT": str(tmp_path / "o.html")}
  args = [next((a.replace(k, v) for k, v in subs.items() if k in a), a)
          for a in args]
  r = _cli(*args)
  assert r.returncode == 2, (r.stdout, r.stderr)
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
  assert lines[0].startswith("view: error: ") and needle in lines[0], lines


def test_cli_exports_a_row_and_serves(view_root, tmp_path):
  out = tmp_path / "row.html"
  r = _cli(str(view_root / "tier1"), f"--export={out}", "--row=eval/len_8:3")
  assert r.returncode == 0, r.stderr
  assert '"index":3' in out.read_text()
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  proc = subprocess.Popen([sys.executable, "-m", "tinyvm_jax.view",
                           str(view_root), "--port=0", "--quiet"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=env, cwd=ROOT)
  try:
    line = proc.stdout.readline()
    assert "http://127.0.0.1:" in line, (line, proc.stderr.read())
    base = line.split("at ", 1)[1].split()[0]
    status, cat = get(base, "/api/datasets")
    assert status == 200 and len(cat["datasets"]) == 2
  finally:
    proc.terminate()
    proc.wait(timeout=30)


def test_bad_paths_get_a_clear_message(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(datasets_lib.DatasetError, match="not a dataset dir"):
    datasets_lib.open_datasets([tmp_path / "empty"])
  with pytest.raises(compare_lib.PredictionsError, match="no such file"):
    compare_lib.Predictions(tmp_path / "nope.jsonl", 0)
  (tmp_path / "p.jsonl").write_text("[1]\n")
  with pytest.raises(compare_lib.PredictionsError, match=r"p.jsonl:1"):
    compare_lib.Predictions(tmp_path / "p.jsonl", 0)


def test_malformed_dataset_files_get_a_clear_message(tmp_path):
  tier = tmp_path / "tier1"
  (tier / "eval").mkdir(parents=True)
  (tier / "train.jsonl").write_text('{"meta": {"tier": "tier1", "axes": '
                                    '{"n": 8}}}\nnot json\n')
  ds = datasets_lib.open_datasets([tier])[0]
  with pytest.raises(datasets_lib.DatasetError, match=r"train.jsonl:2"):
    ds.source("train").row(1)
  (tier / "manifest.json").write_text("{")
  with pytest.raises(datasets_lib.DatasetError, match="unreadable manifest"):
    datasets_lib.open_datasets([tier])
