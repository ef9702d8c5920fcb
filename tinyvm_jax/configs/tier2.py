"""Tier 2 emit settings, at the reference's sizes.

`python -m tinyvm_jax.emit --tier=tier2` loads this file; override any field
on the command line, e.g. `--config.train_size=1000 --config.eval_size=100`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.tier = "tier2"
  c.train_size = 500_000      # train rows
  c.eval_size = 10_000        # rows of every eval bucket (easy, medium, hard, ood_len_256)
  c.renders = "direct,cot"    # comma-separated render names (cot = full)
  # Speed and memory only (the rows do not depend on them); 0: automatic,
  # 2048 and 256 on a CPU, 16384 and 16384 on a GPU or TPU.
  c.batch_size = 128          # rows a jitted call (cot targets are long)
  c.vmap_rows = 32            # rows vectorised together inside a call
  c.max_classes = 8           # row classes (static sizes rows are computed at)
  # Layout of the output (a train row holds up to 124,357 cot target tokens
  # and 1,615 steps: parts and chunks are smaller than Tier 0/1's):
  c.part_rows = 2048          # rows a part (unit of resume, zarr shard,
                              # Parquet file); a multiple of chunk_rows
  c.chunk_rows = 256          # rows a compressed zarr chunk (unit of a read)
  c.zarr_codec = "zstd:1"     # zstd:<level>, blosc:<cname>:<level>, none
  return c
