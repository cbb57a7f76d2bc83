"""A decoder layer on the chip: its image in external memory and the program of one step.

:class:`LayerImage` lays out one ``golden.DecoderLayer``'s weights (fused Q|K|V and gate|up
projections), per-channel parameters, norm gains and RoPE table in external memory, in the
formats the units read (:mod:`spec.matmul_layout`, docs/chip.md). :func:`compile_step` lowers
one *step* — new tokens of one or more sequences, prefill or decode, processed together — into a
program: the projections see all the step's rows at once (M = rows of every sequence), each
sequence's attention reads only its own KV-cache pages. The program's dependencies come from
:class:`compiler.asm.Asm`; :meth:`Step.dump` shows them with the expected cycle of each
instruction.

The data flow of one step (docs/layer.md), int8 mode::

    LOAD x (fp32)                                   rows of all sequences, in batch order
    VECTOR RMSNORM x → h (bf16); QUANT_TOKEN h → hq (int8), e (per-row exponent)
    MATMUL hq · [Wq|Wk|Wv] → qkv (int32); VECTOR REQUANT qkv, e → qkv (int8, per-channel scales)
    per sequence: VECTOR ROPE q|k (the sequence's positions); KV APPEND k, v
    per sequence, per head: MATMUL q_h · K_gᵀ (KV_K) → s; SOFTMAX s → p (uint8, causal);
                            MATMUL p · V_g (KV_V, out INT8) → o[:, head]
    MATMUL o · Wo → a (int32); VECTOR DEQUANT a → fp32; VECTOR ADD x + a → x
    VECTOR RMSNORM x → h2; QUANT_TOKEN → h2q, e2; MATMUL h2q · [Wgate|Wup] → gu (int32)
    VECTOR DEQUANT gate, up (e2); SWIGLU gate, up → act (bf16); QUANT_TOKEN act → actq, e3
    MATMUL actq · Wdown → d (int32); VECTOR DEQUANT d, e3 → fp32; VECTOR ADD x + d → y
    STORE y

bf16 mode is the same without the quantization steps: every matmul writes bf16 (scores fp32),
the residual stream is bf16.
"""

from dataclasses import dataclass, field

import ml_dtypes
import numpy as np

from spec import isa
from spec import matmul_layout as ml
from spec.codes import Dtype, KVOp, OutFormat
from spec.vector import VectorFlag, VectorOp

from .asm import Asm, ext, kv, spad
from .timing import TimingModel

__all__ = ["LayerImage", "Request", "Step", "compile_step", "compile_free", "CompileError"]

_BF16 = np.dtype(ml_dtypes.bfloat16)
_ALIGN = 64


class CompileError(ValueError):
    """A request the chip configuration cannot hold (the message names the limit)."""


