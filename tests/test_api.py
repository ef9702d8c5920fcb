"""The public surface: everything in __all__ exists, nothing heavy is imported."""

import subprocess
import sys

import tinyvm_jax


def test_all_names_exist():
  for name in tinyvm_jax.__all__:
    assert hasattr(tinyvm_jax, name), name


def test_import_is_light():
  code = ("import sys, tinyvm_jax; "
          "print(sorted(m for m in ('pyarrow', 'matplotlib', 'optax', "
          "'datasets') if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, check=True).stdout.strip()
  assert out == "[]"
