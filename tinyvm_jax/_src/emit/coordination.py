"""Several emit processes: joining JAX's distributed runtime, barriers and
the check that every process holds the same settings.

Public JAX API only: `jax.distributed.initialize` joins the runtime;
`jax.experimental.multihost_utils.sync_global_devices` is the barrier and
`multihost_utils.process_allgather` gathers each process's settings
fingerprint. Both are small cross-process computations over every global
device (on a CPU through JAX's gloo collectives; on accelerators through
their own), so a process that died makes them fail once the runtime's
heartbeats stop or the transport sees a closed connection (an
`EmitError`), and a launcher stops the others first. JAX's key-value
store and coordination-service barriers would need no collective, but JAX
keeps them in its private modules.

Gloo announces each connection it makes with a line on the C++ standard
output ("[Gloo] Rank 0 is connected to ...", buffered by the C library and
written whenever it is flushed); the emit CLI, whose standard output is its
one-line result, gives the C++ runtime /dev/null as file descriptor 1 once
it joined the runtime (`quiet_native_stdout`).
"""

import contextlib
import os
import sys

import jax
import numpy as np

from tinyvm_jax._src.emit.plan import EmitError


def join(coordinator_address: str | None, num_processes: int | None,
         process_id: int | None) -> tuple[int, int]:
  """Joins JAX's distributed runtime; returns (process_id, num_processes).

  Raises:
    RuntimeError: the runtime could not be joined (one line).
  """
  try:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes,
                               process_id=process_id)
  except Exception as e:  # pylint: disable=broad-except
    msg = str(e).strip().splitlines()
    raise RuntimeError("could not join the distributed runtime at "
                       f"{coordinator_address}: "
                       f"{msg[0] if msg else type(e).__name__}") from None
  return jax.process_index(), jax.process_count()


def quiet_native_stdout() -> None:
  """Points file descriptor 1 (the C and C++ runtime's standard output:
  gloo's connection notes) at /dev/null for the rest of the process, and
  Python's `sys.stdout` at a copy of the real standard output."""
  sys.stdout.flush()
  real = os.dup(1)
  null = os.open(os.devnull, os.O_WRONLY)
  os.dup2(null, 1)
  os.close(null)
  sys.stdout = os.fdopen(real, "w", buffering=1)


@contextlib.contextmanager
def _collective(what: str):
  """Runs a cross-process collective; a failure (a process died: the
  transport reports a closed connection) is raised as one `EmitError`
  line."""
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except
    msg = str(e).strip().splitlines()
    raise EmitError(f"{what} failed (did a process stop?): "
                    f"{msg[0] if msg else type(e).__name__}") from None


def _require_runtime() -> None:
  if not jax.distributed.is_initialized():
    raise EmitError("several processes need JAX's distributed "
                            "runtime: call jax.distributed.initialize first")


def global_barrier(name: str) -> None:
  """Waits until every process of JAX's distributed runtime reaches the
  barrier `name`."""
  _require_runtime()
  from jax.experimental import multihost_utils
  with _collective(f"the barrier {name!r}"):
    multihost_utils.sync_global_devices(f"tinyvm_jax/{name}")


def check_same_settings(fingerprint: str) -> None:
  """Every process of JAX's distributed runtime holds the same plan: each
  gathers every process's hex `fingerprint` and compares.

  Raises:
    EmitError: the processes were started with different settings.
  """
  _require_runtime()
  from jax.experimental import multihost_utils
  mine = np.frombuffer(bytes.fromhex(fingerprint), np.uint8)
  with _collective("the settings check"):
    every = np.asarray(multihost_utils.process_allgather(mine))
  if not (every.reshape(-1, mine.size) == mine).all():
    raise EmitError("the processes were started with different settings "
                    "(seed, sizes, formats, renders or layout); give "
                    "every process the same flags")
