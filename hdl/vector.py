"""The vector unit: every vector operation of the decoder layer, V elements per cycle.

Ops, streams, numerics, latencies and errors: docs/vector.md; codes and stream words per row:
:mod:`spec.vector`. :class:`VectorUnit` executes one command at a time (``rows`` rows of
``length`` elements); its parts:

* :class:`hdl.vector_lane.VectorLane` × V: the element-wise arithmetic (every op's last step);
* :class:`hdl.vector_row.RowEngine`: buffers rows for RMSNORM and RMSNORM_FP32 (pass 1);
* :class:`hdl.vector_token.TokenBuffer`: buffers rows for QUANT_TOKEN (the row's maximum);
* :class:`hdl.vector_rope.RopeFront`: pairs the two halves of each RoPE head;
* :class:`hdl.vector_hadamard.HadamardFront`: HADAMARD's first five butterfly stages;
* :class:`hdl.vector_table.ScaleTables`: the ROW_SCALE tables (TABLE) and the ``s_in`` stage.

The issue stage takes one beat per cycle from the op's source (the a/b/p streams and the
``s_in`` stage, the row engine, the token buffer or a front end) into the lanes, whose
pipeline advances when the output register is empty or read (``o.ready``), so back-pressure
stops everything and nothing is lost.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from spec.codes import Dtype
from spec.vector import (
    HADAMARD_BLOCK,
    MAX_HEAD_DIM,
    ROWS_BITS,
    SCALE_ENTRIES,
    VectorFlag,
    VectorOp,
    VectorStatus,
    VectorTable,
    cmd_fields,
)

from .config import ChipConfig
from .counters import events_layout
from .params import check_int
from .vector_hadamard import HadamardFront
from .vector_lane import LANE_LATENCY, VectorLane
from .vector_rope import RopeFront
from .vector_row import SLOTS, RowEngine
from .vector_table import ScaleTables
from .vector_token import TokenBuffer

__all__ = ["VectorUnit", "vector_events_layout"]


def vector_events_layout(lanes):
    """The ``events`` layout of a unit of ``lanes`` lanes (docs/vector.md "Counters")."""
    w = ceil_log2(4 * lanes + 1) + 1
    return events_layout({"busy": 1, "stall_input": 1, "stall_output": 1, "beats_in": 1,
                          "beats_out": 1, "mul_bf16": w, "mul_fp32": w, "add_fp32": w,
                          "mul_int": w, "rsqrt": 1, "buf_reads": w, "buf_writes": w})

class VectorUnit(wiring.Component):
    """Streaming vector unit, bit-exact with golden/vector.py and golden/layer.py.

    Parameters
    ----------
    lanes : int
        Elements per beat and per cycle V; a power of two, 1..64.
    max_len : int
        Longest row, 1..65536.
    ops : collection of :class:`spec.vector.VectorOp`, optional
        The ops the unit is built with (default: all). A command of another op answers BAD_OP.
        Without HADAMARD the unit has no :class:`~hdl.vector_hadamard.HadamardFront`; without
        RMSNORM_FP32 its lanes have no fp32 × bf16 gain multiplier; without TABLE no ROW_SCALE
        command can run (BAD_TABLE: no table is ever written), so the lanes' row-scale path is
        left out. The chip builds its unit with :data:`spec.vector.CHIP_OPS`.

    Members
    -------
    cmd : In(stream of :attr:`cmd_layout`)
        ``op`` (:class:`spec.vector.VectorOp`), ``dtype``, ``flags``, ``length``, ``rows``,
        ``head_dim``, ``shift``, ``imm0``, ``imm1`` (docs/vector.md).
    a, b, p : In(stream of ArrayLayout(32, V))
        Operand rows, second operand rows, parameters (:func:`spec.vector.stream_words`).
    s_in : In(stream of 32 bits)
        One per-row scalar (a :func:`spec.vector.row_word`: the row exponent, and j with ROW_SCALE).
    o : Out(stream of ArrayLayout(32, V))
        Result rows, ceil(length/V) beats each, lanes past the row's end 0.
    s_out : Out(stream of 32 bits)
        QUANT_TOKEN: each row's :func:`spec.vector.row_word` (e; with ROW_SCALE e and j).
    resp : Out(stream of {status: VectorStatus})
        One beat per command, in order, when its last output beat has been taken (a rejected
        command: at once; none of its stream beats is taken).
    events : Out(:attr:`events_layout`)

    Raises
    ------
    TypeError, ValueError
        A bad ``lanes``, ``max_len`` or ``ops``.

    Latency: :attr:`latency` cycles from an element-wise beat taken to its result on ``o``;
    :meth:`first_out_latency` for every op. Throughput: V elements per cycle (docs/vector.md).
    """

    def __init__(self, *, lanes, max_len, ops=None, rsqrt_steps=0):
        check_int("lanes", lanes, 1, 64, pow2=True)
        self._rsqrt_steps = check_int("rsqrt_steps", rsqrt_steps, 0, 8)
        check_int("max_len", max_len, 1, 1 << 16)
        self._ops = _check_ops(ops)
        self._v, self._max_len = lanes, max_len
        self._lw = max_len.bit_length()
        self._tw = ROWS_BITS + self._lw
        V = lanes
        super().__init__({
            "cmd": In(stream.Signature(self.cmd_layout)),
            "a": In(stream.Signature(data.ArrayLayout(32, V))),
            "b": In(stream.Signature(data.ArrayLayout(32, V))),
            "p": In(stream.Signature(data.ArrayLayout(32, V))),
            "s_in": In(stream.Signature(32)),
            "o": Out(stream.Signature(data.ArrayLayout(32, V))),
            "s_out": Out(stream.Signature(32)),
            "resp": Out(stream.Signature(data.StructLayout({"status": VectorStatus}))),
            "events": Out(self.events_layout),
        })

    @classmethod
    def from_config(cls, config):
        """The unit for a :class:`~hdl.config.ChipConfig` (``vector.lanes``, ``vector.max_len``)."""
        if not isinstance(config, ChipConfig):
            raise TypeError(f"config must be a ChipConfig, not {type(config).__name__}")
        return cls(lanes=config.vector.lanes, max_len=config.vector.max_len,
                   rsqrt_steps=config.vector.rsqrt_steps)

    @property
    def lanes(self):
        return self._v

    @property
    def max_len(self):
        return self._max_len

    @property
    def ops(self):
        """The ops the unit is built with (a tuple of :class:`~spec.vector.VectorOp`, in order)."""
        return self._ops

    @property
    def cmd_layout(self):
        fields = cmd_fields(self._max_len)
        fields["op"], fields["dtype"] = VectorOp, Dtype
        return data.StructLayout(fields)

    @property
    def events_layout(self):
        return vector_events_layout(self._v)

    @property
    def latency(self):
        """Cycles from an element-wise op's beat taken to its result beat valid on ``o``."""
        return LANE_LATENCY

    def first_out_latency(self, op, *, length, head_dim=None):
        """Cycles from a command's first ``a`` beat taken to its first ``o`` beat valid, without
        stalls (the figures of docs/vector.md, checked by the tests). TABLE has no output:
        ``ValueError``."""
        op = VectorOp(op)
        beats = -(-length // self._v)
        if op == VectorOp.TABLE:
            raise ValueError("TABLE writes no output")
        if op == VectorOp.ROPE:
            return head_dim // self._v + 1 + LANE_LATENCY   # the first head, one read
        if op in (VectorOp.RMSNORM, VectorOp.RMSNORM_FP32):
            # write (+1 register, +1 state), column sum (+5 stages; the fp32 square one more),
            # finisher, read (+1, +1)
            fin = RowEngine(lanes=self._v, max_len=self._max_len, rsqrt_steps=self._rsqrt_steps).finish_latency
            return beats + length + fin + 8 + (op == VectorOp.RMSNORM_FP32) + LANE_LATENCY
        if op == VectorOp.QUANT_TOKEN:
            # the row in (B beats), its scalars, the lanes
            tok = TokenBuffer.scalar_latency_for(self._v)
            return beats - 1 + tok + LANE_LATENCY
        if op == VectorOp.HADAMARD:
            return HadamardFront.latency_for(self._v) + LANE_LATENCY
        return LANE_LATENCY

    @property
    def throughput(self):
        """Elements per cycle, sustained (V)."""
        return self._v

    # ----------------------------------------------------------------------------------------

    def _status(self, m, c, written):
        """The command's status (spec.vector.command_status in hardware); ``written``: the
        ScaleTables' written bits."""
        V = self._v
        status = Signal(VectorStatus, name="cmd_status")
        hd = c.head_dim
        hd_pow2 = (hd & (hd - 1)) == 0
        hd_mask = Signal(len(hd), name="hd_mask")
        m.d.comb += hd_mask.eq(hd - 1)
        bad_hd = (hd < 2 * V) | (hd > MAX_HEAD_DIM) | ~hd_pow2 | ((c.length & hd_mask) != 0)
        e0 = c.imm0[23:31]
        e1 = c.imm1[23:31]
        normal0 = (e0 != 0) & (e0 != 0xFF) & ~c.imm0[31]
        eps_bad = (e0 == 0xFF) | (c.imm0[31] & (e0 != 0))
        invd_bad = (e1 == 0) | (e1 == 0xFF) | c.imm1[31]
        rope_scale_bad = (c.dtype == Dtype.INT8) & (c.imm0[31] | (c.shift == 0) | (c.shift == 63))
        table = c.op == VectorOp.TABLE
        bad_len = ((c.length == 0) | (c.length > self._max_len)
                   | ((c.op == VectorOp.HADAMARD) & ((c.length & (HADAMARD_BLOCK - 1)) != 0))
                   | (table & ((c.length & (V - 1)) != 0)))
        scaled = (c.flags & VectorFlag.ROW_SCALE).any()
        bad_table = ((table & (c.imm0 >= len(VectorTable)))
                     | ((c.op == VectorOp.QUANT_TOKEN) & scaled & ~written[VectorTable.QUANT])
                     | ((c.op == VectorOp.DEQUANT) & scaled & ~written[VectorTable.DEQUANT]))
        if len(self._ops) == len(VectorOp):
            bad_op = c.op >= len(VectorOp)
        else:
            bad_op = ~Cat(c.op == op for op in self._ops).any()
        with m.If(bad_op):
            m.d.comb += status.eq(VectorStatus.BAD_OP)
        with m.Elif(bad_len):
            m.d.comb += status.eq(VectorStatus.BAD_LENGTH)
        with m.Elif((c.rows == 0) | (table & (c.rows * c.length != SCALE_ENTRIES))):
            m.d.comb += status.eq(VectorStatus.BAD_ROWS)
        with m.Elif((c.op == VectorOp.ROPE) & bad_hd):
            m.d.comb += status.eq(VectorStatus.BAD_HEAD_DIM)
        with m.Elif(((c.op == VectorOp.ROPE) & rope_scale_bad)
                    | (((c.op == VectorOp.RMSNORM) | (c.op == VectorOp.RMSNORM_FP32)) & (eps_bad | invd_bad))
                    | ((c.op == VectorOp.QUANT_STATIC) & ~normal0)):
            m.d.comb += status.eq(VectorStatus.BAD_SCALE)
        with m.Elif(bad_table):
            m.d.comb += status.eq(VectorStatus.BAD_TABLE)
        with m.Else():
            m.d.comb += status.eq(VectorStatus.OK)
        return status

    def elaborate(self, platform):
        m = Module()
        V, lw = self._v, self._lw
        log2v = exact_log2(V)
        cur = Signal(self.cmd_layout, name="cur")
        busy = Signal()
        total = Signal(self._tw)          # output beats of the command
        beats = Signal(lw)                # beats per row
        c = self.cmd.payload
        m.submodules.row = row = RowEngine(lanes=V, max_len=self._max_len, rsqrt_steps=self._rsqrt_steps)
        m.submodules.tok = tok = TokenBuffer(lanes=V, max_len=self._max_len)
        m.submodules.rope = rope = RopeFront(lanes=V, total_width=self._tw)
        had = None
        if VectorOp.HADAMARD in self._ops:
            m.submodules.had = had = HadamardFront(lanes=V, total_width=self._tw)
        m.submodules.tab = tab = ScaleTables(lanes=V)
        status = self._status(m, c, tab.written)
        m.d.comb += self.cmd.ready.eq(~busy & ~self.resp.valid)
        cmd_fire = self.cmd.valid & self.cmd.ready
        n_beats = (c.length + (V - 1)) >> log2v
        start = Signal()
        m.d.comb += start.eq(cmd_fire & (status == VectorStatus.OK))
        with m.If(self.resp.valid & self.resp.ready):
            m.d.sync += self.resp.valid.eq(0)
        with m.If(cmd_fire):
            with m.If(status != VectorStatus.OK):
                m.d.sync += [self.resp.valid.eq(1), self.resp.payload.status.eq(status)]
            with m.Else():
                m.d.sync += [busy.eq(1), cur.eq(c), beats.eq(n_beats),
                             total.eq(Mux(c.op == VectorOp.TABLE, 0, c.rows * n_beats))]
        m.d.comb += [
            row.start.eq(start & ((c.op == VectorOp.RMSNORM) | (c.op == VectorOp.RMSNORM_FP32))),
            row.fp32.eq(c.dtype == Dtype.INT8),
            row.fp32_in.eq((c.op == VectorOp.RMSNORM_FP32) if VectorOp.RMSNORM_FP32 in self._ops else 0),
            row.length.eq(c.length), row.beats.eq(n_beats),
            row.rows.eq(c.rows), row.eps.eq(c.imm0), row.inv_d.eq(c.imm1),
            tok.start.eq(start & (c.op == VectorOp.QUANT_TOKEN)), tok.fp32.eq(c.dtype == Dtype.INT8),
            tok.scaled.eq((c.flags & VectorFlag.ROW_SCALE).any() if VectorOp.TABLE in self._ops else 0),
            tok.length.eq(c.length),
            tok.beats.eq(n_beats), tok.rows.eq(c.rows),
            tab.mu_j.eq(tok.mu_j), tab.mu_en.eq(tok.mu_en), tok.mu.eq(tab.mu),
            rope.start.eq(start & (c.op == VectorOp.ROPE)), rope.total.eq(c.rows * n_beats),
            rope.hb.eq(c.head_dim >> (log2v + 1)),
            *([] if had is None else [had.start.eq(start & (c.op == VectorOp.HADAMARD)),
                                      had.total.eq(c.rows * n_beats), had.fp32.eq(c.dtype == Dtype.INT8)]),
            tab.start.eq(start & (c.op == VectorOp.TABLE)), tab.table.eq(c.imm0[0]),
            tab.s_start.eq(start & _reads_s_in(c.op, c.flags)), tab.s_rows.eq(c.rows),
        ]
        done = self._issue(m, cur, busy, total, beats, dict(row=row, tok=tok, rope=rope, had=had, tab=tab))
        with m.If(done):
            m.d.sync += [busy.eq(0), self.resp.valid.eq(1), self.resp.payload.status.eq(VectorStatus.OK)]
        return m

    def _issue(self, m, cur, busy, total, beats, parts):
        """The issue stage, the lanes, the output and the events; returns the completion pulse."""
        V = self._v
        row, tok, rope, had, tab = (parts[k] for k in ("row", "tok", "rope", "had", "tab"))
        op = cur.op
        has = lambda o: (op == o) if o in self._ops else Const(0)
        is_tok, is_rope, is_had = (has(o) for o in (VectorOp.QUANT_TOKEN, VectorOp.ROPE, VectorOp.HADAMARD))
        is_row32 = has(VectorOp.RMSNORM_FP32)      # the rows again on b, the scalars from the row engine
        is_row = (op == VectorOp.RMSNORM) | is_row32
        fronts = tuple((sel, f) for sel, f in ((is_row, row), (is_tok, tok), (is_rope, rope), (is_had, had))
                       if f is not None)
        is_elem = ~(is_row | is_tok | is_rope | is_had | (op == VectorOp.TABLE))
        need_b = is_elem & ((op == VectorOp.ADD) | (op == VectorOp.SWIGLU) | (op == VectorOp.DEQUANT)
                            | (op == VectorOp.REQUANT)) | is_row32
        need_p = (is_elem & ((op == VectorOp.DEQUANT) | (op == VectorOp.REQUANT))) | is_row
        need_s = _reads_s_in(op, cur.flags)
        issued = Signal(self._tw)
        k = Signal(self._lw)       # beat within the row
        base = Signal(self._lw + 1)  # first element of the beat
        row_sc = Signal(32)
        row_rsc = Signal(32)
        first = k == 0
        vpipe = Signal(LANE_LATENCY, name="valid_pipe")
        en = Signal()
        m.d.comb += [en.eq(~vpipe[-1] | self.o.ready), self.o.valid.eq(vpipe[-1])]
        m.submodules.sout_fifo = sfifo = SyncFIFO(width=32, depth=SLOTS * max(V, 2))
        src_valid = _pick([(sel, f.o.valid) for sel, f in fronts], self.a.valid)
        ok = (src_valid & (~need_b | self.b.valid) & (~need_p | self.p.valid)
              & (~(need_s & first) | tab.row.valid) & (~(is_tok & first) | sfifo.w_rdy))
        issue = Signal()
        m.d.comb += issue.eq(busy & en & (issued != total) & ok)
        # the streams
        m.d.comb += [
            self.a.ready.eq(_pick([(sel, f.a.ready) for sel, f in fronts], issue & busy)),
            self.b.ready.eq(issue & need_b),
            self.p.ready.eq(_pick([(is_rope, rope.p.ready), (op == VectorOp.TABLE, tab.p.ready)], issue & need_p)),
            rope.p.valid.eq(self.p.valid & busy & is_rope), rope.p.payload.eq(self.p.payload),
            tab.p.valid.eq(self.p.valid & busy & (op == VectorOp.TABLE)), tab.p.payload.eq(self.p.payload),
            tab.s_in.valid.eq(self.s_in.valid), tab.s_in.payload.eq(self.s_in.payload),
            self.s_in.ready.eq(tab.s_in.ready), tab.row.ready.eq(issue & need_s & first),
        ]
        for sel, f in fronts:
            m.d.comb += [f.a.valid.eq(self.a.valid & busy & sel), f.a.payload.eq(self.a.payload),
                         f.o.ready.eq(issue & sel)]
        sc = _pick([(is_row, row.o.payload.sc), (is_tok, tok.o.payload.sc)],
                   Mux(first, tab.row.payload.word, row_sc))
        rsc = Mux(is_tok, tok.o.payload.mu, Mux(first, tab.row.payload.nu, row_rsc))
        m.d.comb += [sfifo.w_en.eq(issue & is_tok & first), sfifo.w_data.eq(tok.o.payload.sc),
                     self.s_out.valid.eq(sfifo.r_rdy), self.s_out.payload.eq(sfifo.r_data),
                     sfifo.r_en.eq(self.s_out.ready)]
        with m.If(issue):
            m.d.sync += [issued.eq(issued + 1), k.eq(k + 1), base.eq(base + V)]
            with m.If(k == beats - 1):
                m.d.sync += [k.eq(0), base.eq(0)]
            with m.If(first):
                m.d.sync += [row_sc.eq(sc), row_rsc.eq(rsc)]
        with m.If(~busy):
            m.d.sync += [issued.eq(0), k.eq(0), base.eq(0)]
        with m.If(en):
            m.d.sync += vpipe.eq(Cat(issue, vpipe[:-1]))
        masks = []
        for j in range(V):
            lane = VectorLane(ops=self._ops)
            m.submodules[f"lane{j}"] = lane
            mask = base + j < cur.length
            masks.append(mask)
            had_ab = [] if had is None else [(is_had, had.o.payload.a[j], had.o.payload.b[j])]
            a_src = _pick([(is_row32, self.b.payload[j]), (is_row, row.o.payload.x[j]), (is_tok, tok.o.payload.x[j]),
                           (is_rope, rope.o.payload.a[j])] + [(s, a) for s, a, _ in had_ab], self.a.payload[j])
            b_src = _pick([(is_rope, rope.o.payload.b[j])] + [(s, b) for s, _, b in had_ab], self.b.payload[j])
            m.d.comb += [
                lane.en.eq(en), lane.op.eq(op), lane.dtype.eq(cur.dtype), lane.flags.eq(cur.flags),
                lane.half.eq(rope.o.payload.half), lane.a.eq(a_src), lane.b.eq(b_src),
                lane.p.eq(self.p.payload[j]), lane.cs.eq(rope.o.payload.cs[j]), lane.sc.eq(sc),
                lane.rsc.eq(rsc), lane.imm0.eq(cur.imm0), lane.shift.eq(cur.shift), lane.mask.eq(mask),
                self.o.payload[j].eq(lane.y),
            ]
        out_cnt = Signal(self._tw)
        o_fire = self.o.valid & self.o.ready
        with m.If(o_fire):
            m.d.sync += out_cnt.eq(out_cnt + 1)
        done = Signal()
        m.d.comb += done.eq(busy & (out_cnt == total) & ~(is_tok & sfifo.r_rdy) & ~tab.busy)
        with m.If(done):
            m.d.sync += out_cnt.eq(0)
        self._events(m, dict(issue=issue, masks=masks, cur=cur, busy=busy, en=en, ok=ok, o_fire=o_fire,
                             left=issued != total), parts)
        return done

    def _events(self, m, x, parts):
        ev = self.events
        cur, issue = x["cur"], x["issue"]
        op, row = cur.op, parts["row"]
        n = Signal(range(self._v + 1), name="active_lanes")
        m.d.comb += n.eq(sum(x["masks"]))
        nn = Mux(issue, n, 0)
        int8 = cur.dtype == Dtype.INT8
        with m.Switch(op):
            with m.Case(VectorOp.ADD):
                m.d.comb += ev.add_fp32.eq(nn)
            with m.Case(VectorOp.SWIGLU):
                m.d.comb += ev.mul_bf16.eq(nn)
            with m.Case(VectorOp.ROPE):
                m.d.comb += [ev.mul_bf16.eq(Mux(int8, 0, 2 * nn)), ev.add_fp32.eq(Mux(int8, 0, nn)),
                             ev.mul_int.eq(Mux(int8, 3 * nn, 0))]
            with m.Case(VectorOp.RMSNORM):
                m.d.comb += [ev.mul_bf16.eq(nn + row.sq_ops), ev.mul_fp32.eq(nn + row.fin_ops),
                             ev.add_fp32.eq(row.sq_ops + row.fin_ops), ev.rsqrt.eq(row.fin_ops)]
            with m.Case(VectorOp.RMSNORM_FP32):
                m.d.comb += [ev.mul_fp32.eq(2 * nn + row.sq_ops + row.fin_ops),
                             ev.add_fp32.eq(row.sq_ops + row.fin_ops), ev.rsqrt.eq(row.fin_ops)]
            with m.Case(VectorOp.QUANT_STATIC, VectorOp.QUANT_TOKEN):
                m.d.comb += ev.mul_fp32.eq(nn)
            with m.Case(VectorOp.DEQUANT, VectorOp.REQUANT):
                m.d.comb += [ev.mul_int.eq(nn),
                             ev.mul_fp32.eq(Mux((cur.flags & VectorFlag.ROW_SCALE).any()
                                                & (op == VectorOp.DEQUANT), nn, 0))]
            with m.Case(VectorOp.HADAMARD):
                m.d.comb += ev.add_fp32.eq(6 * nn)
        bufs = [parts[k] for k in ("row", "tok", "rope", "had") if parts[k] is not None]
        m.d.comb += [
            ev.busy.eq(x["busy"]), ev.beats_out.eq(x["o_fire"]), ev.beats_in.eq(self.a.valid & self.a.ready),
            ev.stall_output.eq(x["busy"] & self.o.valid & ~self.o.ready),
            ev.stall_input.eq(x["busy"] & x["en"] & x["left"] & ~x["ok"] & ~(self.o.valid & ~self.o.ready)),
            ev.buf_reads.eq(sum(b.buf_reads for b in bufs)),
            ev.buf_writes.eq(sum(b.buf_writes for b in bufs)),
        ]


def _check_ops(ops):
    """``ops`` as a sorted tuple of VectorOp (None: all); TypeError/ValueError naming ``ops``."""
    if ops is None:
        return tuple(VectorOp)
    if isinstance(ops, (str, bytes, int)) or not hasattr(ops, "__iter__"):
        raise TypeError(f"ops must be a collection of VectorOp, not {ops!r}")
    out = set()
    for op in ops:
        try:
            out.add(VectorOp(op))
        except ValueError:
            raise ValueError(f"ops: {op!r} is not a VectorOp ({', '.join(o.name for o in VectorOp)})") from None
    if not out:
        raise ValueError("ops must name at least one VectorOp")
    return tuple(sorted(out))


def _reads_s_in(op, flags):
    """The command reads one ``s_in`` word per row (spec.vector.stream_words in hardware)."""
    return (op == VectorOp.REQUANT) | ((op == VectorOp.DEQUANT)
                                       & (flags & (VectorFlag.ROW_EXP | VectorFlag.ROW_SCALE)).any())


def _pick(cases, default):
    """The value of the first (select, value) whose select is 1, else ``default``."""
    out = default
    for sel, value in reversed(cases):
        out = Mux(sel, value, out)
    return out
