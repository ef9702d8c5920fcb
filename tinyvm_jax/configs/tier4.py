"""Tier 4 emit settings (userops and few-shot rows), at the chosen sizes.

`python -m tinyvm_jax.emit --tier=tier4` loads this file; override any field
on the command line, e.g. `--config.train_size=1000 --config.eval_size=100`.

Sizes (`userop.TIER4`): 100,000 train rows (5 userops x 4 demo counts x 2
stack settings: 40 cells of about 2,500 rows) and 1,000 rows in each of the
16 eval buckets (a 95% interval of about +-3 points on an accuracy):
`<userop>_k<k>` for the userops double, max, abs, mod and sign and k in
{1, 2, 4} demos, and `ood_len_64` (a target of n = 64, twice the train
maximum, with a stack frame).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.tier = "tier4"
  c.train_size = 100_000      # train rows
  c.eval_size = 1_000         # rows of every eval bucket
  c.eval_buckets = ""         # comma-separated buckets to write ("": all 16)
  c.renders = "userop_direct,userop_with_decomposition"
  # Speed and memory only (the rows do not depend on them); 0: automatic,
  # 512 on a CPU, 16384 on a GPU or TPU. Tier 4 rows are computed at their
  # split's sizes (no row classes) on the default device.
  c.batch_size = 0            # rows a jitted call
  c.max_classes = 0           # unused by Tier 4
  c.vmap_rows = 0             # unused by Tier 4
  # Layout of the output:
  c.part_rows = 8192          # rows a part (unit of resume, zarr shard,
                              # Parquet file); a multiple of chunk_rows
  c.chunk_rows = 1024         # rows a compressed zarr chunk (unit of a read)
  c.zarr_codec = "zstd:1"     # zstd:<level>, blosc:<cname>:<level>, none
  return c
