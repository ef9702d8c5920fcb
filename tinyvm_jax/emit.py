r"""Emits a Tiny-VM dataset: `python -m tinyvm_jax.emit`.

  python -m tinyvm_jax.emit --tier=tier1 --out=DIR [--seed=0] \
      [--device=cpu|gpu|tpu] [--formats=zarr,jsonl,parquet] \
      [--config.train_size=1000 --config.eval_size=100 ...] \
      [--workers=N] \
      [--num_processes=N --process_id=I --coordinator_address=HOST:PORT]

Settings come from the package's `tinyvm_jax/configs/<tier>.py` (the
reference's sizes; the repository's `configs/` links to them), or the file
given by `--config`; any field can be overridden with `--config.<field>=`.
Writes `DIR/<tier>/` (train.jsonl, eval/<bucket>.jsonl; rows.zarr;
data/*.parquet with README.md) and `manifest.json` last, replacing the
dataset files an earlier emit left there. An interrupted emit leaves no
manifest; running the same command again resumes it.

Every local device of the chosen platform generates (each batch is sharded
over them). With `--num_processes=N` the command is one of N processes
(same flags, `--process_id` 0..N-1, one `--coordinator_address`; on a
cluster JAX can also read these from its environment): they join JAX's
distributed runtime, each writes its share of the parts into the shared
`--out`, and process 0 writes the manifest when all are done. `--workers`
sets the processes that serialize JSONL and Parquet. The bytes are the same
for any number of processes, devices and workers. `python -m
tinyvm_jax.launch` starts N local processes.
"""

import importlib.util
import logging
import os
import sys
import time
from pathlib import Path

from absl import app
from absl import flags

from tinyvm_jax._src import checks
from tinyvm_jax._src import compile_cache
from tinyvm_jax._src.emit import coordination
from tinyvm_jax._src.emit import heap
from tinyvm_jax._src.emit import layout
from tinyvm_jax._src.emit import plan as plan_lib
from tinyvm_jax._src.emit import run as run_lib

_TIERS = ("tier0", "tier1", "tier2", "tier4")
_DEVICES = ("cpu", "gpu", "tpu")
CONFIG_DIR = Path(__file__).resolve().parent / "configs"   # shipped in the package

FLAGS = flags.FLAGS
flags.DEFINE_string("tier", None, f"Tier to emit: one of {', '.join(_TIERS)}.")
flags.DEFINE_string("out", None, "Output root; files go to OUT/<tier>/.")
flags.DEFINE_integer("seed", 0, "Seed base of the dataset (0 <= seed < 2**64).",
                     lower_bound=0)
flags.DEFINE_enum("device", None, _DEVICES,
                  "Device to generate on (default: JAX's default device).")
flags.DEFINE_list("formats", ["zarr", "jsonl", "parquet"],
                  "Formats to write, comma-separated: zarr, jsonl, parquet.")
flags.DEFINE_string(
    "compile_cache", None, "Directory of JAX's persistent compilation cache "
    "(default ~/.cache/tinyvm_jax/jax; '' to disable).")
flags.DEFINE_bool("progress", None,
                  "Show a progress bar (default: when stderr is a terminal).")
flags.DEFINE_integer("num_devices", 0, "Local devices to use (0: all of the "
                     "platform's).", lower_bound=0)
flags.DEFINE_integer("cpu_devices", None, "On a CPU: JAX devices to split it "
                     "into, each computing its share of a batch in parallel "
                     "(default: one a core, up to 8, unless XLA_FLAGS sets "
                     "--xla_force_host_platform_device_count).", lower_bound=1)
flags.DEFINE_integer("workers", None, "Serialization worker processes "
                     "(JSONL and Parquet conversion) of this process; 0: "
                     "serialize in the writers' threads (default: one a "
                     "core less two, at most 32; none on fewer than 4 cores "
                     "or below 50,000 rows). The bytes do not depend on "
                     "it.", lower_bound=0)
flags.DEFINE_integer("num_processes", None, "Processes of a multi-process "
                     "emit (default 1, or what JAX's cluster detection "
                     "finds with --coordinator_address unset).", lower_bound=1)
flags.DEFINE_integer("process_id", None, "This process's index, 0 .. "
                     "num_processes - 1.", lower_bound=0)
flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0's "
                    "coordination service (multi-process emit).")


class UserError(Exception):
  """An error of the user's making: printed as one line, exit status 2."""


_DISTRIBUTED = []   # non-empty once this process joined the runtime


