"""The command processor: fetch, decode, dispatch, dependencies, errors (docs/chip.md, docs/isa.md).

Three parts, each a component with its own tests:

* :class:`InstrFetcher` reads a program through one DMA read client, one request per
  instruction with several in flight, and assembles the bus words into instructions.
* :class:`Dispatcher` decodes each instruction in program order, checks it (opcode, waits, fields,
  every address range it will touch) and puts it into the queue of the unit that executes it.
  Nothing of an instruction that fails a check is executed, and nothing after it is dispatched.
  Its address ranges go through a :class:`~hdl.cmdproc_range.RangeChecker`, one at a time.
* :class:`CommandProcessor` wires them to the units: it counts the instructions each unit retires,
  tells each unit whether the instruction at the head of its queue may start, stops on the first
  error, and watches for a unit that makes no progress.

A unit sees the processor through a :class:`UnitPortSignature`: the head of its queue
(``instr``), whether that instruction's waits are satisfied (``deps_ok``), and a ``done`` stream
on which it answers every instruction it took, in order.
"""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from spec import isa
from spec.codes import ChipError, Dtype, KVOp, OutFormat
from spec.vector import CHIP_OPS, MAX_HEAD_DIM, VectorOp

from .cmdproc_range import RangeChecker
from .counters import events_layout
from .params import check_int as _check_int

__all__ = ["N_UNITS", "INDEX_BITS", "instr_layout", "done_layout", "UnitPortSignature", "deps_satisfied",
           "InstrFetcher", "Dispatcher", "CommandProcessor", "ProcState"]

N_UNITS = len(isa.Unit)
#: Width of an instruction's index in the program (ERROR_INDEX).
INDEX_BITS = 32
_W = isa.WAIT_BITS


def instr_layout():
    """An instruction on its way to a unit: the 512 bits and its index in the program."""
    return data.StructLayout({"bits": isa.INSTR_BITS, "index": INDEX_BITS})


def done_layout():
    """A unit's answer to one instruction."""
    return data.StructLayout({"status": ChipError, "detail": 8, "index": INDEX_BITS})


class UnitPortSignature(wiring.Signature):
    """The processor's side of one unit (flip it for the unit).

    Members
    -------
    instr : Out(stream)
        The instruction at the head of the unit's queue (:func:`instr_layout`), in program order.
    deps_ok : Out(1)
        The waits of the instruction on ``instr`` are satisfied now (units that start an
        instruction only when it may run take it only then; the matmul unit reads ahead).
    retired : Out(ArrayLayout(16, N_UNITS))
        Instructions retired by each unit since the program started (for units that check the
        waits of instructions they read ahead, :func:`deps_satisfied`).
    abort : Out(1)
        The program stopped on an error: finish the instruction that has started (it must end,
        error or not), then drop every instruction taken but not started; answer nothing for
        those.
    done : In(stream)
        One beat per instruction taken and started, in order (:func:`done_layout`): ``status`` OK
        or the error, ``detail``, the instruction's ``index``.
    idle : In(1)
        The unit holds no instruction and nothing it started is still running.
    progress : In(1)
        The unit moved data this cycle (the watchdog's sign of life).
    """

    def __init__(self):
        super().__init__({
            "instr": Out(stream.Signature(instr_layout())),
            "deps_ok": Out(1),
            "retired": Out(data.ArrayLayout(_W, N_UNITS)),
            "abort": Out(1),
            "done": In(stream.Signature(done_layout())),
            "idle": In(1),
            "progress": In(1),
        })


def deps_satisfied(m, bits, retired, name="deps_ok"):
    """A signal that is 1 when the waits in the header of instruction ``bits`` are satisfied by
    the retired counts ``retired`` (ArrayLayout(16, N_UNITS))."""
    hdr = data.View(isa.layout(isa.Opcode.END), bits)
    ok = Signal(name=name)
    terms = []
    for u in isa.Unit:
        count = getattr(hdr, f"wait_{u.name.lower()}")
        terms.append(~hdr.wait_mask[int(u)] | (retired[int(u)] >= count))
    m.d.comb += ok.eq(Cat(*terms).all())
    return ok


