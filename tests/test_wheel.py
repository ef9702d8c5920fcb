"""The package works installed from a wheel (not editable), run from
another folder: configs and assets ship inside it."""

import json
import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _sh(cmd, **kw):
  proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
  assert proc.returncode == 0, f"{cmd}\n{proc.stdout}\n{proc.stderr}"
  return proc.stdout


@pytest.fixture(scope="module")
def wheel_python(tmp_path_factory):
  """A fresh venv holding the wheel; the dependencies (not tinyvm_jax) are
  borrowed from the running environment's site-packages by a .pth file."""
  tmp = tmp_path_factory.mktemp("wheel")
  _sh([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps",
       "--no-build-isolation", "-q", "-w", str(tmp / "dist")],
      cwd=tmp)
  wheel, = (tmp / "dist").glob("tinyvm_jax-*.whl")
  _sh([sys.executable, "-m", "venv", "--without-pip", str(tmp / "venv")])
  python = tmp / "venv" / "bin" / "python"
  purelib = Path(_sh([str(python), "-c", "import sysconfig; "
                      "print(sysconfig.get_paths()['purelib'])"]).strip())
  deps = [p for p in site.getsitepackages() + [site.getusersitepackages()]
          if os.path.isdir(p)]
  (purelib / "_borrowed_deps.pth").write_text("\n".join(deps) + "\n")
  _sh([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
       "--no-index", "--target", str(purelib), str(wheel)])
  return python, purelib


def test_wheel_install_emits_from_another_folder(wheel_python, tmp_path):
  python, purelib = wheel_python
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  where = _sh([str(python), "-c", "import tinyvm_jax; "
               "print(tinyvm_jax.__file__)"], cwd=elsewhere, env=env)
  assert where.startswith(str(purelib)), where       # the wheel, not the repo
  _sh([str(python), "-m", "tinyvm_jax.emit", "--tier=tier1", "--out=X",
       "--progress=false", "--config.train_size=1000",
       "--config.eval_size=100"], cwd=elsewhere, env=env)
  manifest = json.loads((elsewhere / "X" / "tier1" / "manifest.json")
                        .read_text())
  assert manifest["files"]["train.jsonl"]["rows"] == 1000
  assert manifest["files"]["eval/len_8.jsonl"]["rows"] == 100


def test_repository_configs_are_the_packaged_ones():
  for path in sorted((REPO / "configs").glob("tier*.py")):
    packaged = REPO / "tinyvm_jax" / "configs" / path.name
    assert path.read_bytes() == packaged.read_bytes(), path.name
