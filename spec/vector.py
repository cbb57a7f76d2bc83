"""The vector unit's opcodes, status codes, command fields, stream words and SiLU table.

One definition shared by :mod:`hdl.vector` (the hardware), :mod:`sim.vector_api` (the driver
and testbench), the chip's execution unit and the compiler (docs/vector.md).

- :class:`VectorOp`, :class:`VectorStatus`, :class:`VectorFlag`: the ``op``, response
  ``status`` and ``flags`` fields; :class:`VectorTable`: the scale tables TABLE writes;
- :data:`CHIP_OPS`: the ops a chip VECTOR instruction may carry;
- :func:`row_word`, :func:`row_word_fields`: the per-row scalar word of ``s_in`` / ``s_out``;
- :func:`cmd_fields`: the command's fields and widths for a ``max_len``;
- :func:`command_status`: the status the hardware answers for a command's fields;
- :func:`stream_words`: the scratchpad words (beats of ``lanes`` 32-bit lanes) each stream
  carries per row, for an op and its fields;
- :func:`silu_bf16_table`: the bf16 SiLU table the hardware stores (docs/numerics.md).
"""

import math
import struct

from amaranth.lib import enum

__all__ = ["VectorOp", "VectorStatus", "VectorFlag", "VectorTable", "CHIP_OPS", "MAX_HEAD_DIM", "ROWS_BITS",
           "cmd_fields", "command_status", "stream_words", "STREAMS", "EXP_BITS", "SHIFT_BITS",
           "HADAMARD_BLOCK", "SCALE_BITS", "SCALE_ENTRIES", "ROW_SCALE_SHIFT", "row_word", "row_word_fields",
           "SILU_POS_EXP", "SILU_NEG_EXP", "SILU_ENTRIES", "silu_bf16_exact", "silu_bf16_table",
           "silu_bf16_lookup", "TOKEN_EXP_BIAS"]

#: Largest RoPE head_dim (the unit buffers two heads).
MAX_HEAD_DIM = 256
#: Width of the ``rows`` field (rows per command, 1 .. 2**16 − 1).
ROWS_BITS = 16
#: Signed bits of a per-row exponent on ``s_in`` / ``s_out`` (lane 0, sign-extended to 32 bits).
EXP_BITS = 10
#: Bits of a per-channel shift word (dequantize, row requantize): 0 .. 63.
SHIFT_BITS = 6
#: Per-token quantization: e = E − TOKEN_EXP_BIAS, E the row's largest biased exponent field.
TOKEN_EXP_BIAS = 133
#: Elements of one HADAMARD block (``golden.vector.HADAMARD_BLOCK``).
HADAMARD_BLOCK = 64
#: Bits of the per-token scale index j (``golden.layer.TOKEN_SCALE_BITS``); entries of each table.
SCALE_BITS = 7
SCALE_ENTRIES = 1 << SCALE_BITS
#: Position of j in a row word with ROW_SCALE (bits 16 .. 16 + SCALE_BITS − 1; e in bits 0..15).
ROW_SCALE_SHIFT = 16


class VectorOp(enum.IntEnum, shape=4):
    """``op`` of a vector command (docs/vector.md has each op's streams and numerics)."""
    ADD = 0           #: residual add: bf16 + bf16 → bf16 (dtype BF16), fp32 + fp32 → fp32 (INT8)
    SWIGLU = 1        #: silu(a)·b, bf16 out; inputs bf16 (BF16) or fp32 rounded to bf16 (INT8)
    RMSNORM = 2       #: rmsnorm_bf16; input bf16 (BF16) or fp32 rounded to bf16 (INT8)
    ROPE = 3          #: rope_bf16 (BF16) / rope_int8 (INT8), half-split pairs per head
    DEQUANT = 4       #: int32 accumulators → fp32 (dequantize_acc)
    REQUANT = 5       #: int32 accumulators → int8, shift − row exponent (the layer's Q/K/V)
    QUANT_STATIC = 6  #: bf16 (BF16) or fp32 (INT8) → int8 with a static 1/scale
    QUANT_TOKEN = 7   #: bf16 (BF16) or fp32 (INT8) → int8 per row: 2**e, with ROW_SCALE × mu[j] (s_out: e, j)
    HADAMARD = 8      #: 64-point fp32 Hadamard transform per block, bf16 (BF16) or fp32 (INT8) → fp32
    TABLE = 9         #: write the scale table ``imm0`` (:class:`VectorTable`) from ``p``: 128 fp32 entries
    #: rmsnorm_fp32_in: fp32 rows (dtype ignored), one final rounding to bf16; the rows come twice,
    #: on ``a`` (pass 1, the sum of squares) and again on ``b`` (pass 2, the outputs)
    RMSNORM_FP32 = 10


