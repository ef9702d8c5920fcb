"""Executes the experiments notebooks and writes their figures to files.

Runs every numbered notebook of this folder (or those named by --only) in a
fresh kernel with nbclient, in the mode given (exported to the notebooks as
$TINYVM_EXPERIMENTS_MODE), and writes under --out:

  <out>/<notebook>.ipynb          the executed notebook (outputs included)
  <out>/figures/<notebook>/*.png  every figure it displayed, by name
  <out>/results/<notebook>.json   the figures of merit it saved
  <out>/checkpoints/*.npz         trained models (01 writes, 02 reads them)
  <out>/predictions/<model>/<bucket>.jsonl   one row per evaluated row
  <out>/jax_cache/                JAX's compilation cache, shared by kernels
  <out>/summary.json              status and seconds per notebook

The kernels import `explib` from this folder and `tinyvm_jax` from this
checkout (both are put first on their PYTHONPATH). A second run with the same
--out resumes: finished checkpoints are loaded instead of trained again.

Exits 1 if any notebook fails (the error is printed), 0 otherwise. The
committed notebooks carry no outputs; run this to see them.

  python experiments/run_notebooks.py --mode smoke --out /tmp/experiments
"""

import argparse
import base64
import importlib.util
import json
import os
import pathlib
import re
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
MODES = ("smoke", "cpu", "full")
KERNEL = "tinyvm-experiments"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def notebooks() -> list[pathlib.Path]:
  return sorted(HERE.glob("[0-9][0-9]_*.ipynb"))


def _kernel_spec(root: pathlib.Path) -> None:
  """A kernelspec that runs this very interpreter (not whatever `python`
  is on PATH), found through $JUPYTER_PATH."""
  spec = root / "kernels" / KERNEL
  spec.mkdir(parents=True, exist_ok=True)
  (spec / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f",
               "{connection_file}"],
      "display_name": "tinyvm experiments", "language": "python"}))


def _figures(nb, dest: pathlib.Path) -> list[str]:
  """Writes the PNG outputs of an executed notebook; returns their names."""
  names = []
  for i, cell in enumerate(nb.cells):
    for j, out in enumerate(cell.get("outputs", [])):
      png = out.get("data", {}).get("image/png")
      if not png:
        continue
      name = out.get("metadata", {}).get("tinyvm", {}).get("name") or (
          f"cell{i:02d}_{j}")
      name = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
      dest.mkdir(parents=True, exist_ok=True)
      (dest / f"{name}.png").write_bytes(base64.b64decode(png))
      names.append(name)
  return names


def _client(nb, timeout: int, sockets: pathlib.Path):
  """An nbclient client whose kernel talks over IPC (Unix sockets named
  `sockets`-1, -2, ...), not TCP: local only, and without ipykernel's
  warning that TCP is unencrypted. (The path must be absolute: the kernel
  runs in the notebook's folder.)"""
  import nbclient
  from traitlets.config import Config

  config = Config()
  config.KernelManager.transport = "ipc"
  config.KernelManager.ip = str(sockets)
  return nbclient.NotebookClient(
      nb, timeout=timeout, kernel_name=KERNEL, config=config,
      resources={"metadata": {"path": str(HERE)}})


def run(paths, *, mode: str, out: pathlib.Path, timeout: int,
        cache: bool = True) -> dict:
  import nbformat

  out = out.resolve()
  out.mkdir(parents=True, exist_ok=True)
  jupyter_dir = pathlib.Path(tempfile.mkdtemp(prefix="tinyvm-kernel-"))
  _kernel_spec(jupyter_dir)
  os.environ["JUPYTER_PATH"] = os.pathsep.join(
      [str(jupyter_dir)] + [p for p in [os.environ.get("JUPYTER_PATH")] if p])
  # connection files and IPC sockets in the temporary folder
  os.environ["JUPYTER_RUNTIME_DIR"] = str(jupyter_dir / "runtime")
  os.environ["TINYVM_EXPERIMENTS_MODE"] = mode
  os.environ["TINYVM_EXPERIMENTS_OUT"] = str(out / "results")
  os.environ["TINYVM_EXPERIMENTS_RUN"] = str(out)
  os.environ["PYTHONPATH"] = os.pathsep.join(
      [str(HERE), str(HERE.parent)]
      + [p for p in [os.environ.get("PYTHONPATH")] if p])
  os.environ.setdefault("MPLBACKEND", "Agg")
  if cache:
    # notebooks that compile the same function (the train step of 01 and
    # 02) share the compilation through JAX's persistent cache
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(out / "jax_cache")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
  summary = {"mode": mode, "notebooks": {}}
  t_all = time.perf_counter()
  for path in paths:
    name = path.stem
    nb = nbformat.read(path, as_version=4)
    client = _client(nb, timeout, jupyter_dir / "ipc")
    t0 = time.perf_counter()
    status, error = "ok", None
    try:
      client.execute()
    except Exception as e:  # a cell's error, a timeout or a dead kernel
      status = "failed"
      error = _ANSI.sub("", f"{type(e).__name__}: {e}")
    seconds = round(time.perf_counter() - t0, 1)
    nbformat.write(nb, out / f"{name}.ipynb")
    figs = _figures(nb, out / "figures" / name)
    summary["notebooks"][name] = {"status": status, "seconds": seconds,
                                  "figures": figs}
    print(f"{name}: {status} in {seconds} s, {len(figs)} figures", flush=True)
    if error:
      summary["notebooks"][name]["error"] = error[-4000:]
      print(error[-4000:], file=sys.stderr, flush=True)
  summary["seconds"] = round(time.perf_counter() - t_all, 1)
  results = out / "results"
  summary["results"] = {p.stem: json.loads(p.read_text())
                        for p in sorted(results.glob("*.json"))}
  (out / "summary.json").write_text(json.dumps(summary, indent=2))
  return summary


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(
      description="Execute the experiments notebooks; write their figures.")
  ap.add_argument("--mode", choices=MODES, default="smoke",
                  help="smoke: minutes, checks the pipeline; cpu: about 14 "
                  "CPU-minutes on 2 cores, the models learn; "
                  "full: sized for one GPU")
  ap.add_argument("--out", type=pathlib.Path, required=True,
                  help="output folder (created)")
  ap.add_argument("--only", default="",
                  help="comma-separated notebook prefixes, e.g. 00,02")
  ap.add_argument("--timeout", type=int, default=1800,
                  help="seconds a cell may run")
  ap.add_argument("--no-cache", action="store_true",
                  help="do not share compilations through JAX's cache")
  args = ap.parse_args(argv)
  paths = notebooks()
  if args.only:
    wanted = [w for w in args.only.split(",") if w]
    unknown = [w for w in wanted
               if not any(p.stem.startswith(w) for p in paths)]
    if unknown:
      ap.error(f"--only names no notebook: {unknown}; notebooks are "
               f"{[p.stem for p in paths]}")
    paths = [p for p in paths if any(p.stem.startswith(w) for w in wanted)]
  missing = [m for m in ("nbclient", "nbformat", "ipykernel")
             if importlib.util.find_spec(m) is None]
  if missing:
    ap.error(f"{', '.join(missing)} not installed: "
             f"pip install -e '.[experiments]'")
  summary = run(paths, mode=args.mode, out=args.out, timeout=args.timeout,
                cache=not args.no_cache)
  failed = [n for n, s in summary["notebooks"].items() if s["status"] != "ok"]
  print(f"{len(paths) - len(failed)}/{len(paths)} notebooks ran in "
        f"{summary['seconds']} s ({args.mode}); figures in "
        f"{args.out / 'figures'}")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
