"""The chip's semantics, instruction by instruction: :class:`ChipModel` (docs/chip.md, "The
chip model"; the instruction set is docs/isa.md).

The state is what a program can observe: the external memory (bytes), the scratchpad
(:class:`golden.scratchpad.ScratchpadModel`: global word addresses, 32-bit lanes) and the paged
KV cache (:class:`golden.PagedKVCache`). :meth:`ChipModel.execute` decodes each instruction with
``spec.isa.decode`` and applies it **in program order**; every bit of arithmetic is golden's
(``golden.loadstore``, ``golden.matmul_*``, ``golden.requantize``, the vector functions,
``golden.softmax_*``, ``golden.kvunit``). The chip runs the units at the same time, ordered only
by the instructions' waits; it ends in the model's state when the program is free of races:
every two instructions of different units that touch the same scratchpad word, external byte
or KV sequence (one of them writing) are ordered by waits (:func:`races` checks it; a MATMUL's
weights and parameters, read ahead of its waits, are written by no STORE of the program).

Errors: a program stops at its first error with the chip's ``(ChipError, ERROR_DETAIL,
ERROR_INDEX)``. Modelled: BAD_OPCODE, BAD_WAIT, NO_END (a program without END), and the units'
runtime errors: KV (a KV instruction's or a KV-sourced MATMUL's refusal, detail the
``KVStatus``; an APPEND keeps the tokens before the refused one), VECTOR (BAD_SCALE: nothing
written), MATMUL (BAD_REQUANT: the results written with the shift clamped). On the chip the
instructions that have *started* in other units when an error comes run to their end, so the
model's state after an error is the chip's only when everything else that had started is
ordered before the failing instruction (e.g. it waits for all of them). The dispatcher's field
and range checks (``hdl.cmdproc.CHECKS``, BAD_FIELD / SPAD_RANGE / EXT_RANGE) are not modelled:
an instruction that would fail one, or whose operands are not in the format its op reads (an
int8 MATMUL operand that is not a sign-extended int8, a NaN into a quantizer), raises
:class:`UndefinedError` and changes nothing.
"""

from dataclasses import dataclass

import numpy as np

from spec import isa
from spec import matmul_layout as ml
from spec.codes import ChipError, Dtype, KVOp, KVStatus, MatmulStatus, OutFormat
from spec.vector import CHIP_OPS, VectorFlag, VectorOp, VectorStatus, command_status, stream_words

from . import kvunit, loadstore
from .fp import as_bf16_bits, as_fp32_bits, bf16_from_bits, fp32_add, fp32_from_bits, fp32_to_bf16
from .kvcache import KVCacheError, PagedKVCache
from .layer import dequantize_acc, quantize_per_token, quantize_static
from .matmul import matmul_bf16, matmul_int8
from .requant import requantize
from .scratchpad import ScratchpadModel
from .softmax import softmax_bf16_bits, softmax_int8
from .vector import RopeTable, residual_add_bf16, rmsnorm_bf16, rope_bf16, rope_int8, swiglu_bf16

__all__ = ["ChipModel", "ChipOutcome", "UndefinedError", "Footprint", "footprint", "races"]

U = isa.Unit


class UndefinedError(ValueError):
    """An instruction this model gives no meaning to (a dispatcher check it does not model, or
    operands outside the format the op reads); the state is unchanged."""


@dataclass(frozen=True)
class ChipOutcome:
    """How a program ended: ``error`` (``ChipError.OK`` when it reached END), ``detail``,
    ``index`` (of the failing instruction; 0 when OK), ``retired`` (instructions applied)."""
    error: ChipError
    detail: int = 0
    index: int = 0
    retired: int = 0

    @property
    def registers(self):
        """``(ERROR_CODE, ERROR_DETAIL, ERROR_INDEX)`` as the chip reports them."""
        return (self.error, self.detail, self.index)


class _Stop(Exception):
    def __init__(self, error, detail):
        super().__init__(error, detail)
        self.error, self.detail = ChipError(error), int(detail)