class VectorStatus(enum.IntEnum, shape=4):
    """``status`` of a vector response. Every non-zero status: no beat of any stream was taken
    for the command and nothing was output; the next command runs normally."""
    OK = 0
    BAD_OP = 1         #: op 11..15, or an op the unit is built without (hdl.vector.VectorUnit ``ops``)
    BAD_LENGTH = 2     #: length 0 or above max_len; HADAMARD: not a multiple of 64; TABLE: not a multiple of lanes
    BAD_ROWS = 3       #: rows 0; TABLE: rows·length ≠ SCALE_ENTRIES
    BAD_HEAD_DIM = 4   #: RoPE: head_dim not a power of two in 2·lanes .. MAX_HEAD_DIM, or not dividing length
    BAD_SCALE = 5      #: an immediate out of range (eps, 1/D, 1/scale, RoPE multiplier/shift)
    BAD_DTYPE = 6      #: reserved: no command answers it (QUANT_TOKEN takes fp32 rows with dtype INT8)
    BAD_TABLE = 7      #: TABLE: imm0 not a VectorTable; ROW_SCALE: its table not written since reset


class VectorFlag(enum.IntFlag):
    """Bits of the ``flags`` field (ignored by the ops that do not name them)."""
    ROW_EXP = 1        #: DEQUANT: add the per-row exponent from ``s_in`` (REQUANT always reads it)
    #: QUANT_TOKEN: multiply by the 7-bit scale multiplier mu[j] (``quantize_per_token_scaled``),
    #: s_out = :func:`row_word` (e, j); DEQUANT: multiply by nu[j] (``dequantize_acc`` ``row_scale``),
    #: j from bits 16..22 of the ``s_in`` word (read for every row)
    ROW_SCALE = 2


class VectorTable(enum.IntEnum):
    """The unit's two scale tables (``imm0`` of TABLE): SCALE_ENTRIES fp32 entries each, written by
    TABLE, kept until reset or the next TABLE (``golden.layer.token_scale_table`` gives both)."""
    QUANT = 0          #: mu: QUANT_TOKEN with ROW_SCALE
    DEQUANT = 1        #: nu: DEQUANT with ROW_SCALE


#: The ops a chip VECTOR instruction may carry (spec.isa; hdl.cmdproc refuses the others with
#: BAD_FIELD, as it refuses ROW_SCALE and QUANT_TOKEN with dtype INT8): HADAMARD, TABLE,
#: RMSNORM_FP32 and the scaled quantization are the vector unit's, not yet the chip's.
CHIP_OPS = (VectorOp.ADD, VectorOp.SWIGLU, VectorOp.RMSNORM, VectorOp.ROPE, VectorOp.DEQUANT,
            VectorOp.REQUANT, VectorOp.QUANT_STATIC, VectorOp.QUANT_TOKEN)
assert [int(op) for op in CHIP_OPS] == list(range(len(CHIP_OPS)))


def row_word(e, j=None):
    """The per-row scalar word (32 bits) of ``s_out`` / ``s_in``: the exponent e sign-extended to
    32 bits, or, with a scale index j (ROW_SCALE), e in bits 0..15 (two's complement) and j in bits
    ROW_SCALE_SHIFT.. (REQUANT and DEQUANT read e from bits 0..EXP_BITS − 1 either way)."""
    e = int(e)
    if j is None:
        return e & 0xFFFFFFFF
    return (e & 0xFFFF) | (int(j) & (SCALE_ENTRIES - 1)) << ROW_SCALE_SHIFT


def row_word_fields(word, *, scaled):
    """``(e, j)`` of a :func:`row_word` (j = 0 without ``scaled``)."""
    word = int(word) & 0xFFFFFFFF
    if not scaled:
        return word - (1 << 32) if word >> 31 else word, 0
    e = word & 0xFFFF
    return e - (1 << 16) if e >> 15 else e, (word >> ROW_SCALE_SHIFT) & (SCALE_ENTRIES - 1)


def cmd_fields(max_len):
    """``{name: width}`` of a vector command, in layout order (bit 0 first).

    ``length`` is ``max_len.bit_length()`` bits, so lengths above ``max_len`` can be sent (and are
    answered BAD_LENGTH). ``imm0``/``imm1``/``shift`` carry the immediates of docs/vector.md.
    """
    return {"op": 4, "dtype": 1, "flags": 2, "length": int(max_len).bit_length(),
            "rows": ROWS_BITS, "head_dim": 9, "shift": 6, "imm0": 32, "imm1": 32}


