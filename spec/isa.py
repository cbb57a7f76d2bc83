"""The chip's instruction set, defined once (docs/isa.md).

The hardware decoder builds its field layouts from :func:`layout`; the assembler packs with
:func:`encode` and the disassembler unpacks with :func:`decode`. Nothing here is written twice:
the tables of docs/isa.md are generated from these definitions (:func:`markdown_tables`, checked
by a test).

Every instruction is :data:`INSTR_BITS` = 512 bits (64 bytes, little-endian in memory: bit 0 is
bit 0 of the first byte). Bits 0–127 are the header, the same for every opcode:

- ``opcode`` (8 bits, :class:`Opcode`);
- ``wait_mask`` (6 bits, bit u for :class:`Unit` u) and ``wait_<unit>`` (16 bits each): the
  instruction starts only when, for every unit u in the mask, unit u has retired at least
  ``wait_<unit>`` instructions since the program started. Units execute their own instructions in
  program order, so "wait for the n-th instruction of unit u" is ``wait_u = n`` (counting from 1).
  A count may only name an instruction that comes earlier in the program (checked: BAD_WAIT).

The operands start at bit 128, in the order :data:`OPERANDS` lists them.
"""

from amaranth.lib import data, enum

__all__ = ["INSTR_BITS", "INSTR_BYTES", "SPAD_ADDR_BITS", "Unit", "Opcode", "WSource", "ElemBytes",
           "UNIT_OF", "HEADER", "OPERANDS", "layout", "encode", "decode", "field_names",
           "markdown_tables", "WAIT_BITS"]

INSTR_BITS = 512
INSTR_BYTES = INSTR_BITS // 8
#: Width of a scratchpad word address in every instruction (docs/chip.md, "global word address").
SPAD_ADDR_BITS = 20
#: Width of every wait count.
WAIT_BITS = 16
_OPERANDS_AT = 128


class Unit(enum.IntEnum, shape=3):
    """The execution units; each executes its instructions in program order."""
    LOAD = 0      #: external memory → scratchpad
    STORE = 1     #: scratchpad → external memory
    MATMUL = 2    #: the matmul engine with its activation reader, weight feeder, result writer
    VECTOR = 3    #: the vector unit
    SOFTMAX = 4   #: the softmax unit
    KV = 5        #: the KV-cache controller (ALLOC, APPEND, FREE)


class Opcode(enum.IntEnum, shape=8):
    """``opcode`` field. 0 is not an instruction, so zeroed memory stops a program."""
    END = 0x01       #: end of the program: done when every unit has retired its instructions
    LOAD = 0x10
    STORE = 0x11
    MATMUL = 0x20
    VECTOR = 0x30
    SOFTMAX = 0x40
    KV = 0x50


class WSource(enum.IntEnum, shape=2):
    """Where a MATMUL's weights come from (``w_src``)."""
    EXT = 0      #: external memory at ``w_addr``, weight-loader beats in row orientation
    EXT_T = 1    #: external memory at ``w_addr``, transposed orientation
    KV_K = 2     #: READ_K of sequence ``kv_seq``, head ``kv_head``, keys ``kv_start`` … + N − 1 (Q·Kᵀ)
    KV_V = 3     #: READ_V of sequence ``kv_seq``, head ``kv_head``, rows ``kv_start`` … + K − 1 (P·V)


class ElemBytes(enum.IntEnum, shape=2):
    """Element size of a LOAD/STORE row in external memory (``elem_bytes``)."""
    B1 = 0   #: int8 / uint8
    B2 = 1   #: bf16 / int16
    B4 = 2   #: fp32 / int32


#: Which unit executes each opcode (END is the command processor's own).
UNIT_OF = {Opcode.LOAD: Unit.LOAD, Opcode.STORE: Unit.STORE, Opcode.MATMUL: Unit.MATMUL,
           Opcode.VECTOR: Unit.VECTOR, Opcode.SOFTMAX: Unit.SOFTMAX, Opcode.KV: Unit.KV}

#: Header fields (name, width, description), from bit 0.
HEADER = (
    ("opcode", 8, "Opcode"),
    ("wait_mask", 8, "bit u: wait for unit u (bits 6, 7 must be 0)"),
    *((f"wait_{u.name.lower()}", WAIT_BITS, f"instructions of {u.name} that must have retired")
      for u in Unit),
)

_S = SPAD_ADDR_BITS
_LOADSTORE = (
    ("ext_addr", 48, "external byte address of row 0 (a multiple of the bus width in bytes)"),
    ("ext_stride", 32, "bytes from one row to the next in external memory (a multiple of the bus width)"),
    ("spad_addr", _S, "scratchpad word address of row 0"),
    ("spad_stride", 16, "words from one row to the next in the scratchpad"),
    ("rows", 16, "rows (≥ 1)"),
    ("elems", 16, "elements per row (≥ 1)"),
    ("elem_bytes", 2, "ElemBytes: bytes per element in external memory"),
    ("signed", 1, "LOAD: sign-extend 1- and 2-byte elements into the 32-bit lanes (else zero-extend)"),
)

