"""Latency of the viewer's browse and row pages over a full emitted dataset.

  python benchmarks/view.py /work/hashes/before/tier1 [--requests=200]

Starts `python -m tinyvm_jax.view DATASET --port=0` (the public entry point),
then times, over HTTP from this process:
  - the app's own page (index.html + app.js + style.css);
  - the browse API (a page of 50 rows): the first call of a split (which
    builds its summary columns), then random pages unfiltered and filtered
    by axes and printed value;
  - the row API (one row's step view) at random indices of every split;
  - the same row API through the JSONL (first call builds the line-offset
    index) and Parquet readers.
Ends with one JSON line of the figures, and the server's peak RSS (VmHWM).
"""

import argparse
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _get(conn, path: str, params=None) -> float:
  """Seconds for one GET answered 200 (the body read)."""
  target = path + ("?" + urllib.parse.urlencode(params) if params else "")
  t0 = time.perf_counter()
  conn.request("GET", target)
  res = conn.getresponse()
  body = res.read()
  dt = time.perf_counter() - t0
  if res.status != 200:
    raise SystemExit(f"{target}: HTTP {res.status}: {body[:200]!r}")
  return dt


def _stats(times) -> dict:
  ms = sorted(1000 * t for t in times)
  return {"n": len(ms), "p50_ms": round(statistics.median(ms), 1),
          "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 1),
          "max_ms": round(ms[-1], 1)}


def _start(dataset: str):
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep +
             os.environ.get("PYTHONPATH", ""))
  t0 = time.perf_counter()
  proc = subprocess.Popen([sys.executable, "-m", "tinyvm_jax.view", dataset,
                           "--port=0", "--quiet"], stdout=subprocess.PIPE,
                          text=True, env=env, cwd=ROOT)
  line = proc.stdout.readline()
  if "http://" not in line:
    proc.kill()
    raise SystemExit(f"the viewer did not start: {line!r}")
  url = urllib.parse.urlsplit(line.split(" at ", 1)[1].split()[0])
  return proc, url, time.perf_counter() - t0


def _peak_rss_mb(pid: int) -> float:
  return _rss_mb(pid, "VmHWM")


def _rss_mb(pid: int, key: str) -> float:
  with open(f"/proc/{pid}/status") as f:
    for line in f:
      if line.startswith(key + ":"):
        return int(line.split()[1]) / 1024
  return float("nan")


def _report(res: dict) -> None:
  print(f"startup (process start to URL): {res['startup_s']} s")
  print(f"app page (html+js+css): p50 {res['app_page']['p50_ms']} ms")
  print("browse, first filtered call of each split (builds its summary "
        "columns): " + ", ".join(f"{g} {t} ms" for g, t in
                                 res["browse_first_filtered_call_ms"].items()))
  print("browse, first call of each split (unfiltered): " +
        ", ".join(f"{g} {t} ms" for g, t in
                  res["browse_first_call_per_split"].items()))
  for key in ("browse_page", "row_page", "row_page_jsonl",
              "row_page_parquet"):
    if key in res:
      s = res[key]
      extra = (f", first call {s['first_call_ms']} ms" if "first_call_ms"
               in s else "")
      print(f"{key}: n={s['n']} p50 {s['p50_ms']} ms, p95 {s['p95_ms']} ms, "
            f"max {s['max_ms']} ms{extra}")
  print(f"server RSS: {res['server_rss_at_start_mb']} MB at start, peak "
        f"{res['server_peak_rss_zarr_mb']} MB after the zarr pages, peak "
        f"{res['server_peak_rss_mb']} MB after all")


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("dataset", help="a tier directory, e.g. OUT/tier1")
  ap.add_argument("--requests", type=int, default=200)
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args()
  rng = random.Random(args.seed)
  proc, url, startup = _start(args.dataset)
  res: dict = {"dataset": args.dataset, "startup_s": round(startup, 2)}
  try:
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=600)
    cat = json.loads((conn.request("GET", "/api/datasets"),
                      conn.getresponse().read())[1])["datasets"][0]
    groups = {g["name"]: g for g in cat["groups"]}
    res["server_rss_at_start_mb"] = round(_rss_mb(proc.pid, "VmRSS"), 1)
    res["app_page"] = _stats([sum(_get(conn, p) for p in (
        "/", "/static/app.js", "/static/style.css")) for _ in range(10)])
    res["browse_first_call_per_split"] = {
        g: round(1000 * _get(conn, "/api/rows", {"group": g}), 1)
        for g in groups}
    res["browse_first_filtered_call_ms"] = {
        g: round(1000 * _get(conn, "/api/rows", {"group": g, "k": "4"}), 1)
        for g in groups}
    n = args.requests
    filters = [{}, {"k": "4"}, {"n": "8-16", "k": "2"}, {"value": "0"},
               {"value": "100-1023"}, {"error": "none"}]
    browse = []
    for _ in range(n):
      g = rng.choice(list(groups))
      q = dict(rng.choice(filters), group=g, size=50,
               page=rng.randrange(0, max(1, groups[g]["rows"] // 500)))
      browse.append(_get(conn, "/api/rows", q))
    res["browse_page"] = _stats(browse)
    rows = [_get(conn, "/api/row", {"group": g, "i": rng.randrange(
        groups[g]["rows"])}) for g in (rng.choice(list(groups))
                                        for _ in range(n))]
    res["row_page"] = _stats(rows)
    res["server_peak_rss_zarr_mb"] = round(_peak_rss_mb(proc.pid), 1)
    for fmt in ("jsonl", "parquet"):
      if fmt not in cat["formats"]:
        continue
      first = _get(conn, "/api/row", {"group": "train", "fmt": fmt, "i": 0})
      times = [_get(conn, "/api/row", {"group": "train", "fmt": fmt,
                                       "i": rng.randrange(
                                           groups["train"]["rows"])})
               for _ in range(max(10, n // 10))]
      res[f"row_page_{fmt}"] = dict(_stats(times), first_call_ms=round(
          1000 * first, 1))
    res["server_peak_rss_mb"] = round(_peak_rss_mb(proc.pid), 1)
    res["server_rss_mb"] = round(_rss_mb(proc.pid, "VmRSS"), 1)
  finally:
    proc.terminate()
    proc.wait(timeout=30)
  _report(res)
  print(json.dumps(res))


if __name__ == "__main__":
  main()
