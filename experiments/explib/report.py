"""Showing figures and tables in a notebook, and saving results.

Figures are displayed as PNG outputs tagged with a name in the output's
metadata (`{"tinyvm": {"name": ...}}`); `run_notebooks.py` writes every
tagged figure of an executed notebook to `<out>/<notebook>/<name>.png`.
Results (small JSON-ready dicts) go to `$TINYVM_EXPERIMENTS_OUT/<name>.json`
when that variable is set.
"""

import io
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

OUT_ENV = "TINYVM_EXPERIMENTS_OUT"


def show(fig, name: str) -> None:
  """Displays `fig` as a PNG tagged `name`, then closes it."""
  from IPython.display import display
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
  plt.close(fig)
  display({"image/png": buf.getvalue()}, raw=True,
          metadata={"tinyvm": {"name": name}})


def table(rows: list[dict], columns: list[str] | None = None,
          floatfmt: str = ".3f") -> str:
  """A Markdown table of `rows` (dicts), displayed and returned."""
  columns = columns or list(rows[0])
  fmt = lambda v: format(v, floatfmt) if isinstance(
      v, (float, np.floating)) else str(v)
  lines = ["| " + " | ".join(columns) + " |",
           "|" + "|".join("---" for _ in columns) + "|"]
  lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |"
            for r in rows]
  text = "\n".join(lines)
  try:
    from IPython.display import Markdown, display
    display(Markdown(text))
  except ImportError:
    print(text)
  return text


def _jsonable(x):
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return _jsonable(x.tolist())
  if isinstance(x, np.generic):
    return x.item()
  return x


def save_results(name: str, results: dict) -> str | None:
  """Writes `results` to $TINYVM_EXPERIMENTS_OUT/<name>.json (if set);
  returns the path."""
  out = os.environ.get(OUT_ENV)
  if not out:
    return None
  os.makedirs(out, exist_ok=True)
  path = os.path.join(out, f"{name}.json")
  with open(path, "w") as f:
    json.dump(_jsonable(results), f, indent=2, sort_keys=True)
  return path