#: Operand fields of every opcode (name, width, description), from bit 128, in this order.
OPERANDS = {
    Opcode.END: (),
    Opcode.LOAD: _LOADSTORE,
    Opcode.STORE: _LOADSTORE,
    Opcode.MATMUL: (
        ("m", 16, "rows of A and of the result (≥ 1)"),
        ("k", 16, "reduction length (≥ 1)"),
        ("n", 16, "columns of W and of the result (≥ 1)"),
        ("dtype", 1, "Dtype: INT8 or BF16"),
        ("out_fmt", 2, "OutFormat of the result"),
        ("a_unsigned", 1, "int8: activations are unsigned 8-bit (P of P·V)"),
        ("has_bias", 1, "the parameter beats carry a bias"),
        ("w_src", 2, "WSource"),
        ("w_wide", 1, "EXT int8 weights in the wide format, two W rows per beat (spec.matmul_layout)"),
        ("a_addr", _S, "scratchpad word address of A's row 0, K-tile 0"),
        ("a_stride", 16, "words from one row of A to the next"),
        ("o_addr", _S, "scratchpad word address of the result's row 0, N-tile 0"),
        ("o_stride", 16, "words from one result row to the next"),
        ("w_addr", 48, "EXT, EXT_T: external byte address of the weights (spec.matmul_layout; read ahead of the "
                       "waits: read-only in a program)"),
        ("p_addr", 48, "external byte address of the per-N-tile parameter records (if has_bias or out_fmt INT8; "
                       "spec.matmul_layout; read ahead of the waits)"),
        ("kv_seq", 16, "KV_K, KV_V: sequence id"),
        ("kv_head", 8, "KV_K, KV_V: KV head"),
        ("kv_start", 16, "KV_K, KV_V: first position read"),
        ("interleave", 4, "G − 1: the engine issues groups of G N tiles K tile by K tile (docs/matmul.md, "
                          "\"Schedule\"); EXT, EXT_T weights in spec.matmul_layout.tile_order; G·m ≤ acc_depth; "
                          "KV_K, KV_V: 0"),
    ),
    Opcode.VECTOR: (
        ("op", 8, "spec.vector.VectorOp 0–7 (spec.vector.CHIP_OPS; the unit's HADAMARD and TABLE are not yet "
                  "the chip's)"),
        ("dtype", 1, "Dtype: INT8 (the int8 layer's flavour) or BF16; QUANT_TOKEN takes BF16 only"),
        ("flags", 2, "spec.vector.VectorFlag: bit 0 ROW_EXP (DEQUANT reads a per-row exponent); bit 1 (ROW_SCALE) "
                     "0"),
        ("length", 16, "elements per row (1..vector.max_len)"),
        ("rows", 16, "rows (≥ 1)"),
        ("head_dim", 16, "ROPE: elements per head, a power of two in 2·lanes..256 dividing length"),
        ("shift", 6, "ROPE INT8: the requantization shift (1..62)"),
        ("a_addr", _S, "scratchpad word address of operand a's row 0"),
        ("a_stride", 16, "words between rows of a"),
        ("b_addr", _S, "ADD, SWIGLU: operand b's row 0; DEQUANT, REQUANT: the per-channel shifts"),
        ("b_stride", 16, "words between rows of b (0: the same row for every row)"),
        ("p_addr", _S, "parameter words of row 0: RMSNORM gains, DEQUANT/REQUANT multipliers, "
                       "ROPE the cos/sin row of row 0's position"),
        ("p_stride", 16, "words between the parameters of consecutive rows (0: the same for every row; "
                         "ROPE: the RoPE table's row stride)"),
        ("o_addr", _S, "result row 0"),
        ("o_stride", 16, "words between result rows"),
        ("s_in_addr", _S, "REQUANT, DEQUANT with ROW_EXP: per-row exponents, lane 0 of one word per row"),
        ("s_out_addr", _S, "QUANT_TOKEN: per-row exponents written to lane 0 of one word per row"),
        ("imm0", 32, "RMSNORM fp32 eps; QUANT_STATIC fp32 1/scale; ROPE INT8 the multiplier (< 2**31)"),
        ("imm1", 32, "RMSNORM fp32 1/length"),
    ),
    Opcode.SOFTMAX: (
        ("dtype", 1, "Dtype of the scores (int32 or fp32) and probabilities (uint8 or bf16)"),
        ("rows", 16, "rows (≥ 1)"),
        ("length", 16, "keys per row L (≥ 1)"),
        ("a_addr", _S, "score row 0"),
        ("a_stride", 16, "words between score rows"),
        ("o_addr", _S, "probability row 0"),
        ("o_stride", 16, "words between probability rows"),
        ("scale", 32, "int8: the multiplier m (bits 0–15); bf16: the fp32 constant c"),
        ("shift", 6, "int8: the shift sh"),
        ("valid_len", 16, "keys j < valid_len are visible (≥ length: no padding)"),
        ("causal_pos0", 16, "row r sees keys j ≤ causal_pos0 + r"),
        ("causal", 1, "apply the causal mask"),
    ),
    Opcode.KV: (
        ("op", 3, "KVOp: ALLOC, APPEND or FREE"),
        ("seq", 16, "sequence id"),
        ("rows", 16, "APPEND: tokens appended (≥ 1)"),
        ("k_addr", _S, "APPEND: token 0's K row (all KV heads, head 0 first)"),
        ("k_stride", 16, "APPEND: words between K rows"),
        ("v_addr", _S, "APPEND: token 0's V row"),
        ("v_stride", 16, "APPEND: words between V rows"),
    ),
}


