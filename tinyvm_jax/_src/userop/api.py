"""What the rest of the package uses of Tier 4 (see `userop/__init__`)."""


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
