"""Tier 1 emit settings, at the reference's sizes.

`python -m tinyvm_jax.emit --tier=tier1` loads this file; override any field
on the command line, e.g. `--config.train_size=1000 --config.eval_size=100`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.tier = "tier1"
  c.train_size = 200_000      # train rows
  c.eval_size = 20_000        # rows of every eval bucket (len_8 .. len_128)
  c.renders = "direct"        # comma-separated render names
  # Speed and memory only (the rows do not depend on them); 0: automatic,
  # 2048 and 256 on a CPU, 16384 and 16384 on a GPU or TPU.
  c.batch_size = 0            # rows a jitted call
  c.max_classes = 8           # row classes (static sizes rows are computed at)
  c.vmap_rows = 0             # rows vectorised together inside a call
  # Layout of the output:
  c.part_rows = 8192          # rows a part (unit of resume, zarr shard,
                              # Parquet file); a multiple of chunk_rows
  c.chunk_rows = 1024         # rows a compressed zarr chunk (unit of a read)
  c.zarr_codec = "zstd:1"     # zstd:<level>, blosc:<cname>:<level>, none
  return c
