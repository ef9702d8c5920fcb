"""Sizes of the experiments, per mode.

`smoke` runs every notebook in a few minutes on a CPU (a tiny model, tens of
steps: it checks the pipeline end to end, it does not learn much); `full` is
sized for one GPU. Notebooks 01 and 02 share the Tier 1 model and eval rows,
so with JAX's persistent compilation cache (which `run_notebooks.py` turns
on) the second notebook reuses the first one's compilations.
"""

import dataclasses

from tinyvm_jax._src import tiers as tiers_lib

from explib import data
from explib import model as model_lib
from explib import probes
from explib import train


@dataclasses.dataclass(frozen=True)
class Tier1:
  model: model_lib.ModelConfig
  direct: train.TrainConfig
  cot: train.TrainConfig
  eval_rows: int           # rows per eval bucket
  eval_batch: int          # rows per forward pass
  eval_multiple: int       # sequence lengths rounded up to a multiple of this
  cot_buckets: tuple[str, ...]
  probe: probes.ProbeConfig
  probe_buckets: tuple[str, ...]


_COT_TARGET = train.cot_target_len(34)   # the train split's S = 34


def tier1(mode: str) -> Tier1:
  """The Tier 1 experiments' configuration for `mode` ("smoke" | "full")."""
  if mode == "smoke":
    return Tier1(
        model=model_lib.ModelConfig(d_model=32, n_layers=2, n_heads=2,
                                    d_ff=128),
        direct=train.TrainConfig(batch_size=16, steps=60, chunk=30, lr=3e-3,
                                 warmup=10),
        cot=train.TrainConfig(render="cot_modified", batch_size=8, steps=10,
                              chunk=10, lr=3e-3, warmup=2,
                              max_target_len=_COT_TARGET),
        eval_rows=32, eval_batch=32, eval_multiple=256,
        cot_buckets=("len_8",),
        probe=probes.ProbeConfig(steps=200, l2=1e-2),
        probe_buckets=("len_8", "len_16", "len_32"))
  if mode == "full":
    return Tier1(
        model=model_lib.ModelConfig(d_model=256, n_layers=6, n_heads=8,
                                    d_ff=1024),
        direct=train.TrainConfig(batch_size=128, steps=20_000, chunk=500,
                                 lr=5e-4, warmup=1_000),
        cot=train.TrainConfig(render="cot_modified", batch_size=64,
                              steps=20_000, chunk=500, lr=5e-4, warmup=1_000,
                              max_target_len=_COT_TARGET),
        eval_rows=2_000, eval_batch=100, eval_multiple=64,
        cot_buckets=tiers_lib.get_tier("tier1").bucket_names,
        probe=probes.ProbeConfig(steps=2_000),
        probe_buckets=("len_8", "len_16", "len_32"))
  raise ValueError(f"mode must be one of {data.MODES}, got {mode!r}")


def tier1_eval_rows(cfg: Tier1) -> dict:
  """The first `cfg.eval_rows` rows of every Tier 1 eval bucket of the
  dataset with seed_base 0, with the direct and cot_modified renders."""
  tier = tiers_lib.get_tier("tier1")
  t_in = tier.max_shapes.token_lengths("direct")[0]
  t_out = train.cot_target_len(tier.max_shapes.max_steps)
  return data.dataset_rows(tier, 0, tier.bucket_names, cfg.eval_rows,
                           renders=("direct", "cot_modified"),
                           token_lengths={"cot_modified": (t_in, t_out)})
