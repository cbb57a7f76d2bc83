"""MATMUL programs for the chip (:class:`sim.chip_api.ChipSim`): :class:`MatmulProgram` lays out
operands in external memory (weights and parameters with :mod:`spec.matmul_layout`), places
tensors in the scratchpad and writes the instructions: LOAD A, MATMUL, STORE the result, with
the waits that order them, and decodes what a run stored.

    prog = MatmulProgram(config)
    a_at = prog.load(a)                                    # LOAD: A into the scratchpad
    o_at = prog.matmul(a_at, w, out="int8", requant=(m, s), wait={"load": prog.count("load")})
    prog.store(o_at, "y", wait={"matmul": prog.count("matmul")})
    res = sim.run(prog.memory, prog.program(), read_back=prog.read_back)
    y = prog.result(res, "y")
"""

import numpy as np

import golden
from hdl.config import get_config
from spec import isa
from spec import matmul_layout as ml
from spec.codes import Dtype, OutFormat

from .chip_api import Program

__all__ = ["MatmulProgram", "OUT_FORMATS", "matmul_expected"]

#: out name → (OutFormat, bytes per element in external memory, numpy dtype of the stored value)
OUT_FORMATS = {"int32": (OutFormat.INT32, 4, "<i4"), "int8": (OutFormat.INT8, 1, "i1"),
               "fp32": (OutFormat.FP32, 4, "<u4"), "bf16": (OutFormat.BF16, 2, "<u2")}
_W_SOURCES = {"rows": isa.WSource.EXT, "wide": isa.WSource.EXT, "transposed": isa.WSource.EXT_T}


class _Tensor:
    """A matrix in the scratchpad: ``addr``, ``stride`` (words), ``rows``, ``cols``, ``dtype``."""

    def __init__(self, addr, stride, rows, cols, dtype):
        self.addr, self.stride, self.rows, self.cols, self.dtype = addr, stride, rows, cols, dtype