def _ceil(a, b):
    return -(-a // b)


def _sext(x, bits):
    x = np.asarray(x, np.int64) & ((1 << bits) - 1)
    return np.where(x >= 1 << (bits - 1), x - (1 << bits), x)


class ChipModel:
    """The state of a chip of ``config`` (a ``hdl.config.ChipConfig`` or anything with its
    ``memory``, ``array``, ``kvcache``, ``vector`` and ``softmax`` parts) and the meaning of its
    instructions.

    Parameters
    ----------
    config
    ext_bytes : int
        Size of the external memory (bytes, zero at first).
    """

    def __init__(self, config, *, ext_bytes=1 << 20):
        mem = config.memory
        self._config = config
        self.lanes = mem.spad_lanes
        self.bus = mem.axi_data_bits // 8
        self.R, self.C = config.array.rows, config.array.cols
        self.vector_max_len, self.softmax_max_len = config.vector.max_len, config.softmax.max_len
        self.ext = np.zeros(int(ext_bytes), np.uint8)
        self.spad = ScratchpadModel(lanes=mem.spad_lanes, words=mem.spad_words, banks=mem.spad_banks)
        self.cache = PagedKVCache.from_config(config.kvcache)

    # -- external memory ----------------------------------------------------------------------
    def write_ext(self, addr, data):
        data = np.frombuffer(bytes(data), np.uint8)
        if addr < 0 or addr + len(data) > len(self.ext):
            raise ValueError(f"[{addr:#x}, {addr + len(data):#x}) is outside the external memory "
                             f"({len(self.ext):#x} bytes)")
        self.ext[addr:addr + len(data)] = data

    def read_ext(self, addr, nbytes):
        return self.ext[addr:addr + nbytes].tobytes()

    # -- programs -----------------------------------------------------------------------------
    def execute(self, words):
        """Run a program (encoded instructions, ints) to its END or first error; returns a
        :class:`ChipOutcome`. Raises :class:`UndefinedError` (state as after the instructions
        before it) for an instruction the model does not define."""
        issued = dict.fromkeys(U, 0)
        for index, word in enumerate(words):
            try:
                opcode, f = self.decode(word, issued)
                if opcode == isa.Opcode.END:
                    return ChipOutcome(ChipError.OK, retired=index)
                self.apply(opcode, f)
            except _Stop as stop:
                return ChipOutcome(stop.error, stop.detail, index, retired=index)
            except UndefinedError as exc:
                raise UndefinedError(f"instruction {index}: {exc}") from None
            issued[isa.UNIT_OF[opcode]] += 1
        return ChipOutcome(ChipError.NO_END, 0, len(words), retired=len(words))

    @staticmethod
    def decode(word, issued):
        """``(opcode, fields)`` of an instruction at a point where ``issued`` instructions of
        each unit came before it; raises the BAD_OPCODE and BAD_WAIT stops."""
        try:
            opcode, f = isa.decode(int(word))
        except ValueError:
            raise _Stop(ChipError.BAD_OPCODE, 0) from None
        if opcode == isa.Opcode.END:
            return opcode, f
        mask = f["wait_mask"]
        if mask >> len(U) or any(mask >> u & 1 and f[f"wait_{u.name.lower()}"] > issued[u] for u in U):
            raise _Stop(ChipError.BAD_WAIT, 0)
        return opcode, f

    def step(self, word):
        """Apply one instruction (waits not checked); returns ``None`` or the ``(ChipError,
        detail)`` it stops with. For program generators that build a program as they go."""
        opcode, f = isa.decode(int(word))
        try:
            self.apply(opcode, f)
        except _Stop as stop:
            return stop.error, stop.detail
        return None

    def apply(self, opcode, f):
        {isa.Opcode.LOAD: self._load, isa.Opcode.STORE: self._store, isa.Opcode.MATMUL: self._matmul,
         isa.Opcode.VECTOR: self._vector, isa.Opcode.SOFTMAX: self._softmax, isa.Opcode.KV: self._kv}[opcode](f)

    # -- scratchpad helpers -------------------------------------------------------------------
    def _rows(self, addr, stride, rows, elems):
        """[rows, elems] uint32 lanes of a matrix in the scratchpad (docs/chip.md convention)."""
        words = _ceil(elems, self.lanes)
        self._in_spad(addr, stride, rows, words)
        idx = addr + np.arange(rows)[:, None] * stride + np.arange(words)[None, :]
        return self.spad.mem[idx].reshape(rows, words * self.lanes)[:, :elems].copy()

    def _in_spad(self, addr, stride, rows, words, what="an operand"):
        if addr + (rows - 1) * stride + words > self.spad.capacity:
            raise UndefinedError(f"{what} reaches past the scratchpad (the dispatcher's SPAD_RANGE check)")

    def _write_rows(self, addr, stride, values):
        """Write [rows, elems] lane values (uint32) as a matrix; lanes past a row's end 0."""
        values = np.asarray(values, np.uint32)
        rows, elems = values.shape
        words = _ceil(elems, self.lanes)
        self._in_spad(addr, stride, rows, words, "the result")
        padded = np.zeros((rows, words * self.lanes), np.uint32)
        padded[:, :elems] = values
        for r in range(rows):     # in row order: an overlapping later row wins, as on the chip
            a = addr + r * stride
            self.spad.mem[a:a + words] = padded[r].reshape(words, self.lanes)

    def _no_overwrite(self, opcode, f, *, in_place=False):
        """An instruction may not write scratchpad words it reads, except a VECTOR writing its
        result over its own operand a in place (same address and stride: each row is read before
        it is written; docs/isa.md)."""
        fields = {k: v for k, v in f.items() if k != "opcode" and not k.startswith("wait")}
        fp = footprint(self._config, isa.encode(opcode, **fields))
        reads = fp.reads
        if in_place:       # only what the b, p and s_in streams read
            reads = _vector_operand_reads(f, self.lanes)
        if reads & fp.writes:
            raise UndefinedError(f"{opcode.name} writes over scratchpad words it reads "
                                 f"(word {sorted(reads & fp.writes)[0][1]})")

    # -- LOAD, STORE ----------------------------------------------------------------------------
    def _descriptor(self, f):
        if f["elem_bytes"] not in (0, 1, 2) or not f["rows"] or not f["elems"]:
            raise UndefinedError("a LOAD/STORE field check fails (BAD_FIELD)")
        d = loadstore.Descriptor(ext_addr=f["ext_addr"], ext_stride=f["ext_stride"], rows=f["rows"],
                                 elems=f["elems"], elem_bytes=1 << f["elem_bytes"], spad_addr=f["spad_addr"],
                                 spad_stride=f["spad_stride"], signed=bool(f["signed"]))
        status = loadstore.check(d, data_bytes=self.bus, lanes=self.lanes, spad_words=self.spad.capacity,
                                 addr_width=int(len(self.ext)).bit_length() - 1)
        if status:
            raise UndefinedError(f"the descriptor fails the check {status.name}")
        return d

    def _load(self, f):
        loadstore.load(self.ext, self.spad.mem, self._descriptor(f))

    def _store(self, f):
        loadstore.store(self.spad.mem, self.ext, self._descriptor(f))

    # -- MATMUL -----------------------------------------------------------------------------------
    def _matmul(self, f):
        m, k, n, dtype, fmt = f["m"], f["k"], f["n"], Dtype(f["dtype"]), f["out_fmt"]
        if not (m and k and n) or fmt >> 1 != dtype or (f["w_wide"] and (dtype or f["w_src"] != isa.WSource.EXT)):
            raise UndefinedError("a MATMUL field check fails (BAD_FIELD)")
        if f["interleave"] and f["w_src"] in (isa.WSource.KV_K, isa.WSource.KV_V):
            raise UndefinedError("KV_K/KV_V with interleave other than 0 (BAD_FIELD)")
        self._no_overwrite(isa.Opcode.MATMUL, f)
        a16 = self._rows(f["a_addr"], f["a_stride"], m, k) & 0xFFFF          # the engine's 16-bit lanes
        if dtype == Dtype.BF16:
            a = bf16_from_bits(a16.astype(np.uint16))
        elif f["a_unsigned"]:
            if a16.max(initial=0) > 255:
                raise UndefinedError("an unsigned activation lane is not a zero-extended uint8")
            a = a16.astype(np.uint8)
        else:
            a = _sext(a16, 16)
            if a.min(initial=0) < -128 or a.max(initial=0) > 127:
                raise UndefinedError("an int8 activation lane is not a sign-extended int8")
            a = a.astype(np.int8)
        try:
            w = self._weights(f, k, n, dtype)
        except KVCacheError as exc:
            raise _Stop(ChipError.KV, exc.code) from None         # no result written
        bias, mult, shift = self._params(f, n)
        if dtype == Dtype.INT8:
            acc = matmul_int8(a, w, bias.view(np.int32) if f["has_bias"] else None)
            if fmt == OutFormat.INT8:
                out = requantize(acc, mult & 0x7FFFFFFF, np.clip(shift, 1, 62))
            else:
                out = acc
            lanes = (out.astype(np.int64) & 0xFFFFFFFF).astype(np.uint32)
        else:
            acc = as_fp32_bits(matmul_bf16(a, w, fp32_from_bits(bias) if f["has_bias"] else None)).reshape(m, n)
            lanes = fp32_to_bf16(acc).astype(np.uint32) if fmt == OutFormat.BF16 else acc
        self._write_rows(f["o_addr"], f["o_stride"], lanes)
        if fmt == OutFormat.INT8 and ((mult >> 31).any() or (shift < 1).any() or (shift > 62).any()):
            raise _Stop(ChipError.MATMUL, MatmulStatus.BAD_REQUANT)    # ran with the shift clamped

    def _weights(self, f, k, n, dtype):
        """W [k, n] (int8 or bf16) of a MATMUL."""
        src = isa.WSource(f["w_src"])
        if src in (isa.WSource.KV_K, isa.WSource.KV_V):
            c = self.cache
            if (dtype == Dtype.BF16) != (c.dtype == "bf16"):
                raise UndefinedError("KV_K/KV_V: dtype is not the KV cache's (BAD_FIELD)")
            if src == isa.WSource.KV_K:       # Q·Kᵀ: keys kv_start … + n − 1 are the columns
                if k != c.head_dim:
                    raise UndefinedError(f"KV_K with k = {k}: the model defines k = head_dim ({c.head_dim})")
                rows = c.read_k(f["kv_seq"], f["kv_head"], f["kv_start"], n)        # [n, head_dim]
                w = np.ascontiguousarray(rows.T)
            else:                             # P·V: positions kv_start … + k − 1 are the rows
                if n != c.head_dim:
                    raise UndefinedError(f"KV_V with n = {n}: the model defines n = head_dim ({c.head_dim})")
                w = np.ascontiguousarray(c.read_v(f["kv_seq"], f["kv_head"], f["kv_start"], k))
            return w
        bf16, wide, transposed = dtype == Dtype.BF16, bool(f["w_wide"]), src == isa.WSource.EXT_T
        beats = ml.weight_beats(k, n, rows=self.R, cols=self.C, transposed=transposed, wide=wide)
        nbytes = ml.weight_bytes(k, n, rows=self.R, cols=self.C, bus_bytes=self.bus, bf16=bf16,
                                 transposed=transposed, wide=wide)
        lanes = ml.unpack_weight_beats(self.read_ext(f["w_addr"], nbytes), cols=self.C, beats=beats, bf16=bf16,
                                       wide=wide)
        w16 = ml.weights_from_beats(lanes, k, n, rows=self.R, cols=self.C, transposed=transposed, wide=wide,
                                    interleave=f["interleave"])
        return bf16_from_bits(w16) if bf16 else w16.view(np.int16).astype(np.int8)

    def _params(self, f, n):
        """(bias bits uint32, multiplier uint32, shift uint8), each [n], of a MATMUL (zeros
        when it reads no parameters)."""
        if not ml.needs_params(has_bias=f["has_bias"], out_fmt=f["out_fmt"]):
            return np.zeros(n, np.uint32), np.zeros(n, np.uint32), np.zeros(n, np.uint8)
        C, rec = self.C, ml.param_beat_bytes(self.C, self.bus)
        nt = _ceil(n, C)
        raw = np.frombuffer(self.read_ext(f["p_addr"], nt * rec), np.uint8).reshape(nt, rec)
        bias = raw[:, :4 * C].copy().view("<u4").reshape(-1)[:n]
        mult = raw[:, 4 * C:8 * C].copy().view("<u4").reshape(-1)[:n]
        shift = raw[:, 8 * C:9 * C].reshape(-1)[:n]
        return bias.astype(np.uint32), mult.astype(np.uint32), shift.astype(np.uint8)

    # -- VECTOR ---------------------------------------------------------------------------------
    def _vector(self, f):
        op, dtype, rows, length = f["op"], f["dtype"], f["rows"], f["length"]
        if (not rows or not 1 <= length <= self.vector_max_len or op not in CHIP_OPS or f["flags"] & 2
                or (op == VectorOp.QUANT_TOKEN and dtype == Dtype.INT8)):
            raise UndefinedError("a VECTOR field check fails (BAD_FIELD)")
        status = command_status(op=op, dtype=dtype, length=length, rows=rows, head_dim=f["head_dim"],
                                shift=f["shift"], imm0=f["imm0"], imm1=f["imm1"], lanes=self.lanes,
                                max_len=self.vector_max_len, flags=f["flags"])
        if status == VectorStatus.BAD_SCALE:
            raise _Stop(ChipError.VECTOR, status)                       # nothing written
        if status != VectorStatus.OK:
            raise UndefinedError(f"a VECTOR field check fails (the unit would answer {status.name})")
        op = VectorOp(op)
        words = stream_words(op, length=length, lanes=self.lanes, flags=f["flags"])
        self._no_overwrite(isa.Opcode.VECTOR, f, in_place=(f["o_addr"], f["o_stride"]) == (f["a_addr"], f["a_stride"]))
        a = self._rows(f["a_addr"], f["a_stride"], rows, length)
        b = self._rows(f["b_addr"], f["b_stride"], rows, length) if words["b"] else None
        s_in = (_sext(self._rows(f["s_in_addr"], 1, rows, 1)[:, 0], 32) if words["s_in"] else None)
        o, s_out = self._vector_op(op, dtype, f, a, b, s_in)
        self._write_rows(f["o_addr"], f["o_stride"], o)
        if s_out is not None:
            self._write_rows(f["s_out_addr"], 1, (np.asarray(s_out, np.int64) & 0xFFFFFFFF)[:, None])

    def _vector_op(self, op, dtype, f, a, b, s_in):
        """The result lanes [rows, length] (uint32) and QUANT_TOKEN's row exponents."""
        rows, length = a.shape
        bf16 = lambda x: bf16_from_bits((x & 0xFFFF).astype(np.uint16))           # noqa: E731
        fp32 = lambda x: fp32_from_bits(x.astype(np.uint32)).reshape(x.shape)     # noqa: E731
        to_bf16 = lambda x: bf16_from_bits(fp32_to_bf16(x.astype(np.uint32)))     # noqa: E731 (INT8 flavour)
        bits16 = lambda y: as_bf16_bits(y).astype(np.uint32).reshape(rows, length)  # noqa: E731
        int_lanes = lambda y: (np.asarray(y).astype(np.int64) & 0xFFFFFFFF).astype(np.uint32)  # noqa: E731
        if op == VectorOp.ADD:
            if dtype == Dtype.BF16:
                return bits16(residual_add_bf16(bf16(a), bf16(b))), None
            return fp32_add(a, b).reshape(rows, length), None
        if op == VectorOp.SWIGLU:
            g, u = (bf16(a), bf16(b)) if dtype == Dtype.BF16 else (to_bf16(a), to_bf16(b))
            return bits16(swiglu_bf16(g, u)), None
        if op == VectorOp.RMSNORM:
            if f["imm1"] != int(as_fp32_bits(np.float32(1.0 / length))):
                raise UndefinedError("RMSNORM's imm1 is not fp32(1/length), the constant golden uses")
            gain = bf16(self._rows(f["p_addr"], f["p_stride"], rows, length))
            xin = bf16(a) if dtype == Dtype.BF16 else to_bf16(a)
            eps = float(fp32_from_bits(np.uint32(f["imm0"])))
            return bits16(np.stack([rmsnorm_bf16(xin[r], gain[r], eps=eps) for r in range(rows)])), None
        if op == VectorOp.ROPE:
            hd = f["head_dim"]
            cs = self._rows(f["p_addr"], f["p_stride"], rows, hd // 2)          # cos | sin << 16 per row
            cos16, sin16 = (cs & 0xFFFF).astype(np.uint16), (cs >> 16).astype(np.uint16)
            table = RopeTable(head_dim=hd, base=0.0, cos_q=cos16.view(np.int16), sin_q=sin16.view(np.int16),
                              cos_bf16=bf16_from_bits(cos16), sin_bf16=bf16_from_bits(sin16))
            pos = np.arange(rows)[:, None]                                       # row r: table row r
            if dtype == Dtype.BF16:
                y = rope_bf16(bf16(a).reshape(rows, -1, hd), pos, table)
                return bits16(y), None
            xi = _sext(a, 32)
            if xi.min(initial=0) < -128 or xi.max(initial=0) > 127:
                raise UndefinedError("an int8 ROPE lane is not a sign-extended int8")
            y = rope_int8(xi.astype(np.int8).reshape(rows, -1, hd), pos, table, multiplier=f["imm0"],
                          shift=f["shift"])
            return int_lanes(y.reshape(rows, length)), None
        if op in (VectorOp.DEQUANT, VectorOp.REQUANT):
            acc = _sext(a, 32).astype(np.int32)
            mult = self._rows(f["p_addr"], f["p_stride"], rows, length).astype(np.int64)
            shift = b.astype(np.int64)
            if shift.max(initial=0) > 63 or mult.max(initial=0) >> 31:
                raise UndefinedError("a per-channel shift above 63 or multiplier of 2**31 or more")
            if op == VectorOp.DEQUANT:
                e = s_in if f["flags"] & VectorFlag.ROW_EXP else np.zeros(rows, np.int64)
                y = np.stack([dequantize_acc(acc[r:r + 1], mult[r], shift[r], e[r:r + 1])[0] for r in range(rows)])
                return as_fp32_bits(y).reshape(rows, length), None
            y = np.stack([requantize(acc[r], mult[r], np.clip(shift[r] - s_in[r], 1, 62)) for r in range(rows)])
            return int_lanes(y), None
        if op == VectorOp.QUANT_STATIC:
            xin = bf16(a) if dtype == Dtype.BF16 else fp32(a)
            scale = 1.0 / float(fp32_from_bits(np.uint32(f["imm0"])))
            try:
                return int_lanes(quantize_static(xin, scale)), None
            except ValueError as exc:
                raise UndefinedError(f"QUANT_STATIC: {exc} (the unit saturates)") from None
        try:
            q, e = quantize_per_token(bf16(a))
        except ValueError as exc:
            raise UndefinedError(f"QUANT_TOKEN: {exc} (the unit saturates)") from None
        return int_lanes(q), e

    # -- SOFTMAX --------------------------------------------------------------------------------
    def _softmax(self, f):
        rows, length = f["rows"], f["length"]
        if not rows or not 1 <= length <= self.softmax_max_len:
            raise UndefinedError("a SOFTMAX field check fails (BAD_FIELD)")
        self._no_overwrite(isa.Opcode.SOFTMAX, f)
        s = self._rows(f["a_addr"], f["a_stride"], rows, length)
        valid = min(f["valid_len"], length)
        causal = np.minimum(f["causal_pos0"] + np.arange(rows), length - 1) if f["causal"] else None
        if f["dtype"] == Dtype.INT8:
            p = softmax_int8(s.view(np.int32), (f["scale"] & 0xFFFF, f["shift"]), valid, causal).astype(np.uint32)
        else:
            p = softmax_bf16_bits(s, np.uint32(f["scale"]), valid, causal).astype(np.uint32)
        self._write_rows(f["o_addr"], f["o_stride"], p)

    # -- KV -------------------------------------------------------------------------------------
    def _kv(self, f):
        op = f["op"]
        if op not in (KVOp.ALLOC, KVOp.APPEND, KVOp.FREE) or (op == KVOp.APPEND and not 1 <= f["rows"]
                                                               <= self.cache.max_length):
            raise UndefinedError("a KV field check fails (BAD_FIELD)")
        fields = {n: f[n] for n in ("op", "seq", "rows", "k_addr", "k_stride", "v_addr", "v_stride")}
        try:
            res = kvunit.execute(self.cache, self.spad, **fields)
        except ValueError as exc:
            raise UndefinedError(str(exc)) from None
        if res.status != KVStatus.OK:
            raise _Stop(ChipError.KV, res.status)


# ------------------------------------------------------------------------------------------------
# What an instruction touches, and the races of a program

@dataclass(frozen=True)
class Footprint:
    """What one instruction reads and writes: sets of ``("spad", word)``, ``("ext", byte)`` and
    ``("kv", seq)``; ``prefetch``: external bytes read ahead of the waits (MATMUL weights and
    parameters), which no STORE of the program may write."""
    reads: frozenset
    writes: frozenset
    prefetch: frozenset = frozenset()


def _spad_words(addr, stride, rows, words):
    return {("spad", addr + r * stride + i) for r in range(rows) for i in range(words)}


def footprint(config, word):
    """The :class:`Footprint` of one encoded instruction on a chip of ``config``."""
    opcode, f = isa.decode(int(word))
    L, bus = config.memory.spad_lanes, config.memory.axi_data_bits // 8
    R, C = config.array.rows, config.array.cols
    reads, writes, pre = set(), set(), set()
    if opcode in (isa.Opcode.LOAD, isa.Opcode.STORE):
        nbytes = f["elems"] << f["elem_bytes"]
        ext = {("ext", f["ext_addr"] + r * f["ext_stride"] + i) for r in range(f["rows"]) for i in range(nbytes)}
        spad = _spad_words(f["spad_addr"], f["spad_stride"], f["rows"], _ceil(f["elems"], L))
        reads, writes = (ext, spad) if opcode == isa.Opcode.LOAD else (spad, ext)
    elif opcode == isa.Opcode.MATMUL:
        reads = _spad_words(f["a_addr"], f["a_stride"], f["m"], _ceil(f["k"], R))
        writes = _spad_words(f["o_addr"], f["o_stride"], f["m"], _ceil(f["n"], C))
        src = isa.WSource(f["w_src"])
        if src in (isa.WSource.KV_K, isa.WSource.KV_V):
            reads.add(("kv", f["kv_seq"]))
        else:
            nb = ml.weight_bytes(f["k"], f["n"], rows=R, cols=C, bus_bytes=bus, bf16=bool(f["dtype"]),
                                 transposed=src == isa.WSource.EXT_T, wide=bool(f["w_wide"]))
            pre |= {("ext", f["w_addr"] + i) for i in range(nb)}
        if ml.needs_params(has_bias=f["has_bias"], out_fmt=f["out_fmt"]):
            pre |= {("ext", f["p_addr"] + i) for i in range(ml.param_bytes(f["n"], cols=C, bus_bytes=bus))}
        reads |= pre
    elif opcode == isa.Opcode.VECTOR:
        rows, B = f["rows"], _ceil(f["length"], L)
        w = stream_words(f["op"], length=f["length"], lanes=L, flags=f["flags"])
        reads = _spad_words(f["a_addr"], f["a_stride"], rows, B) | _vector_operand_reads(f, L)
        writes = _spad_words(f["o_addr"], f["o_stride"], rows, B)
        if w["s_out"]:
            writes |= _spad_words(f["s_out_addr"], 1, rows, 1)
    elif opcode == isa.Opcode.SOFTMAX:
        B = _ceil(f["length"], L)
        reads = _spad_words(f["a_addr"], f["a_stride"], f["rows"], B)
        writes = _spad_words(f["o_addr"], f["o_stride"], f["rows"], B)
    elif opcode == isa.Opcode.KV:
        writes = {("kv", f["seq"])}
        if f["op"] == KVOp.APPEND:
            n = config.kvcache.heads * config.kvcache.head_dim // L
            reads = (_spad_words(f["k_addr"], f["k_stride"], f["rows"], n)
                     | _spad_words(f["v_addr"], f["v_stride"], f["rows"], n))
    return Footprint(frozenset(reads), frozenset(writes), frozenset(pre))


def _vector_operand_reads(f, lanes):
    """The scratchpad words a VECTOR instruction's b, p and s_in streams read (not a's)."""
    rows, B = f["rows"], _ceil(f["length"], lanes)
    w = stream_words(f["op"], length=f["length"], lanes=lanes, flags=f["flags"])
    reads = set()
    if w["b"]:
        reads |= _spad_words(f["b_addr"], f["b_stride"], rows, B)
    if w["p"]:
        reads |= _spad_words(f["p_addr"], f["p_stride"], rows, w["p"])
    if w["s_in"]:
        reads |= _spad_words(f["s_in_addr"], 1, rows, 1)
    return reads


def races(config, words):
    """The races of a program (up to its END): a list of ``(i, j, what)`` for instructions
    i < j of different units that touch the same scratchpad word, external byte or KV sequence,
    one of them writing, with j not waiting (directly or through other instructions) for i; and
    ``(i, j, ...)`` for a STORE j writing bytes MATMUL i reads ahead as weights or parameters.
    The chip ends in :class:`ChipModel`'s state for a program without races."""
    instrs = []
    for word in words:
        opcode, f = isa.decode(int(word))
        if opcode == isa.Opcode.END:
            break
        instrs.append((isa.UNIT_OF[opcode], f, footprint(config, word)))
    # known[j][u]: instructions of unit u that have retired whenever instruction j starts
    known, rank, last_of = [], [], {}
    count = dict.fromkeys(U, 0)
    for unit, f, _ in instrs:
        seen = dict.fromkeys(U, 0)
        deps = [(unit, count[unit])] + [(u, f[f"wait_{u.name.lower()}"]) for u in U if f["wait_mask"] >> u & 1]
        for u, n in deps:
            if n and (u, n) in last_of:            # (not there: BAD_WAIT, the program stops)
                j = last_of[(u, n)]
                for v in U:
                    seen[v] = max(seen[v], known[j][v])
                seen[u] = max(seen[u], n)
        count[unit] += 1
        rank.append(count[unit])
        last_of[(unit, count[unit])] = len(known)
        known.append(seen)
    out = []
    stores = [(j, fp.writes) for j, (u, _, fp) in enumerate(instrs) if u == U.STORE]
    for i, (ui, _, fi) in enumerate(instrs):
        for j, w in stores:
            if fi.prefetch & w:
                out.append((i, j, "a STORE writes bytes a MATMUL reads ahead as weights or parameters"))
        for j in range(i + 1, len(instrs)):
            uj, _, fj = instrs[j]
            if uj == ui or known[j][ui] >= rank[i]:
                continue
            both = (fi.writes & (fj.reads | fj.writes)) | (fi.reads & fj.writes)
            if both:
                out.append((i, j, f"{ui.name} {i} and {uj.name} {j} both touch {sorted(both)[0]} unordered"))
    return out
