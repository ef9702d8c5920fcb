"""The viewer's HTTP server: a JSON API and the static app.

Built on the standard library's `http.server.ThreadingHTTPServer`: the
viewer is a local tool serving one person, a few requests a second, so a
framework (and a new dependency to install, pin and audit) would buy
nothing. Routing is a table of exact paths.

Security: the server binds 127.0.0.1 unless told otherwise and then only
answers requests whose Host header names a loopback address (no DNS
rebinding). It serves only its own assets, read into memory at start and
looked up by exact name, and rows of the datasets named on the command line,
looked up by group name and index: no request path or parameter is ever
joined into a file path. Bad requests get a 4xx with a JSON body
`{"error": "..."}`; the HTTP layer's own errors are JSON too.

API (all GET but /api/run):
  /api/datasets                   datasets and predictions files
  /api/rows?ds&group&fmt&page&size&<axis>=&value=&error=   a filtered page
  /api/find?ds&group&fmt&seed     the index of the row with that seed
  /api/row?ds&group&fmt&i         one row's step view
  /api/examples                   Playground example programs
  POST /api/run {"source": str}   diagnostics and the run's step view
  /api/failures?p&group&page&size rows of a predictions file that fail
  /api/compare?p&k                prediction k of file p against the truth
  /api/export?ds&group&i | ?p&k   the same as a self-contained HTML file
"""

import http.server
import json
import re
import socket
import sys
import threading
import traceback
import urllib.parse
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tinyvm_jax._src import isa
from tinyvm_jax._src.view import compare as compare_lib
from tinyvm_jax._src.view import datasets as datasets_lib
from tinyvm_jax._src.view import export as export_lib
from tinyvm_jax._src.view import model

STATIC_DIR = Path(__file__).parent / "static"
MAX_BODY = 64 << 10
MAX_PAGE = 200
_LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
_RANGE_RE = re.compile(r"(-?\d{1,9})(?:(?:-|\.\.)(-?\d{1,9}))?")