class InstrFetcher(wiring.Component):
    """Fetches a program's instructions through one DMA read client.

    One read request per instruction (so that an AXI error names the instruction it hit), up
    to ``inflight`` requests outstanding; the bus words of each are assembled into the 512-bit
    instruction.

    Parameters
    ----------
    bus_bits : int
        Width of the DMA data (the AXI data width), 32..512, a power of two.
    addr_bits : int
        Width of external addresses.
    inflight : int
        Requests outstanding at most, 1..16.

    Members
    -------
    start : In(1)
        Starts fetching ``prog_len`` instructions from ``prog_addr`` (ignored while ``busy``).
    stop : In(1)
        Stops: no further request; the data of requests in flight is read and dropped.
    prog_addr : In(addr_bits), prog_len : In(32)
    req : Out(stream)
        DMA read requests: ``addr`` (bytes), ``beats`` (bus words).
    rdata : In(stream)
        DMA read data: ``data``, ``last`` (the request's final beat), ``error``.
    instr : Out(stream)
        ``bits``, ``index``, ``error`` (an AXI error hit this instruction's read) and ``eop``
        (after the last of ``prog_len`` instructions: one beat with ``index = prog_len``).
    busy : Out(1)
        Fetching, or reading the data of requests in flight after ``stop``.
    """

    def __init__(self, *, bus_bits, addr_bits, inflight=4):
        _check_int("bus_bits", bus_bits, 32, isa.INSTR_BITS)
        if bus_bits & (bus_bits - 1):
            raise ValueError(f"bus_bits must be a power of two, not {bus_bits}")
        _check_int("addr_bits", addr_bits, 16, 64)
        _check_int("inflight", inflight, 1, 16)
        self._bus_bits, self._addr_bits, self._inflight = bus_bits, addr_bits, inflight
        self._beats = isa.INSTR_BITS // bus_bits
        super().__init__({
            "start": In(1), "stop": In(1), "prog_addr": In(addr_bits), "prog_len": In(32),
            "req": Out(stream.Signature(data.StructLayout({"addr": addr_bits, "beats": 16}))),
            "rdata": In(stream.Signature(data.StructLayout({"data": bus_bits, "last": 1, "error": 1}))),
            "instr": Out(stream.Signature(data.StructLayout(
                {"bits": isa.INSTR_BITS, "index": INDEX_BITS, "error": 1, "eop": 1}))),
            "busy": Out(1),
        })

    @property
    def beats_per_instr(self):
        return self._beats

    def elaborate(self, platform):
        m = Module()
        B = self._beats
        running = Signal()      # requests may still be issued
        draining = Signal()     # stop seen: drop the data of requests in flight
        addr = Signal(self._addr_bits)
        left = Signal(32)       # instructions not yet requested
        flight = Signal(range(self._inflight + 1))
        eop_pending = Signal()

        m.d.comb += self.busy.eq(running | draining | eop_pending | (flight != 0))

        with m.If(self.start & ~self.busy):
            m.d.sync += [running.eq(1), addr.eq(self.prog_addr), left.eq(self.prog_len),
                         eop_pending.eq(1)]

        # requests: one instruction each
        m.d.comb += [self.req.payload.addr.eq(addr), self.req.payload.beats.eq(B),
                     self.req.valid.eq(running & ~self.stop & (left != 0) & (flight != self._inflight))]
        issued = Signal()
        m.d.comb += issued.eq(self.req.valid & self.req.ready)
        with m.If(issued):
            m.d.sync += [addr.eq(addr + isa.INSTR_BYTES), left.eq(left - 1)]

        # assembly of the bus words of one instruction
        shreg = Signal(isa.INSTR_BITS)
        count = Signal(range(B + 1))
        err = Signal()
        out_valid = Signal()
        out = self.instr.payload
        index = Signal(32)
        m.d.comb += self.instr.valid.eq(out_valid & ~draining)
        took = Signal()
        m.d.comb += took.eq(self.instr.valid & self.instr.ready)
        with m.If(took):
            m.d.sync += out_valid.eq(0)
        # a beat is taken when the output register is free (or will be this cycle), or dropped
        m.d.comb += self.rdata.ready.eq(draining | ~out_valid | took)
        beat = Signal()
        m.d.comb += beat.eq(self.rdata.valid & self.rdata.ready)
        done_one = Signal()   # an instruction's last beat arrives
        m.d.comb += done_one.eq(beat & self.rdata.payload.last)
        with m.If(beat):
            if B == 1:
                word = self.rdata.payload.data
            else:
                word = Cat(shreg[self._bus_bits:], self.rdata.payload.data)
            m.d.sync += [shreg.eq(word), count.eq(count + 1), err.eq(err | self.rdata.payload.error)]
            with m.If(self.rdata.payload.last):
                m.d.sync += [count.eq(0), err.eq(0)]
                with m.If(~draining):
                    m.d.sync += [out.bits.eq(word), out.error.eq(err | self.rdata.payload.error),
                                 out.eop.eq(0), out.index.eq(index), index.eq(index + 1), out_valid.eq(1)]
        with m.If(issued & ~done_one):
            m.d.sync += flight.eq(flight + 1)
        with m.Elif(~issued & done_one):
            m.d.sync += flight.eq(flight - 1)

        # the end-of-program marker: after the last instruction has been delivered
        with m.If(running & (left == 0) & (flight == 0) & ~out_valid & eop_pending & ~self.stop):
            m.d.sync += [out.eop.eq(1), out.error.eq(0), out.index.eq(index), out_valid.eq(1),
                         eop_pending.eq(0), running.eq(0)]
        with m.If(self.stop):
            m.d.sync += [running.eq(0), eop_pending.eq(0), draining.eq(1), out_valid.eq(0)]
        with m.If(draining & (flight == 0) & ~(issued)):
            m.d.sync += draining.eq(0)
        with m.If(self.start & ~self.busy):
            m.d.sync += [index.eq(0), out_valid.eq(0), draining.eq(0)]
        return m


# ----------------------------------------------------------------------------------------------
# Decode checks. Each opcode has a numbered list of checks; the number of the first one that
# fails is the error's ERROR_DETAIL. "field" checks look at the fields alone (BAD_FIELD); "spad"
# and "ext" checks test that every address the instruction touches lies inside the scratchpad
# (SPAD_RANGE) or below EXT_SIZE (EXT_RANGE); "limit" checks a block's buffer (BAD_FIELD).
# The hardware builds the same list, in this order, in Dispatcher._checks.

