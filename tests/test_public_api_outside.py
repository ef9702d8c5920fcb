"""Outside the package (benchmarks, experiments, README) only the public API
is used: no `_src` anywhere there; `tinyvm_jax.isa` and `tinyvm_jax.formats`
export what their `__all__` lists."""

import pathlib

import pytest

import tinyvm_jax.formats
import tinyvm_jax.isa

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHECKED = ("benchmarks", "experiments", "README.md")
SUFFIXES = (".py", ".ipynb", ".md")

def _files():
  for name in CHECKED:
    path = ROOT / name
    if path.is_file():
      yield path
    elif path.is_dir():
      yield from sorted(p for p in path.rglob("*")
                        if p.is_file() and p.suffix in SUFFIXES)


def test_no_private_imports_outside_the_package():
  offenders = []
  for path in _files():
    rel = path.relative_to(ROOT).as_posix()
    for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
      if "_src" in line:
        offenders.append(f"{rel}:{i}: {line.strip()}")
  assert not offenders, "private `_src` use outside the package:\n" + (
      "\n".join(offenders))


@pytest.mark.parametrize("module", [tinyvm_jax.isa, tinyvm_jax.formats],
                         ids=lambda m: m.__name__)
def test_all_names_exist(module):
  missing = [n for n in module.__all__ if not hasattr(module, n)]
  assert not missing, missing
