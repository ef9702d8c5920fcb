r"""Runs a multi-process emit on one machine: `python -m tinyvm_jax.launch`.

  python -m tinyvm_jax.launch --num_processes=2 -- \
      --tier=tier1 --out=DIR [any other flag of tinyvm_jax.emit]

Starts `--num_processes` copies of `python -m tinyvm_jax.emit` with the
flags after `--`, adding `--num_processes`, `--process_id` and a localhost
`--coordinator_address` (a free port unless `--port` is given), waits for
them and exits with status 0 when all succeed. When one fails, the others
are stopped and the launcher exits with its status: no manifest is written,
and running the same command again resumes the emit.

Devices per process: `--gpus_per_process=K` gives process i the GPUs
i*K .. i*K+K-1 (`CUDA_VISIBLE_DEVICES`); `--cpu_devices_per_process=K`
splits each process's CPU into K JAX devices (the emit's `--cpu_devices`;
default: the machine's cores shared out between the processes). For several
hosts, run `python -m tinyvm_jax.emit` on each with the same flags, its
own `--process_id` and process 0's `--coordinator_address` (README,
"Scaling out").
"""

import os
import signal
import socket
import subprocess
import sys
import time

from absl import app
from absl import flags

from tinyvm_jax._src import cli

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_processes", 2, "Processes to start.", lower_bound=1)
flags.DEFINE_integer("port", 0, "Coordinator port on localhost (0: a free "
                     "one).", lower_bound=0, upper_bound=65535)
flags.DEFINE_integer("gpus_per_process", 0, "GPUs each process sees "
                     "(CUDA_VISIBLE_DEVICES); 0 leaves the environment as "
                     "it is.", lower_bound=0)
flags.DEFINE_integer("cpu_devices_per_process", 0, "JAX CPU devices each "
                     "process splits its CPU into (--cpu_devices); 0: the cores "
                     "shared out between the processes.", lower_bound=0)
flags.DEFINE_float("grace_seconds", 5.0, "How long stopped processes get "
                   "to exit before they are killed.", lower_bound=0)

_OWN = ("--num_processes", "--process_id", "--coordinator_address")


def _fail(msg: str, code: int = 2):
  cli.fail("launch", msg, code)


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(i: int) -> dict:
  env = dict(os.environ)
  k = FLAGS.gpus_per_process
  if k:
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i * k + j) for j in range(k))
  return env


def _device_args() -> list[str]:
  """Each process's share of the CPU cores, as the emit's --cpu_devices
  (which sets XLA's host device count)."""
  if FLAGS.gpus_per_process:
    return []
  cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
           else os.cpu_count() or 1)
  n = FLAGS.cpu_devices_per_process or max(1, cores // FLAGS.num_processes)
  return [f"--cpu_devices={n}"]


def _stop(procs, grace: float) -> None:
  for p in procs:
    if p.poll() is None:
      p.send_signal(signal.SIGTERM)
  deadline = time.monotonic() + grace
  for p in procs:
    left = deadline - time.monotonic()
    try:
      p.wait(timeout=max(left, 0.01))
    except subprocess.TimeoutExpired:
      p.kill()
      p.wait()


def launch(emit_args, *, num_processes: int, port: int, grace: float) -> int:
  """Starts the processes and waits; returns the exit status."""
  address = f"127.0.0.1:{port or _free_port()}"
  procs = []
  try:
    for i in range(num_processes):
      cmd = [sys.executable, "-m", "tinyvm_jax.emit", *_device_args(),
             *emit_args, f"--num_processes={num_processes}",
             f"--process_id={i}",
             f"--coordinator_address={address}"]
      procs.append(subprocess.Popen(cmd, env=_env(i)))
    while True:
      codes = [p.poll() for p in procs]
      bad = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
      if bad:
        i, c = bad[0]
        _stop(procs, grace)
        print(f"launch: process {i} of {num_processes} exited with status "
              f"{c}; the emit did not finish (no manifest); run the same "
              "command again to resume", file=sys.stderr)
        return c if c > 0 else 1
      if all(c == 0 for c in codes):
        return 0
      time.sleep(0.1)
  except KeyboardInterrupt:
    _stop(procs, grace)
    print("launch: interrupted; run the same command again to resume",
          file=sys.stderr)
    return 130


def main(argv) -> int:
  emit_args = argv[1:]
  if not emit_args:
    _fail("give the emit's flags after --, e.g. python -m tinyvm_jax.launch "
          "--num_processes=2 -- --tier=tier1 --out=DIR")
  for a in emit_args:
    if a.split("=", 1)[0] in _OWN:
      _fail(f"{a.split('=', 1)[0]} is set by the launcher; leave it out")
  if FLAGS.gpus_per_process and FLAGS.cpu_devices_per_process:
    _fail("--gpus_per_process and --cpu_devices_per_process exclude each "
          "other")
  sys.exit(launch(emit_args, num_processes=FLAGS.num_processes,
                  port=FLAGS.port, grace=FLAGS.grace_seconds))


def _parse_flags(argv):
  try:
    return FLAGS(argv)
  except flags.Error as e:
    _fail(str(e).splitlines()[0])


def run() -> None:
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
