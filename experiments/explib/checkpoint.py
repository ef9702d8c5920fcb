"""Checkpoints as `.npz` files: a pytree flattened with its path keys.

A checkpoint holds any pytree of arrays (the model's parameters, the
optimiser's state) as one `.npz` entry per leaf, named by the leaf's path
(`jax.tree_util.keystr`, e.g. `['params']['blocks']['wqkv']`), and a JSON
`__meta__` entry (the configuration, the step, the training history).
`load` rebuilds the pytree on the structure of a template (`like`), so any
pytree that `jax.tree_util` flattens (dicts, optax's named tuples) round
trips. Files are written atomically (a temporary file, then a rename).

  save("ckpt.npz", {"params": params, "opt": opt_state}, meta={"step": 100})
  tree, meta = load("ckpt.npz", like={"params": params, "opt": opt_state})

`load(path)` without `like` returns {path key: array} and the metadata.
"""

import hashlib
import json
import os
import pathlib

import jax
import numpy as np

META = "__meta__"


def _flat(tree) -> dict[str, np.ndarray]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in leaves}


def save(path, tree, meta: dict | None = None) -> pathlib.Path:
  """Writes `tree` (and JSON-ready `meta`) to `path` (.npz) atomically."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  arrays = _flat(tree)
  if META in arrays:
    raise ValueError(f"a leaf may not be called {META!r}")
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.npz")
  try:
    np.savez(tmp, **arrays, **{META: np.array(json.dumps(meta or {}))})
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)
  return path


def load(path, like=None):
  """(tree, meta) from `path`; the tree on `like`'s structure, or a flat
  {path key: array} dict when `like` is None.

  Raises:
    ValueError: when the file's leaves and `like`'s differ in name or shape.
  """
  with np.load(path, allow_pickle=False) as f:
    arrays = {k: f[k] for k in f.files}
  meta = json.loads(str(arrays.pop(META, np.array("{}"))))
  if like is None:
    return arrays, meta
  template = _flat(like)
  if set(template) != set(arrays):
    raise ValueError(f"{path}: leaves differ from the template: missing "
                     f"{sorted(set(template) - set(arrays))[:5]}, extra "
                     f"{sorted(set(arrays) - set(template))[:5]}")
  for k, v in template.items():
    if v.shape != arrays[k].shape:
      raise ValueError(f"{path}: {k} has shape {arrays[k].shape}, "
                       f"expected {v.shape}")
  leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
  return jax.tree_util.tree_unflatten(
      treedef, [arrays[jax.tree_util.keystr(p)] for p, _ in leaves]), meta


def fingerprint(config: dict) -> str:
  """A short hash of a JSON-ready configuration, for file names."""
  text = json.dumps(config, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:12]
