"""`manifest.json`: what an emit wrote, written last and atomically.

The keys of the reference's manifest come first, in its order (spec section
13): `tier`, `seed_base`, `tinyvm_version`, `tinyvm_commit`, `generated_at`,
`files`; then what tinyvm_jax adds: `formats`, `config`, `jax_version`,
`device`. `files` maps a path relative to the tier directory (POSIX
separators) to `{"rows", "sha256"}` (and `bytes`, ours). A JSONL or Parquet
file's `rows` is its number of rows; a zarr file's `rows` is the number of
dataset rows it covers: the whole array for an array's `zarr.json`, 0 for a
group's, the rows of the shard for a data shard.

Written with 2-space indentation and no trailing newline, like the
reference's.
"""

import datetime
import functools
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any, Iterable, Mapping

MANIFEST = "manifest.json"
# An unfinished emit's working directory in the tier directory: a tier
# directory holding it and no manifest is an emit to resume, not a dataset.
PARTIAL = ".partial"
_BLOCK = 1 << 20


class ManifestError(ValueError):
  """A manifest that is missing, unreadable or not of the expected form."""


def package_version() -> str:
  """tinyvm_jax's installed version ("0+unknown" when not installed)."""
  from importlib import metadata
  try:
    return metadata.version("tinyvm_jax")
  except metadata.PackageNotFoundError:
    return "0+unknown"


@functools.cache
def package_commit() -> str:
  """The git commit of the package's checkout, or "unknown" (as the
  reference writes when it cannot tell)."""
  here = Path(__file__).resolve().parent
  try:
    out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"],
                         capture_output=True, text=True, timeout=10,
                         check=False)
  except (OSError, subprocess.SubprocessError):
    return "unknown"
  commit = out.stdout.strip()
  return commit if out.returncode == 0 and len(commit) == 40 else "unknown"


def utc_now() -> str:
  """The reference's `generated_at` form: ISO 8601 UTC with a `Z`."""
  now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
  return now.isoformat() + "Z"


def sha256_file(path: str | os.PathLike, *, count_lines: bool = False
                ) -> tuple[str, int, int]:
  """Streams a file: (sha256 hex, size in bytes, number of b"\\n").

  Memory stays bounded (1 MiB blocks); lines are counted only when asked.
  """
  h = hashlib.sha256()
  size = lines = 0
  with open(path, "rb") as f:
    while block := f.read(_BLOCK):
      h.update(block)
      size += len(block)
      if count_lines:
        lines += block.count(b"\n")
  return h.hexdigest(), size, lines


def build(*, tier: str, seed_base: int, files: Mapping[str, Mapping[str, Any]],
          formats: Iterable[str], config: Mapping[str, Any], device: str,
          generated_at: str | None = None) -> dict[str, Any]:
  """The manifest dict, keys in the reference's order then ours.

  Args:
    tier: the tier name.
    seed_base: the emit's seed.
    files: relative path -> {"rows": int, "sha256": hex, ...}; sorted by the
      writer into a stable order (JSONL train first as the reference).
    formats: the formats written.
    config: the emit configuration (JSON-serialisable).
    device: the device the rows were generated on, e.g. "cpu".
    generated_at: a timestamp; now when None.
  """
  import jax
  return {
      "tier": tier,
      "seed_base": int(seed_base),
      "tinyvm_version": package_version(),
      "tinyvm_commit": package_commit(),
      "generated_at": generated_at or utc_now(),
      "files": {k: dict(v) for k, v in files.items()},
      "formats": list(formats),
      "config": dict(config),
      "jax_version": jax.__version__,
      "device": device,
  }


def fsync_file(path: str | os.PathLike) -> None:
  """Makes a written file's bytes durable."""
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
  """Makes a rename or unlink inside `path` durable (no-op where the OS
  cannot open directories)."""
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
  """Writes `data` to `path` through a temporary name, fsync and
  `os.replace`: readers see the old file or the whole new one."""
  path = Path(path)
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  with open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  fsync_dir(path.parent)


def write(directory: str | os.PathLike, manifest: Mapping[str, Any]) -> Path:
  """Writes `directory/manifest.json` atomically (2-space indent, no
  trailing newline); returns its path."""
  path = Path(directory) / MANIFEST
  write_atomic(path, json.dumps(manifest, indent=2).encode())
  return path


def read(directory: str | os.PathLike) -> dict[str, Any]:
  """Reads and checks `directory/manifest.json`.

  Raises:
    ManifestError: missing, not JSON, or without a `files` mapping of
      `{"rows", "sha256"}` entries.
  """
  path = Path(directory) / MANIFEST
  if not path.is_file():
    raise ManifestError(f"{path}: no manifest (not a finished dataset)")
  try:
    m = json.loads(path.read_bytes())
  except (OSError, ValueError) as e:
    raise ManifestError(f"{path}: unreadable manifest: {e}") from None
  files = m.get("files") if isinstance(m, dict) else None
  if not isinstance(files, dict):
    raise ManifestError(f"{path}: no 'files' mapping")
  for name, entry in files.items():
    if (not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str)
        or not isinstance(entry.get("rows"), int)):
      raise ManifestError(f"{path}: entry {name!r} lacks rows/sha256")
    if Path(name).is_absolute() or ".." in Path(name).parts:
      raise ManifestError(f"{path}: entry {name!r} is not inside the dataset")
  return m
