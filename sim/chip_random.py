"""Seeded random chip programs checked against the chip model (golden/chip.py).

:class:`RandomPrograms` writes programs of LOAD, STORE, MATMUL, VECTOR, SOFTMAX and KV
instructions over random shapes and formats, with tensors at random places of a small scratchpad
arena (so instructions share data: read-after-write chains such as LOAD → MATMUL → VECTOR →
SOFTMAX → STORE or APPEND → Q·Kᵀ → SOFTMAX → P·V, and writes over data others still read). It
applies every instruction to a :class:`golden.chip.ChipModel` as it writes it, and gives each
instruction the waits its data dependencies need (from :func:`golden.chip.footprint`: it waits
for the last earlier instruction of every other unit that touches what it touches, one of the
two writing) plus random extra waits; instructions that share nothing get no wait, so units
overlap. A program may end with an instruction that fails (a KV refusal, a vector BAD_SCALE, a
bad requantization, a read past a sequence's length) after waiting for everything before it.
The last program STOREs the whole scratchpad arena; :meth:`RandomPrograms.check` compares every
byte the programs stored, and every program's error registers, with the model's.

Run many seeds (each a fresh chip run on the ``tiny`` build the tests use)::

    python -m sim.chip_random --seeds 100 [--first 1000] [--stall 0.3] [--config tiny]
"""

import argparse
import sys
import time

import ml_dtypes
import numpy as np

import golden
from golden.chip import ChipModel, UndefinedError, footprint
from golden.fp import as_bf16_bits, as_fp32_bits
from hdl.config import get_config
from spec import isa
from spec import matmul_layout as ml
from spec.codes import ChipError, Dtype, KVOp, OutFormat
from spec.vector import CHIP_OPS, VectorFlag, VectorOp

from .chip_api import Program

__all__ = ["RandomPrograms", "main"]

U = isa.Unit
BF16 = ml_dtypes.bfloat16
#: External memory: programs from 0, read-only data (LOAD sources, weights, parameters), the
#: STOREs' region, the arena dump.
DATA, OUT, DUMP, EXT_BYTES = 0x10000, 0x40000, 0x60000, 1 << 20
#: Bytes per element in external memory of each tensor kind (the lanes' format in the scratchpad).
ELEM_BYTES = {"i8": 1, "u8": 1, "bf16": 2, "i32": 4, "f32": 4, "exp": 4, "mult": 4, "shift": 4, "rope": 4}
#: Kinds of data tensors (the others are vector-unit parameters).
DATA_KINDS = ("i8", "u8", "bf16", "i32", "f32", "exp")


class Tensor:
    """A matrix in the scratchpad: ``rows`` × ``cols`` elements of ``kind`` at ``addr`` with row
    stride ``stride`` words."""

    def __init__(self, addr, stride, rows, cols, kind, words):
        self.addr, self.stride, self.rows, self.cols, self.kind, self.words = addr, stride, rows, cols, kind, words

    def span(self):
        return {self.addr + r * self.stride + i for r in range(self.rows) for i in range(self.words)}


