"""The README's Python snippets run as written, on a small emit."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
  return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("readme")
  subprocess.run(
      [sys.executable, "-m", "tinyvm_jax.emit", "--tier=tier1",
       f"--out={root / 'out'}", "--device=cpu", "--progress=false",
       "--config.train_size=2000", "--config.eval_size=100"],
      check=True, capture_output=True, cwd=root)
  return root


def test_the_readme_has_python_snippets():
  assert len(python_blocks()) >= 4


@pytest.mark.parametrize("i", range(len(python_blocks())))
def test_snippet_runs(i, out_dir, monkeypatch):
  monkeypatch.chdir(out_dir)
  code = python_blocks()[i]
  exec(compile(code, f"README.md python block {i}", "exec"), {})