def _fail(msg: str, code: int = 2):
  print(f"emit: error: {msg}", file=sys.stderr)
  if _DISTRIBUTED:
    # exit now: JAX's exit hook would wait for the other processes at a
    # shutdown barrier; the launcher (or the coordination service's
    # heartbeats) stops them. Process 0 hosts the coordination service:
    # it lingers a moment, so that processes failing on the same error
    # (e.g. different settings) can report it before the service goes.
    sys.stdout.flush()
    sys.stderr.flush()
    if _DISTRIBUTED[0] == 0:
      time.sleep(3)
    os._exit(code)
  sys.exit(code)


def _tier_arg(argv) -> str | None:
  for i, a in enumerate(argv[1:], start=1):
    if a.startswith("--tier="):
      return a.split("=", 1)[1]
    if a == "--tier" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _define_config(argv) -> None:
  """Defines --config with the default configs/<tier>.py (so that
  --config.<field> overrides parse)."""
  from ml_collections import config_flags
  tier = _tier_arg(argv)
  default = None
  if tier in _TIERS and (CONFIG_DIR / f"{tier}.py").is_file():
    default = str(CONFIG_DIR / f"{tier}.py")
  config_flags.DEFINE_config_file(
      "config", default, "Settings file (default configs/<tier>.py); "
      "override fields with --config.<field>=value.", lock_config=True)


def _parse_flags(argv):
  """absl flags parser: one clear line and exit 2 on a bad flag."""
  tier = _tier_arg(argv)
  if tier is None and not any(a in ("--help", "--helpfull", "--helpshort",
                                    "-h", "-?") for a in argv[1:]):
    _fail(f"--tier is required: one of {', '.join(_TIERS)}")
  if tier is not None and tier not in _TIERS:
    _fail(f"unknown tier {tier!r}; expected one of {', '.join(_TIERS)}")
  try:
    _define_config(argv)
    rest = FLAGS(argv)
  except flags.Error as e:
    _fail(str(e).splitlines()[0])
  except (KeyError, AttributeError) as e:  # an override of no field
    field = str(e.args[0] if e.args else e).strip("'\"")
    _fail(f"--config.{field}: no such field in the config "
          f"(tinyvm_jax/configs/{tier}.py)")
  except Exception as e:  # a config file that does not load
    msg = str(e).splitlines()[0] if str(e) else ""
    _fail(f"cannot load the config: {type(e).__name__}: {msg}")
  if len(rest) > 1:
    _fail(f"unexpected arguments: {' '.join(rest[1:])}")
  try:  # config_flags loads lazily: surface a bad file here
    if FLAGS.config is not None:
      FLAGS.config.to_dict()
  except Exception as e:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    _fail(f"cannot load the config: {lines[-1] if lines else type(e).__name__}")
  return rest


def _select_devices(name: str | None, count: int) -> list:
  """This process's devices of platform `name` (default: JAX's default
  backend), the first `count` of them (0: all)."""
  import jax
  try:
    devices = jax.local_devices(backend=name)
  except RuntimeError:
    present = sorted({d.platform for d in jax.devices()})
    hint = {"gpu": "; for NVIDIA GPUs: pip install 'tinyvm_jax[cuda12]'",
            "tpu": "; for TPUs: pip install 'jax[tpu]' (see BUILD.md)"}
    raise UserError(f"--device={name}: no {name.upper()} is available to JAX "
                    f"on this machine (present: {', '.join(present)})"
                    f"{hint.get(name, '')}") from None
  if count > len(devices):
    raise UserError(f"--num_devices={count}: this process has only "
                    f"{len(devices)} {devices[0].platform} device(s)")
  return devices[:count] if count else devices


_HOST_COUNT = "--xla_force_host_platform_device_count"


def _split_cpu() -> None:
  """Sets XLA's host device count (before JAX starts a backend): one JAX
  CPU device a core, so that batches run on every core."""
  if FLAGS.device not in (None, "cpu"):
    return
  xla = os.environ.get("XLA_FLAGS", "")
  if FLAGS.cpu_devices is None and _HOST_COUNT in xla:
    return
  n = FLAGS.cpu_devices or max(1, min(8, len(os.sched_getaffinity(0))
                                      if hasattr(os, "sched_getaffinity")
                                      else os.cpu_count() or 1))
  kept = [f for f in xla.split() if not f.startswith(_HOST_COUNT)]
  os.environ["XLA_FLAGS"] = " ".join(kept + [f"{_HOST_COUNT}={n}"])


