"""Reading emitted datasets and predictions files back.

  from tinyvm_jax.data import load_jsonl, load_prompts

JSONL rows (the reference's row schema) and prompts of any render, Parquet
record batches (the Hugging Face layout), zarr arrays with random access, a
grain `RandomAccessDataSource` over them, and a model's predictions files
(one row per evaluated dataset row; see `write_predictions`).
"""

from tinyvm_jax._src.io.loaders import iter_jsonl
from tinyvm_jax._src.io.loaders import iter_parquet
from tinyvm_jax._src.io.loaders import iter_zarr
from tinyvm_jax._src.io.loaders import load_jsonl
from tinyvm_jax._src.io.loaders import load_prompts
from tinyvm_jax._src.io.loaders import open_zarr
from tinyvm_jax._src.io.loaders import PROMPT_MODES
from tinyvm_jax._src.io.loaders import RowError
from tinyvm_jax._src.io.loaders import ZarrSource
from tinyvm_jax._src.io.predictions import iter_predictions
from tinyvm_jax._src.io.predictions import load_predictions
from tinyvm_jax._src.io.predictions import write_predictions

__all__ = (
    # JSONL (reference row schema)
    "iter_jsonl",
    "load_jsonl",
    "load_prompts",
    "PROMPT_MODES",
    "RowError",
    # Parquet (Hugging Face layout) and zarr
    "iter_parquet",
    "open_zarr",
    "iter_zarr",
    "ZarrSource",
    # a model's predictions
    "iter_predictions",
    "load_predictions",
    "write_predictions",
)
