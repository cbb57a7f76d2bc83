"""Chip programs for the tests: tensors placed in external memory and the scratchpad, LOAD →
VECTOR / SOFTMAX → STORE instructions with their waits, the regions to read back and the bytes
golden expects there."""

import math

import numpy as np

import golden
from golden.fp import as_bf16_bits, as_fp32_bits
from hdl.config import get_config
from sim.chip_api import Program
from spec import isa
from spec.vector import VectorOp

U = isa.Unit
END = isa.encode(isa.Opcode.END)
_EB = {1: isa.ElemBytes.B1, 2: isa.ElemBytes.B2, 4: isa.ElemBytes.B4}


class ChipProgram:
    """A program under construction for a chip of ``config``.

    Tensors go to external memory from ``ext_base`` on and to the scratchpad bank by bank (each
    new tensor in the next bank, so the streams of one instruction seldom share a bank).
    :meth:`load` emits a LOAD, :meth:`store` a STORE that waits for every VECTOR and SOFTMAX
    instruction so far and records the bytes expected there; :meth:`emit` any instruction.
    """

    def __init__(self, config, *, ext_base=0x8000, prog_addr=0, first_bank=0):
        cfg = get_config(config)
        self.config = cfg
        self.L = cfg.memory.spad_lanes
        self.bus = cfg.memory.axi_data_bits // 8
        self.banks, self.bank_words = cfg.memory.spad_banks, cfg.memory.spad_words
        self.next_bank = first_bank
        self.free = [b * self.bank_words for b in range(self.banks)]
        self.memory, self.words, self.read_back, self.expect = {}, [], [], {}
        self.ext = ext_base
        self.prog_addr = prog_addr
        self.count = dict.fromkeys(U, 0)

    # -- placement ------------------------------------------------------------------------------
    def spad_alloc(self, words, bank=None):
        b = self.next_bank if bank is None else bank
        self.next_bank = (b + 1) % self.banks
        addr = self.free[b]
        if addr + words > (b + 1) * self.bank_words:
            raise ValueError(f"bank {b} is full")
        self.free[b] = addr + words
        return addr

    def ext_alloc(self, nbytes):
        addr = self.ext
        self.ext += -(-nbytes // 64) * 64 + 64
        return addr

    def row_words(self, n):
        return -(-n // self.L)

    # -- instructions ---------------------------------------------------------------------------
    def emit(self, opcode, wait=None, **fields):
        self.words.append(isa.encode(opcode, wait=wait, **fields))
        unit = isa.UNIT_OF[isa.Opcode(opcode)]
        self.count[unit] += 1
        return self.count[unit]

    def waits(self, *units):
        """A wait on every instruction so far of ``units`` (those with any)."""
        return {u: self.count[u] for u in units if self.count[u]} or None

    def load(self, values, elem_bytes, *, signed=False, bank=None, gap=0):
        """LOAD ``values`` (rows × n integers: each lane's value; the low ``elem_bytes`` bytes go
        to external memory) into the scratchpad, rows ``gap`` words apart beyond their length.
        Returns (spad address, row stride)."""
        v = np.asarray(values).astype(np.int64)
        if v.ndim == 1:
            v = v[None, :]
        rows, n = v.shape
        stride_b = -(-n * elem_bytes // self.bus) * self.bus
        raw = (v & ((1 << (8 * elem_bytes)) - 1)).astype(f"<u{elem_bytes}")
        img = b"".join(r.tobytes() + bytes(stride_b - n * elem_bytes) for r in raw)
        ext = self.ext_alloc(len(img))
        self.memory[ext] = img
        stride = self.row_words(n) + gap
        spad = self.spad_alloc(rows * stride, bank)
        self.emit(isa.Opcode.LOAD, ext_addr=ext, ext_stride=stride_b, spad_addr=spad, spad_stride=stride,
                  rows=rows, elems=n, elem_bytes=_EB[elem_bytes], signed=int(signed))
        return spad, stride

    def store(self, name, spad, stride, want, elem_bytes, *, wait_units=(U.VECTOR, U.SOFTMAX)):
        """STORE rows × n lanes at ``spad`` (``want``: the lanes' expected values, rows × n) with
        ``elem_bytes`` bytes per element; read back as ``name``."""
        want = np.asarray(want).astype(np.int64)
        if want.ndim == 1:
            want = want[:, None]
        rows, n = want.shape
        stride_b = -(-n * elem_bytes // self.bus) * self.bus
        ext = self.ext_alloc(rows * stride_b)
        self.emit(isa.Opcode.STORE, wait=self.waits(*wait_units), ext_addr=ext, ext_stride=stride_b, spad_addr=spad,
                  spad_stride=stride, rows=rows, elems=n, elem_bytes=_EB[elem_bytes])
        self.read_back.append((name, ext, rows * stride_b))
        self.expect[name] = ((want & ((1 << (8 * elem_bytes)) - 1)).astype(np.uint64), elem_bytes, stride_b)

    def program(self):
        return Program(self.words + [END], addr=self.prog_addr)

    def got(self, res, name):
        """The rows × n lane values read back as ``name`` (unsigned)."""
        want, eb, stride_b = self.expect[name]
        rows, n = want.shape
        raw = res.outputs[name].reshape(rows, stride_b)[:, :n * eb]
        return np.frombuffer(raw.tobytes(), f"<u{eb}").reshape(rows, n).astype(np.uint64)

    def mismatches(self, res):
        """Names whose bytes differ from golden's (with the first differing index)."""
        bad = {}
        for name, (want, _, _) in self.expect.items():
            got = self.got(res, name)
            if not np.array_equal(got, want):
                bad[name] = np.argwhere(got != want)[:3].tolist()
        return bad


# ------------------------------------------------------------------------------------------------
# vector instructions from sim.vector_api commands (tests/vector_cases.py)

def _in_bytes(op, dtype):
    """Bytes per element of operand a in external memory and whether it is signed."""
    if op in (VectorOp.DEQUANT, VectorOp.REQUANT):
        return 4, True
    if op == VectorOp.ROPE and dtype == 0:
        return 1, True
    return (2, False) if dtype == 1 else (4, False)


def _out_bytes(op, dtype):
    if op in (VectorOp.REQUANT, VectorOp.QUANT_STATIC, VectorOp.QUANT_TOKEN) or (op == VectorOp.ROPE and dtype == 0):
        return 1
    if op == VectorOp.DEQUANT or (op == VectorOp.ADD and dtype == 0):
        return 4
    return 2


def add_vector(pb, name, case, *, rope_table=None, pos0=0, table_rows=None, out_gap=0):
    """LOADs of a command's operands, the VECTOR instruction and the STOREs of its results.

    ``case`` is (command, expected o, expected s_out) from tests/vector_cases.py. Parameters that
    are the same for every row (norm gains, per-channel multipliers and shifts) are loaded once
    and read with stride 0. A ROPE case takes the rows of ``rope_table`` (golden.RopeTable) for
    positions ``pos0`` … ``pos0 + rows − 1``: the table (or its rows ``table_rows``, a range) is
    loaded, and p_addr points at the row of position pos0 in it."""
    cmd, want, want_s = case
    op, dtype, rows, length = VectorOp(cmd["op"]), cmd["dtype"], cmd["rows"], cmd["length"]
    eb, signed = _in_bytes(op, dtype)
    f = dict(op=op, dtype=dtype, flags=cmd["flags"], length=length, rows=rows, head_dim=cmd["head_dim"],
             shift=cmd["shift"], imm0=cmd["imm0"], imm1=cmd["imm1"])
    f["a_addr"], f["a_stride"] = pb.load(np.asarray(cmd["a"]).astype(np.uint32).view(np.int32), eb, signed=signed)
    if op in (VectorOp.ADD, VectorOp.SWIGLU):
        f["b_addr"], f["b_stride"] = pb.load(np.asarray(cmd["b"]).astype(np.uint32).view(np.int32), eb, signed=signed)
    if op in (VectorOp.DEQUANT, VectorOp.REQUANT):
        f["b_addr"], _ = pb.load(np.asarray(cmd["b"])[:1], 1)           # shifts, one row for all
        f["b_stride"] = 0
        f["p_addr"], _ = pb.load(np.asarray(cmd["p"])[:1], 4)           # multipliers
        f["p_stride"] = 0
    if op == VectorOp.RMSNORM:
        f["p_addr"], _ = pb.load(np.asarray(cmd["p"])[:1], 2)           # bf16 gains
        f["p_stride"] = 0
    if op == VectorOp.ROPE:
        t = rope_table
        if dtype == 0:
            cs, sn = t.cos_q.astype(np.int64), t.sin_q.astype(np.int64)
        else:
            cs, sn = as_bf16_bits(t.cos_bf16).astype(np.int64), as_bf16_bits(t.sin_bf16).astype(np.int64)
        table = (cs & 0xFFFF) | ((sn & 0xFFFF) << 16)
        rng = table_rows or range(len(table))
        base, stride = pb.load(table[rng.start:rng.stop], 4)
        f["p_addr"], f["p_stride"] = base + (pos0 - rng.start) * stride, stride
    if cmd["s_in"] is not None:
        f["s_in_addr"], _ = pb.load(np.asarray(cmd["s_in"]).astype(np.uint32).view(np.int32)[:, None], 4, signed=True)
    words = pb.row_words(length) + out_gap
    f["o_addr"], f["o_stride"] = pb.spad_alloc(rows * words), words
    if op == VectorOp.QUANT_TOKEN:
        f["s_out_addr"] = pb.spad_alloc(rows)
    pb.emit(isa.Opcode.VECTOR, wait=pb.waits(U.LOAD), **f)
    pb.store(name, f["o_addr"], f["o_stride"], want.astype(np.uint32).view(np.int32), _out_bytes(op, dtype))
    if op == VectorOp.QUANT_TOKEN:
        pb.store(f"{name}_e", f["s_out_addr"], 1, np.asarray(want_s)[:, None], 4)
    return f


# ------------------------------------------------------------------------------------------------
# softmax instructions

def softmax_case(rng, dtype, rows, length, *, valid_len=None, causal_pos0=None):
    """(instruction fields without addresses, scores [rows, length] as lane values, expected
    probabilities [rows, length]) of random attention-like scores."""
    vl = length if valid_len is None else valid_len
    causal = causal_pos0 is not None
    cp = causal_pos0 + np.arange(rows) if causal else None
    vl_g = min(vl, length)
    f = dict(dtype=dtype, rows=rows, length=length, valid_len=vl, causal=int(causal),
             causal_pos0=causal_pos0 or 0)
    if dtype == 0:
        s = rng.integers(-2 ** 20, 2 ** 20, (rows, length)).astype(np.int32)
        m, sh = golden.softmax_scale_int8(2e-5 * rng.uniform(0.5, 2))
        want = golden.softmax_int8(s, (m, sh), vl_g, cp)
        f.update(scale=m, shift=sh)
        lanes = s
    else:
        s = (rng.normal(0, 4, (rows, length)) * rng.choice([1, 1, 8], (rows, length))).astype(np.float32)
        c = golden.softmax_scale_bf16(1 / math.sqrt(64))
        want = as_bf16_bits(golden.softmax_bf16(s, c, vl_g, cp))
        f.update(scale=int(as_fp32_bits(c)))
        lanes = as_fp32_bits(s).reshape(rows, length).view(np.int32)
    return f, lanes, want


def add_softmax(pb, name, case, *, gap=0):
    """LOAD of the scores, the SOFTMAX instruction and the STORE of the probabilities."""
    f, lanes, want = case
    f = dict(f)
    f["a_addr"], f["a_stride"] = pb.load(lanes, 4, gap=gap)
    words = pb.row_words(f["length"]) + gap
    f["o_addr"], f["o_stride"] = pb.spad_alloc(f["rows"] * words), words
    pb.emit(isa.Opcode.SOFTMAX, wait=pb.waits(U.LOAD), **f)
    pb.store(name, f["o_addr"], f["o_stride"], want, 1 if f["dtype"] == 0 else 2)
    return f


# ------------------------------------------------------------------------------------------------
# real rows: the vector calls of golden.DecoderLayer and its attention rows

_WRAPPED = ("rmsnorm_bf16", "rope_bf16", "rope_int8", "swiglu_bf16", "residual_add_bf16", "quantize_per_token",
            "dequantize_acc", "fp32_to_bf16", "fp32_add", "requantize")


def layer_vector_cases(layer, x, *, lanes, max_len):
    """The first call of each vector op golden.DecoderLayer makes on ``x`` (its real
    arguments, recorded by wrapping the functions golden.layer calls) as
    {name: (command, expected o, expected s_out)} of tests/vector_cases.py, and the layer's RoPE
    table. In int8 mode the fp32 rows that the layer rounds to bf16 before RMSNorm and SwiGLU
    are the commands' inputs (the unit rounds them)."""
    import pytest
    from vector_cases import command

    import golden.layer as gl
    calls = []
    mp = pytest.MonkeyPatch()
    for name in _WRAPPED:
        fn = getattr(gl, name)

        def wrapper(*args, _fn=fn, _name=name, **kw):
            calls.append((_name, args, kw))
            return _fn(*args, **kw)
        mp.setattr(gl, name, wrapper)
    try:
        layer.prefill(layer.to_input(x))
    finally:
        mp.undo()
    mode, kw = layer.mode, dict(lanes=lanes, max_len=max_len)
    out, f32, table = {}, [], None
    for name, args, k in calls:
        if name == "fp32_to_bf16":
            f32.append(golden.fp.fp32_from_bits(np.asarray(args[0])).reshape(np.shape(args[0])))
            continue
        op = {"rmsnorm_bf16": "rmsnorm", "rope_bf16": "rope", "rope_int8": "rope", "swiglu_bf16": "swiglu",
              "residual_add_bf16": "add", "fp32_add": "add", "quantize_per_token": "quant_token",
              "dequantize_acc": "dequant", "requantize": "requant"}[name]
        if op in out:
            continue
        if op == "rmsnorm":
            out[op] = command(op, mode, f32[-1] if mode == "int8" else args[0], gain=args[1], eps=k["eps"], **kw)
        elif op == "rope":
            x_, pos, table = args
            s = x_.shape[0]
            out[op] = command(op, mode, x_.reshape(s, -1), table=table, pos=np.asarray(pos).reshape(s), **kw)
        elif op == "swiglu":
            out[op] = command(op, mode, *((f32[-2], f32[-1]) if mode == "int8" else args), **kw)
        elif op == "add" and (name == "residual_add_bf16" or np.ndim(args[0]) == 2):
            a, b = args if mode == "bf16" else (golden.fp.fp32_from_bits(np.asarray(v)).reshape(np.shape(v))
                                                 for v in args)
            out[op] = command(op, mode, a, b, **kw)
        elif op == "quant_token":
            out[op] = command(op, "bf16", args[0], **kw)
        elif op == "dequant" and len(args) > 3:
            acc, m, sh, e = args[:4]
            out[op] = command(op, "int8", acc, multiplier=m, shift=sh, row_exp=e, **kw)
        elif op == "requant" and np.ndim(args[0]) == 1 and np.asarray(args[0]).size >= 8:
            acc, m, sh = args
            n = np.asarray(acc).size
            out[op] = command(op, "int8", np.asarray(acc).reshape(1, n), multiplier=np.broadcast_to(m, n),
                              shift=np.broadcast_to(sh, n), row_exp=np.zeros(1, np.int64), **kw)
    return out, table


def attention_rows(layer, head):
    """(instruction fields without addresses, scores as lane values, expected probabilities) of
    one head's attention rows of the last prefill of ``layer`` (made with ``trace=True``): causal
    rows from position 0, the layer's own scale constants."""
    t = [r for r in layer.trace if r["head"] == head][-1]
    scores, pos = np.asarray(t["scores"]), t["pos"]
    rows, length = scores.shape
    f = dict(dtype=0 if layer.mode == "int8" else 1, rows=rows, length=length, valid_len=length, causal=1,
             causal_pos0=int(pos[0]))
    if layer.mode == "int8":
        m, sh = golden.softmax_scale_int8(t["scale"])
        want = golden.softmax_int8(scores, (m, sh), causal_pos=pos)
        f.update(scale=m, shift=sh)
        return f, scores.astype(np.int32), want
    c = golden.softmax_scale_bf16(t["scale"])
    want = as_bf16_bits(golden.softmax_bf16(scores.astype(np.float32), c, causal_pos=pos))
    f.update(scale=int(as_fp32_bits(c)))
    return f, as_fp32_bits(scores.astype(np.float32)).reshape(rows, length).view(np.int32), want


__all__ = ["ChipProgram", "add_vector", "softmax_case", "add_softmax", "layer_vector_cases", "attention_rows",
           "U", "END"]