class ApiError(Exception):
  """A request the API refuses: its HTTP status and a one-line reason."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status


def _one(params: dict, name: str, default: str | None = None) -> str:
  values = params.get(name)
  if not values:
    if default is None:
      raise ApiError(400, f"missing parameter {name!r}")
    return default
  if len(values) > 1:
    raise ApiError(400, f"parameter {name!r} given {len(values)} times")
  return values[0]


def _int(params: dict, name: str, lo: int, hi: int,
         default: int | None = None) -> int:
  raw = _one(params, name, None if default is None else str(default))
  if not re.fullmatch(r"-?\d{1,20}", raw.strip()):
    raise ApiError(400, f"parameter {name!r} must be an integer, got "
                   f"{raw[:40]!r}")
  value = int(raw)
  if not lo <= value <= hi:
    raise ApiError(400, f"parameter {name!r} must be in [{lo}, {hi}], got "
                   f"{value}")
  return value


def _ranges(raw: str, name: str) -> list[tuple[int, int]]:
  """'8' / '8-16' / '4,8' -> [(lo, hi)] inclusive ranges."""
  out = []
  for part in raw.split(","):
    m = _RANGE_RE.fullmatch(part.strip())
    if m is None:
      raise ApiError(400, f"filter {name!r} must be N, N-M or a list of "
                     f"them, got {raw[:40]!r}")
    lo = int(m.group(1))
    out.append((lo, int(m.group(2)) if m.group(2) else lo))
  return out


def _in(x: np.ndarray, ranges) -> np.ndarray:
  keep = np.zeros(x.shape, bool)
  for lo, hi in ranges:
    keep |= (x >= lo) & (x <= hi)
  return keep


class App:
  """The viewer's state (datasets, predictions) and its API handlers."""

  def __init__(self, datasets: Sequence[datasets_lib.Dataset],
               predictions: Sequence[compare_lib.Predictions] = ()):
    self.datasets = list(datasets)
    self.predictions = list(predictions)
    self.truth = compare_lib.Truth(self.datasets)
    self.assets = {p.name: p.read_bytes() for p in STATIC_DIR.iterdir()
                   if p.is_file()}
    self.routes: dict[tuple[str, str], Callable] = {
        ("GET", "/api/datasets"): self.api_datasets,
        ("GET", "/api/rows"): self.api_rows,
        ("GET", "/api/find"): self.api_find,
        ("GET", "/api/row"): self.api_row,
        ("GET", "/api/examples"): lambda q: {"examples": model.examples()},
        ("POST", "/api/run"): self.api_run,
        ("GET", "/api/failures"): self.api_failures,
        ("GET", "/api/compare"): self.api_compare,
        ("GET", "/api/export"): self.api_export,
    }

  # -------------------------------------------------------------- lookups
  def _dataset(self, q) -> datasets_lib.Dataset:
    if not self.datasets:
      raise ApiError(404, "no datasets: start the viewer with DATASET_DIR")
    return self.datasets[_int(q, "ds", 0, len(self.datasets) - 1, 0)]

  def _source(self, q):
    ds = self._dataset(q)
    fmt = _one(q, "fmt", "")
    if fmt and fmt not in datasets_lib.FORMATS:
      raise ApiError(400, f"unknown format {fmt[:20]!r}; expected one of "
                     f"{', '.join(datasets_lib.FORMATS)}")
    try:
      return ds, ds.source(_one(q, "group", "train"), fmt or None)
    except KeyError as e:
      raise ApiError(404, e.args[0]) from None

  def _prediction(self, q) -> tuple[compare_lib.Predictions, int]:
    if not self.predictions:
      raise ApiError(404, "no predictions: start the viewer with "
                     "--predictions FILE")
    p = self.predictions[_int(q, "p", 0, len(self.predictions) - 1, 0)]
    return p, _int(q, "k", 0, len(p.rows) - 1, 0)

  # -------------------------------------------------------------- handlers
  def api_datasets(self, q) -> dict:
    return {"datasets": [d.describe() for d in self.datasets],
            "predictions": [p.describe() for p in self.predictions],
            "errors": {str(k): v for k, v in isa.ERROR_MESSAGES.items()}}

  def _filter(self, ds, src, q) -> np.ndarray:
    """[M] indices of the rows that pass the query's filters."""
    s = src.summary()
    keep = np.ones(len(s.seed), bool)
    for j, name in enumerate(ds.axis_names):
      if q.get(name):
        keep &= _in(s.axes[:, j], _ranges(_one(q, name), name))
    if q.get("value"):
      ranges = _ranges(_one(q, "value"), "value")
      shown = np.arange(s.output.shape[1]) < s.num_output[:, None]
      keep &= (_in(s.output, ranges) & shown).any(axis=1)
    if q.get("error"):
      e = _one(q, "error")
      if e in ("any", "none"):
        keep &= (s.error != 0) == (e == "any")
      else:
        keep &= _in(s.error, _ranges(e, "error"))
    return np.flatnonzero(keep)

  def api_rows(self, q) -> dict:
    ds, src = self._source(q)
    size = _int(q, "size", 1, MAX_PAGE, 50)
    page = _int(q, "page", 0, 10 ** 9, 0)
    lo = page * size
    if any(q.get(k) for k in (*ds.axis_names, "value", "error")):
      s = src.summary()
      idx = self._filter(ds, src, q)
      total, matched = len(s.seed), len(idx)
      shown = idx[lo:lo + size]
      s = datasets_lib.Summary(*[col[shown] for col in s])
    else:    # unfiltered: read just the page
      total = matched = src.num_rows if src.num_rows >= 0 else len(
          src.summary().seed)
      shown = np.arange(min(lo, total), min(lo + size, total))
      s = src.brief(int(shown[0]), int(shown[-1]) + 1) if len(shown) else (
          datasets_lib.Summary(*[col[:0] for col in src.summary()]))
    rows = []
    for j, i in enumerate(shown.tolist()):
      n_out = int(s.num_output[j])
      rows.append({"index": i, "seed": str(s.seed[j]),
                   "axes": dict(zip(ds.axis_names, s.axes[j].tolist())),
                   "output": s.output[j, :min(n_out, s.output.shape[1])]
                   .tolist(), "num_output": n_out,
                   "error": int(s.error[j])})
    return {"dataset": ds.number, "group": src.group, "format": src.fmt,
            "total": int(total), "matched": int(matched), "page": page,
            "size": size, "rows": rows}

  def api_find(self, q) -> dict:
    _, src = self._source(q)
    seed = _int(q, "seed", 0, 2 ** 64 - 1)
    hits = np.flatnonzero(src.summary().seed == np.uint64(seed))
    if not hits.size:
      raise ApiError(404, f"no row of {src.group} has seed {seed}")
    return {"index": int(hits[0])}

  def row_view(self, q) -> dict:
    ds, src = self._source(q)
    i = _int(q, "i", 0, 2 ** 40)
    try:
      row = src.row(i)
    except IndexError as e:
      raise ApiError(404, str(e)) from None
    return model.row_view(row, dataset=ds.name, group=src.group, index=i,
                          format=src.fmt)

  def api_row(self, q) -> dict:
    return self.row_view(q)

  def api_run(self, body: Any) -> dict:
    if not isinstance(body, dict) or not isinstance(body.get("source"), str):
      raise ApiError(400, 'expected a JSON object {"source": "<program>"}')
    return model.run_source(body["source"])

  def api_failures(self, q) -> dict:
    p, _ = self._prediction(q)
    group = _one(q, "group", "") or None
    size = _int(q, "size", 1, MAX_PAGE, 50)
    page = _int(q, "page", 0, 10 ** 9, 0)
    fails = p.failures(group)
    return {"total": len(fails), "page": page, "size": size,
            "rows": [p.brief(k) for k in fails[page * size:(page + 1) * size]]}

  def comparison(self, q) -> dict:
    p, k = self._prediction(q)
    pred = p.rows[k]
    try:
      row, where = self.truth.row(pred)
    except LookupError as e:
      raise ApiError(404, str(e.args[0])) from None
    return compare_lib.compare(pred, row, where=where, predictions=p.name,
                               k=k, group=compare_lib.group_name(pred),
                               index=pred["index"])

  def api_compare(self, q) -> dict:
    return self.comparison(q)

  def api_export(self, q) -> tuple[str, bytes]:
    payload = self.comparison(q) if "p" in q else self.row_view(q)
    name = export_lib.file_name(payload)
    return name, export_lib.export_html(payload, self.assets).encode()


