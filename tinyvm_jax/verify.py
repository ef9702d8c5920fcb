r"""Verifies emitted datasets: `python -m tinyvm_jax.verify`.

  python -m tinyvm_jax.verify --dataset DIR
      Streams every file listed in DIR/manifest.json (DIR a tier directory,
      or a folder of them): sha256 and row count against the manifest, and
      reports missing and extra files.
  python -m tinyvm_jax.verify --replay [--rebuild] PATH...
      PATH: a JSONL file (plain or .gz), a Parquet file, a dataset directory
      or a zarr store. For every row: rebuild the program from the row, run
      it, render it and compare the trace and every stored render (ids and
      text) with what the row stores; --rebuild also rebuilds each program
      from meta.seed and meta.axes and requires it to equal the stored one.

Prints each problem as `file:line: field: detail` and one summary line.
Exit status: 0 when everything matches, 1 on mismatches (or bad hashes,
missing or extra files), 2 on unreadable input (named, with its line).
"""

import logging
import time
from pathlib import Path

from absl import app
from absl import flags

from tinyvm_jax._src import cli
from tinyvm_jax._src import compile_cache
from tinyvm_jax._src.check.dataset import FORMATS as _FORMATS
from tinyvm_jax._src.check.dataset import Report
from tinyvm_jax._src.check.dataset import replay_path
from tinyvm_jax._src.check.dataset import verify_dataset

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", None, "Dataset directory to check against its "
                    "manifest (a tier directory or a folder of them).")
flags.DEFINE_bool("replay", False, "Replay every row of the PATHs (or of "
                  "--dataset): run, render and compare.")
flags.DEFINE_bool("rebuild", False, "With --replay (implied): also rebuild "
                  "each program from meta.seed and meta.axes.")
flags.DEFINE_list("formats", [], "Formats of a dataset directory to replay "
                  "(jsonl, zarr, parquet); default all it holds.")
flags.DEFINE_integer("batch_size", 512, "Rows replayed a jitted call.",
                     lower_bound=1)
flags.DEFINE_string(
    "compile_cache", None, "Directory of JAX's persistent compilation cache "
    "(default ~/.cache/tinyvm_jax/jax; '' to disable).")


def _fail(msg: str, code: int = 2):
  cli.fail("verify", msg, code)


_parse_flags = cli.flags_parser("verify")


def main(argv) -> int:
  logging.getLogger("jax").setLevel(logging.WARNING)
  paths = [Path(p) for p in argv[1:]]
  replay = FLAGS.replay or FLAGS.rebuild
  bad = sorted(set(FLAGS.formats) - set(_FORMATS))
  if bad:
    _fail(f"unknown format {bad[0]!r}; expected some of {list(_FORMATS)}")
  if paths and not replay:
    _fail(f"unexpected arguments {' '.join(map(str, paths))} (PATHs go "
          "with --replay)")
  if not FLAGS.dataset and not replay:
    _fail("nothing to do: pass --dataset DIR and/or --replay PATH...")
  if replay and not paths and not FLAGS.dataset:
    _fail("--replay needs PATHs (JSONL files, dataset directories or zarr "
          "stores)")
  if replay:
    compile_cache.enable_compile_cache(FLAGS.compile_cache)
  report = Report()
  t0 = time.perf_counter()
  if FLAGS.dataset:
    verify_dataset(Path(FLAGS.dataset), report)
  if replay:
    rows_before = report.rows
    for p in paths or [Path(FLAGS.dataset)]:
      replay_path(p, report, rebuild=FLAGS.rebuild,
                  batch_size=FLAGS.batch_size, formats=FLAGS.formats)
    what = "replayed and rebuilt" if FLAGS.rebuild else "replayed"
    print(f"{what} {report.rows - rows_before:,} rows in "
          f"{time.perf_counter() - t0:.1f} s: "
          + ("ok" if report.status == 0 else
             f"{report.problems} mismatches, {report.unreadable} unreadable"))
  return report.status


def run() -> None:
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
