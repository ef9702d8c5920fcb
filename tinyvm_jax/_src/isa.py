"""The Tiny-VM instruction set and vocabulary: constants only (spec sections 1, 2, 5)."""

import numpy as np

# ----------------------------------------------------------------- machine
NUM_REGS = 8
VALUE_MIN = -1024
VALUE_MAX = 1023
LITERAL_MIN = -127
LITERAL_MAX = 127
STACK_SIZE = 16
STEP_CAP = 1_000_000  # the reference's cap on executed instructions

# Capacities of the fixed-shape program encoding (not limits of the machine):
MAX_LITERAL_DIGITS = 4  # |literal| <= 9999 can be stored and rendered
MAX_LABEL_DIGITS = 4    # label numbers 0..9999
MAX_VALUE_DIGITS = 4    # register values are in [-1024, 1023]

# ----------------------------------------------------------------- opcodes
OP_NAMES = (
    "LOAD", "MOV", "ADD", "SUB", "MUL", "DIV", "NEG", "EQ", "LT",
    "JZ", "JMP", "PUSH", "POP", "PRINT", "NOP", "HALT",
    "USEROP_0", "USEROP_1", "USEROP_2", "USEROP_3", "USEROP_4",
)
(LOAD, MOV, ADD, SUB, MUL, DIV, NEG, EQ, LT, JZ, JMP, PUSH, POP, PRINT, NOP,
 HALT, USEROP_0, USEROP_1, USEROP_2, USEROP_3, USEROP_4) = range(21)
NUM_OPS = len(OP_NAMES)
NUM_BASE_OPS = 16
OP_IDS = {name: i for i, name in enumerate(OP_NAMES)}

# operand counts per opcode: registers, literals, jump target
REG_ARGS = np.array([1, 2, 3, 3, 3, 3, 2, 3, 3, 1, 0, 1, 1, 1, 0, 0,
                   2, 3, 2, 3, 2], np.int32)
LIT_ARGS = np.array([1] + [0] * 20, np.int32)
HAS_TARGET = np.zeros(NUM_OPS, bool)
HAS_TARGET[[JZ, JMP]] = True
# opcodes whose first register operand is written
WRITES_REG = np.zeros(NUM_OPS, bool)
WRITES_REG[[LOAD, MOV, ADD, SUB, MUL, DIV, NEG, EQ, LT, POP]] = True
IS_USEROP = np.arange(NUM_OPS) >= USEROP_0
MAX_REG_ARGS = 3

FILL_OPS = (LOAD, MOV, ADD, SUB, MUL, DIV, NEG, EQ, LT)
DEFAULT_USEROP_SYMBOLS = ("DOUBLE", "MAX", "ABS", "MOD", "SIGN")

# ----------------------------------------------------------------- vocabulary
TOK_OP0 = 0          # 0..15 opcode names LOAD..HALT
TOK_R0 = 16          # 16..23 R0..R7
TOK_DIGIT0 = 24      # 24..33 digits 0..9
TOK_MINUS = 34
TOK_L = 35
TOK_COLON = 36
TOK_EQUALS = 37
TOK_DECOMP = 38
TOK_NEWLINE = 39
TOK_BOS = 40
TOK_EOS = 41
TOK_PAD = 42
TOK_QUERY = 43
TOK_USEROP0 = 44     # 44..48 DOUBLE, MAX, ABS, MOD, SIGN
VOCAB_SIZE = 64

TOKENS = (
    list(OP_NAMES[:NUM_BASE_OPS])
    + [f"R{i}" for i in range(NUM_REGS)]
    + [str(d) for d in range(10)]
    + ["MINUS", "L", "COLON", "EQUALS", "DECOMP", "NEWLINE", "BOS", "EOS",
       "PAD", "?"]
    + list(DEFAULT_USEROP_SYMBOLS)
    + [f"RESERVED_{i}" for i in range(15)]
)
assert len(TOKENS) == VOCAB_SIZE


# token id of each opcode (base opcodes, then the userop symbols of slots 16..20)
OP_TOKEN = np.concatenate([np.arange(NUM_BASE_OPS),
                           TOK_USEROP0 + np.arange(NUM_OPS - NUM_BASE_OPS)]
                          ).astype(np.int32)


# ----------------------------------------------------------------- errors
ERR_NONE = 0
ERR_STACK_OVERFLOW = 1
ERR_STACK_UNDERFLOW = 2
ERR_USEROP = 3
ERR_STEP_BUDGET = 4
ERR_BAD_TARGET = 5
ERR_BAD_REGISTER = 6
ERR_BAD_OPCODE = 7
ERR_NOT_STRAIGHT_LINE = 8
ERROR_MESSAGES = {
    ERR_NONE: "no error",
    ERR_STACK_OVERFLOW: "stack overflow (PUSH with 16 entries)",
    ERR_STACK_UNDERFLOW: "stack underflow (POP on an empty stack)",
    ERR_USEROP: "a userop was reached; substitute it first",
    ERR_STEP_BUDGET: "step budget exhausted before HALT",
    ERR_BAD_TARGET: "jump to an undefined label",
    ERR_BAD_REGISTER: "register index outside R0..R7",
    ERR_BAD_OPCODE: "opcode outside 0..20",
    ERR_NOT_STRAIGHT_LINE: ("JZ, JMP, PUSH or POP reached by the straight-line "
                            "runner (fill ops, PRINT, NOP, HALT only)"),
}
