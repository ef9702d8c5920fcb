"""Distribution figures of generated rows and their check against the
reference's `stats.json`.

  from tinyvm_jax.stats import summarize, concat, figures, compare

`summarize(rows, tier.axis_names)` reduces a batch of `Rows` (with the
direct render) to small per-row arrays; `concat` joins summaries; `figures`
gives the stats.json figures of a summary; `compare` checks every figure of
a stats.json entry within sampling error and returns one `Check` each.
"""

from tinyvm_jax._src.stats import BUCKET_KEY
from tinyvm_jax._src.stats import Check
from tinyvm_jax._src.stats import compare
from tinyvm_jax._src.stats import concat
from tinyvm_jax._src.stats import counter_output_distribution
from tinyvm_jax._src.stats import figures
from tinyvm_jax._src.stats import summarize

__all__ = (
    "BUCKET_KEY",
    "Check",
    "compare",
    "concat",
    "counter_output_distribution",
    "figures",
    "summarize",
)
