"""Tier 4: userops, their decompositions and few-shot rows (spec section 11).

One concept a module, data flowing down the list:

- `binding`: `UserOp` (a symbol bound to its decomposition), its array form
  `Decomposition`, the default userops and their argument checks;
- `substitution`: `substitute`, the calls replaced by their decompositions
  (JSON lists and `Program` arrays);
- `shapes`: the static sizes of rows (`UseropShapes`, `userop_shapes`);
- `renders`: the few-shot renders `userop_direct` and
  `userop_with_decomposition`, on `render`'s slot helpers;
- `generate`: `UseropRow`, `gen_userop_row` (one row) and
  `generate_userop_rows` (a jitted batch for given userops);
- `tier`: Tier 4 as a tier (`TIER4`: sizes, axes, eval buckets) and its
  dataset rows by (seed base, split, bucket, index);
- `formats`: rows as JSON (the documented row format), Parquet and zarr
  arrays, and back;
- `check`: replay and rebuild checks (`check_userop_rows`, on the check
  layer's `Mismatch`).

This module re-exports what the rest of the package uses.
"""

from tinyvm_jax._src.check.replay import Mismatch
from tinyvm_jax._src.userop.binding import Decomposition
from tinyvm_jax._src.userop.binding import DEFAULT_USEROPS
from tinyvm_jax._src.userop.binding import TABLE_ROWS
from tinyvm_jax._src.userop.binding import UserOp
from tinyvm_jax._src.userop.check import check_userop_row
from tinyvm_jax._src.userop.check import check_userop_rows
from tinyvm_jax._src.userop.check import check_userop_zarr
from tinyvm_jax._src.userop.formats import row_to_json
from tinyvm_jax._src.userop.formats import rows_to_json
from tinyvm_jax._src.userop.formats import TIER
from tinyvm_jax._src.userop.generate import AXIS_NAMES
from tinyvm_jax._src.userop.generate import gen_userop_row
from tinyvm_jax._src.userop.generate import generate_userop_rows
from tinyvm_jax._src.userop.generate import UseropRow
from tinyvm_jax._src.userop.renders import render_userop
from tinyvm_jax._src.userop.renders import render_userop_direct
from tinyvm_jax._src.userop.renders import render_userop_with_decomposition
from tinyvm_jax._src.userop.shapes import expected_length
from tinyvm_jax._src.userop.shapes import RENDER_NAMES as USEROP_RENDER_NAMES
from tinyvm_jax._src.userop.shapes import userop_shapes
from tinyvm_jax._src.userop.shapes import UseropShapes
from tinyvm_jax._src.userop.substitution import substitute
from tinyvm_jax._src.userop.tier import TIER4
from tinyvm_jax._src.userop.tier import UseropTier