def _fp32_class(bits):
    """('nan'|'inf'|'zero'|'normal', sign) of fp32 bits (subnormals read as zero)."""
    e, f, s = (bits >> 23) & 0xFF, bits & 0x7FFFFF, bits >> 31
    if e == 0xFF:
        return ("nan" if f else "inf"), s
    return ("zero" if e == 0 else "normal"), s


def command_status(*, op, dtype, length, rows, head_dim=0, shift=0, imm0=0, imm1=0, lanes, max_len,
                   flags=0, tables=frozenset(), ops=None):
    """The :class:`VectorStatus` the unit answers for these command fields (checked in this order:
    op, length, rows, head_dim, immediates, tables). ``tables``: the :class:`VectorTable` values
    written (by a TABLE answered OK) since reset; ``ops``: the ops the unit is built with (default
    all; ``hdl.vector.VectorUnit(ops=...)``), the others answer BAD_OP."""
    if op not in set(VectorOp if ops is None else ops):
        return VectorStatus.BAD_OP
    if not 1 <= length <= max_len or (op == VectorOp.HADAMARD and length % HADAMARD_BLOCK) or (
            op == VectorOp.TABLE and length % lanes):
        return VectorStatus.BAD_LENGTH
    if rows < 1 or (op == VectorOp.TABLE and rows * length != SCALE_ENTRIES):
        return VectorStatus.BAD_ROWS
    if op == VectorOp.ROPE:
        if (not (1 <= head_dim <= MAX_HEAD_DIM) or head_dim & (head_dim - 1) or head_dim < 2 * lanes
                or length % head_dim):
            return VectorStatus.BAD_HEAD_DIM
        if dtype == 0 and (imm0 >> 31 or not 1 <= shift <= 62):
            return VectorStatus.BAD_SCALE
    if op in (VectorOp.RMSNORM, VectorOp.RMSNORM_FP32):
        ce, se = _fp32_class(imm0)
        cd, sd = _fp32_class(imm1)
        if ce in ("nan", "inf") or (ce == "normal" and se) or cd != "normal" or sd:
            return VectorStatus.BAD_SCALE
    if op == VectorOp.QUANT_STATIC:
        c, s = _fp32_class(imm0)
        if c != "normal" or s:
            return VectorStatus.BAD_SCALE
    if op == VectorOp.TABLE and imm0 not in set(VectorTable):
        return VectorStatus.BAD_TABLE
    scaled = {VectorOp.QUANT_TOKEN: VectorTable.QUANT, VectorOp.DEQUANT: VectorTable.DEQUANT}
    if op in scaled and flags & VectorFlag.ROW_SCALE and scaled[op] not in set(tables):
        return VectorStatus.BAD_TABLE
    return VectorStatus.OK


#: The streams, in the order of :func:`stream_words`' result.
STREAMS = ("a", "b", "p", "s_in", "o", "s_out")