def _fields(opcode):
    opcode = Opcode(opcode)
    out, offset = [], 0
    for name, width, doc in HEADER:
        out.append((name, offset, width, doc))
        offset += width
    assert offset <= _OPERANDS_AT
    offset = _OPERANDS_AT
    for name, width, doc in OPERANDS[opcode]:
        out.append((name, offset, width, doc))
        offset += width
    assert offset <= INSTR_BITS, f"{opcode.name} operands do not fit"
    return out


def field_names(opcode):
    """The names of ``opcode``'s fields, header first."""
    return [name for name, *_ in _fields(opcode)]


def layout(opcode):
    """``data.FlexibleLayout`` of an instruction of ``opcode`` (INSTR_BITS bits): view an
    instruction register through it to read the fields (``Signal(INSTR_BITS)`` cast with
    ``data.View``)."""
    return data.FlexibleLayout(INSTR_BITS, {name: data.Field(width, offset)
                                            for name, offset, width, _ in _fields(opcode)})


def encode(opcode, *, wait=None, **fields):
    """One instruction as an int of INSTR_BITS bits.

    ``wait`` maps a :class:`Unit` (or its lower-case name) to the count of that unit's
    instructions that must retire first. Enum values are accepted for enum fields. Raises
    ``ValueError`` naming the field for an unknown field or a value that does not fit.
    """
    opcode = Opcode(opcode)
    spec = {name: (offset, width) for name, offset, width, _ in _fields(opcode)}
    values = {"opcode": int(opcode)}
    mask = 0
    for unit, count in (wait or {}).items():
        u = Unit[unit.upper()] if isinstance(unit, str) else Unit(unit)
        mask |= 1 << u
        values[f"wait_{u.name.lower()}"] = count
    values["wait_mask"] = mask
    for name, value in fields.items():
        if name not in spec or name == "opcode" or name.startswith("wait"):
            raise ValueError(f"{opcode.name} has no operand {name!r} "
                             f"(operands: {', '.join(n for n, *_ in OPERANDS[opcode])})")
        values[name] = value
    word = 0
    for name, value in values.items():
        offset, width = spec[name]
        if isinstance(value, bool) or not isinstance(value, int):
            try:
                value = int(value)
            except (TypeError, ValueError):
                raise ValueError(f"{opcode.name}.{name} must be an integer, not {value!r}") from None
        if not 0 <= value < (1 << width):
            raise ValueError(f"{opcode.name}.{name} = {value} does not fit its {width} bits "
                             f"(0..{(1 << width) - 1})")
        word |= value << offset
    return word


def decode(word):
    """``(opcode, fields)`` of an instruction int; ``fields`` holds every field of the opcode,
    header included. Raises ``ValueError`` for an unknown opcode."""
    code = word & 0xFF
    try:
        opcode = Opcode(code)
    except ValueError:
        raise ValueError(f"unknown opcode 0x{code:02x}") from None
    return opcode, {name: (word >> offset) & ((1 << width) - 1)
                    for name, offset, width, _ in _fields(opcode)}


def markdown_tables():
    """The field tables of docs/isa.md, generated from this module."""
    lines = []
    lines.append("### Header (every opcode)\n")
    lines.append("| bits | field | meaning |")
    lines.append("|---|---|---|")
    for name, offset, width, doc in _fields(Opcode.END):
        lines.append(f"| {offset}–{offset + width - 1} | `{name}` | {doc} |")
    for opcode in Opcode:
        if not OPERANDS[opcode]:
            continue
        unit = UNIT_OF[opcode].name
        lines.append(f"\n### {opcode.name} (0x{int(opcode):02x}, unit {unit})\n")
        lines.append("| bits | field | meaning |")
        lines.append("|---|---|---|")
        for name, offset, width, doc in _fields(opcode)[len(HEADER):]:
            lines.append(f"| {offset}–{offset + width - 1} | `{name}` | {doc} |")
    return "\n".join(lines) + "\n"