class RandomPrograms:
    """Random programs for a chip of ``config`` from ``seed`` (see the module docstring).

    Parameters
    ----------
    config : str or ChipConfig
    seed : int
    arena_words : int
        Scratchpad words used in each bank (from the bank's start); small, so tensors overwrite
        each other.
    """

    def __init__(self, config, seed, *, arena_words=192):
        self.cfg = cfg = get_config(config)
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        # the interleave of EXT MATMULs, drawn apart so that it leaves the other draws as they were
        self.il_rng = np.random.default_rng([seed, 27])
        self.model = ChipModel(cfg, ext_bytes=EXT_BYTES)
        mem = cfg.memory
        self.L, self.bus = mem.spad_lanes, mem.axi_data_bits // 8
        self.banks, self.bank_words = mem.spad_banks, mem.spad_words
        self.arena = min(arena_words, mem.spad_words)
        kv = cfg.kvcache
        self.kv_row = kv.heads * kv.head_dim
        self.head_dim, self.kv_heads = kv.head_dim, kv.heads
        self.kv_int8 = kv.dtype == "int8"
        self.max_len = min(cfg.vector.max_len, cfg.softmax.max_len, 32)
        self.tensors, self.stored, self.seqs = [], [], []
        self.segments, self.read_back, self.programs, self.expect = {}, [], [], []
        self.data_at, self.out_at, self.prog_at = DATA, OUT, 0
        self.rope = {}
        self.ops_used = {}
        self.past_stores, self.stop = [], None

    # -- external memory ------------------------------------------------------------------------
    def _ext_data(self, raw):
        """Read-only bytes in external memory (LOAD sources, weights, parameters)."""
        addr = self.data_at
        self.data_at += -(-max(len(raw), 1) // 64) * 64
        if self.data_at > OUT:
            raise ValueError("the data region is full")
        self.segments[addr] = bytes(raw)
        self.model.write_ext(addr, raw)
        return addr

    def _rows_bytes(self, lanes, elem_bytes):
        """[rows, cols] lane values → (row-strided bytes, stride) for LOAD/STORE."""
        rows, cols = lanes.shape
        stride = -(-cols * elem_bytes // self.bus) * self.bus
        img = np.zeros((rows, stride), np.uint8)
        raw = (np.asarray(lanes, np.int64) & ((1 << (8 * elem_bytes)) - 1)).astype(f"<u{elem_bytes}")
        img[:, :cols * elem_bytes] = raw.view(np.uint8).reshape(rows, -1)
        return img.tobytes(), stride

    # -- scratchpad placement -------------------------------------------------------------------
    def _place(self, rows, cols, kind, *, stride=None, avoid=()):
        """A new tensor's place: a random bank, usually where no live tensor is (or over old
        ones, which die), never over the tensors in ``avoid`` (the instruction's inputs, unless
        it writes in place)."""
        words = -(-cols // self.L)
        stride = stride if stride is not None else words + int(self.rng.choice([0, 0, 0, 1, 2]))
        size = (rows - 1) * stride + words
        if size > self.arena:
            return None
        keep = set().union(*(t.span() for t in avoid)) if avoid else set()
        live = set().union(*(t.span() for t in self.tensors)) if self.tensors else set()
        for attempt in range(40):
            bank = int(self.rng.integers(self.banks))
            addr = bank * self.bank_words + int(self.rng.integers(self.arena - size + 1))
            t = Tensor(addr, stride, rows, cols, kind, words)
            span = t.span()
            if span & keep:
                continue
            if span & live and attempt < 30 and self.rng.random() < 0.8:
                continue
            return t
        return None

    def _born(self, t):
        span = t.span()
        self.tensors = [x for x in self.tensors if not (x.span() & span)] + [t]

    def _pick(self, kind, *, rows=None, cols=None, cond=None):
        c = [t for t in self.tensors if t.kind == kind and (rows is None or t.rows == rows)
             and (cols is None or t.cols == cols) and (cond is None or cond(t))]
        return c[int(self.rng.integers(len(c)))] if c else None

    # -- instructions ---------------------------------------------------------------------------
    def _emit(self, opcode, *, barrier=False, **fields):
        """Encode an instruction with the waits it needs (and random ones), apply it to the
        model; ``None`` if the model does not define it (nothing emitted), else the stop
        ``(ChipError, detail)`` or ``False``."""
        unit = isa.UNIT_OF[opcode]
        fp = footprint(self.cfg, isa.encode(opcode, **fields))
        wait = {}
        for u, rank, other in self.history:
            if u != unit and ((fp.writes & (other.reads | other.writes)) or (fp.reads & other.writes)):
                wait[u] = max(wait.get(u, 0), rank)
        for u in U:
            if u != unit and self.count[u] and (barrier or self.rng.random() < 0.12):
                extra = self.count[u] if barrier else int(self.rng.integers(1, self.count[u] + 1))
                wait[u] = max(wait.get(u, 0), extra)
        if unit == U.MATMUL and any(fp.prefetch & other.writes for _, _, other in self._all_stores()):
            return None
        word = isa.encode(opcode, wait=wait or None, **fields)
        try:
            stop = self.model.step(word)
        except UndefinedError:
            return None
        if stop:
            self.stop = (stop[0], stop[1], len(self.words))
        self.words.append(word)
        self.count[unit] += 1
        self.history.append((unit, self.count[unit], fp))
        name = opcode.name if opcode != isa.Opcode.VECTOR else f"VECTOR.{VectorOp(fields['op']).name}"
        self.ops_used[name] = self.ops_used.get(name, 0) + 1
        if opcode == isa.Opcode.MATMUL and fields.get("interleave"):
            self.ops_used["MATMUL interleaved"] = self.ops_used.get("MATMUL interleaved", 0) + 1
        return stop or False

    def _all_stores(self):
        return [h for h in self.history if h[0] == U.STORE] + self.past_stores

    def load_new(self, kind, rows, cols):
        """LOAD fresh random data of ``kind``."""
        r = self.rng
        shape = (rows, cols)
        if kind == "i8":
            v = r.integers(-128, 128, shape)
        elif kind == "u8":
            v = r.integers(0, 256, shape)
        elif kind == "i32":
            v = r.integers(-(1 << 20), 1 << 20, shape)
        elif kind == "exp":
            v = r.integers(-8, 9, shape)
        elif kind == "f32":
            v = as_fp32_bits((r.normal(0, 3, shape) * r.choice([1, 1, 30], shape)).astype(np.float32)).reshape(shape)
        elif kind == "bf16":
            v = as_bf16_bits(r.normal(0, 2, shape).astype(BF16)).reshape(shape)
        else:
            raise ValueError(f"no random data of kind {kind!r}")
        return self.load_values(np.asarray(v, np.int64), kind)

    def load_values(self, values, kind, *, stride=None):
        eb = ELEM_BYTES[kind]
        raw, ext_stride = self._rows_bytes(values, eb)
        rows, cols = values.shape
        t = self._place(rows, cols, kind, stride=stride)
        if t is None:
            return None
        ext = self._ext_data(raw)
        return self._load(t, ext, ext_stride)

    def _load(self, t, ext, ext_stride):
        eb = ELEM_BYTES[t.kind]
        stop = self._emit(isa.Opcode.LOAD, ext_addr=ext, ext_stride=ext_stride, spad_addr=t.addr,
                          spad_stride=t.stride, rows=t.rows, elems=t.cols, elem_bytes=eb.bit_length() - 1,
                          signed=int(t.kind in ("i8", "exp")))
        if stop is None:
            return None
        self._born(t)
        return t

    def get(self, kind, *, rows=None, cols=None, cond=None, fresh=0.25):
        """A live tensor of ``kind`` (and shape), or a new one LOADed."""
        t = None if self.rng.random() < fresh else self._pick(kind, rows=rows, cols=cols, cond=cond)
        if t is None:
            rows = rows or int(self.rng.integers(1, 7))
            cols = cols or int(self.rng.integers(1, self.max_len + 1))
            t = self.load_new(kind, rows, cols)
        return t

    def store(self):
        t = self._pick(self.rng.choice(list(ELEM_BYTES)))
        if t is None:
            return
        eb = ELEM_BYTES[t.kind]
        stride = -(-t.cols * eb // self.bus) * self.bus
        if self.stored and self.rng.random() < 0.2:          # over an earlier STORE's bytes
            ext = self.stored[int(self.rng.integers(len(self.stored)))][0]
        else:
            ext = self.out_at
            self.out_at += -(-t.rows * stride // 64) * 64
            if self.out_at > DUMP:
                raise ValueError("the STORE region is full")
        stop = self._emit(isa.Opcode.STORE, ext_addr=ext, ext_stride=stride, spad_addr=t.addr, spad_stride=t.stride,
                          rows=t.rows, elems=t.cols, elem_bytes=eb.bit_length() - 1)
        if stop is not None:
            self.stored.append((ext, stride, t.rows, t.cols, t.kind))

    def load_back(self):
        """LOAD what an earlier STORE wrote (a dependency through external memory)."""
        if not self.stored:
            return
        ext, stride, rows, cols, kind = self.stored[int(self.rng.integers(len(self.stored)))]
        t = self._place(rows, cols, kind)
        if t is not None:
            self._load(t, ext, stride)

    # -- MATMUL ---------------------------------------------------------------------------------
    def matmul(self):
        r = self.rng
        bf16 = r.random() < 0.4
        kind = "bf16" if bf16 else ("u8" if r.random() < 0.3 else "i8")
        a = self.get(kind, cond=lambda t: t.rows <= 8)
        if a is None:
            return
        k, n, C = a.cols, int(r.integers(1, 17)), self.cfg.array.cols
        fmt_name = r.choice(["rows", "transposed"] + ([] if bf16 else ["wide"]))
        w = (r.normal(0, 1, (k, n)).astype(BF16) if bf16 else r.integers(-128, 128, (k, n)).astype(np.int8))
        # G = interleave + 1 up to 4 (G·m ≤ 32 rows, within every chip's acc_depth), half of the time
        il = int(self.il_rng.integers(1, 4)) if self.il_rng.random() < 0.5 else 0
        w_addr = self._ext_data(ml.pack_weights(w, rows=self.cfg.array.rows, cols=C, bus_bytes=self.bus,
                                                transposed=fmt_name == "transposed", wide=fmt_name == "wide",
                                                interleave=il))
        if bf16:
            fmt = OutFormat.BF16 if r.random() < 0.5 else OutFormat.FP32
        else:
            fmt = OutFormat.INT8 if r.random() < 0.5 else OutFormat.INT32
        has_bias = int(r.random() < 0.4)
        p_addr = 0
        if ml.needs_params(has_bias=has_bias, out_fmt=fmt):
            bias = (r.normal(0, 4, n).astype(np.float32) if bf16 else r.integers(-5000, 5000, n).astype(np.int32))
            mult = r.integers(1 << 29, 1 << 31, n) if fmt == OutFormat.INT8 else None
            shift = r.integers(12, 24, n) if fmt == OutFormat.INT8 else None
            p_addr = self._ext_data(ml.pack_params(n, cols=C, bus_bytes=self.bus, bias=bias if has_bias else None,
                                                   multiplier=mult, shift=shift))
        out_kind = {OutFormat.INT8: "i8", OutFormat.INT32: "i32", OutFormat.FP32: "f32", OutFormat.BF16: "bf16"}[fmt]
        self._matmul(a, n, out_kind, dtype=int(bf16), out_fmt=fmt, a_unsigned=int(kind == "u8"), has_bias=has_bias,
                     w_src=isa.WSource.EXT_T if fmt_name == "transposed" else isa.WSource.EXT,
                     w_wide=int(fmt_name == "wide"), w_addr=w_addr, p_addr=p_addr, interleave=il)

    def _matmul(self, a, n, out_kind, **fields):
        o = self._place(a.rows, n, out_kind, avoid=[a])
        if o is None:
            return None
        stop = self._emit(isa.Opcode.MATMUL, m=a.rows, k=a.cols, n=n, a_addr=a.addr, a_stride=a.stride,
                          o_addr=o.addr, o_stride=o.stride, **fields)
        if stop is False:
            self._born(o)
        return stop

    def kv_matmul(self):
        """Q·Kᵀ (int8 Q of head_dim columns → int32 scores) or P·V (uint8 or int8 P of k
        columns → int32) of a live sequence's positions."""
        r = self.rng
        live = [s for s in self.seqs if self.model.cache.status(s).length]
        if not live or not self.kv_int8:
            return
        seq = live[int(r.integers(len(live)))]
        length = self.model.cache.status(seq).length
        start = int(r.integers(length))
        count = int(r.integers(1, min(length - start, self.max_len) + 1))
        head = int(r.integers(self.kv_heads))
        kv = dict(dtype=Dtype.INT8, out_fmt=OutFormat.INT32, kv_seq=seq, kv_head=head, kv_start=start)
        if r.random() < 0.5:
            q = self.get("i8", cols=self.head_dim, cond=lambda t: t.rows <= 8)
            if q is not None:
                self._matmul(q, count, "i32", w_src=isa.WSource.KV_K, a_unsigned=0, **kv)
        else:
            kind = "u8" if r.random() < 0.7 else "i8"
            p = self.get(kind, cols=count, cond=lambda t: t.rows <= 8)
            if p is not None:
                self._matmul(p, self.head_dim, "i32", w_src=isa.WSource.KV_V, a_unsigned=int(kind == "u8"), **kv)

    # -- VECTOR ---------------------------------------------------------------------------------
    def _param_row(self, kind, cols, values):
        """A one-row parameter tensor (gains, multipliers, shifts) of ``cols`` elements."""
        t = self._pick(kind, rows=1, cols=cols) if self.rng.random() < 0.5 else None
        return t or self.load_values(np.asarray(values, np.int64)[None, :], kind)

    def vector(self):
        r = self.rng
        op = CHIP_OPS[int(r.integers(len(CHIP_OPS)))]
        bf16 = r.random() < 0.5
        fp = "bf16" if bf16 else "f32"
        f = dict(op=op, dtype=int(bf16))
        inputs = []
        if op in (VectorOp.ADD, VectorOp.SWIGLU):
            a = self.get(fp)
            b = a and self.get(fp, rows=a.rows, cols=a.cols)
            if b is None:
                return
            f.update(b_addr=b.addr, b_stride=b.stride)
            inputs, out_kind = [a, b], ("bf16" if op == VectorOp.SWIGLU or bf16 else "f32")
        elif op == VectorOp.RMSNORM:
            a = self.get(fp)
            if a is None:
                return
            per_row = r.random() < 0.3
            g = (self.get("bf16", rows=a.rows, cols=a.cols) if per_row else
                 self._param_row("bf16", a.cols, as_bf16_bits((1 + 0.2 * r.normal(size=a.cols)).astype(BF16))))
            if g is None:
                return
            f.update(p_addr=g.addr, p_stride=g.stride if per_row else 0,
                     imm0=int(as_fp32_bits(np.float32(1e-5))), imm1=int(as_fp32_bits(np.float32(1.0 / a.cols))))
            inputs, out_kind = [a, g], "bf16"
        elif op == VectorOp.ROPE:
            hd = int(r.choice([h for h in (4, 8, 16) if h >= 2 * self.L]))
            a = self.get("bf16" if bf16 else "i8", cols=hd * int(r.integers(1, 3)))
            if a is None:
                return
            table, stride, positions = self._rope_table(hd, bf16)
            if table is None or a.rows > positions:
                return
            pos0 = int(r.integers(positions - a.rows + 1))
            f.update(head_dim=hd, p_addr=table.addr + pos0 * stride, p_stride=stride)
            if not bf16:
                f.update(imm0=int(r.integers(1 << 29, 1 << 31)), shift=int(r.integers(42, 46)))
            inputs, out_kind = [a, table], fp if bf16 else "i8"
        elif op in (VectorOp.DEQUANT, VectorOp.REQUANT):
            a = self.get("i32")
            if a is None:
                return
            lo, hi = (20, 40) if op == VectorOp.DEQUANT else (14, 30)
            sh = self._param_row("shift", a.cols, r.integers(lo, hi, a.cols))
            m = sh and self._param_row("mult", a.cols, r.integers(1 << 29, 1 << 31, a.cols))
            if m is None:
                return
            f.update(b_addr=sh.addr, b_stride=0, p_addr=m.addr, p_stride=0, dtype=0)
            inputs = [a, sh, m]
            if op == VectorOp.REQUANT or r.random() < 0.6:
                e = self.get("exp", rows=a.rows, cols=1, cond=lambda t: t.stride == 1)
                if e is None or e.stride != 1:
                    e = self.load_values(r.integers(-8, 9, (a.rows, 1)), "exp", stride=1)
                if e is None:
                    return
                f.update(s_in_addr=e.addr, flags=int(VectorFlag.ROW_EXP) if op == VectorOp.DEQUANT else 0)
                inputs.append(e)
            out_kind = "f32" if op == VectorOp.DEQUANT else "i8"
        elif op == VectorOp.QUANT_STATIC:
            a = self.get(fp)
            if a is None:
                return
            f.update(imm0=int(as_fp32_bits(np.float32(1.0 / r.uniform(0.02, 1.0)))))
            inputs, out_kind = [a], "i8"
        else:
            a = self.get("bf16")
            if a is None:
                return
            f["dtype"] = 1
            inputs, out_kind = [a], "i8"
        in_place = op != VectorOp.QUANT_TOKEN and r.random() < 0.15
        o = (Tensor(a.addr, a.stride, a.rows, a.cols, out_kind, a.words) if in_place
             else self._place(a.rows, a.cols, out_kind, avoid=inputs))
        if o is None:
            return
        f.update(rows=a.rows, length=a.cols, a_addr=a.addr, a_stride=a.stride, o_addr=o.addr, o_stride=o.stride)
        s = None
        if op == VectorOp.QUANT_TOKEN:
            s = self._place(a.rows, 1, "exp", stride=1, avoid=inputs + [o])
            if s is None or s.span() & o.span():
                return
            f["s_out_addr"] = s.addr
        if self._emit(isa.Opcode.VECTOR, **f) is False:
            self._born(o)
            if s is not None:
                self._born(s)

    def _rope_table(self, hd, bf16):
        """A LOADed RoPE table (golden.rope_table, 16 positions): words cos | sin << 16."""
        key = (hd, bf16)
        t = self.rope.get(key)
        if t is not None and t in self.tensors:
            return t, t.stride, t.rows
        tab = golden.rope_table(head_dim=hd, max_pos=12, base=10000.0)
        if bf16:
            cs, sn = as_bf16_bits(tab.cos_bf16).astype(np.int64), as_bf16_bits(tab.sin_bf16).astype(np.int64)
        else:
            cs, sn = tab.cos_q.astype(np.int64), tab.sin_q.astype(np.int64)
        words = (cs & 0xFFFF) | ((sn & 0xFFFF) << 16)
        t = self.load_values(words, "rope")
        if t is None:
            return None, 0, 0
        self.rope[key] = t
        return t, t.stride, t.rows

    # -- SOFTMAX --------------------------------------------------------------------------------
    def softmax(self):
        r = self.rng
        bf16 = r.random() < 0.4
        s = self.get("f32" if bf16 else "i32")
        if s is None:
            return
        o = self._place(s.rows, s.cols, "bf16" if bf16 else "u8", avoid=[s])
        if o is None:
            return
        f = dict(dtype=int(bf16), rows=s.rows, length=s.cols, a_addr=s.addr, a_stride=s.stride, o_addr=o.addr,
                 o_stride=o.stride, valid_len=int(r.integers(1, s.cols + 3)), causal=int(r.random() < 0.5),
                 causal_pos0=int(r.integers(0, s.cols + 1)))
        if bf16:
            f["scale"] = int(as_fp32_bits(golden.softmax_scale_bf16(float(r.uniform(0.05, 1.0)))))
        else:
            m, sh = golden.softmax_scale_int8(float(2.0 ** r.uniform(-20, -10)))
            f.update(scale=int(m), shift=int(sh))
        if self._emit(isa.Opcode.SOFTMAX, **f) is False:
            self._born(o)

    # -- KV -------------------------------------------------------------------------------------
    def kv(self):
        r = self.rng
        cache = self.model.cache
        choice = r.random()
        if (not self.seqs or choice < 0.2) and len(self.seqs) < cache.max_seqs:
            seq = int(r.integers(1 << 16))
            if seq not in self.seqs and self._emit(isa.Opcode.KV, op=KVOp.ALLOC, seq=seq) is False:
                self.seqs.append(seq)
        elif choice < 0.3 and self.seqs:
            seq = self.seqs[int(r.integers(len(self.seqs)))]
            if self._emit(isa.Opcode.KV, op=KVOp.FREE, seq=seq) is False:
                self.seqs.remove(seq)
        elif self.seqs:
            seq = self.seqs[int(r.integers(len(self.seqs)))]
            rows = int(r.integers(1, 9))
            room = cache.free_pages * cache.page_size + (-cache.status(seq).length) % cache.page_size
            if rows > room:
                return
            k, v = (self._pick("i8", cols=self.kv_row, cond=lambda t: t.rows >= rows)
                    or self.load_new("i8", rows, self.kv_row) for _ in "kv")
            if k is None or v is None or k not in self.tensors:
                return
            self._emit(isa.Opcode.KV, op=KVOp.APPEND, seq=seq, rows=rows, k_addr=k.addr, k_stride=k.stride,
                       v_addr=v.addr, v_stride=v.stride)

    # -- a failing last instruction -------------------------------------------------------------
    def failing(self):
        """An instruction that fails, waiting for everything before it; its stop, or None."""
        r = self.rng
        cache = self.model.cache
        kinds = ["unknown_seq", "bad_scale", "bad_requant", "out_of_pages"]
        if any(cache.status(s).length for s in self.seqs):
            kinds.append("read_past_length")
        kind = kinds[int(r.integers(len(kinds)))]
        if kind == "unknown_seq":
            seq = next(s for s in range(1 << 16) if s not in self.seqs)
            return self._emit(isa.Opcode.KV, barrier=True, op=KVOp.FREE, seq=seq)
        if kind == "bad_scale":
            a = self.get("bf16")
            g = a and self._param_row("bf16", a.cols, np.full(a.cols, 0x3F80))
            return g and self._emit(isa.Opcode.VECTOR, barrier=True, op=VectorOp.RMSNORM, dtype=1, rows=a.rows,
                                    length=a.cols, a_addr=a.addr, a_stride=a.stride, p_addr=g.addr, o_addr=a.addr,
                                    o_stride=a.stride, imm0=0x7FC00000,
                                    imm1=int(as_fp32_bits(np.float32(1.0 / a.cols))))
        if kind == "bad_requant":
            a = self.get("i8", cond=lambda t: t.rows <= 8)
            if a is None:
                return None
            n = int(r.integers(1, 9))
            w = r.integers(-128, 128, (a.cols, n)).astype(np.int8)
            C = self.cfg.array.cols
            w_addr = self._ext_data(ml.pack_weights(w, rows=self.cfg.array.rows, cols=C, bus_bytes=self.bus))
            shift = r.integers(8, 20, n)
            shift[int(r.integers(n))] = int(r.choice([0, 63]))
            p_addr = self._ext_data(ml.pack_params(n, cols=C, bus_bytes=self.bus,
                                                   multiplier=r.integers(1 << 29, 1 << 31, n), shift=shift))
            o = self._place(a.rows, n, "i8", avoid=[a])
            return o and self._emit(isa.Opcode.MATMUL, barrier=True, m=a.rows, k=a.cols, n=n, dtype=0,
                                    out_fmt=OutFormat.INT8, a_addr=a.addr, a_stride=a.stride, o_addr=o.addr,
                                    o_stride=o.stride, w_addr=w_addr, p_addr=p_addr)
        if kind == "read_past_length":
            seq = next(s for s in self.seqs if cache.status(s).length)
            length = cache.status(seq).length
            q = self.get("i8", cols=self.head_dim, cond=lambda t: t.rows <= 8)
            o = q and self._place(q.rows, length + 1, "i32", avoid=[q])
            return o and self._emit(isa.Opcode.MATMUL, barrier=True, m=q.rows, k=self.head_dim, n=length + 1,
                                    dtype=0, out_fmt=OutFormat.INT32, w_src=isa.WSource.KV_K, a_addr=q.addr,
                                    a_stride=q.stride, o_addr=o.addr, o_stride=o.stride, kv_seq=seq, kv_start=0)
        # out_of_pages: an APPEND of one more token than the free pages hold (the others go in),
        # every token the same K and V row (stride 0)
        if not self.seqs:
            return None
        seq = self.seqs[int(r.integers(len(self.seqs)))]
        rows = cache.free_pages * cache.page_size + (-cache.status(seq).length) % cache.page_size + 1
        if rows > cache.max_length:
            return None
        k = self.get("i8", cols=self.kv_row)
        v = k and self.get("i8", cols=self.kv_row)
        return v and self._emit(isa.Opcode.KV, barrier=True, op=KVOp.APPEND, seq=seq, rows=rows, k_addr=k.addr,
                                k_stride=0, v_addr=v.addr, v_stride=0)

    # -- programs -------------------------------------------------------------------------------
    def program(self, length, *, fail=False):
        """One program of about ``length`` instructions (and END); with ``fail``, it ends with a
        failing instruction where the generator can make one."""
        self.words, self.count, self.history = [], dict.fromkeys(U, 0), []
        steps = [(self.load_new_random, 2), (self.store, 2), (self.load_back, 0.5), (self.matmul, 3),
                 (self.kv_matmul, 2), (self.vector, 5), (self.softmax, 2), (self.kv, 2.5)]
        p = np.array([w for _, w in steps], float)
        p /= p.sum()
        self.stop = None
        while len(self.words) < length and not self.stop:
            steps[int(self.rng.choice(len(steps), p=p))][0]()
        for _ in range(10 if fail else 0):
            if self.stop:
                break
            if self.failing() is False:
                raise AssertionError("the failing instruction did not fail in the model")
        expect = self.stop or (ChipError.OK, 0, 0)
        self._close(expect)
        return expect

    def load_new_random(self):
        kind = str(self.rng.choice(DATA_KINDS))
        rows = int(self.rng.integers(1, 9)) if kind != "exp" else int(self.rng.integers(1, 7))
        self.load_new(kind, rows, 1 if kind == "exp" else int(self.rng.integers(1, self.max_len + 1)))

    def _close(self, expect):
        self.words.append(isa.encode(isa.Opcode.END))            # after a failing instruction: never reached
        self.programs.append(Program(self.words, addr=self.prog_at))
        self.prog_at += len(self.words) * isa.INSTR_BYTES
        if self.prog_at > DATA:
            raise ValueError("the programs overlap the data")
        self.expect.append(expect)
        self.past_stores = [h for h in self.history if h[0] == U.STORE] + self.past_stores

    def dump(self):
        """A last program: STORE every bank's arena (after everything else)."""
        self.words, self.count, self.history = [], dict.fromkeys(U, 0), []
        n = self.arena * self.L
        for b in range(self.banks):
            ext = DUMP + b * n * 4
            self._emit(isa.Opcode.STORE, ext_addr=ext, ext_stride=n * 4, spad_addr=b * self.bank_words,
                       spad_stride=0, rows=1, elems=n, elem_bytes=2)
            self.read_back.append((f"arena{b}", ext, n * 4))
        self._close((ChipError.OK, 0, 0))

    def build(self, programs=2, length=30, *, fail=True):
        """``programs`` random programs (the first ones may end with a failing instruction when
        ``fail``) and the arena dump; the STOREs' region is read back too."""
        for i in range(programs):
            self.program(length, fail=fail and i < programs - 1 and self.rng.random() < 0.7)
        self.dump()
        if self.out_at > OUT:
            self.read_back.insert(0, ("stored", OUT, self.out_at - OUT))
        return self

    # -- running and checking -------------------------------------------------------------------
    def run(self, sim, **kwargs):
        return sim.run(self.segments, self.programs, read_back=self.read_back, **kwargs)

    def check(self, sim, res):
        """Every program's error registers and every byte read back equal the model's; raises
        AssertionError naming the first difference."""
        for i, want in enumerate(self.expect):
            got = sim.error_of(res, i)
            if got != tuple(want):
                raise AssertionError(f"seed {self.seed}: program {i} stopped with {got}, the model with {want}")
        for name, addr, nbytes in self.read_back:
            got = np.asarray(res.outputs[name], np.uint8)
            want = self.model.ext[addr:addr + nbytes]
            if not np.array_equal(got, want):
                bad = np.flatnonzero(got != want)
                raise AssertionError(f"seed {self.seed}: {name} differs from the model at {len(bad)} bytes, first at "
                                     f"{addr + bad[0]:#x} (chip {got[bad[0]]:#04x}, model {want[bad[0]]:#04x})")

    def summary(self):
        n = sum(len(p) for p in self.programs)
        return (f"{len(self.programs)} programs, {n} instructions; errors "
                f"{[ (e[0].name, e[1], e[2]) for e in self.expect if e[0] != ChipError.OK]}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=20, help="how many seeds")
    ap.add_argument("--first", type=int, default=1, help="the first seed")
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--programs", type=int, default=3)
    ap.add_argument("--length", type=int, default=40)
    ap.add_argument("--stall", type=float, default=0.0, help="AXI stall and backpressure probability")
    args = ap.parse_args(argv)
    from .chip_api import ChipSim
    sim = ChipSim(args.config)
    failed = []
    t0 = time.time()
    for seed in range(args.first, args.first + args.seeds):
        b = RandomPrograms(args.config, seed).build(args.programs, args.length)
        try:
            b.check(sim, b.run(sim, seed=seed, stall=args.stall, backpressure=args.stall))
            status = "ok"
        except AssertionError as exc:
            failed.append(seed)
            status = f"MISMATCH: {exc}"
        print(f"seed {seed}: {b.summary()}: {status} ({time.time() - t0:.0f} s)", flush=True)
    print(f"{args.seeds - len(failed)} of {args.seeds} seeds agree with the model; failing seeds: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
