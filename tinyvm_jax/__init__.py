"""tinyvm_jax: the Tiny-VM register machine in JAX.

Programs, traces and renders are pytrees of fixed-shape arrays; every
per-example function here is pure and can be jitted and vmapped.

Reading emitted datasets and predictions files back: `tinyvm_jax.data`.
Instruction-set constants: `tinyvm_jax.isa`. Writing rows yourself (JSONL,
Parquet, zarr): `tinyvm_jax.formats`.
Command lines: `python -m tinyvm_jax.emit` (write a dataset), `verify`
(check one), `launch` (several emit processes).
"""

# Programs, traces and rows: pytrees of fixed-shape arrays
from tinyvm_jax._src.types import Program
from tinyvm_jax._src.types import Render
from tinyvm_jax._src.types import Rows
from tinyvm_jax._src.types import Tokens
from tinyvm_jax._src.types import Trace

# The instruction set and programs
from tinyvm_jax._src.asm import parse_asm
from tinyvm_jax._src.asm import to_asm
from tinyvm_jax._src.isa import TOKENS
from tinyvm_jax._src.isa import VOCAB_SIZE
from tinyvm_jax._src.program import decode
from tinyvm_jax._src.program import encode
from tinyvm_jax._src.program import from_json
from tinyvm_jax._src.program import ProgramError
from tinyvm_jax._src.program import to_json
from tinyvm_jax._src.validate import find_issues
from tinyvm_jax._src.validate import Issue
from tinyvm_jax._src.validate import validate

# The interpreter (errors are values; exceptions at the host)
from tinyvm_jax._src.interpreter import execute
from tinyvm_jax._src.interpreter import raise_for_error
from tinyvm_jax._src.interpreter import run
from tinyvm_jax._src.interpreter import run_straight_line
from tinyvm_jax._src.interpreter import trace_from_json
from tinyvm_jax._src.interpreter import trace_to_json
from tinyvm_jax._src.interpreter import VMError

# Tokens and renders
from tinyvm_jax._src.render import encode_program
from tinyvm_jax._src.render import max_render_lengths
from tinyvm_jax._src.render import render
from tinyvm_jax._src.render import render_cot
from tinyvm_jax._src.render import render_direct
from tinyvm_jax._src.render import render_probe_query
from tinyvm_jax._src.render import RENDER_NAMES
from tinyvm_jax._src.text import detokenize
from tinyvm_jax._src.text import detokenize_batch
from tinyvm_jax._src.score import score
from tinyvm_jax._src.score import score_output

# Generators, tiers and row keys
from tinyvm_jax._src.generators import gen_counter
from tinyvm_jax._src.generators import gen_register_trace
from tinyvm_jax._src.branched import gen_branched
from tinyvm_jax._src.tiers import build
from tinyvm_jax._src.tiers import generate
from tinyvm_jax._src.tiers import get_tier
from tinyvm_jax._src.tiers import make_row
from tinyvm_jax._src.tiers import Tier
from tinyvm_jax._src.tiers import TIERS
from tinyvm_jax._src.keys import axes_key
from tinyvm_jax._src.keys import key_to_seed
from tinyvm_jax._src.keys import program_key
from tinyvm_jax._src.keys import row_key
from tinyvm_jax._src.keys import seed_to_key
from tinyvm_jax._src.sampling import Batch
from tinyvm_jax._src.sampling import sample_batch

# Tier 4: user-defined opcodes
from tinyvm_jax._src.userop.api import DEFAULT_USEROPS
from tinyvm_jax._src.userop.api import generate_userop_rows
from tinyvm_jax._src.userop.api import substitute
from tinyvm_jax._src.userop.api import UserOp

# Differentiable execution and program recovery
from tinyvm_jax._src.recovery import recovery_experiment
from tinyvm_jax._src.recovery import recovery_summary
from tinyvm_jax._src.recovery import RecoveryConfig
from tinyvm_jax._src.soft import harden
from tinyvm_jax._src.soft import program_from_soft
from tinyvm_jax._src.soft import soft_from_logits
from tinyvm_jax._src.soft import soft_from_program
from tinyvm_jax._src.soft import soft_run
from tinyvm_jax._src.soft import SoftProgram
from tinyvm_jax._src.soft import SoftTrace

__version__ = "0.1.0"

__all__ = (
    # Programs, traces and rows: pytrees of fixed-shape arrays
    "Program",
    "Render",
    "Rows",
    "Tokens",
    "Trace",
    # The instruction set and programs
    "parse_asm",
    "to_asm",
    "TOKENS",
    "VOCAB_SIZE",
    "decode",
    "encode",
    "from_json",
    "ProgramError",
    "to_json",
    "find_issues",
    "Issue",
    "validate",
    # The interpreter (errors are values; exceptions at the host)
    "execute",
    "raise_for_error",
    "run",
    "run_straight_line",
    "trace_from_json",
    "trace_to_json",
    "VMError",
    # Tokens and renders
    "encode_program",
    "max_render_lengths",
    "render",
    "render_cot",
    "render_direct",
    "render_probe_query",
    "RENDER_NAMES",
    "detokenize",
    "detokenize_batch",
    "score",
    "score_output",
    # Generators, tiers and row keys
    "gen_counter",
    "gen_register_trace",
    "gen_branched",
    "build",
    "generate",
    "get_tier",
    "make_row",
    "Tier",
    "TIERS",
    "axes_key",
    "key_to_seed",
    "program_key",
    "row_key",
    "seed_to_key",
    "Batch",
    "sample_batch",
    # Tier 4: user-defined opcodes
    "DEFAULT_USEROPS",
    "generate_userop_rows",
    "substitute",
    "UserOp",
    # Differentiable execution and program recovery
    "recovery_experiment",
    "recovery_summary",
    "RecoveryConfig",
    "harden",
    "program_from_soft",
    "soft_from_logits",
    "soft_from_program",
    "soft_run",
    "SoftProgram",
    "SoftTrace",
)
