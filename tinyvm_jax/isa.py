"""The Tiny-VM instruction set: machine limits, opcodes, operand tables and tokens."""

# The machine
from tinyvm_jax._src.isa import LITERAL_MAX
from tinyvm_jax._src.isa import LITERAL_MIN
from tinyvm_jax._src.isa import NUM_REGS
from tinyvm_jax._src.isa import VALUE_MAX
from tinyvm_jax._src.isa import VALUE_MIN

# Opcodes
from tinyvm_jax._src.isa import FILL_OPS
from tinyvm_jax._src.isa import HALT
from tinyvm_jax._src.isa import LOAD
from tinyvm_jax._src.isa import NOP
from tinyvm_jax._src.isa import NUM_OPS
from tinyvm_jax._src.isa import OP_NAMES
from tinyvm_jax._src.isa import PRINT

# Operands per opcode: [NUM_OPS] arrays
from tinyvm_jax._src.isa import LIT_ARGS
from tinyvm_jax._src.isa import REG_ARGS
from tinyvm_jax._src.isa import WRITES_REG

# The vocabulary
from tinyvm_jax._src.isa import TOKENS
from tinyvm_jax._src.isa import VOCAB_SIZE

__all__ = (
    # The machine
    "LITERAL_MAX",
    "LITERAL_MIN",
    "NUM_REGS",
    "VALUE_MAX",
    "VALUE_MIN",
    # Opcodes
    "FILL_OPS",
    "HALT",
    "LOAD",
    "NOP",
    "NUM_OPS",
    "OP_NAMES",
    "PRINT",
    # Operands per opcode: [NUM_OPS] arrays
    "LIT_ARGS",
    "REG_ARGS",
    "WRITES_REG",
    # The vocabulary
    "TOKENS",
    "VOCAB_SIZE",
)