def _start_distributed() -> tuple[int, int]:
  """Joins JAX's distributed runtime when the flags ask for several
  processes; returns (process_id, num_processes)."""
  n, pid, addr = (FLAGS.num_processes, FLAGS.process_id,
                  FLAGS.coordinator_address)
  if n in (None, 1) and addr is None:
    if pid not in (None, 0):
      raise UserError(f"--process_id={pid} needs --num_processes > {pid}")
    return 0, 1
  if n is not None and pid is not None and pid >= n:
    raise UserError(f"--process_id={pid} is not below --num_processes={n}")
  if (n is None) != (pid is None):
    raise UserError("--num_processes and --process_id go together")
  if n is not None and n > 1 and addr is None:
    raise UserError("--num_processes > 1 needs --coordinator_address=HOST:PORT")
  if addr is not None and (":" not in addr or
                           not addr.rsplit(":", 1)[1].isdigit()):
    raise UserError(f"--coordinator_address={addr}: expected HOST:PORT")
  pid, nproc = coordination.join(addr, n, pid)
  coordination.quiet_native_stdout()   # stdout: the summary line only
  _DISTRIBUTED.append(pid)
  return pid, nproc


def _check_out(out: str) -> Path:
  path = Path(out)
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".tinyvm-write-test-{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()
  except OSError as e:
    raise UserError(f"cannot write to --out={out}: {e.strerror or e}"
                    ) from None
  return path


def _human(n: float) -> str:
  for unit in ("B", "KB", "MB", "GB"):
    if n < 1000 or unit == "GB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1000
  return f"{n:.1f} GB"


class _Bar:
  """A one-line progress bar on stderr: rows, rows/s, ETA."""

  def __init__(self, label: str, enabled: bool):
    self.label, self.enabled = label, enabled
    self.t0 = time.perf_counter()
    self.last = 0.0
    self.first = None

  def __call__(self, done: int, total: int) -> None:
    if not self.enabled:
      return
    now = time.perf_counter()
    if self.first is None:
      self.first = (now, done)
    if now - self.last < 0.2 and done < total:
      return
    self.last = now
    t, d = self.first
    rate = (done - d) / (now - t) if now > t else 0.0
    eta = (total - done) / rate if rate > 0 else float("nan")
    eta_s = f"ETA {eta:4.0f} s" if eta == eta else "ETA    ?"
    sys.stderr.write(f"\r{self.label}: {done:>10,}/{total:,} rows "
                     f"{rate:>9,.0f} rows/s  {eta_s} ")
    sys.stderr.flush()

  def close(self) -> None:
    if self.enabled and self.first is not None:
      sys.stderr.write("\n")
      sys.stderr.flush()


def _settings():
  """(plan kwargs, config dict) from the loaded config and flags."""
  cfg = FLAGS.config
  if cfg is None:
    raise UserError(f"no config: {FLAGS.tier}.py not found in the package "
                    f"({CONFIG_DIR}); pass --config=PATH")
  d = cfg.to_dict()
  known = {"tier", "train_size", "eval_size", "renders", "batch_size",
           "vmap_rows", "part_rows", "chunk_rows", "zarr_codec"}
  max_classes = d.get("max_classes", 8)
  if not checks.is_int(max_classes) or max_classes < 0:
    raise UserError(f"max_classes must be an integer >= 0, got "
                    f"{max_classes!r}")
  missing = sorted(known - set(d))
  if missing:
    raise UserError(f"config lacks fields {missing}")
  if d["tier"] != FLAGS.tier:
    raise UserError(f"the config is for {d['tier']!r} but --tier="
                    f"{FLAGS.tier}")
  renders = d["renders"]
  if isinstance(renders, str):
    renders = [r.strip() for r in renders.split(",") if r.strip()]
  buckets = d.get("eval_buckets", "")
  if isinstance(buckets, str):
    buckets = [b.strip() for b in buckets.split(",") if b.strip()]
  kwargs = dict(tier=FLAGS.tier, seed_base=FLAGS.seed,
                train_size=d["train_size"], eval_size=d["eval_size"],
                renders=tuple(renders), formats=tuple(FLAGS.formats),
                batch_size=d["batch_size"], vmap_rows=d["vmap_rows"],
                part_rows=d["part_rows"], chunk_rows=d["chunk_rows"],
                codec=d["zarr_codec"], eval_buckets=tuple(buckets) or None)
  return kwargs, d, max_classes