def stream_words(op, *, length, lanes, flags=0):
    """Scratchpad words (beats of ``lanes`` lanes) per row on each stream for a valid command.

    Returns ``{"a", "b", "p", "s_in", "o", "s_out": words}``. With B = ceil(length / lanes):
    a and o carry B words (TABLE: none); b carries B (ADD, SWIGLU: the second operand; DEQUANT,
    REQUANT: the per-channel shifts; RMSNORM_FP32: the rows of ``a`` again); p carries B (RMSNORM
    and RMSNORM_FP32 gains, DEQUANT/REQUANT per-channel
    multipliers, TABLE the table's entries) or B/2 (ROPE: for each head, head_dim/2 words of
    (cos | sin << 16)); s_in one word (REQUANT, DEQUANT with ROW_EXP or ROW_SCALE); s_out one word
    (QUANT_TOKEN). A rejected command takes no word.
    """
    op = VectorOp(op)
    beats = -(-int(length) // int(lanes))
    w = dict.fromkeys(STREAMS, 0)
    if op != VectorOp.TABLE:
        w["a"] = w["o"] = beats
    if op in (VectorOp.ADD, VectorOp.SWIGLU, VectorOp.DEQUANT, VectorOp.REQUANT, VectorOp.RMSNORM_FP32):
        w["b"] = beats
    if op in (VectorOp.RMSNORM, VectorOp.RMSNORM_FP32, VectorOp.DEQUANT, VectorOp.REQUANT, VectorOp.TABLE):
        w["p"] = beats
    if op == VectorOp.ROPE:
        w["p"] = beats // 2
    if op == VectorOp.REQUANT or (op == VectorOp.DEQUANT and flags & (VectorFlag.ROW_EXP | VectorFlag.ROW_SCALE)):
        w["s_in"] = 1
    if op == VectorOp.QUANT_TOKEN:
        w["s_out"] = 1
    return w


# ---------------------------------------------------------------- the bf16 SiLU table

#: Biased bf16 exponents of the stored positive inputs (2**−8 ≤ x < 8) and negative ones
#: (−128 < x ≤ −2**−8); outside them SiLU follows the rules of docs/numerics.md.
SILU_POS_EXP = (119, 129)
SILU_NEG_EXP = (119, 133)
#: Entries: positive exponents first, then negative, 128 fractions each (3328).
SILU_ENTRIES = 128 * (SILU_POS_EXP[1] - SILU_POS_EXP[0] + 1 + SILU_NEG_EXP[1] - SILU_NEG_EXP[0] + 1)


def _f64_to_bf16_rne(y):
    """float64 → bf16 bits, one RNE rounding, FTZ below 2**−126, overflow to Inf."""
    if y != y:
        return 0x7FC0
    sign = 0x8000 if math.copysign(1.0, y) < 0 else 0
    a = abs(y)
    if a < 2.0 ** -126:
        return sign
    if math.isinf(a):
        return sign | 0x7F80
    bits = struct.unpack("<Q", struct.pack("<d", a))[0]
    lsb = (bits >> 45) & 1
    r = (bits + (1 << 44) - 1 + lsb) >> 45
    exp = (r >> 7) - 1023 + 127
    if exp >= 255:
        return sign | 0x7F80
    return sign | (exp << 7) | (r & 0x7F)


def _bf16_value(bits):
    return struct.unpack("<f", struct.pack("<I", (bits & 0xFFFF) << 16))[0]


def silu_bf16_exact(bits):
    """SiLU of one bf16 input (bits), by its definition: the exact x·sigmoid(x) of the DAZ input
    rounded once to bf16 (evaluated in float64 with libm exp), FTZ, silu(±0) = ±0,
    silu(+Inf) = +Inf, silu(−Inf) = −0, NaN → 0x7FC0."""
    bits &= 0xFFFF
    e, f = (bits >> 7) & 0xFF, bits & 0x7F
    if e == 0xFF:
        return 0x7FC0 if f else (0x7F80 if bits < 0x8000 else 0x8000)
    if e == 0:
        return bits & 0x8000
    x = _bf16_value(bits)
    y = x / (1.0 + math.exp(-x)) if x >= 0 else x * math.exp(x) / (1.0 + math.exp(x))
    return _f64_to_bf16_rne(y)


def _silu_index(bits):
    """Table index of a stored input, or None."""
    e, f, neg = (bits >> 7) & 0xFF, bits & 0x7F, bits >> 15
    lo, hi = SILU_NEG_EXP if neg else SILU_POS_EXP
    if not lo <= e <= hi:
        return None
    base = 0 if not neg else 128 * (SILU_POS_EXP[1] - SILU_POS_EXP[0] + 1)
    return base + 128 * (e - lo) + f


def silu_bf16_table():
    """The SILU_ENTRIES bf16 results the hardware stores, by table index."""
    table = [0] * SILU_ENTRIES
    for bits in range(1 << 16):
        i = _silu_index(bits)
        if i is not None:
            table[i] = silu_bf16_exact(bits)
    return table


def silu_bf16_lookup(bits, table):
    """SiLU of bf16 ``bits`` as the hardware computes it: the table where it holds the input,
    the rules of docs/numerics.md elsewhere (x/2 below 2**−8, x from 8 on, −0 from −128 down)."""
    bits &= 0xFFFF
    e, f, neg = (bits >> 7) & 0xFF, bits & 0x7F, bits >> 15
    if e == 0xFF:
        return 0x7FC0 if f else (0x8000 if neg else 0x7F80)
    if e == 0:
        return bits & 0x8000
    if e < SILU_POS_EXP[0]:  # |x| < 2**-8: x/2 (a zero when it falls below 2**-126)
        return (bits & 0x8000) | (((e - 1) << 7) | f if e > 1 else 0)
    i = _silu_index(bits)
    if i is not None:
        return table[i]
    return 0x8000 if neg else bits