CHECKS = {
    isa.Opcode.LOAD: (
        ("field", "rows is 0"), ("field", "elems is 0"), ("field", "elem_bytes is not B1, B2 or B4"),
        ("field", "ext_addr is not a multiple of the bus width"),
        ("field", "ext_stride is not a multiple of the bus width"),
        ("spad", "the rows reach past the scratchpad"), ("ext", "the rows reach past EXT_SIZE"),
    ),
    isa.Opcode.MATMUL: (
        ("field", "m is 0"), ("field", "k is 0"), ("field", "n is 0"),
        ("field", "out_fmt does not belong to dtype"),
        ("field", "w_wide with bf16 or with weights other than EXT"),
        ("field", "(interleave + 1)·m exceeds the accumulator (acc_depth rows)"),
        ("field", "KV_K/KV_V on a chip whose KV cache does not feed the matmul engine"),
        ("field", "KV_K: ceil(k/R)·R, KV_V: ceil(n/C)·C is not the KV cache's head_dim"),
        ("field", "KV_K/KV_V: dtype is not the KV cache's"),
        ("field", "KV_K/KV_V: kv_start + positions (KV_K: n, KV_V: k) is past the KV cache's capacity"),
        ("field", "KV_K/KV_V with interleave other than 0 (the KV cache streams tiles in plain order)"),
        ("limit", "m·ceil(k/R) exceeds the activation buffer (a_depth words)"),
        ("spad", "A reaches past the scratchpad"), ("spad", "the result reaches past the scratchpad"),
        ("ext", "the weights (EXT) reach past EXT_SIZE"), ("ext", "the weights (EXT_T) reach past EXT_SIZE"),
        ("ext", "the parameters reach past EXT_SIZE"),
    ),
    isa.Opcode.VECTOR: (
        ("field", "rows is 0"), ("field", "length is 0"), ("field", "length exceeds the vector unit's max_len"),
        ("field", "op is not one of the chip's VectorOps (0–7, spec.vector.CHIP_OPS)"),
        ("field", "dtype INT8 with QUANT_TOKEN"),
        ("field", "flags sets bit 1 (ROW_SCALE, not yet the chip's)"),
        ("field", "ROPE: head_dim is not a power of two in 2·lanes..256"),
        ("field", "ROPE: head_dim does not divide length"),
        ("spad", "operand a reaches past the scratchpad"),
        ("spad", "operand b (ADD, SWIGLU, DEQUANT, REQUANT) reaches past the scratchpad"),
        ("spad", "the parameters (RMSNORM, ROPE, DEQUANT, REQUANT) reach past the scratchpad"),
        ("spad", "the row exponents read (REQUANT, DEQUANT with ROW_EXP) reach past the scratchpad"),
        ("spad", "the result reaches past the scratchpad"),
        ("spad", "the row exponents written (QUANT_TOKEN) reach past the scratchpad"),
    ),
    isa.Opcode.SOFTMAX: (
        ("field", "rows is 0"), ("field", "length is 0"), ("field", "length exceeds the softmax unit's max_len"),
        ("spad", "the scores reach past the scratchpad"), ("spad", "the probabilities reach past the scratchpad"),
    ),
    isa.Opcode.KV: (
        ("field", "op is not ALLOC, APPEND or FREE"), ("field", "APPEND of 0 rows"),
        ("spad", "the K rows reach past the scratchpad"), ("spad", "the V rows reach past the scratchpad"),
        ("limit", "APPEND of more rows than the KV cache holds (kvcache.pages · page_size)"),
    ),
}
CHECKS[isa.Opcode.STORE] = CHECKS[isa.Opcode.LOAD]

_CODE_OF_KIND = {"field": ChipError.BAD_FIELD, "limit": ChipError.BAD_FIELD,
                 "spad": ChipError.SPAD_RANGE, "ext": ChipError.EXT_RANGE}


def _ceil_shift(x, lg):
    return (x + ((1 << lg) - 1)) >> lg if lg else x


