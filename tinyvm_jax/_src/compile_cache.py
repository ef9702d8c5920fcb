"""JAX's persistent compilation cache, as the CLIs use it."""

import os

import jax


def default_compile_cache() -> str:
  """Where the CLIs keep JAX's persistent compilation cache."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
  return os.path.join(base, "tinyvm_jax", "jax")


def enable_compile_cache(path: str | None) -> None:
  """Turns on JAX's persistent compilation cache in `path` (None: the
  default directory; '' leaves it off): a rerun skips the seconds each
  shape class takes to compile."""
  if path is None:
    path = default_compile_cache()
  if path:
    jax.config.update("jax_compilation_cache_dir", path)