def _ceil(a, b):
    return -(-int(a) // int(b))


def _align(x, a=_ALIGN):
    return _ceil(x, a) * a


def _f32_bits(x):
    return int(np.float32(x).view(np.uint32))


class _ExtAlloc:
    """A bump allocator of external memory."""

    def __init__(self, base):
        self.next = _align(base)
        self.segments = {}

    def put(self, data):
        data = bytes(data)
        addr = self.next
        self.segments[addr] = data
        self.next = _align(addr + max(len(data), 1))
        return addr


class LayerImage:
    """One layer's weights, parameters and tables in external memory.

    Parameters
    ----------
    layer : golden.DecoderLayer
        In ``"int8"`` or ``"bf16"`` mode.
    config : hdl.config.ChipConfig
    base : int
        First external byte address the image may use.
    max_pos : int
        Positions the RoPE table covers (the longest sequence the image serves).

    Attributes
    ----------
    segments : dict of int → bytes
        The image (address → contents).
    end : int
        First address after it.
    """

    def __init__(self, layer, config, *, base, max_pos):
        hw = layer.hardware_params()
        self.hw, self.config, self.mode = hw, config, layer.mode
        lc = layer.config
        self.lc = lc
        L = config.memory.spad_lanes
        if config.array.rows != L or config.array.cols != L:
            raise CompileError("the chip needs array.rows == array.cols == memory.spad_lanes")
        if lc.head_dim % L or lc.d_model % L or lc.d_ff % L:
            raise CompileError(f"head_dim, d_model and d_ff must be multiples of memory.spad_lanes ({L})")
        if lc.n_kv_heads != config.kvcache.heads or lc.head_dim != config.kvcache.head_dim:
            raise CompileError(f"the KV cache holds {config.kvcache.heads} heads of {config.kvcache.head_dim}, "
                               f"the layer has {lc.n_kv_heads} of {lc.head_dim}")
        if config.kvcache.dtype != ("int8" if layer.mode == "int8" else "bf16"):
            raise CompileError(f"kvcache.dtype {config.kvcache.dtype!r} does not match the layer's {layer.mode} mode")
        if max_pos > config.kvcache.max_tokens:
            raise CompileError(f"max_pos {max_pos} exceeds the KV cache ({config.kvcache.max_tokens} tokens)")
        self.max_pos = max_pos
        self.bus = config.memory.axi_data_bits // 8
        a = _ExtAlloc(base)
        from hdl.matmul import MatmulEngine
        #: the matmul engine's accumulator rows: G·m ≤ acc_depth for every MATMUL
        self.acc_depth = MatmulEngine.buffer_sizes(config)[0]
        # each projection's weights (int8: the wide format, two W rows per beat of 2·C bytes, so
        # that one beat per cycle fills the AXI port) in the tile order of the interleave (G − 1)
        # that keeps the weight port busy at M = 1 (decode); larger M is split into MATMULs of
        # acc_depth // G rows
        self.wide = layer.mode == "int8"
        self.w, self.interleave = {}, {}
        for name, w in hw.weights.items():
            k, n = w.shape
            il = MatmulEngine.interleave_for(config, 1, k, n, bf16=not self.wide,
                                             tile_beats=-(-L // 2) if self.wide else L)
            self.interleave[name] = il
            self.w[name] = a.put(ml.pack_weights(w, rows=L, cols=L, bus_bytes=self.bus, wide=self.wide,
                                                 interleave=il))
        self.params = {}
        if layer.mode == "int8":
            m, s = hw.pv
            self.params["pv"] = a.put(ml.pack_params(lc.head_dim, cols=L, bus_bytes=self.bus,
                                                     multiplier=np.full(lc.head_dim, m), shift=np.full(lc.head_dim, s)))
        self.tables = {}
        # per-channel tables in scratchpad layout (one 32-bit lane per element) for a LOAD of B4
        for name, (mult, shift) in hw.channel_scales.items():
            self.tables[name + "_m"] = a.put(np.asarray(mult, np.uint32).tobytes())
            self.tables[name + "_s"] = a.put(np.asarray(shift, np.uint32).tobytes())
        for name, g in hw.gains.items():
            self.tables[name] = a.put(np.asarray(g, _BF16).view(np.uint16).tobytes())
        hd2 = lc.head_dim // 2
        if layer.mode == "int8":
            cos, sin = hw.rope.cos_q[:max_pos], hw.rope.sin_q[:max_pos]
        else:
            cos, sin = hw.rope.cos_bf16[:max_pos], hw.rope.sin_bf16[:max_pos]
        if len(cos) < max_pos:
            raise CompileError(f"the layer's RoPE table holds {len(cos)} positions (DecoderLayer max_tokens), "
                               f"the image needs max_pos {max_pos}")
        lanes = (np.asarray(cos).view(np.uint16).astype(np.uint32)
                 | (np.asarray(sin).view(np.uint16).astype(np.uint32) << 16))
        self.rope_row_bytes = _align(hd2 * 4, self.bus)
        rows = np.zeros((max_pos, self.rope_row_bytes // 4), np.uint32)
        rows[:, :hd2] = lanes.reshape(max_pos, hd2)
        self.tables["rope"] = a.put(rows.tobytes())
        self.segments = a.segments
        self.end = a.next


@dataclass
class Request:
    """The new tokens of one sequence in a step.

    ``x``: hidden states ``(S, d_model)`` of the layer's io dtype; ``pos0``: tokens the sequence
    already has in the cache; ``alloc``: the sequence is new (ALLOC it first); ``free``: FREE it
    after this step (its last)."""
    seq: int
    x: np.ndarray
    pos0: int = 0
    alloc: bool = False
    free: bool = False


@dataclass
class Step:
    """A compiled step: the program, the data it needs in external memory and where its result
    lands."""
    asm: Asm
    program_words: list
    prog_addr: int
    segments: dict                      #: x rows (address → bytes)
    y_addr: int
    y_stride: int
    rows: int
    out_dtype: np.dtype
    spans: list = field(default_factory=list)   #: (seq, first row, rows) of each request
    appends: list = field(default_factory=list)  #: (instruction index, seq) of each KV APPEND, in order

    def dump(self):
        return self.asm.dump()

    def output(self, data):
        """The step's result rows (``(rows, d_model)`` of the io dtype) from the bytes read back
        at ``y_addr``."""
        d = self._d
        buf = np.frombuffer(bytes(data), np.uint8).reshape(self.rows, self.y_stride)
        eb = self.out_dtype.itemsize
        return buf[:, :d * eb].copy().view(self.out_dtype).reshape(self.rows, d)


def compile_free(config, seqs):
    """The program that FREEs the sequences ``seqs`` (KV FREE each, END): encoded words."""
    asm = Asm(TimingModel(config))
    if not seqs:
        raise CompileError("compile_free needs at least one sequence")
    for seq in seqs:
        asm.emit(isa.Opcode.KV, writes=[kv(seq)], comment=f"free seq {seq}", op=KVOp.FREE, seq=int(seq))
    asm.end()
    return asm.encode()


class _Spad:
    """A bump allocator of scratchpad words; tensors are matrices of rows × words. :meth:`release`
    gives back everything allocated after a :meth:`mark` (the program's dependencies, derived
    from the spans each instruction reads and writes, order the reuse)."""

    def __init__(self, words):
        self.total, self.next = words, 0

    def mark(self):
        return self.next

    def release(self, mark):
        self.next = mark

    def alloc(self, name, rows, words_per_row):
        addr = self.next
        self.next += rows * words_per_row
        if self.next > self.total:
            raise CompileError(f"the step needs more than the scratchpad's {self.total} words "
                               f"(at {name}): fewer tokens per step, or a configuration with a larger "
                               f"memory.spad_words")
        return addr


def compile_step(image, requests, *, x_addr, y_addr, prog_addr):
    """The program of one step of ``image``'s layer over ``requests`` (a list of
    :class:`Request`), its x rows at ``x_addr`` and its y rows at ``y_addr``.

    Raises :class:`CompileError` when the step does not fit the configuration (scratchpad, KV
    cache, RoPE table, rows of a softmax).
    """
    return _StepCompiler(image, requests, x_addr, y_addr, prog_addr).build()


class _StepCompiler:
    def __init__(self, image, requests, x_addr, y_addr, prog_addr):
        self.im, self.cfg, self.lc = image, image.config, image.lc
        self.reqs = list(requests)
        if not self.reqs:
            raise CompileError("a step needs at least one request")
        self.int8 = image.mode == "int8"
        self.L = self.cfg.memory.spad_lanes
        self.bus = image.bus
        self.x_addr, self.y_addr, self.prog_addr = x_addr, y_addr, prog_addr
        self.asm = Asm(TimingModel(self.cfg))
        self.M = sum(r.x.shape[0] for r in self.reqs)
        self._check()

    # -- checks ---------------------------------------------------------------------------------
    def _check(self):
        c, lc = self.cfg, self.lc
        seqs = [r.seq for r in self.reqs]
        if len(set(seqs)) != len(seqs):
            raise CompileError("a sequence appears twice in one step")
        if len(self.reqs) > c.kvcache.max_seqs:
            raise CompileError(f"{len(self.reqs)} sequences in one step: the KV cache tracks {c.kvcache.max_seqs}")
        for r in self.reqs:
            if r.x.ndim != 2 or r.x.shape[1] != lc.d_model or r.x.shape[0] < 1:
                raise CompileError(f"sequence {r.seq}: x must be (S ≥ 1, {lc.d_model}), not {r.x.shape}")
            end = r.pos0 + r.x.shape[0]
            if end > self.im.max_pos:
                raise CompileError(f"sequence {r.seq} would reach position {end}: the image's RoPE table "
                                   f"holds {self.im.max_pos}")
            if end > c.softmax.max_len:
                raise CompileError(f"sequence {r.seq} would attend to {end} keys: the softmax unit takes "
                                   f"{c.softmax.max_len}")
        longest = max(lc.d_model + 2 * lc.kv_dim, lc.d_ff)
        if longest > c.vector.max_len:
            raise CompileError(f"rows of {longest} elements (d_model + 2·kv_dim, d_ff): the vector unit takes "
                               f"{c.vector.max_len} (vector.max_len)")
        if self.M > 65535:
            raise CompileError(f"{self.M} rows in one step: at most 65535")

    # -- helpers --------------------------------------------------------------------------------
    def w(self, n):
        return _ceil(n, self.L)

    def emit(self, opcode, **kw):
        return self.asm.emit(opcode, **kw)

    def vector(self, op, *, rows, length, a, o, dtype, b=None, p=None, p_words=0, p_stride=0,
               s_in=None, s_out=None, comment="", **imm):
        """One VECTOR instruction over ``rows`` rows: a, b, o are (addr, stride) pairs."""
        words = self.w(length)
        reads = [spad(a[0], (rows - 1) * a[1] + words)]
        fields = dict(op=op, dtype=dtype, length=length, rows=rows, a_addr=a[0], a_stride=a[1],
                      o_addr=o[0], o_stride=o[1], **imm)
        if b is not None:
            reads.append(spad(b[0], (rows - 1) * b[1] + words))
            fields.update(b_addr=b[0], b_stride=b[1])
        if p is not None:
            # p_words: the words of one row's parameters (for the dependencies); the unit walks them
            reads.append(spad(p, (rows - 1) * p_stride + p_words))
            fields.update(p_addr=p, p_stride=p_stride)
        writes = [spad(o[0], (rows - 1) * o[1] + words)]
        if s_in is not None:
            reads.append(spad(s_in, rows))
            fields["s_in_addr"] = s_in
        if s_out is not None:
            writes.append(spad(s_out, rows))
            fields["s_out_addr"] = s_out
        return self.emit(isa.Opcode.VECTOR, reads=reads, writes=writes, comment=comment, **fields)

    def matmul(self, *, a, m, k, n, o, dtype, out_fmt, w=None, p=None, kv_src=None, a_unsigned=0, comment=""):
        """One MATMUL of ``m`` rows: ``w`` names the image's weights (their interleave; more rows
        than acc_depth // G are split into MATMULs of that many rows each, every one reading the
        weights), ``kv_src`` = (WSource, seq, KV head) reads the KV cache."""
        L = self.L
        if kv_src is None:
            il = self.im.interleave[w]
            most = self.im.acc_depth // (il + 1)
            if m > most:
                last = None
                for r0 in range(0, m, most):
                    rows = min(most, m - r0)
                    last = self.matmul(a=(a[0] + r0 * a[1], a[1]), m=rows, k=k, n=n, o=(o[0] + r0 * o[1], o[1]),
                                       dtype=dtype, out_fmt=out_fmt, w=w, p=p, a_unsigned=a_unsigned,
                                       comment=f"{comment} (rows {r0}..{r0 + rows - 1})")
                return last
        reads = [spad(a[0], (m - 1) * a[1] + self.w(k))]
        writes = [spad(o[0], (m - 1) * o[1] + self.w(n))]
        fields = dict(m=m, k=k, n=n, dtype=dtype, out_fmt=out_fmt, a_unsigned=a_unsigned, a_addr=a[0],
                      a_stride=a[1], o_addr=o[0], o_stride=o[1])
        if kv_src is None:
            wide = self.im.wide
            nbytes = ml.weight_bytes(k, n, rows=L, cols=L, bus_bytes=self.bus, bf16=dtype == Dtype.BF16, wide=wide)
            reads.append(ext(self.im.w[w], nbytes))
            fields.update(w_src=isa.WSource.EXT, w_addr=self.im.w[w], w_wide=int(wide), interleave=il)
        else:
            src, seq, head = kv_src
            reads.append(kv(seq))
            fields.update(w_src=src, kv_seq=seq, kv_head=head, kv_start=0)
        if p is not None:
            reads.append(ext(p, ml.param_bytes(n, cols=L, bus_bytes=self.bus)))
            fields["p_addr"] = p
        return self.emit(isa.Opcode.MATMUL, reads=reads, writes=writes, comment=comment, **fields)

    def load_table(self, name, elems, elem_bytes, rows=1, ext_stride=None, spad_addr=None, ext_addr=None):
        addr = self.im.tables[name] if ext_addr is None else ext_addr
        row_bytes = _align(elems * (1 << elem_bytes), self.bus)
        stride = row_bytes if ext_stride is None else ext_stride
        dst = self.sp.alloc(name, rows, self.w(elems)) if spad_addr is None else spad_addr
        self.emit(isa.Opcode.LOAD, reads=[ext(addr, (rows - 1) * stride + row_bytes)],
                  writes=[spad(dst, rows * self.w(elems))], comment=f"load {name}",
                  ext_addr=addr, ext_stride=stride, spad_addr=dst, spad_stride=self.w(elems), rows=rows,
                  elems=elems, elem_bytes=elem_bytes, signed=0)
        return dst

    # -- the program ----------------------------------------------------------------------------
    def build(self):
        c, lc, M = self.cfg, self.lc, self.M
        d, dff, hd, kvd = lc.d_model, lc.d_ff, lc.head_dim, lc.kv_dim
        self.sp = _Spad(c.memory.spad_words * c.memory.spad_banks)
        io = np.dtype(np.float32) if self.int8 else _BF16
        eb_io = isa.ElemBytes.B4 if self.int8 else isa.ElemBytes.B2
        dt = Dtype.INT8 if self.int8 else Dtype.BF16
        dw, qkvw = self.w(d), self.w(d + 2 * kvd)
        xs = _align(d * io.itemsize, self.bus)
        # KV bookkeeping first: new sequences
        for r in self.reqs:
            if r.alloc:
                self.emit(isa.Opcode.KV, writes=[kv(r.seq)], comment=f"alloc seq {r.seq}", op=KVOp.ALLOC, seq=r.seq)
        # tables
        g1 = self.load_table("attn_norm", d, isa.ElemBytes.B2)
        g2 = self.load_table("ffn_norm", d, isa.ElemBytes.B2)
        X = self.sp.alloc("x", M, dw)
        self.emit(isa.Opcode.LOAD, reads=[ext(self.x_addr, M * xs)], writes=[spad(X, M * dw)], comment="load x",
                  ext_addr=self.x_addr, ext_stride=xs, spad_addr=X, spad_stride=dw, rows=M, elems=d,
                  elem_bytes=eb_io, signed=0)
        eps, inv_d = _f32_bits(lc.rms_eps), _f32_bits(np.float32(1.0) / np.float32(d))
        H = self.sp.alloc("h", M, dw)
        A = self.sp.alloc("attn", M, dw)
        attention_region = self.sp.mark()
        self.vector(VectorOp.RMSNORM, rows=M, length=d, a=(X, dw), o=(H, dw), p=g1, p_words=dw, dtype=dt,
                    imm0=eps, imm1=inv_d, comment="rmsnorm x → h")
        QKV = self.sp.alloc("qkv", M, qkvw)
        if self.int8:
            E1 = self.sp.alloc("e1", M, 1)
            self.vector(VectorOp.QUANT_TOKEN, rows=M, length=d, a=(H, dw), o=(H, dw), s_out=E1, dtype=Dtype.BF16,
                        comment="quantize h per token")
            self.matmul(a=(H, dw), m=M, k=d, n=d + 2 * kvd, o=(QKV, qkvw), dtype=dt, out_fmt=OutFormat.INT32,
                        w="wqkv", comment="h · [Wq|Wk|Wv]")
            qm, qs = self._channel("qkv", d + 2 * kvd)
            self.vector(VectorOp.REQUANT, rows=M, length=d + 2 * kvd, a=(QKV, qkvw), o=(QKV, qkvw), b=(qs, 0),
                        p=qm, p_words=qkvw, s_in=E1, dtype=dt, comment="requantize q, k, v")
        else:
            self.matmul(a=(H, dw), m=M, k=d, n=d + 2 * kvd, o=(QKV, qkvw), dtype=dt, out_fmt=OutFormat.BF16,
                        w="wqkv", comment="h · [Wq|Wk|Wv]")
        # RoPE on q|k and the KV append, per sequence
        rope_words = self.w(hd // 2)
        ROPE = self.sp.alloc("rope", max(r.x.shape[0] for r in self.reqs) * len(self.reqs), rope_words)
        row = 0
        self.spans = []
        self.appends = []
        rope_rows = 0
        for r in self.reqs:
            S = r.x.shape[0]
            tab = ROPE + rope_rows * rope_words
            rs = self.im.rope_row_bytes
            self.load_table("rope", hd // 2, isa.ElemBytes.B4, rows=S, ext_stride=rs, spad_addr=tab,
                            ext_addr=self.im.tables["rope"] + r.pos0 * rs)
            rope_rows += S
            imm = dict(head_dim=hd)
            if self.int8:
                imm.update(imm0=1 << 30, shift=44)
            self.vector(VectorOp.ROPE, rows=S, length=d + kvd, a=(QKV + row * qkvw, qkvw), o=(QKV + row * qkvw, qkvw),
                        p=tab, p_words=rope_words, p_stride=rope_words, dtype=dt,
                        comment=f"rope seq {r.seq} pos {r.pos0}..", **imm)
            base = QKV + row * qkvw
            ins = self.emit(isa.Opcode.KV, reads=[spad(base + dw, (S - 1) * qkvw + 2 * self.w(kvd))],
                            writes=[kv(r.seq)], comment=f"append seq {r.seq}", op=KVOp.APPEND, seq=r.seq, rows=S,
                            k_addr=base + dw, k_stride=qkvw, v_addr=base + dw + self.w(kvd), v_stride=qkvw)
            self.appends.append((ins.index, r.seq))
            self.spans.append((r.seq, row, S))
            row += S
        # attention
        O = self.sp.alloc("o", M, dw)
        self._attention(QKV, qkvw, O, dw, dt)
        # Wo, residual
        if self.int8:
            self.matmul(a=(O, dw), m=M, k=d, n=d, o=(A, dw), dtype=dt, out_fmt=OutFormat.INT32, w="wo",
                        comment="o · Wo")
            om, os_ = self._channel("o", d)
            self.vector(VectorOp.DEQUANT, rows=M, length=d, a=(A, dw), o=(A, dw), b=(os_, 0), p=om, p_words=dw,
                        dtype=dt, comment="dequantize attention")
        else:
            self.matmul(a=(O, dw), m=M, k=d, n=d, o=(A, dw), dtype=dt, out_fmt=OutFormat.BF16, w="wo",
                        comment="o · Wo")
        self.vector(VectorOp.ADD, rows=M, length=d, a=(X, dw), b=(A, dw), o=(X, dw), dtype=dt, comment="x += attention")
        self.sp.release(attention_region)   # q|k|v, the RoPE rows, scores, probabilities, o
        # MLP
        H2 = H
        self.vector(VectorOp.RMSNORM, rows=M, length=d, a=(X, dw), o=(H2, dw), p=g2, p_words=dw, dtype=dt,
                    imm0=eps, imm1=inv_d, comment="rmsnorm x → h2")
        guw, fw = self.w(2 * dff), self.w(dff)
        GU = self.sp.alloc("gate_up", M, guw)
        ACT = self.sp.alloc("act", M, fw)
        D = A
        if self.int8:
            E2 = self.sp.alloc("e2", M, 1)
            E3 = self.sp.alloc("e3", M, 1)
            self.vector(VectorOp.QUANT_TOKEN, rows=M, length=d, a=(H2, dw), o=(H2, dw), s_out=E2, dtype=Dtype.BF16,
                        comment="quantize h2 per token")
            self.matmul(a=(H2, dw), m=M, k=d, n=2 * dff, o=(GU, guw), dtype=dt, out_fmt=OutFormat.INT32,
                        w="wgu", comment="h2 · [Wgate|Wup]")
            gm, gs = self._channel("gu", 2 * dff)
            for half, what in ((0, "gate"), (fw, "up")):
                self.vector(VectorOp.DEQUANT, rows=M, length=dff, a=(GU + half, guw), o=(GU + half, guw),
                            b=(gs + half, 0), p=gm + half, p_words=fw, s_in=E2, flags=VectorFlag.ROW_EXP, dtype=dt,
                            comment=f"dequantize {what}")
            self.vector(VectorOp.SWIGLU, rows=M, length=dff, a=(GU, guw), b=(GU + fw, guw), o=(ACT, fw), dtype=dt,
                        comment="silu(gate) · up")
            self.vector(VectorOp.QUANT_TOKEN, rows=M, length=dff, a=(ACT, fw), o=(ACT, fw), s_out=E3,
                        dtype=Dtype.BF16, comment="quantize act per token")
            self.matmul(a=(ACT, fw), m=M, k=dff, n=d, o=(D, dw), dtype=dt, out_fmt=OutFormat.INT32,
                        w="wdown", comment="act · Wdown")
            dm, ds = self._channel("down", d)
            self.vector(VectorOp.DEQUANT, rows=M, length=d, a=(D, dw), o=(D, dw), b=(ds, 0), p=dm, p_words=dw,
                        s_in=E3, flags=VectorFlag.ROW_EXP, dtype=dt, comment="dequantize down")
        else:
            self.matmul(a=(H2, dw), m=M, k=d, n=2 * dff, o=(GU, guw), dtype=dt, out_fmt=OutFormat.BF16,
                        w="wgu", comment="h2 · [Wgate|Wup]")
            self.vector(VectorOp.SWIGLU, rows=M, length=dff, a=(GU, guw), b=(GU + fw, guw), o=(ACT, fw), dtype=dt,
                        comment="silu(gate) · up")
            self.matmul(a=(ACT, fw), m=M, k=dff, n=d, o=(D, dw), dtype=dt, out_fmt=OutFormat.BF16,
                        w="wdown", comment="act · Wdown")
        self.vector(VectorOp.ADD, rows=M, length=d, a=(X, dw), b=(D, dw), o=(X, dw), dtype=dt, comment="y = x + mlp")
        self.emit(isa.Opcode.STORE, reads=[spad(X, M * dw)], writes=[ext(self.y_addr, M * xs)], comment="store y",
                  ext_addr=self.y_addr, ext_stride=xs, spad_addr=X, spad_stride=dw, rows=M, elems=d,
                  elem_bytes=eb_io)
        for r in self.reqs:
            if r.free:
                self.emit(isa.Opcode.KV, writes=[kv(r.seq)], comment=f"free seq {r.seq}", op=KVOp.FREE, seq=r.seq)
        self.asm.end()
        x_bytes = b"".join(self._x_rows(r, xs) for r in self.reqs)
        step = Step(asm=self.asm, program_words=self.asm.encode(), prog_addr=self.prog_addr,
                    segments={self.x_addr: x_bytes}, y_addr=self.y_addr, y_stride=xs, rows=M, out_dtype=io,
                    spans=self.spans, appends=self.appends)
        step._d = d
        return step

    def _x_rows(self, r, stride):
        x = np.ascontiguousarray(r.x)
        return b"".join(row.tobytes().ljust(stride, b"\0") for row in x)

    def _channel(self, name, n):
        """Load a per-channel multiplier row and shift row; returns their scratchpad addresses."""
        m = self.load_table(f"{name}_m", n, isa.ElemBytes.B4)
        s = self.load_table(f"{name}_s", n, isa.ElemBytes.B4)
        return m, s

    def _attention(self, QKV, qkvw, O, dw, dt):
        lc, hw = self.lc, self.im.hw
        hd = lc.head_dim
        hw_ = self.w(hd)
        if self.int8:
            score_fmt, p_fmt = OutFormat.INT32, OutFormat.INT8
            sm_scale, sm_shift = hw.softmax_scale
        else:
            score_fmt, p_fmt = OutFormat.FP32, OutFormat.BF16
            sm_scale, sm_shift = hw.softmax_scale, 0
        S_max = max(r.x.shape[0] for r in self.reqs)
        K_max = max(r.pos0 + r.x.shape[0] for r in self.reqs)
        kw = self.w(K_max)
        # two buffers each for the scores and the probabilities: head h + 1's Q·Kᵀ overlaps head h's softmax
        SC = [self.sp.alloc("scores", S_max, kw) for _ in range(2)]
        PR = [self.sp.alloc("probs", S_max, kw) for _ in range(2)]
        pv_params = self.im.params.get("pv")
        k = 0
        row = 0
        for r in self.reqs:
            S, keys = r.x.shape[0], r.pos0 + r.x.shape[0]
            kwr = self.w(keys)
            for h in range(lc.n_heads):
                g = h // lc.group
                q = QKV + row * qkvw + h * hw_
                sc, pr = SC[k % 2], PR[k % 2]
                k += 1
                self.matmul(a=(q, qkvw), m=S, k=hd, n=keys, o=(sc, kwr), dtype=dt, out_fmt=score_fmt,
                            kv_src=(isa.WSource.KV_K, r.seq, g), comment=f"seq {r.seq} head {h}: q · Kᵀ")
                self.emit(isa.Opcode.SOFTMAX, reads=[spad(sc, S * kwr)], writes=[spad(pr, S * kwr)],
                          comment=f"seq {r.seq} head {h}: softmax", dtype=dt, rows=S, length=keys, a_addr=sc,
                          a_stride=kwr, o_addr=pr, o_stride=kwr, scale=sm_scale, shift=sm_shift,
                          valid_len=keys, causal_pos0=r.pos0, causal=1)
                self.matmul(a=(pr, kwr), m=S, k=keys, n=hd, o=(O + row * dw + h * hw_, dw), dtype=dt,
                            out_fmt=p_fmt, kv_src=(isa.WSource.KV_V, r.seq, g), p=pv_params,
                            a_unsigned=1 if self.int8 else 0, comment=f"seq {r.seq} head {h}: p · V")
            row += S
