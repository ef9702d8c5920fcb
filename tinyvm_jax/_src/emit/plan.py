"""What an emit writes: the settings, checked once, as a `Plan` of splits.

Everything an emit writes is a function of the `Plan` (the devices, the
number of processes, the batch size and the row classes change only the
speed); `Plan.fingerprint` hashes what decides the bytes, so that a rerun
can tell whether an unfinished emit was started with the same settings.
"""

import dataclasses
import hashlib
import json
from typing import Any, Mapping, Sequence

from tinyvm_jax._src import checks
from tinyvm_jax._src import render as render_lib
from tinyvm_jax._src import tiers
from tinyvm_jax._src.io import manifest as manifest_lib
from tinyvm_jax._src.io import zarr_store
from tinyvm_jax._src.userop import tier as userop_tier

FORMATS = ("zarr", "jsonl", "parquet")
from tinyvm_jax._src.io.hub import DATA_DIR   # Parquet files (re-exported)
EVAL_DIR = "eval"          # JSONL eval files


class EmitError(RuntimeError):
  """An emit that cannot run (bad settings, unwritable output, ...)."""


@dataclasses.dataclass(frozen=True)
class SplitPlan:
  """One output split: train or one eval bucket."""
  split: str                       # "train" | "eval"
  bucket: str | None
  num_rows: int
  shapes: Any                      # the split's own static sizes
  axes: tuple[int, ...] | None     # fixed axes of a Tier 0-2 eval bucket

  @property
  def name(self) -> str:
    """"train" or "eval/<bucket>": the zarr group and the progress key."""
    return "train" if self.bucket is None else f"{EVAL_DIR}/{self.bucket}"

  @property
  def jsonl(self) -> str:
    """The reference's file: train.jsonl or eval/<bucket>.jsonl."""
    return f"{self.name}.jsonl"

  @property
  def hf_split(self) -> str:
    """The Hub's split name: train or eval_<bucket>."""
    return "train" if self.bucket is None else f"eval_{self.bucket}"

  def num_parts(self, part_rows: int) -> int:
    return -(-self.num_rows // part_rows)

  def part_range(self, part: int, part_rows: int) -> tuple[int, int]:
    start = part * part_rows
    return start, min(self.num_rows, start + part_rows)

  def parquet(self, part: int, part_rows: int) -> str:
    n = self.num_parts(part_rows)
    return f"{DATA_DIR}/{self.hf_split}-{part:05d}-of-{n:05d}.parquet"


@dataclasses.dataclass(frozen=True)
class Plan:
  """Everything an emit writes is a function of these fields (the device
  and the batch size change only speed)."""
  tier: Any                        # a `tiers.Tier` or `userop.UseropTier`
  seed_base: int
  renders: tuple[str, ...]
  formats: tuple[str, ...]
  splits: tuple[SplitPlan, ...]
  part_rows: int
  chunk_rows: int
  codec: Mapping[str, Any] | None
  batch_size: int
  vmap_rows: int

  @property
  def total_rows(self) -> int:
    return sum(s.num_rows for s in self.splits)

  def parts(self) -> list[tuple[SplitPlan, int]]:
    """Every (split, part) of the dataset, in order."""
    return [(sp, k) for sp in self.splits
            for k in range(sp.num_parts(self.part_rows))]

  def fingerprint(self) -> str:
    """Hash of what decides the output bytes (not batch size or device)."""
    d = {"tier": self.tier.name, "seed_base": self.seed_base,
         "renders": self.renders, "formats": sorted(self.formats),
         "splits": [(s.name, s.num_rows) for s in self.splits],
         "part_rows": self.part_rows, "chunk_rows": self.chunk_rows,
         "codec": self.codec, "version": manifest_lib.package_version(),
         "commit": manifest_lib.package_commit()}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()

  def __reduce__(self):
    """Pickles the tier by name (a tier holds functions), so that the
    emit's serialization workers (`convert`) can be sent the plan."""
    fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    fields["tier"] = self.tier.name
    return _unpickle_plan, (fields,)


def _unpickle_plan(fields: dict) -> Plan:
  """`Plan.__reduce__`'s inverse: the tier back from its name."""
  return Plan(**{**fields, "tier": get_tier(fields["tier"])})


def _check_names(what: str, names: Sequence[str], known: Sequence[str]
                 ) -> tuple[str, ...]:
  """`names` as a tuple: at least one, each of `known`, none twice."""
  names = tuple(names)
  if not names:
    raise EmitError(f"{what} must name at least one of {list(known)}")
  for n in names:
    if n not in known:
      raise EmitError(f"unknown {what[:-1]} {n!r}; expected some of "
                      f"{list(known)}")
  if len(set(names)) != len(names):
    raise EmitError(f"{what} {list(names)} name a {what[:-1]} twice")
  return names


def get_tier(name: str):
  """The tier named `name`: a `tiers.Tier` (Tiers 0-2) or Tier 4's
  `userop.UseropTier`."""
  if name == userop_tier.TIER4.name:
    return userop_tier.TIER4
  try:
    return tiers.get_tier(name)
  except ValueError:
    raise EmitError(f"unknown tier {name!r}; expected one of "
                    f"{sorted(tiers.TIERS) + [userop_tier.TIER4.name]}"
                    ) from None


def _render_names(tier) -> tuple[str, ...]:
  if isinstance(tier, userop_tier.UseropTier):
    return tier.renders
  return render_lib.RENDER_NAMES


def _splits(tier, train_size: int, eval_size: int) -> list[SplitPlan]:
  """Every split of the tier: train, then the eval buckets in order (an
  empty one writes nothing and is dropped by the caller)."""
  if isinstance(tier, userop_tier.UseropTier):
    return [SplitPlan("train", None, train_size, tier.shapes(None), None)] + [
        SplitPlan("eval", b, eval_size, tier.shapes(b), None)
        for b in tier.bucket_names]
  return [SplitPlan("train", None, train_size, tier.train_shapes, None)] + [
      SplitPlan("eval", b.name, eval_size, b.shapes, tuple(b.axes))
      for b in tier.eval_buckets]


def make_plan(*, tier: str, seed_base: int, train_size: int, eval_size: int,
              renders: Sequence[str], formats: Sequence[str],
              batch_size: int, part_rows: int, chunk_rows: int,
              vmap_rows: int = 256,
              codec: str = zarr_store.DEFAULT_CODEC_SPEC,
              eval_buckets: Sequence[str] | None = None) -> Plan:
  """Checks the settings and builds the `Plan`.

  `eval_buckets`: the eval buckets to write (default: all of the tier's).

  Raises:
    EmitError: one line naming the bad setting.
  """
  t = get_tier(tier)
  if not isinstance(seed_base, int) or not 0 <= seed_base < 2 ** 64:
    raise EmitError(f"seed must be an integer in [0, 2**64), got {seed_base}")
  for name, v, lo in (("train_size", train_size, 0),
                      ("eval_size", eval_size, 0),
                      ("batch_size", batch_size, 1),
                      ("part_rows", part_rows, 1),
                      ("chunk_rows", chunk_rows, 1),
                      ("vmap_rows", vmap_rows, 1)):
    if not checks.is_int(v) or v < lo:
      raise EmitError(f"{name} must be an integer >= {lo}, got {v!r}")
  if train_size >= 2 ** 31 or eval_size >= 2 ** 31:
    raise EmitError("train_size and eval_size must be below 2**31")
  if part_rows % chunk_rows:
    raise EmitError(f"part_rows={part_rows} must be a multiple of "
                    f"chunk_rows={chunk_rows}")
  if not tuple(renders):
    raise EmitError("renders must name at least one render")
  renders = _check_names("renders", renders, _render_names(t))
  try:
    codec_json = zarr_store.parse_codec(codec)
  except ValueError as e:
    raise EmitError(str(e)) from None
  formats = _check_names("formats", formats, FORMATS)
  buckets = t.bucket_names if eval_buckets is None else _check_names(
      "eval_buckets", eval_buckets, t.bucket_names)
  splits = [s for s in _splits(t, train_size, eval_size)
            if s.num_rows and s.bucket in (None,) + tuple(buckets)]
  if not splits:
    raise EmitError("train_size and eval_size are both 0: nothing to emit")
  return Plan(tier=t, seed_base=seed_base, renders=renders, formats=formats,
              splits=tuple(splits), part_rows=part_rows,
              chunk_rows=chunk_rows, codec=codec_json,
              batch_size=batch_size, vmap_rows=min(vmap_rows, batch_size))
