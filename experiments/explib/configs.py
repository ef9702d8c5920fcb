"""Sizes of the experiments, per mode.

- `smoke`: every notebook in about three minutes on a CPU (a tiny model,
  tens of steps): it checks the pipeline end to end and learns nothing
  worth reporting.
- `cpu`: all four notebooks in about 14 CPU-minutes on two cores (more wall
  time on a loaded machine), sized so that the models learn something
  measurable: Tier 1 trained on
  the `len_8` bucket only (programs of 8 fill instructions over 4
  registers), a 3-layer 64-wide transformer.
- `full`: sized for one GPU, trained on the Tier 1 train split (8-32 fill
  instructions).

Notebooks 01 and 02 share the Tier 1 models and eval rows: 01 trains them
and saves checkpoints under the run folder, 02 loads them (and trains them
only when they are missing). With JAX's persistent compilation cache (which
`run_notebooks.py` turns on) 02 also reuses 01's compilations.
"""

import dataclasses
import os
import pathlib
import tempfile

import jax
import tinyvm_jax

from explib import data
from explib import evaluate
from explib import model as model_lib
from explib import probes
from explib import train

RUN_ENV = "TINYVM_EXPERIMENTS_RUN"   # the run folder (checkpoints, predictions)


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
  constant_rows: int = 2_000   # training-distribution rows for the constant
  ood_eval_rows: int | None = None   # rows of the buckets not trained on
                                     # (None: eval_rows)

  def eval_rows_of(self, bucket: str, tc: "train.TrainConfig") -> int:
    """Eval rows of `bucket` for a model trained with `tc`."""
    if self.ood_eval_rows is None or tc.bucket in (None, bucket):
      return self.eval_rows
    return min(self.eval_rows, self.ood_eval_rows)


def _cot_len(bucket) -> int:
  shapes = tinyvm_jax.get_tier("tier1").shapes(bucket)
  return train.cot_target_len(shapes.max_steps)


def tier1(mode: str) -> Tier1:
  """The Tier 1 experiments' configuration for `mode` (see module doc)."""
  if mode == "smoke":
    return Tier1(
        model=model_lib.ModelConfig(d_model=32, n_layers=2, n_heads=2,
                                    d_ff=128),
        direct=train.TrainConfig(bucket="len_8", batch_size=16, steps=60,
                                 chunk=30, lr=3e-3, warmup=10),
        cot=train.TrainConfig(render="cot_modified", bucket="len_8",
                              batch_size=8, steps=10, chunk=10, lr=3e-3,
                              warmup=2, max_target_len=_cot_len("len_8")),
        eval_rows=32, eval_batch=32, eval_multiple=256,
        cot_buckets=("len_8",),
        probe=probes.ProbeConfig(steps=100, l2=1e-2),
        probe_buckets=("len_8",), constant_rows=256)
  if mode == "cpu":
    return Tier1(
        model=model_lib.ModelConfig(d_model=64, n_layers=3, n_heads=4,
                                    d_ff=256),
        # len_8 inputs hold at most 63 tokens; cot_modified targets 102 in
        # 2,000 rows (the static bound is 148): a longer row is dropped
        # from its batch (`valid`), not truncated
        direct=train.TrainConfig(bucket="len_8", batch_size=32, steps=1_500,
                                 chunk=250, lr=2e-3, warmup=100,
                                 max_input_len=64),
        cot=train.TrainConfig(render="cot_modified", bucket="len_8",
                              batch_size=16, steps=1_250, chunk=250, lr=2e-3,
                              warmup=100, max_input_len=64,
                              max_target_len=112),
        eval_rows=1_000, ood_eval_rows=300, eval_batch=100, eval_multiple=64,
        cot_buckets=("len_8", "len_16"),
        probe=probes.ProbeConfig(steps=400, l2=1e-3),
        probe_buckets=("len_8",))
  if mode == "full":
    return Tier1(
        model=model_lib.ModelConfig(d_model=256, n_layers=6, n_heads=8,
                                    d_ff=1024),
        direct=train.TrainConfig(batch_size=128, steps=20_000, chunk=500,
                                 lr=5e-4, warmup=1_000),
        cot=train.TrainConfig(render="cot_modified", batch_size=64,
                              steps=20_000, chunk=500, lr=5e-4, warmup=1_000,
                              max_target_len=_cot_len(None)),
        eval_rows=2_000, eval_batch=100, eval_multiple=64,
        cot_buckets=tinyvm_jax.get_tier("tier1").bucket_names,
        probe=probes.ProbeConfig(steps=2_000),
        probe_buckets=("len_8", "len_16", "len_32"))
  raise ValueError(f"mode must be one of {data.MODES}, got {mode!r}")


def run_folder(mode: str) -> pathlib.Path:
  """Where checkpoints and predictions go: $TINYVM_EXPERIMENTS_RUN (set by
  `run_notebooks.py` to its --out), else a folder per mode under the
  system's temporary directory."""
  folder = os.environ.get(RUN_ENV) or os.path.join(
      tempfile.gettempdir(), "tinyvm_experiments", mode)
  return pathlib.Path(folder)


def tier1_eval_rows(cfg: Tier1) -> dict:
  """The first `cfg.eval_rows` rows of every Tier 1 eval bucket of the
  dataset with seed_base 0, with the direct and cot_modified renders
  (`Tier1.eval_rows_of` says how many of them a model is scored on)."""
  tier = tinyvm_jax.get_tier("tier1")
  t_in = tier.max_shapes.token_lengths("direct")[0]
  t_out = train.cot_target_len(tier.max_shapes.max_steps)
  return data.dataset_rows(tier, 0, tier.bucket_names, cfg.eval_rows,
                           renders=("direct", "cot_modified"),
                           token_lengths={"cot_modified": (t_in, t_out)})


def tier1_eval_split(cfg: Tier1, rows: dict, tc: train.TrainConfig,
                     buckets=None) -> dict:
  """{bucket: the first `cfg.eval_rows_of(bucket, tc)` rows} of
  `tier1_eval_rows` output, for `buckets` (default all)."""
  buckets = list(rows) if buckets is None else buckets
  return {b: jax.tree_util.tree_map(
      lambda x, n=cfg.eval_rows_of(b, tc): x[:n], rows[b]) for b in buckets}


def tier1_constants(cfg: Tier1, tc: train.TrainConfig) -> evaluate.Constants:
  """The constant model of `tc`'s training distribution: the most common
  target and answer of `cfg.constant_rows` rows of its split (the bucket
  trained on, or the train split) from the dataset with seed_base 1, which
  shares no row with the seed-0 eval rows."""
  split = tc.bucket or data.TRAIN
  rows = data.dataset_rows(tc.tier, 1, [split], cfg.constant_rows,
                           renders=tuple(dict.fromkeys(("direct",
                                                        tc.render))))
  return evaluate.constants(rows[split], tc.render)


def tier1_model(cfg: Tier1, name: str, mode: str, *, log=print):
  """The Tier 1 model `name` ("direct" or "cot") of `cfg`: loaded from its
  checkpoint in `run_folder(mode)` when one is there (notebook 01 trains
  and saves it), else trained and saved; an unfinished checkpoint resumes.

  Returns:
    (params, history, checkpoint path).
  """
  tc = {"direct": cfg.direct, "cot": cfg.cot}[name]
  path = train.checkpoint_path(run_folder(mode) / "checkpoints",
                               f"tier1-{name}", cfg.model, tc)
  params, hist = train.train(cfg.model, tc, checkpoint=path, log=log)
  return params, hist, path
