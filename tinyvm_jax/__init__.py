"""tinyvm_jax: the Tiny-VM register machine in JAX.

Programs, traces and renders are pytrees of fixed-shape arrays; every
per-example function here is pure and can be jitted and vmapped.
"""

from tinyvm_jax._src.branched import gen_branched
from tinyvm_jax._src.generators import gen_counter
from tinyvm_jax._src.generators import gen_register_trace
from tinyvm_jax._src.interpreter import execute
from tinyvm_jax._src.interpreter import raise_for_error
from tinyvm_jax._src.interpreter import run
from tinyvm_jax._src.interpreter import run_straight_line
from tinyvm_jax._src.interpreter import trace_from_json
from tinyvm_jax._src.interpreter import trace_to_json
from tinyvm_jax._src.interpreter import VMError
from tinyvm_jax._src.isa import TOKENS
from tinyvm_jax._src.isa import VOCAB_SIZE
from tinyvm_jax._src.keys import key_to_seed
from tinyvm_jax._src.keys import row_key
from tinyvm_jax._src.keys import seed_to_key
from tinyvm_jax._src.program import decode
from tinyvm_jax._src.program import encode
from tinyvm_jax._src.program import from_json
from tinyvm_jax._src.program import ProgramError
from tinyvm_jax._src.program import to_json
from tinyvm_jax._src.recovery import recovery_experiment
from tinyvm_jax._src.recovery import RecoveryConfig
from tinyvm_jax._src.render import encode_program
from tinyvm_jax._src.render import max_render_lengths
from tinyvm_jax._src.render import render
from tinyvm_jax._src.render import render_cot
from tinyvm_jax._src.render import render_direct
from tinyvm_jax._src.render import render_probe_query
from tinyvm_jax._src.render import RENDER_NAMES
from tinyvm_jax._src.sampling import Batch
from tinyvm_jax._src.sampling import sample_batch
from tinyvm_jax._src.score import score
from tinyvm_jax._src.score import score_output
from tinyvm_jax._src.soft import harden
from tinyvm_jax._src.soft import program_from_soft
from tinyvm_jax._src.soft import soft_from_logits
from tinyvm_jax._src.soft import soft_from_program
from tinyvm_jax._src.soft import soft_run
from tinyvm_jax._src.soft import SoftProgram
from tinyvm_jax._src.soft import SoftTrace
from tinyvm_jax._src.text import detokenize
from tinyvm_jax._src.text import detokenize_batch
from tinyvm_jax._src.tiers import build
from tinyvm_jax._src.tiers import generate
from tinyvm_jax._src.tiers import get_tier
from tinyvm_jax._src.tiers import make_row
from tinyvm_jax._src.tiers import Tier
from tinyvm_jax._src.tiers import TIERS
from tinyvm_jax._src.types import Program
from tinyvm_jax._src.types import Render
from tinyvm_jax._src.types import Rows
from tinyvm_jax._src.types import Tokens
from tinyvm_jax._src.types import Trace
from tinyvm_jax._src.userop import DEFAULT_USEROPS
from tinyvm_jax._src.userop import generate_userop_rows
from tinyvm_jax._src.userop import substitute
from tinyvm_jax._src.userop import UserOp
from tinyvm_jax._src.validate import check
from tinyvm_jax._src.validate import Issue
from tinyvm_jax._src.validate import validate

__version__ = "0.1.0"

__all__ = (
    "Batch",
    "DEFAULT_USEROPS",
    "Issue",
    "Program",
    "ProgramError",
    "RENDER_NAMES",
    "RecoveryConfig",
    "Render",
    "Rows",
    "SoftProgram",
    "SoftTrace",
    "TIERS",
    "TOKENS",
    "Tier",
    "Tokens",
    "Trace",
    "UserOp",
    "VMError",
    "VOCAB_SIZE",
    "build",
    "check",
    "decode",
    "detokenize",
    "detokenize_batch",
    "encode",
    "encode_program",
    "execute",
    "from_json",
    "gen_branched",
    "gen_counter",
    "gen_register_trace",
    "generate",
    "generate_userop_rows",
    "get_tier",
    "harden",
    "key_to_seed",
    "make_row",
    "max_render_lengths",
    "program_from_soft",
    "raise_for_error",
    "recovery_experiment",
    "render",
    "render_cot",
    "render_direct",
    "render_probe_query",
    "row_key",
    "run",
    "run_straight_line",
    "sample_batch",
    "score",
    "score_output",
    "seed_to_key",
    "soft_from_logits",
    "soft_from_program",
    "soft_run",
    "substitute",
    "to_json",
    "trace_from_json",
    "trace_to_json",
    "validate",
)