class MatmulProgram:
    """A program of LOAD / MATMUL / STORE instructions and its external-memory image.

    Parameters
    ----------
    config : str or ChipConfig
    ext_base : int
        First external byte address for data (the program goes below it, at 0).
    """

    def __init__(self, config, *, ext_base=0x10000):
        self.config = cfg = get_config(config)
        self.L = cfg.memory.spad_lanes
        self.bus = cfg.memory.axi_data_bits // 8
        self.memory = {}
        self.read_back = []
        self._instrs = []
        self._counts = {u: 0 for u in isa.Unit}
        self._ext = ext_base
        self._spad = 0
        self._outs = {}

    # -- placement ------------------------------------------------------------------------------
    def ext_alloc(self, nbytes, data=None):
        """External bytes, aligned to 64 (the bus width divides it); ``data`` written there."""
        addr = self._ext
        self._ext += -(-max(nbytes, 1) // 64) * 64
        if data is not None:
            self.memory[addr] = bytes(data)
        return addr

    def spad_alloc(self, words):
        addr = self._spad
        self._spad += words
        if self._spad > self.config.memory.spad_words * self.config.memory.spad_banks:
            raise ValueError("the scratchpad is full")
        return addr

    def count(self, unit):
        """Instructions of ``unit`` (a name or isa.Unit) written so far."""
        return self._counts[isa.Unit[unit.upper()] if isinstance(unit, str) else unit]

    def raw(self, opcode, *, wait=None, **fields):
        """Any instruction (``spec.isa.encode``); its index in the program."""
        self._instrs.append(isa.encode(opcode, wait=wait, **fields))
        self._counts[isa.UNIT_OF[opcode]] += 1
        return len(self._instrs) - 1

    # -- instructions ---------------------------------------------------------------------------
    def load(self, x, *, wait=None):
        """LOAD the rows of ``x`` (int8, uint8, bf16) into the scratchpad; its :class:`_Tensor`."""
        x = np.ascontiguousarray(x)
        rows, cols = x.shape
        eb = x.dtype.itemsize
        stride_b = -(-cols * eb // self.bus) * self.bus
        img = np.zeros((rows, stride_b), np.uint8)
        img[:, :cols * eb] = x.view(np.uint8).reshape(rows, cols * eb)
        ext = self.ext_alloc(img.size, img.tobytes())
        words = -(-cols // self.L)
        t = _Tensor(self.spad_alloc(rows * words), words, rows, cols, x.dtype)
        self.raw(isa.Opcode.LOAD, wait=wait, ext_addr=ext, ext_stride=stride_b, spad_addr=t.addr, spad_stride=words,
                   rows=rows, elems=cols, elem_bytes=isa.ElemBytes.B1 if eb == 1 else isa.ElemBytes.B2,
                   signed=int(x.dtype == np.int8))
        return t

    def matmul(self, a, w, *, out=None, bias=None, requant=None, w_format="rows", wait=None, o=None,
               w_addr=None, p_addr=None, interleave=0):
        """MATMUL ``a`` (a scratchpad :class:`_Tensor`) by ``w`` [K, N] (int8 or bf16) from
        external memory in ``w_format`` ("rows", "wide", "transposed"); ``out`` one of
        :data:`OUT_FORMATS` (default int32 / fp32); ``bias`` int32 / float32 [N]; ``requant``
        (multiplier, shift) for int8. ``o``: the result's tensor (default: newly placed);
        ``w_addr``/``p_addr``: reuse weights/parameters already in memory (packed with the same
        ``interleave``); ``interleave``: the field (G − 1), the weights in its tile order. Returns the result's
        :class:`_Tensor` (its ``index`` is the instruction's)."""
        bf16 = w.dtype != np.int8
        out = out or ("fp32" if bf16 else "int32")
        fmt, _, _ = OUT_FORMATS[out]
        K, N = w.shape
        C = self.L
        if w_addr is None:
            data = ml.pack_weights(w, rows=C, cols=C, bus_bytes=self.bus, transposed=w_format == "transposed",
                                   wide=w_format == "wide", interleave=interleave)
            w_addr = self.ext_alloc(len(data), data)
        need_p = ml.needs_params(has_bias=bias is not None, out_fmt=fmt)
        if need_p and p_addr is None:
            mult, shift = requant if requant is not None else (None, None)
            data = ml.pack_params(N, cols=C, bus_bytes=self.bus, bias=bias, multiplier=mult, shift=shift)
            p_addr = self.ext_alloc(len(data), data)
        words = -(-N // C)
        if o is None:
            o = _Tensor(self.spad_alloc(a.rows * words), words, a.rows, N, out)
        index = self.raw(isa.Opcode.MATMUL, wait=wait, m=a.rows, k=K, n=N, dtype=Dtype.BF16 if bf16 else Dtype.INT8,
                           out_fmt=fmt, a_unsigned=int(a.dtype == np.uint8), has_bias=int(bias is not None),
                           w_src=_W_SOURCES[w_format], w_wide=int(w_format == "wide"), a_addr=a.addr,
                           a_stride=a.stride, o_addr=o.addr, o_stride=o.stride, w_addr=w_addr, p_addr=p_addr or 0,
                           interleave=interleave)
        o.index, o.w_addr, o.p_addr = index, w_addr, p_addr
        return o

    def store(self, t, name, *, wait=None):
        """STORE tensor ``t`` (a MATMUL result) to external memory as ``name`` (read back)."""
        _, eb, _ = OUT_FORMATS[t.dtype]
        stride_b = -(-t.cols * eb // self.bus) * self.bus
        ext = self.ext_alloc(t.rows * stride_b, bytes(t.rows * stride_b))
        self.raw(isa.Opcode.STORE, wait=wait, ext_addr=ext, ext_stride=stride_b, spad_addr=t.addr, spad_stride=t.stride,
                   rows=t.rows, elems=t.cols, elem_bytes={1: isa.ElemBytes.B1, 2: isa.ElemBytes.B2,
                                                          4: isa.ElemBytes.B4}[eb])
        self.read_back.append((name, ext, t.rows * stride_b))
        self._outs[name] = (t, stride_b)

    def program(self, *, end=True):
        """The :class:`~sim.chip_api.Program` (at address 0), with END."""
        words = self._instrs + ([isa.encode(isa.Opcode.END)] if end else [])
        if len(words) * isa.INSTR_BYTES > min(self.memory, default=1 << 30):
            raise ValueError("the program overlaps the data: raise ext_base")
        return Program(words, addr=0)

    def result(self, res, name):
        """What STORE ``name`` wrote: int32, int8, fp32 bits (uint32) or bf16 bits (uint16) [M, N]."""
        t, stride_b = self._outs[name]
        _, eb, dt = OUT_FORMATS[t.dtype]
        raw = res.outputs[name].reshape(t.rows, stride_b)[:, :t.cols * eb]
        return np.ascontiguousarray(raw).view(dt).reshape(t.rows, t.cols)


def matmul_expected(a, w, bias, requant, out):
    """What a MATMUL of ``a``·``w`` (+ ``bias``) leaves for STORE in output format ``out``
    (``"int32"``, ``"int8"`` with ``requant`` = (multipliers, shifts), ``"fp32"`` or ``"bf16"``):
    int32 values, int8 values, fp32 bits or bf16 bits, from golden."""
    if out in ("int32", "int8"):
        acc = golden.matmul_int8(a, w, bias)
        return acc if out == "int32" else golden.requantize(acc, *requant)
    bits = golden.as_fp32_bits(golden.matmul_bf16(a, w, bias))
    return bits if out == "fp32" else golden.fp32_to_bf16(bits)
