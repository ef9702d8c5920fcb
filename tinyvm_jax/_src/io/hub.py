"""The dataset card (`README.md`) of the Parquet files, for Hugging Face.

`datasets.load_dataset(folder)` reads the YAML header: `configs` names each
split's Parquet files, and `dataset_info` lists every split's row count,
which `datasets` checks when it loads. For a local folder `datasets` keys
its cache on this header alone (not on the files' contents or the folder's
path), so the header carries what tells two emits apart: the row counts and,
in the config's `description`, the fingerprint of the rows (tier, seed base,
renders, splits and sizes). Two emits into folders of the same name then
never share a cache entry unless they hold the same rows.
"""

import dataclasses
import hashlib
import json
from typing import Sequence

DATA_DIR = "data"          # the Parquet files, relative to the card


@dataclasses.dataclass(frozen=True)
class CardSplit:
  name: str                # the Hub's split name: train or eval_<bucket>
  rows: int
  parquet_bytes: int       # bytes of the split's Parquet files


def rows_fingerprint(*, tier: str, seed_base: int, renders: Sequence[str],
                     splits: Sequence[tuple[str, int]]) -> str:
  """16 hex digits naming the rows a dataset holds: the same for every emit
  of the same rows, whatever the formats, layout, devices or version."""
  d = {"tier": tier, "seed_base": seed_base, "renders": list(renders),
       "splits": [list(s) for s in splits]}
  return hashlib.sha256(json.dumps(d, sort_keys=True).encode()
                        ).hexdigest()[:16]


def dataset_card(*, tier: str, seed_base: int, fingerprint: str,
                 splits: Sequence[CardSplit], version: str,
                 columns: str) -> str:
  """The card's text: YAML header (configs, dataset_info) and a table."""
  lines = ["---", "configs:", "- config_name: default",
           f"  description: tinyvm_jax {tier}, seed base {seed_base}, rows "
           f"{fingerprint}", "  data_files:"]
  for s in splits:
    lines += [f"  - split: {s.name}", f"    path: {DATA_DIR}/{s.name}-*.parquet"]
  lines += ["dataset_info:", "  config_name: default", "  splits:"]
  for s in splits:
    lines += [f"  - name: {s.name}", f"    num_bytes: {s.parquet_bytes}",
              f"    num_examples: {s.rows}"]
  lines += [f"  download_size: {sum(s.parquet_bytes for s in splits)}",
            "---", "", f"# Tiny-VM {tier}", "",
            f"Rows of the Tiny-VM {tier} dataset, seed base {seed_base}, "
            f"written by tinyvm_jax {version} (rows fingerprint "
            f"{fingerprint}). Columns: {columns}. `num_bytes` above is the "
            "size of each split's Parquet files.", "",
            "| split | rows | Parquet bytes |", "|---|---:|---:|"]
  lines += [f"| {s.name} | {s.rows} | {s.parquet_bytes} |" for s in splits]
  return "\n".join(lines) + "\n"