class Dispatcher(wiring.Component):
    """Decodes and checks instructions in program order and queues each for its unit.

    Per instruction: one cycle to take it, one for the opcode and waits, one for the field
    checks, three per range check (the :class:`~hdl.cmdproc_range.RangeChecker`'s latency: a
    multiply, an add, a compare), one to queue it: 9 to 21 cycles (docs/isa.md lists the checks).
    A full queue holds the dispatcher (in order).

    Parameters
    ----------
    lanes : int
        Scratchpad lanes L (= the array's R and C, the vector unit's lanes).
    spad_words : int
        Words of the whole scratchpad (all banks).
    bus_bytes : int
        Bytes of an AXI data beat.
    ext_bits : int
        External address width.
    acc_depth, a_depth : int
        The matmul engine's accumulator rows and activation-buffer words.
    param_beat_bytes : int
        External-memory bytes of one per-N-tile parameter beat (a multiple of bus_bytes).
    softmax_max_len, vector_max_len : int
    kv_row_words : int
        Scratchpad words of one token's K (or V) row of all KV heads.
    kv_head_dim, kv_bf16 : int, bool
        The KV cache that feeds MATMUL weights (KV_K, KV_V): its head_dim (a multiple of
        ``lanes``) and element type; ``kv_head_dim = 0``: none (every KV_K/KV_V fails its check).
    kv_max_tokens : int
        The KV cache's capacity in positions (pages · page_size, at most 2**16): no APPEND of
        more rows can succeed, no KV_K/KV_V reads past it; 0: no KV cache (APPEND rows are not
        limited).
    queue_depth : int
        Instructions each unit's queue holds.
    units : iterable of isa.Unit, optional
        The units this chip has (default all); an opcode of another unit is BAD_OPCODE.

    Members
    -------
    start : In(1)
        A new program: counters cleared, dispatching enabled.
    halt : In(1)
        Stop dispatching (an error elsewhere); the instruction being decoded is dropped.
    ext_size : In(ext_bits + 1)
        External addresses must stay below this.
    instr : In(stream)
        From :class:`InstrFetcher`.
    queues : Out(stream) × N_UNITS
        The head of each unit's queue.
    dispatched : Out(ArrayLayout(16, N_UNITS))
        Instructions queued per unit since ``start``.
    end : Out(1)
        The program's END has been decoded (until ``start``).
    err_valid : Out(1), err_code, err_detail, err_index : Out
        One-cycle pulse: the instruction ``err_index`` failed its decode (nothing of it ran).
    events : Out(events_layout)
    """

    def __init__(self, *, lanes, spad_words, bus_bytes, ext_bits, acc_depth, a_depth, param_beat_bytes,
                 softmax_max_len, vector_max_len, kv_row_words, kv_head_dim=0, kv_bf16=False, kv_max_tokens=0,
                 queue_depth=4, units=None):
        for name, value in (("lanes", lanes), ("bus_bytes", bus_bytes)):
            _check_int(name, value, 1, 1024)
            if value & (value - 1):
                raise ValueError(f"{name} must be a power of two, not {value}")
        _check_int("spad_words", spad_words, 2, 1 << isa.SPAD_ADDR_BITS)
        _check_int("ext_bits", ext_bits, 16, 48)
        _check_int("queue_depth", queue_depth, 1, 64)
        _check_int("kv_row_words", kv_row_words, 1)
        _check_int("param_beat_bytes", param_beat_bytes, bus_bytes)
        if param_beat_bytes % bus_bytes:
            raise ValueError(f"param_beat_bytes ({param_beat_bytes}) must be a multiple of bus_bytes ({bus_bytes})")
        _check_int("kv_head_dim", kv_head_dim, 0, 1 << 16)
        if kv_head_dim % lanes:
            raise ValueError(f"kv_head_dim ({kv_head_dim}) must be a multiple of lanes ({lanes})")
        _check_int("kv_max_tokens", kv_max_tokens, 0, 1 << 16)
        self._p = dict(lanes=lanes, spad_words=spad_words, bus_bytes=bus_bytes, ext_bits=ext_bits,
                       acc_depth=acc_depth, a_depth=a_depth, param_beat_bytes=param_beat_bytes,
                       softmax_max_len=softmax_max_len, vector_max_len=vector_max_len,
                       kv_row_words=kv_row_words, kv_head_dim=kv_head_dim, kv_bf16=bool(kv_bf16),
                       kv_max_tokens=kv_max_tokens)
        self._queue_depth = queue_depth
        self._units = tuple(isa.Unit) if units is None else tuple(isa.Unit(u) for u in units)
        fetch = data.StructLayout({"bits": isa.INSTR_BITS, "index": INDEX_BITS, "error": 1, "eop": 1})
        super().__init__({
            "start": In(1), "halt": In(1), "ext_size": In(ext_bits + 1),
            "instr": In(stream.Signature(fetch)),
            "queues": Out(stream.Signature(instr_layout())).array(N_UNITS),
            "dispatched": Out(data.ArrayLayout(_W, N_UNITS)),
            "end": Out(1),
            "err_valid": Out(1), "err_code": Out(ChipError), "err_detail": Out(8), "err_index": Out(INDEX_BITS),
            "events": Out(self.events_layout),
        })

    events_layout = events_layout(["busy", "decode", "stall_queue", "dispatched"])

    @property
    def queue_depth(self):
        return self._queue_depth

    # -- the checks of each opcode, in the order of CHECKS ------------------------------------
    def _checks(self, op, f):
        """[(kind, bad) for field checks] and [(enable, base, count, stride, words, limit)] for
        range checks, of opcode ``op`` viewed as ``f``."""
        p = self._p
        lgL = exact_log2(p["lanes"])
        lgbus = exact_log2(p["bus_bytes"])
        SP, EXT = "spad", "ext"
        if op in (isa.Opcode.LOAD, isa.Opcode.STORE):
            fields = [f.rows == 0, f.elems == 0, f.elem_bytes == 3,
                      f.ext_addr[:lgbus] != 0 if lgbus else Const(0), f.ext_stride[:lgbus] != 0 if lgbus else Const(0)]
            row_bytes = (f.elems << f.elem_bytes)[:20]
            ranges = [(1, f.spad_addr, f.rows, f.spad_stride, _ceil_shift(f.elems, lgL), SP),
                      (1, f.ext_addr, f.rows, f.ext_stride, _ceil_shift(row_bytes, lgbus) << lgbus, EXT)]
        elif op == isa.Opcode.MATMUL:
            kt, nt = _ceil_shift(f.k, lgL), _ceil_shift(f.n, lgL)
            fields = [f.m == 0, f.k == 0, f.n == 0, f.out_fmt[1] != f.dtype,
                      f.w_wide & (f.dtype | (f.w_src != isa.WSource.EXT)),
                      f.m > Array(Const(p["acc_depth"] // g, 17) for g in range(1, 17))[f.interleave],
                      *self._kv_checks(f, kt, nt),
                      ((f.w_src == isa.WSource.KV_K) | (f.w_src == isa.WSource.KV_V)) & (f.interleave != 0)]
            # spec.matmul_layout: one N tile is k beats of C (int8) or 2·C (bf16) bytes, or
            # ceil(k/2) wide beats of 2·C bytes; transposed, one K tile is n beats
            w_rows = ((f.k + (f.w_wide & f.k[0])) << (lgL + f.dtype))[:32]
            w_cols = (f.n << (lgL + f.dtype))[:32]
            need_p = f.has_bias | (f.out_fmt == OutFormat.INT8)
            pb = p["param_beat_bytes"]
            ranges = [(1, 0, f.m, kt, kt, p["a_depth"]),
                      (1, f.a_addr, f.m, f.a_stride, kt, SP), (1, f.o_addr, f.m, f.o_stride, nt, SP),
                      (f.w_src == isa.WSource.EXT, f.w_addr, nt, w_rows, w_rows, EXT),
                      (f.w_src == isa.WSource.EXT_T, f.w_addr, kt, w_cols, w_cols, EXT),
                      (need_p, f.p_addr, nt, pb, pb, EXT)]
        elif op == isa.Opcode.VECTOR:
            # the unit's command checks that need no immediate (BAD_SCALE stays the unit's:
            # ChipError.VECTOR) and the extent of every stream of the op (spec.vector.stream_words;
            # ROPE parameters: head_dim/(2·lanes) words per row, read once per head)
            vop, hd = f.op, f.head_dim
            rope = vop == VectorOp.ROPE
            words = _ceil_shift(f.length, lgL)
            hd_bad = (hd < 2 * p["lanes"]) | (hd > MAX_HEAD_DIM) | ((hd & (hd - 1)) != 0)
            fields = [f.rows == 0, f.length == 0, f.length > p["vector_max_len"], vop >= len(CHIP_OPS),
                      (vop == VectorOp.QUANT_TOKEN) & (f.dtype == Dtype.INT8), f.flags[1],
                      rope & hd_bad, rope & ((f.length & (hd - 1)) != 0)]
            uses_b = (vop == VectorOp.ADD) | (vop == VectorOp.SWIGLU) | (vop == VectorOp.DEQUANT) | (
                vop == VectorOp.REQUANT)
            uses_p = (vop == VectorOp.RMSNORM) | rope | (vop == VectorOp.DEQUANT) | (vop == VectorOp.REQUANT)
            uses_s_in = (vop == VectorOp.REQUANT) | ((vop == VectorOp.DEQUANT) & f.flags[0])
            p_words = Mux(rope, hd >> (lgL + 1), words)
            ranges = [(1, f.a_addr, f.rows, f.a_stride, words, SP), (uses_b, f.b_addr, f.rows, f.b_stride, words, SP),
                      (uses_p, f.p_addr, f.rows, f.p_stride, p_words, SP), (uses_s_in, f.s_in_addr, f.rows, 1, 1, SP),
                      (1, f.o_addr, f.rows, f.o_stride, words, SP),
                      (vop == VectorOp.QUANT_TOKEN, f.s_out_addr, f.rows, 1, 1, SP)]
        elif op == isa.Opcode.SOFTMAX:
            fields = [f.rows == 0, f.length == 0, f.length > p["softmax_max_len"]]
            words = _ceil_shift(f.length, lgL)
            ranges = [(1, f.a_addr, f.rows, f.a_stride, words, SP), (1, f.o_addr, f.rows, f.o_stride, words, SP)]
        elif op == isa.Opcode.KV:
            append = f.op == KVOp.APPEND
            fields = [~((f.op == KVOp.ALLOC) | append | (f.op == KVOp.FREE)), append & (f.rows == 0)]
            kw = p["kv_row_words"]
            ranges = [(append, f.k_addr, f.rows, f.k_stride, kw, SP), (append, f.v_addr, f.rows, f.v_stride, kw, SP),
                      (append, 0, f.rows, 1, 1, p["kv_max_tokens"] or 1 << 16)]
        else:
            raise AssertionError(op)
        assert len(fields) + len(ranges) == len(CHECKS[op]), op
        return fields, ranges

    def _kv_checks(self, f, kt, nt):
        """The MATMUL field checks of KV-sourced weights (KV_K, KV_V), in the order of CHECKS."""
        p = self._p
        is_kv = (f.w_src == isa.WSource.KV_K) | (f.w_src == isa.WSource.KV_V)
        if not p["kv_head_dim"]:
            return [is_kv, Const(0), Const(0), Const(0)]
        tiles = p["kv_head_dim"] >> exact_log2(p["lanes"])
        key = f.w_src == isa.WSource.KV_K
        return [Const(0), is_kv & Mux(key, kt != tiles, nt != tiles), is_kv & (f.dtype != int(p["kv_bf16"])),
                is_kv & ((f.kv_start + Mux(key, f.n, f.k)) > p["kv_max_tokens"])]

    def elaborate(self, platform):
        m = Module()
        cur = Signal(instr_layout())
        cur_err = Signal()
        cur_eop = Signal()
        opv = data.View(isa.layout(isa.Opcode.END), cur.bits)
        views = {op: data.View(isa.layout(op), cur.bits) for op in CHECKS}
        unit = Signal(range(N_UNITS))
        running = Signal()     # between start and END, an error or halt
        ended = Signal()       # stopped by END
        m.d.comb += self.end.eq(ended)
        fifos = self._queues(m, cur)
        m.submodules.range_check = chk = RangeChecker(width=self._p["ext_bits"] + 2, bus_bytes=self._p["bus_bytes"])
        step = Signal(4)       # the range check of the opcode being done

        err_code = Signal(ChipError)
        err_detail = Signal(8)
        m.d.comb += [self.err_code.eq(err_code), self.err_detail.eq(err_detail), self.err_index.eq(cur.index)]

        def fail(code, detail):
            m.d.sync += [err_code.eq(code), err_detail.eq(detail)]
            m.next = "ERROR"

        m.d.comb += self.events.busy.eq(running)
        def start_here():
            with m.If(self.start):
                m.d.sync += [running.eq(1), ended.eq(0)] + [self.dispatched[u].eq(0) for u in range(N_UNITS)]
                m.next = "IDLE"

        with m.FSM(name="dispatch", init="STOPPED"):
            with m.State("STOPPED"):
                m.d.sync += running.eq(0)
                start_here()
            with m.State("IDLE"):
                with m.If(self.halt):
                    m.next = "STOPPED"
                m.d.comb += self.instr.ready.eq(~self.halt)
                with m.If(self.instr.valid & self.instr.ready):
                    m.d.sync += [cur.bits.eq(self.instr.payload.bits), cur.index.eq(self.instr.payload.index),
                                 cur_err.eq(self.instr.payload.error), cur_eop.eq(self.instr.payload.eop)]
                    m.next = "DECODE"
            with m.State("DECODE"):
                m.d.comb += self.events.decode.eq(1)
                with m.If(self.halt):
                    m.next = "STOPPED"
                with m.Elif(cur_err):
                    fail(ChipError.AXI_READ, 0)
                with m.Elif(cur_eop):
                    fail(ChipError.NO_END, 0)
                with m.Else():
                    self._decode_opcode(m, opv, unit, ended, fail)
            with m.State("FIELDS"):
                m.d.comb += self.events.decode.eq(1)
                m.d.sync += step.eq(0)
                self._field_checks(m, opv, views, fail)
            with m.State("RANGE_LOAD"):
                m.d.comb += self.events.decode.eq(1)
                self._range_load(m, opv, views, step, chk)
            # the checker's product, then its sum
            with m.State("RANGE_MUL"):
                m.d.comb += self.events.decode.eq(1)
                m.next = "RANGE_ADD"
            with m.State("RANGE_ADD"):
                m.d.comb += self.events.decode.eq(1)
                m.next = "RANGE_CMP"
            with m.State("RANGE_CMP"):
                m.d.comb += self.events.decode.eq(1)
                m.d.sync += step.eq(step + 1)
                with m.If(chk.over):
                    self._range_fail(m, opv, step, fail)
                with m.Else():
                    m.next = "RANGE_LOAD"
            with m.State("PUSH"):
                with m.If(self.halt):
                    m.next = "STOPPED"
                with m.Else():
                    self._push(m, fifos, unit)
            with m.State("ERROR"):
                m.d.comb += self.err_valid.eq(1)
                m.next = "STOPPED"
        return m

    # -- parts of elaborate: the queues and the bodies of the decode states --------------------
    def _queues(self, m, cur):
        """One FIFO of ``queue_depth`` instructions per unit, written with ``cur``, read on
        ``queues``."""
        fifos = []
        for u in range(N_UNITS):
            fifo = SyncFIFOBuffered(width=len(cur.as_value()), depth=self._queue_depth)
            m.submodules[f"queue{u}"] = fifo
            fifos.append(fifo)
            m.d.comb += [self.queues[u].valid.eq(fifo.r_rdy), self.queues[u].payload.eq(fifo.r_data),
                         fifo.r_en.eq(self.queues[u].ready), fifo.w_data.eq(cur)]
        return fifos

    def _decode_opcode(self, m, opv, unit, ended, fail):
        """DECODE: END stops; an opcode of one of this chip's units goes on to its field checks
        unless it waits for more instructions than have been dispatched (BAD_WAIT); any other
        opcode is BAD_OPCODE."""
        bad_wait = Signal()
        terms = [opv.wait_mask[N_UNITS:] != 0]
        for u in isa.Unit:
            count = getattr(opv, f"wait_{u.name.lower()}")
            terms.append(opv.wait_mask[int(u)] & (count > self.dispatched[int(u)]))
        m.d.comb += bad_wait.eq(Cat(*terms).any())
        with m.Switch(opv.opcode):
            with m.Case(isa.Opcode.END):
                m.d.sync += ended.eq(1)
                m.next = "STOPPED"
            for op in CHECKS:
                if isa.UNIT_OF[op] not in self._units:
                    continue
                with m.Case(op):
                    m.d.sync += unit.eq(isa.UNIT_OF[op])
                    with m.If(bad_wait):
                        fail(ChipError.BAD_WAIT, 0)
                    with m.Else():
                        m.next = "FIELDS"
            with m.Default():
                fail(ChipError.BAD_OPCODE, 0)

    def _field_checks(self, m, opv, views, fail):
        """FIELDS: the first failing field check of the opcode is BAD_FIELD with its number;
        none: on to the range checks."""
        with m.Switch(opv.opcode):
            for op, view in views.items():
                with m.Case(op):
                    fields, _ = self._checks(op, view)
                    with m.If(Cat(*fields).any()):
                        for i in reversed(range(len(fields))):
                            with m.If(fields[i]):
                                fail(ChipError.BAD_FIELD, i)
                    with m.Else():
                        m.next = "RANGE_LOAD"

    def _range_load(self, m, opv, views, step, chk):
        """RANGE_LOAD: the operands of range check ``step`` of the opcode into the checker (on
        to RANGE_MUL), or, after the last one, on to PUSH."""
        with m.Switch(opv.opcode):
            for op, view in views.items():
                with m.Case(op):
                    _, ranges = self._checks(op, view)
                    with m.If(step >= len(ranges)):
                        m.next = "PUSH"
                    with m.Else():
                        m.next = "RANGE_MUL"
                    with m.Switch(step):
                        for k, (en, base, count, stride, words, limit) in enumerate(ranges):
                            with m.Case(k):
                                if limit == "spad":
                                    lim, is_ext = self._p["spad_words"], 0
                                elif limit == "ext":
                                    lim, is_ext = self.ext_size, 1
                                else:
                                    lim, is_ext = limit, 0
                                m.d.comb += [chk.load.eq(1), chk.en.eq(en), chk.base.eq(base),
                                             chk.count.eq(count), chk.stride.eq(stride), chk.words.eq(words),
                                             chk.limit.eq(lim), chk.ext.eq(is_ext)]

    def _range_fail(self, m, opv, step, fail):
        """RANGE_CMP, range check ``step`` failed: its code (by kind) and its number among all
        the opcode's checks."""
        n_fields = {op: len([k for k, _ in CHECKS[op] if k == "field"]) for op in CHECKS}
        with m.Switch(opv.opcode):
            for op in CHECKS:
                with m.Case(op):
                    kinds = [k for k, _ in CHECKS[op] if k != "field"]
                    for k, kind in enumerate(kinds):
                        with m.If(step == k):
                            fail(_CODE_OF_KIND[kind], n_fields[op] + k)

    def _push(self, m, fifos, unit):
        """PUSH: the instruction into its unit's queue (``stall_queue`` while it is full)."""
        m.d.comb += self.events.stall_queue.eq(1)
        for u in range(N_UNITS):
            with m.If(unit == u):
                m.d.comb += fifos[u].w_en.eq(1)
                with m.If(fifos[u].w_rdy):
                    m.d.comb += [self.events.stall_queue.eq(0), self.events.dispatched.eq(1)]
                    m.d.sync += self.dispatched[u].eq(self.dispatched[u] + 1)
                    m.next = "IDLE"


class ProcState(enum.IntEnum, shape=2):
    """``STATUS.state``: what the command processor is doing."""
    IDLE = 0      #: no program since reset or CLEAR
    RUNNING = 1   #: a program runs (or stops after an error: ERROR follows once every unit is idle)
    DONE = 2      #: the last program ended with END, every unit idle
    ERROR = 3     #: the last program stopped on an error (ERROR_CODE, ERROR_DETAIL, ERROR_INDEX)


class CommandProcessor(wiring.Component):
    """Fetch, dispatch, retire, stop: the chip's control (docs/chip.md, "Command processor").

    Parameters
    ----------
    bus_bits, addr_bits : int
        AXI data and address widths.
    inflight : int
        Instruction fetches in flight.
    **dispatch : the :class:`Dispatcher` parameters.

    Members
    -------
    start : In(1)
        Starts the program at ``prog_addr`` (``prog_len`` instructions) when IDLE or DONE.
    clear : In(1)
        DONE or ERROR → IDLE (clears the error registers).
    prog_addr : In(addr_bits), prog_len : In(32), ext_size : In(addr_bits + 1)
    watchdog : In(32)
        Cycles without progress (no instruction fetched, dispatched or retired, no unit moving
        data) after which a running program stops with TIMEOUT; 0 disables it.
    state : Out(ProcState)
    err_code : Out(ChipError), err_detail : Out(8), err_index : Out(32)
    finished : Out(1)
        One-cycle pulse when a program reaches DONE or ERROR (the interrupt's source).
    fetch_req, fetch_data
        The fetcher's DMA read client (:class:`InstrFetcher` ``req``, ``rdata``).
    units : Out(UnitPortSignature()) × N_UNITS
    events : Out(events_layout)
        ``running``, ``draining``, ``retired`` (instructions retired this cycle, 0..N_UNITS).
    """

    events_layout = events_layout({"running": 1, "draining": 1, "retired": 3})

    def __init__(self, *, bus_bits, addr_bits, inflight=4, **dispatch):
        self._fetcher = InstrFetcher(bus_bits=bus_bits, addr_bits=addr_bits, inflight=inflight)
        self._dispatcher = Dispatcher(bus_bytes=bus_bits // 8, ext_bits=addr_bits, **dispatch)
        req_layout = data.StructLayout({"addr": addr_bits, "beats": 16})
        rdata_layout = data.StructLayout({"data": bus_bits, "last": 1, "error": 1})
        super().__init__({
            "start": In(1), "clear": In(1),
            "prog_addr": In(addr_bits), "prog_len": In(32), "ext_size": In(addr_bits + 1),
            "watchdog": In(32),
            "state": Out(ProcState), "err_code": Out(ChipError), "err_detail": Out(8),
            "err_index": Out(INDEX_BITS), "finished": Out(1),
            "fetch_req": Out(stream.Signature(req_layout)), "fetch_data": In(stream.Signature(rdata_layout)),
            "units": Out(UnitPortSignature()).array(N_UNITS),
            "events": Out(self.events_layout),
        })

    @property
    def dispatcher(self):
        return self._dispatcher

    @property
    def fetcher(self):
        return self._fetcher

    def elaborate(self, platform):
        m = Module()
        m.submodules.fetcher = fe = self._fetcher
        m.submodules.dispatcher = di = self._dispatcher
        m.d.comb += [self.fetch_req.valid.eq(fe.req.valid), self.fetch_req.payload.eq(fe.req.payload),
                     fe.req.ready.eq(self.fetch_req.ready),
                     fe.rdata.valid.eq(self.fetch_data.valid), fe.rdata.payload.eq(self.fetch_data.payload),
                     self.fetch_data.ready.eq(fe.rdata.ready)]
        m.d.comb += [fe.prog_addr.eq(self.prog_addr), fe.prog_len.eq(self.prog_len),
                     di.ext_size.eq(self.ext_size)]
        wiring.connect(m, fe.instr, di.instr)

        retired = Signal(data.ArrayLayout(_W, N_UNITS))
        draining = Signal()
        latched = Signal()
        err_code, err_detail, err_index = Signal(ChipError), Signal(8), Signal(INDEX_BITS)
        m.d.comb += [self.err_code.eq(err_code), self.err_detail.eq(err_detail), self.err_index.eq(err_index)]

        # units: queue heads, waits, answers
        all_idle = Signal()
        queues_empty = Signal()
        progress = Signal()
        retire_count = []
        unit_err = Signal()
        u_code, u_detail, u_index = Signal(ChipError), Signal(8), Signal(INDEX_BITS)
        for u in range(N_UNITS):
            port, q = self.units[u], di.queues[u]
            m.d.comb += [port.instr.payload.eq(q.payload), port.instr.valid.eq(q.valid & ~draining),
                         q.ready.eq(Mux(draining, 1, port.instr.ready)),
                         port.retired.eq(retired), port.abort.eq(draining), port.done.ready.eq(1)]
            m.d.comb += port.deps_ok.eq(deps_satisfied(m, q.payload.bits, retired, name=f"deps_ok{u}"))
            ok = port.done.valid & (port.done.payload.status == ChipError.OK)
            with m.If(ok):
                m.d.sync += retired[u].eq(retired[u] + 1)
            retire_count.append(ok)
            with m.If(port.done.valid & (port.done.payload.status != ChipError.OK)):
                m.d.comb += [unit_err.eq(1), u_code.eq(port.done.payload.status),
                             u_detail.eq(port.done.payload.detail), u_index.eq(port.done.payload.index)]
        m.d.comb += [all_idle.eq(Cat(*(p.idle for p in self.units)).all()),
                     queues_empty.eq(~Cat(*(q.valid for q in di.queues)).any()),
                     self.events.retired.eq(sum(retire_count))]
        m.d.comb += progress.eq(Cat(*(p.progress for p in self.units), *(p.done.valid for p in self.units),
                                    fe.rdata.valid & fe.rdata.ready, di.events.dispatched).any())
        done_all = Signal()
        m.d.comb += done_all.eq(Cat(*(retired[u] == di.dispatched[u] for u in range(N_UNITS))).all())

        quiet = Signal(32)
        timeout = Signal()
        m.d.comb += timeout.eq((self.watchdog != 0) & (quiet >= self.watchdog))

        def latch(code, detail, index):
            with m.If(~latched):
                m.d.sync += [latched.eq(1), err_code.eq(code), err_detail.eq(detail), err_index.eq(index)]

        with m.FSM(name="proc"):
            with m.State("IDLE"):
                m.d.comb += self.state.eq(ProcState.IDLE)
                with m.If(self.start & ~fe.busy):
                    m.next = "START"
            with m.State("START"):
                m.d.comb += [self.state.eq(ProcState.RUNNING), fe.start.eq(1), di.start.eq(1)]
                m.d.sync += [retired.eq(0), latched.eq(0), err_code.eq(ChipError.OK), err_detail.eq(0),
                             err_index.eq(0), quiet.eq(0)]
                m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += [self.state.eq(ProcState.RUNNING), self.events.running.eq(1)]
                m.d.sync += quiet.eq(Mux(progress, 0, quiet + 1))
                with m.If(di.err_valid):
                    latch(di.err_code, di.err_detail, di.err_index)
                    m.next = "DRAIN"
                with m.Elif(unit_err):
                    latch(u_code, u_detail, u_index)
                    m.next = "DRAIN"
                with m.Elif(timeout):
                    latch(ChipError.TIMEOUT, 0, 0)
                    m.next = "DRAIN"
                with m.Elif(di.end & all_idle & queues_empty & done_all & ~fe.busy):
                    m.d.comb += self.finished.eq(1)
                    m.next = "DONE"
                with m.Elif(di.end):
                    m.d.comb += fe.stop.eq(1)
            with m.State("DRAIN"):
                m.d.comb += [self.state.eq(ProcState.RUNNING), draining.eq(1), fe.stop.eq(1), di.halt.eq(1),
                             self.events.draining.eq(1)]
                with m.If(all_idle & queues_empty & ~fe.busy):
                    m.d.comb += self.finished.eq(1)
                    m.next = "ERROR"
            with m.State("DONE"):
                m.d.comb += self.state.eq(ProcState.DONE)
                with m.If(self.clear):
                    m.next = "IDLE"
                with m.Elif(self.start & ~fe.busy):
                    m.next = "START"
            with m.State("ERROR"):
                m.d.comb += self.state.eq(ProcState.ERROR)
                with m.If(self.clear):
                    m.d.sync += [latched.eq(0), err_code.eq(ChipError.OK), err_detail.eq(0), err_index.eq(0)]
                    m.next = "IDLE"
        return m
