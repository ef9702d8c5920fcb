r"""Looks at datasets, traces and a model's mistakes in the browser.

  python -m tinyvm_jax.view [DATASET_DIR ...] [--predictions FILE ...] \
      [--host 127.0.0.1] [--port 8765]
  python -m tinyvm_jax.view DATASET_DIR --export row.html --row eval/len_8:17 \
      [--predictions FILE]

Serves a local web app and prints its URL: Browse (the splits of each
dataset, paged and filtered), Row (a program's step view and renders),
Playground (type a program, see diagnostics, run it) and Compare (a
predictions file against the truth). DATASET_DIR is a tier directory
written by `python -m tinyvm_jax.emit` (`OUT/tier1`) or the emit's root
(`OUT`, every tier under it). `--export` writes one row, or with
`--predictions` the comparison of its prediction, as a self-contained HTML
file and exits.
"""

import re
import socket
from pathlib import Path

from absl import app
from absl import flags

from tinyvm_jax._src import cli

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("predictions", [], "A predictions file (JSONL, "
                          "tinyvm_jax.data.write_predictions' format); "
                          "repeat for several.")
flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (keep the "
                    "default unless you mean to share the viewer).")
flags.DEFINE_integer("port", 8765, "Port to listen on (0: any free port).",
                     lower_bound=0, upper_bound=65535)
flags.DEFINE_string("export", None, "Write a self-contained HTML file of "
                    "--row (or its comparison) and exit.")
flags.DEFINE_string("row", None, "GROUP:INDEX of the row to export, e.g. "
                    "train:5 or eval/len_8:17.")
flags.DEFINE_bool("quiet", False, "Do not log requests.")


class UserError(Exception):
  """An error of the user's making: one line, exit status 2."""


def _fail(msg: str, code: int = 2):
  cli.fail("view", msg, code)


_parse_flags = cli.flags_parser("view")


def _export(application, path: Path, row: str | None) -> None:
  from tinyvm_jax._src.view import export as export_lib
  from tinyvm_jax._src.view import compare as compare_lib
  from tinyvm_jax._src.view import server as server_lib
  m = re.fullmatch(r"([A-Za-z0-9_/]+):(\d+)", row or "")
  if m is None:
    raise UserError("--export needs --row=GROUP:INDEX (e.g. eval/len_8:17)")
  group, index = m.group(1), int(m.group(2))
  q = {"group": [group], "i": [str(index)]}
  if application.predictions:
    preds = application.predictions[0]
    hits = [k for k, r in enumerate(preds.rows)
            if compare_lib.group_name(r) == group and r["index"] == index]
    if not hits:
      raise UserError(f"{preds.path} has no prediction for {group}:{index}")
    q = {"p": ["0"], "k": [str(hits[0])]}
  try:
    payload = (application.comparison(q) if "p" in q
               else application.row_view(q))
  except server_lib.ApiError as e:
    raise UserError(str(e)) from None
  html = export_lib.export_html(payload, application.assets)
  try:
    path.write_text(html, encoding="utf-8")
  except OSError as e:
    raise UserError(f"cannot write {path}: {e.strerror}") from None
  print(f"view: wrote {path} ({len(html.encode()):,} bytes)")


def _serve(application) -> None:
  from tinyvm_jax._src.view import model
  from tinyvm_jax._src.view import server as server_lib
  try:
    srv = server_lib.make_server(application, FLAGS.host, FLAGS.port,
                                 quiet=FLAGS.quiet)
  except (OSError, OverflowError, socket.gaierror) as e:
    raise UserError(f"cannot listen on {FLAGS.host}:{FLAGS.port}: "
                    f"{getattr(e, 'strerror', None) or e}") from None
  import threading
  threading.Thread(target=model.warm_up, daemon=True).start()
  n = len(application.datasets)
  print(f"view: {n} dataset{'s' * (n != 1)}, "
        f"{len(application.predictions)} predictions file(s) at "
        f"{server_lib.url_of(srv)}  (Ctrl-C to stop)", flush=True)
  try:
    srv.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    srv.server_close()


def main(argv) -> int:
  from tinyvm_jax._src.view import compare as compare_lib
  from tinyvm_jax._src.view import datasets as datasets_lib
  from tinyvm_jax._src.view import server as server_lib
  try:
    if FLAGS.row and not FLAGS.export:
      raise UserError("--row goes with --export FILE.html")
    if FLAGS.export and not argv[1:] and not FLAGS.predictions:
      raise UserError("--export needs a DATASET_DIR or --predictions")
    datasets = datasets_lib.open_datasets(argv[1:])
    preds = [compare_lib.Predictions(p, k)
             for k, p in enumerate(FLAGS.predictions)]
    application = server_lib.App(datasets, preds)
    if FLAGS.export:
      _export(application, Path(FLAGS.export), FLAGS.row)
    else:
      _serve(application)
  except (UserError, datasets_lib.DatasetError,
          compare_lib.PredictionsError) as e:
    _fail(str(e).splitlines()[0])
  return 0


def run() -> None:
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
