"""Serialization workers: host batches -> JSONL bytes and Arrow tables,
and Parquet parts -> file bytes, in worker processes.

The JSONL and Parquet writers spend most of their time turning host rows
into bytes (`RowSource.to_jsonl`) and Arrow tables (`RowSource.to_table`),
and a part's table into a Parquet file: pure functions. A `Pool` runs them
in worker processes, so that serialization uses as many cores as there are
workers; the writers' threads keep the file appends, fsync, hashing and
`.partial` layout.

- Start method "forkserver" (or "spawn" where there is none), never "fork":
  the emit's process runs JAX's threads. The fork server imports this
  module once, so that a worker starts in milliseconds; the pool starts its
  workers as it is made, while the emit compiles.
- A batch is cut into at most `ceil(workers / IN_FLIGHT)` slices (each of
  at least `_MIN_SLICE` rows), a job each; `Pending.result` joins the
  slices' results in order. The run keeps at most `IN_FLIGHT` batches a
  writer submitted, so memory does not grow with the dataset or the number
  of workers, and the bytes do not depend on either (tests/test_emit.py).
- Workers ignore SIGINT (the emit stops them when it stops) and exit when
  the emit's process goes (a killed emit leaves none behind).
"""

import concurrent.futures
from concurrent.futures.process import BrokenProcessPool
import multiprocessing
import os
import signal
import threading

import jax
import numpy as np

from tinyvm_jax._src import checks
from tinyvm_jax._src.emit import sources
from tinyvm_jax._src.emit.plan import EmitError, Plan, SplitPlan
from tinyvm_jax._src.io import jsonl_chunks

IN_FLIGHT = 4          # batches a converting writer may have submitted
_MIN_SLICE = 256       # fewest rows a job
_POOL_ROWS = 50_000    # below this many rows the default is no pool
_MOST_DEFAULT = 32     # the default's most workers
KINDS = ("to_jsonl", "to_table")   # the source's methods a pool runs


def usable_cores() -> int:
  """The cores this process may run on."""
  if hasattr(os, "sched_getaffinity"):
    return max(1, len(os.sched_getaffinity(0)))
  return max(1, os.cpu_count() or 1)


def default_workers(rows: int, processes: int = 1) -> int:
  """The workers of an emit that does not choose: a worker a core of this
  process's share of the machine (its cores over the emit processes on
  it), less two for the emit's own threads (generation, copy, writers),
  at most `_MOST_DEFAULT`; none below 2 such workers (on 2 or 3 cores the
  emit's threads already keep every core busy, BUILD.md) or for under
  `_POOL_ROWS` rows (starting them costs about what they save)."""
  share = usable_cores() // max(1, processes)
  workers = min(_MOST_DEFAULT, share - 2)
  return workers if workers >= 2 and rows >= _POOL_ROWS else 0


def check_workers(workers) -> int:
  """`workers` if it is an integer >= 0; else one line (`EmitError`)."""
  if not checks.is_int(workers) or workers < 0:
    raise EmitError(f"workers must be an integer >= 0, got {workers!r}")
  return int(workers)


# ------------------------------------------------------ in the worker
_SOURCE = []   # the worker process's row source (set by _start_worker)


def _start_worker(plan: Plan) -> None:
  """A worker's initializer: its row source, SIGINT left to the emit, and
  a watch that ends the worker once its parent is gone."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  _SOURCE.append(sources.make_source(plan))
  threading.Thread(target=_exit_when_orphaned, name="tinyvm-orphan-watch",
                   daemon=True).start()


def _exit_when_orphaned() -> None:
  """Ends the worker once the emit's process is gone (the fork server,
  its parent, lives on while any worker does)."""
  parent = multiprocessing.parent_process()
  if parent is not None:
    parent.join()
    os._exit(1)


def _warm() -> None:
  """(In a worker) builds the JSONL chunk tables (once a process)."""
  jsonl_chunks.tables()


def _convert(kind: str, sp: SplitPlan, rows):
  """(In a worker) `source.<kind>(sp, rows)`."""
  return getattr(_SOURCE[0], kind)(sp, rows)


def _encode_parquet(table) -> bytes:
  """(In a worker) a Parquet file's bytes of an Arrow table."""
  import pyarrow as pa
  from tinyvm_jax._src.io import parquet
  sink = pa.BufferOutputStream()
  parquet.write_parquet(table, sink)
  return sink.getvalue().to_pybytes()


# ------------------------------------------------------ in the emit
def _join(kind: str, parts: list):
  """A batch's result from its slices' results, in order."""
  if len(parts) == 1:
    return parts[0]
  if kind == "to_jsonl":
    return b"".join(parts)
  import pyarrow as pa
  return pa.concat_tables(parts)


class Pending:
  """A batch's conversion in flight: its slices' futures, in order."""

  def __init__(self, kind: str, futures: list):
    self.kind, self.futures = kind, futures

  def wait(self, timeout: float) -> bool:
    """Waits up to `timeout` seconds; whether every slice is done."""
    _, left = concurrent.futures.wait(self.futures, timeout=timeout)
    return not left

  def result(self):
    """The batch's bytes or table (raises a worker's error)."""
    try:
      return _join(self.kind, [f.result() for f in self.futures])
    except BrokenProcessPool as e:
      raise EmitError(f"a serialization worker died ({e}); run the same "
                      "command again to resume") from None


def _slices(count: int, workers: int) -> np.ndarray:
  """[k + 1] bounds of the k slices a batch of `count` rows is cut into."""
  k = max(1, min(-(-workers // IN_FLIGHT), count // _MIN_SLICE))
  return np.linspace(0, count, k + 1).astype(np.int64)


class Pool:
  """`workers` processes converting host batches of `plan`'s source. A
  context manager: leaving it cancels the jobs not started and waits for
  the workers to exit."""

  def __init__(self, plan: Plan, workers: int):
    methods = multiprocessing.get_all_start_methods()
    method = "forkserver" if "forkserver" in methods else "spawn"
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
      ctx.set_forkserver_preload([__name__])
    self.workers = workers
    self._executor = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_start_worker,
        initargs=(plan,))
    self._starting = threading.Thread(target=self._start_workers,
                                      name="tinyvm-pool-start", daemon=True)
    self._starting.start()

  def _start_workers(self) -> None:
    """Starts the workers now, while the emit compiles: the fork server
    imports JAX and this package once (seconds), then each worker forks
    from it and builds its chunk tables."""
    for _ in range(self.workers):
      self._executor.submit(_warm)

  def submit(self, kind: str, sp: SplitPlan, rows, count: int) -> Pending:
    """Starts `source.<kind>(sp, rows)` on host `rows` [count]."""
    if kind not in KINDS:
      raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    bounds = _slices(count, self.workers)
    futures = [self._executor.submit(
        _convert, kind, sp, jax.tree.map(lambda x: x[lo:hi], rows))
               for lo, hi in zip(bounds[:-1], bounds[1:])]
    return Pending(kind, futures)

  def encode_parquet(self, table) -> Pending:
    """Starts encoding `table` as a Parquet file's bytes."""
    return Pending("parquet",
                   [self._executor.submit(_encode_parquet, table)])

  def __enter__(self) -> "Pool":
    return self

  def __exit__(self, *exc) -> None:
    self._starting.join()
    self._executor.shutdown(wait=True, cancel_futures=True)