def _json_bytes(obj: Any) -> bytes:
  return json.dumps(obj, separators=(",", ":")).encode()


class Handler(http.server.BaseHTTPRequestHandler):
  """Routes requests to the `App`; every answer is JSON but the assets."""
  server_version = "tinyvm-view"
  sys_version = ""
  protocol_version = "HTTP/1.1"
  app: App            # set on the subclass made by `make_server`
  quiet = False

  def setup(self):
    super().setup()
    # answers are written as headers then body: without this, Nagle's
    # algorithm and the client's delayed ACK add ~40 ms to each
    self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

  def log_message(self, format, *args):  # noqa: A002  (the base's name)
    if not self.quiet:
      sys.stderr.write(f"view: {self.address_string()} {format % args}\n")

  def send_error(self, code, message=None, explain=None):
    """The HTTP layer's own errors, as JSON; never a 5xx for a request
    the server cannot parse or a method it does not have."""
    code = {501: 405, 505: 400}.get(int(code), int(code))
    if self.request_version == "HTTP/0.9":   # answer with a status line
      self.request_version = "HTTP/1.0"
    self._send(code, _json_bytes({"error": message or
                                  http.HTTPStatus(code).phrase}),
               "application/json", close=True)

  def _send(self, status: int, body: bytes, ctype: str, *,
            close: bool = False, headers: dict | None = None) -> None:
    self.send_response(status)
    self.send_header("Content-Type", ctype)
    self.send_header("Content-Length", str(len(body)))
    self.send_header("X-Content-Type-Options", "nosniff")
    self.send_header("Cache-Control", "no-store")
    self.send_header("Content-Security-Policy",
                     "default-src 'self'; img-src 'self' data:; "
                     "frame-ancestors 'none'")
    for k, v in (headers or {}).items():
      self.send_header(k, v)
    if close:
      self.send_header("Connection", "close")
      self.close_connection = True
    self.end_headers()
    if self.command != "HEAD":
      self.wfile.write(body)

  def _host_ok(self) -> bool:
    if self.server.server_address[0] not in ("127.0.0.1", "::1"):
      return True
    host = (self.headers.get("Host") or "").strip().lower()
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return name in _LOOPBACK

  def do_GET(self):
    self._dispatch("GET")

  def do_HEAD(self):
    self._dispatch("GET")

  def do_POST(self):
    self._dispatch("POST")

  def _body(self) -> Any:
    length = self.headers.get("Content-Length")
    if length is None or not length.strip().isdigit():
      raise ApiError(411, "a POST needs a Content-Length")
    if int(length) > MAX_BODY:
      if int(length) <= 16 * MAX_BODY:   # read it, so the answer arrives
        self.rfile.read(int(length))
      self.close_connection = True
      raise ApiError(413, f"request body over {MAX_BODY} bytes")
    raw = self.rfile.read(int(length))
    try:
      return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
      raise ApiError(400, f"body is not JSON: {e}") from None

  def _dispatch(self, method: str) -> None:
    try:
      if not self._host_ok():
        raise ApiError(403, "Host header does not name this local server")
      self._route(method)
    except ApiError as e:
      self._send(e.status, _json_bytes({"error": str(e)}),
                 "application/json")
    except (datasets_lib.DatasetError, compare_lib.PredictionsError,
            ValueError) as e:
      self._send(422, _json_bytes({"error": str(e).splitlines()[0]}),
                 "application/json")
    except (BrokenPipeError, ConnectionResetError):
      self.close_connection = True
    except Exception as e:  # a bug: log it, answer without a traceback
      traceback.print_exc(file=sys.stderr)
      self._send(500, _json_bytes({"error": f"internal error "
                                   f"({type(e).__name__})"}),
                 "application/json", close=True)

  def _route(self, method: str) -> None:
    parts = urllib.parse.urlsplit(self.path)
    path = parts.path
    if path in ("/", "/index.html"):
      return self._send(200, self.app.assets["index.html"],
                        "text/html; charset=utf-8")
    m = re.fullmatch(r"/static/([A-Za-z0-9_-]+\.(js|css|png|svg))", path)
    if m and m.group(1) in self.app.assets:
      ctype = {"js": "text/javascript", "css": "text/css",
               "png": "image/png", "svg": "image/svg+xml"}
      return self._send(200, self.app.assets[m.group(1)],
                        ctype[m.group(2)] + "; charset=utf-8")
    handler = self.app.routes.get((method, path))
    if handler is None:
      other = "POST" if method == "GET" else "GET"
      if (other, path) in self.app.routes:
        raise ApiError(405, f"{path} takes {other}")
      raise ApiError(404, f"no such page: {path[:80]}")
    if method == "POST":
      result = handler(self._body())
    else:
      try:
        q = urllib.parse.parse_qs(parts.query, keep_blank_values=True,
                                  strict_parsing=False, max_num_fields=64)
      except ValueError as e:
        raise ApiError(400, f"bad query string: {e}") from None
      result = handler(q)
    if isinstance(result, tuple):   # an export: (file name, HTML)
      name, body = result
      return self._send(200, body, "text/html; charset=utf-8", headers={
          "Content-Disposition": f'attachment; filename="{name}"'})
    self._send(200, _json_bytes(result), "application/json")


class Server(http.server.ThreadingHTTPServer):
  daemon_threads = True
  allow_reuse_address = True


def make_server(app: App, host: str = "127.0.0.1", port: int = 0, *,
                quiet: bool = False) -> Server:
  """A server for `app` bound to host:port (port 0: any free port)."""
  handler = type("BoundHandler", (Handler,), {"app": app, "quiet": quiet})
  return Server((host, port), handler)


def url_of(server: Server) -> str:
  host, port = server.server_address[:2]
  host = f"[{host}]" if ":" in host else host
  return f"http://{host}:{port}/"


def serve_in_thread(server: Server) -> threading.Thread:
  t = threading.Thread(target=server.serve_forever, daemon=True)
  t.start()
  return t
