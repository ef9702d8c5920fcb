"""Helpers of the viewer's tests: predictions files made from the truth,
and an in-process server."""

import contextlib
import json
from pathlib import Path

from tinyvm_jax import data
from tinyvm_jax._src.view import compare as compare_lib
from tinyvm_jax._src.view import datasets as datasets_lib
from tinyvm_jax._src.view import server as server_lib


def prediction(row: dict, *, seed_base: int = 0, render: str = "direct",
               index: int, text: str | None = None,
               output: list | None = None, model: str = "test") -> dict:
  """A prediction of a JSONL row: the truth unless `text`/`output` say."""
  meta = row["meta"]
  truth = row["renders"][render]["target_text"]
  text = truth if text is None else text
  values = list(row["trace"]["output"]) if output is None else output
  exact = text == truth
  return {"tier": meta["tier"], "seed_base": seed_base,
          "split": meta["split"], "bucket": meta["bucket"], "index": index,
          "seed": meta["seed"], "render": render, "model": model,
          "predicted_ids": [], "predicted_text": text,
          "predicted_output": values, "target_text": truth,
          "exact_match": exact, "score": 1.0 if exact else 0.0}


def corrupt_value(row: dict, index: int) -> dict:
  """A direct prediction whose first printed value is off by one."""
  values = list(row["trace"]["output"])
  values[0] += 1
  return prediction(row, index=index, output=values,
                    text="".join(f"{v}\n" for v in values))


def corrupt_cot(row: dict, index: int, step: int, reg: int) -> dict:
  """A cot prediction with register `reg` wrong at `step`."""
  lines = row["renders"]["cot"]["target_text"].split("\n")
  want = row["trace"]["steps"][step]["regs"][reg]
  line = 2 * step + 1
  assert f"R{reg}={want}" in lines[line]
  lines[line] = lines[line].replace(f"R{reg}={want}", f"R{reg}={want + 7}", 1)
  return prediction(row, render="cot", index=index, text="\n".join(lines))


def write(path: Path, rows) -> Path:
  data.write_predictions(path, rows)
  return path


def jsonl_rows(path: Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text().splitlines()]


@contextlib.contextmanager
def running(datasets=(), predictions=()):
  """(base URL, App) of a server in a thread, shut down at the end."""
  app = server_lib.App(datasets_lib.open_datasets(datasets),
                       [compare_lib.Predictions(p, k)
                        for k, p in enumerate(predictions)])
  srv = server_lib.make_server(app, "127.0.0.1", 0, quiet=True)
  server_lib.serve_in_thread(srv)
  try:
    yield server_lib.url_of(srv), app
  finally:
    srv.shutdown()
    srv.server_close()
