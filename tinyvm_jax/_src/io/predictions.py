"""A model's predictions on dataset rows, one JSON object a line.

The experiments write one row per evaluated dataset row; the viewer reads
them back and compares them with the truth. A row names the dataset row it
answers (tier, seed base, split, bucket, index, seed), so the truth can be
rebuilt from the seed or looked up in an emitted dataset:

  {"tier": "tier1", "seed_base": 0, "split": "eval", "bucket": "len_8",
   "index": 17, "seed": <u64 meta.seed>, "render": "direct",
   "model": "direct",                       # free-form label of the model
   "predicted_ids": [1, 40, ...],           # decoded target ids (BOS .. EOS)
   "predicted_text": "5\\n",                # their text (detokenized)
   "predicted_output": [5] | null,          # printed values, null: unparseable
   "target_text": "5\\n",                   # the truth's target text
   "exact_match": true,                     # whole target text equal
   "score": 1.0}                            # score_output of the two id lists

`bucket` is null for the train split. Extra keys are kept as they are.
"""

import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from tinyvm_jax._src.io import loaders

# key -> the JSON types it may hold (None: JSON null allowed)
FIELDS: dict[str, tuple] = {
    "tier": (str,),
    "seed_base": (int,),
    "split": (str,),
    "bucket": (str, type(None)),
    "index": (int,),
    "seed": (int,),
    "render": (str,),
    "model": (str,),
    "predicted_ids": (list,),
    "predicted_text": (str,),
    "predicted_output": (list, type(None)),
    "target_text": (str,),
    "exact_match": (bool,),
    "score": (float, int),
}
SPLITS = ("train", "eval")


def _type_ok(value: Any, types: tuple) -> bool:
  if isinstance(value, bool) and bool not in types:
    return False
  return isinstance(value, types)


def check_prediction(row: Mapping[str, Any]) -> None:
  """Raises ValueError naming the first field of `row` that is missing or
  of the wrong type."""
  for key, types in FIELDS.items():
    if key not in row:
      raise ValueError(f"missing key {key!r}")
    if not _type_ok(row[key], types):
      raise ValueError(f"{key!r} has the wrong type "
                       f"({type(row[key]).__name__})")
  if row["split"] not in SPLITS:
    raise ValueError(f"'split' must be one of {SPLITS}, got {row['split']!r}")
  if (row["split"] == "eval") != (row["bucket"] is not None):
    raise ValueError("'bucket' must name the eval bucket (null for train)")
  if row["index"] < 0 or row["seed"] < 0 or row["seed"] >= 1 << 64:
    raise ValueError("'index' and 'seed' must be >= 0 (seed < 2**64)")
  for key in ("predicted_ids", "predicted_output"):
    values = row[key] or []
    if not all(_type_ok(v, (int,)) for v in values):
      raise ValueError(f"{key!r} must hold integers")


def iter_predictions(path: str | os.PathLike) -> Iterator[dict]:
  """Streams the rows of a predictions file (plain or gzip JSONL).

  Raises:
    loaders.RowError: at the first line that is not JSON or not a
      well-formed prediction, naming the file and line.
  """
  for line, row in loaders.iter_jsonl(path):
    try:
      check_prediction(row)
    except ValueError as e:
      raise loaders.RowError(path, line, f"not a prediction: {e}") from None
    yield row


def load_predictions(path: str | os.PathLike) -> list[dict]:
  """All rows of a predictions file, checked (see `iter_predictions`)."""
  return list(iter_predictions(path))


def write_predictions(path: str | os.PathLike,
                      rows: Iterable[Mapping[str, Any]]) -> int:
  """Writes `rows` (each checked) to `path` atomically; returns the count.

  The file appears whole or not at all: rows go to a temporary file beside
  `path`, which replaces it at the end.
  """
  path = Path(path)
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  count = 0
  try:
    with open(tmp, "w", encoding="utf-8") as f:
      for count, row in enumerate(rows, start=1):
        try:
          check_prediction(row)
        except ValueError as e:
          raise ValueError(f"prediction {count}: {e}") from None
        f.write(json.dumps(dict(row), separators=(",", ":")) + "\n")
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)
  return count