def _auto_sizes(kwargs: dict, platform: str) -> dict:
  """Fills batch_size / vmap_rows of 0 with the device's defaults: on a CPU
  small vectorised blocks (cache-sized) in large calls; on an accelerator
  one wide block. Tier 4 rows are computed whole (five programs and their
  renders a row), so its CPU batches are smaller: 512 rows peak at 1.8 GB
  where 2048 peak at 2.4 GB, in the same time (BUILD.md)."""
  batch, vmap = (2048, 256) if platform == "cpu" else (16384, 16384)
  if platform == "cpu" and kwargs["tier"] == "tier4":
    batch = 512
  out = dict(kwargs)
  if out["batch_size"] == 0:
    out["batch_size"] = batch
  if out["vmap_rows"] == 0:
    out["vmap_rows"] = min(vmap, out["batch_size"])
  return out


def main(argv) -> int:
  del argv
  logging.getLogger("jax").setLevel(logging.WARNING)
  try:
    if FLAGS.out is None:
      raise UserError("--out is required")
    kwargs, config, max_classes = _settings()
  except (UserError, plan_lib.EmitError) as e:
    _fail(str(e))
  _split_cpu()
  try:
    pid, nproc = _start_distributed()
  except UserError as e:
    _fail(str(e))
  except RuntimeError as e:
    _fail(str(e), 1)
  try:
    devices = _select_devices(FLAGS.device, FLAGS.num_devices)
    out = _check_out(FLAGS.out)    # only once the devices are there
    plan = plan_lib.make_plan(**_auto_sizes(kwargs, devices[0].platform))
    if ("parquet" in plan.formats
        and importlib.util.find_spec("pyarrow") is None):
      raise UserError("--formats=parquet needs pyarrow: pip install "
                      "'tinyvm_jax[parquet]' (or leave parquet out)")
  except (UserError, plan_lib.EmitError) as e:
    _fail(str(e))
  compile_cache.enable_compile_cache(FLAGS.compile_cache)
  heap.arrow_pool()
  if not {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"} & set(
      os.environ):   # the user's choice stands
    heap.bound(run_lib.largest_row_bytes(plan), plan.formats)
  show = FLAGS.progress if FLAGS.progress is not None else sys.stderr.isatty()
  label = plan.tier.name if nproc == 1 else f"{plan.tier.name}[{pid}]"
  bar = _Bar(label, show)
  note = lambda s: print(f"emit: {s}", file=sys.stderr)
  try:
    result = run_lib.emit_dataset(plan, out, devices=devices, config=config,
                                  on_progress=bar, log=note,
                                  max_classes=max_classes,
                                  workers=FLAGS.workers)
  except KeyboardInterrupt:
    bar.close()
    _fail("interrupted; run the same command again to resume", 130)
  except plan_lib.EmitError as e:
    bar.close()
    _fail(str(e), 1)
  except (OSError, ValueError) as e:
    bar.close()
    tier_dir = out / plan.tier.name
    if layout.is_disk_full(e):
      _fail(f"no space left on the device of {tier_dir} "
            f"({layout.space_report(plan, tier_dir)}); free some space and "
            "run the same command again to resume", 1)
    if isinstance(e, ValueError):
      raise
    _fail(f"{e.strerror or e}: {e.filename or ''}".rstrip(": "), 1)
  bar.close()
  print(_summary(plan, result, devices, pid, nproc))
  return 0


def _summary(plan, result, devices, pid: int, nproc: int) -> str:
  """The one line the emit prints on success."""
  platform = devices[0].platform
  where = f"{len(devices)} {platform} devices" if len(devices) > 1 else (
      platform)
  if nproc > 1:
    where += f" x {nproc} processes"
  rate = result.generated / result.seconds if result.seconds else 0.0
  if pid != 0:
    return (f"{plan.tier.name}: process {pid} of {nproc} generated "
            f"{result.generated:,} rows in {result.seconds:.1f} s "
            f"({rate:,.0f} rows/s)")
  sizes = ", ".join(f"{f} {_human(result.bytes_by_format.get(f, 0))}"
                    for f in plan.formats)
  if nproc > 1:
    rate = result.rows / result.seconds if result.seconds else 0.0
  resumed = f", resumed ({result.generated:,} rows generated)" if (
      result.resumed) else ""
  return (f"{plan.tier.name}: {result.rows:,} rows in {result.seconds:.1f} s "
          f"({rate:,.0f} rows/s) on {where}{resumed}; {sizes} -> "
          f"{result.tier_dir}")


def run() -> None:
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
