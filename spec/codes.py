"""Opcodes, status codes and format fields of every block, defined once.

Each enumeration has the width of the hardware field that carries it (its ``shape``); the
values are part of the contract (docs/numerics.md, docs/<block>.md) and never change meaning.
"""

from amaranth.lib import enum

__all__ = ["Dtype", "OutFormat", "MatmulStatus", "SoftmaxStatus", "KVOp", "KVStatus", "ChipError",
           "LoadStoreStatus"]


class Dtype(enum.IntEnum, shape=1):
    """Arithmetic of an operation (the ``dtype`` field of the matmul, softmax and vector
    commands)."""
    INT8 = 0
    BF16 = 1


class OutFormat(enum.IntEnum, shape=2):
    """``out_fmt`` of a matmul command; bit 1 is the command's ``dtype``."""
    INT32 = 0   #: int8 mode: the int32 accumulator
    INT8 = 1    #: int8 mode: requantized per output channel
    FP32 = 2    #: bf16 mode: the fp32 accumulator
    BF16 = 3    #: bf16 mode: rounded to bf16 (RNE)


class MatmulStatus(enum.IntEnum, shape=4):
    """``code`` of a matmul engine response."""
    OK = 0
    ZERO_DIM = 1          #: M, K or N is 0 (nothing consumed but the command)
    M_TOO_LARGE = 2       #: M > acc_depth
    A_TOO_LARGE = 3       #: M·ceil(K/R) > a_depth (the activation buffer)
    BAD_FORMAT = 4        #: out_fmt does not belong to dtype
    BAD_REQUANT = 5       #: a requant multiplier ≥ 2**31 or shift outside 1..62 (ran, shift clamped)
    BAD_W_FORMAT = 6      #: w_wide with bf16 or transposed weights (nothing consumed but the command)
    GROUP_TOO_LARGE = 7   #: G·M > acc_depth, G = interleave + 1 > 1 (nothing consumed but the command)


class SoftmaxStatus(enum.IntEnum, shape=2):
    """The softmax unit's ``error`` port: the code of a command it rejected in that cycle (it has
    no response stream); OK in every other cycle."""
    OK = 0
    BAD_LENGTH = 1        #: length 0 or above max_len (the command is dropped, no score beat taken)


class KVOp(enum.IntEnum, shape=3):
    """KV-cache command opcodes (the ``op`` field)."""
    ALLOC = 0
    APPEND = 1
    READ_K = 2
    READ_V = 3
    FREE = 4
    STATUS = 5


class KVStatus(enum.IntEnum, shape=4):
    """KV-cache response status codes (the ``status`` field). Opcodes 6 and 7 answer BAD_OPCODE."""
    OK = 0
    OUT_OF_PAGES = 1
    UNKNOWN_SEQ = 2
    DUPLICATE_SEQ = 3
    READ_PAST_LENGTH = 4
    HEAD_OUT_OF_RANGE = 5
    TOO_MANY_SEQS = 6
    BAD_OPCODE = 7
    BAD_SHAPE = 8


class ChipError(enum.IntEnum, shape=8):
    """The chip's ``ERROR_CODE`` register: why a program stopped (docs/isa.md, "Errors").
    ``ERROR_DETAIL`` refines some codes; ``ERROR_INDEX`` is the failing instruction's index."""
    OK = 0
    BAD_OPCODE = 1    #: not an Opcode (0 included: zeroed memory stops a program)
    BAD_FIELD = 2     #: a field outside its legal values (detail: which check, docs/isa.md)
    BAD_WAIT = 3      #: a wait on an instruction that is not earlier in the program
    SPAD_RANGE = 4    #: a scratchpad access past the scratchpad, or a limit of a block's buffer (detail: check)
    EXT_RANGE = 5     #: an external-memory access past EXT_SIZE (detail: check)
    AXI_READ = 6      #: SLVERR or DECERR on a read (instruction fetch included)
    AXI_WRITE = 7     #: SLVERR or DECERR on a write
    KV = 8            #: the KV cache refused a command (detail: KVStatus)
    MATMUL = 9        #: the matmul engine answered an error (detail: MatmulStatus)
    VECTOR = 10       #: the vector unit answered an error (detail: its status)
    SOFTMAX = 11      #: the softmax unit rejected a row
    NO_END = 12       #: PROG_LEN instructions ran without an END
    TIMEOUT = 13      #: no unit made progress for WATCHDOG cycles


class LoadStoreStatus(enum.IntEnum, shape=4):
    """``status`` of a LOAD or STORE unit response (hdl/loadstore.py, docs/dma.md). A bad
    descriptor touches no memory; when several checks fail, the first in this order is
    reported."""
    OK = 0
    AXI_ERROR = 1        #: some beat answered SLVERR or DECERR (the rest of the data moved)
    BAD_ELEM_BYTES = 2   #: elem_bytes is not B1, B2 or B4 (spec.isa.ElemBytes)
    ZERO_SIZE = 3        #: rows or elems is 0
    UNALIGNED = 4        #: ext_addr or ext_stride is not a multiple of the bus width in bytes
    EXT_RANGE = 5        #: the rows run past the end of the external address space
    SPAD_RANGE = 6       #: the rows run past the scratchpad's last word
