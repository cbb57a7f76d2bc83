"""The matmul engine's accumulator banks and drain: the array's partial sums into two banks (a
group of G N tiles of M rows each), and each finished bank through the output stage
(requantizer, fp32 → bf16) and the output FIFO onto ``o``."""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from spec.codes import OutFormat

from .arith import Fp32ToBf16Core
from .matmul_common import (
    KEEP,
    NO_RW_CHECK,
    PARAM_ENTRIES,
    command_layout,
    result_layout,
    run_control,
    shape_layout,
)
from .pipeline import check_ints
from .requant import PASS_MULTIPLIER, PASS_SHIFT, Requantizer, requant_input_layout

__all__ = ["AccumulatorDrain", "CVT_STAGES"]

#: Pipeline registers of the fp32 → bf16 conversion (``out_fmt = BF16``): a register between its
#: rounding add and its select (timing: a long route from the requantizer's registers). It reads
#: the requantizer's early pass-through, so this costs no cycle.
CVT_STAGES = 2


class AccumulatorDrain(wiring.Component):
    """Two accumulator banks (``2·acc_depth`` rows of C × 32 bits) and their drain.

    Parameters
    ----------
    rows, cols : int
        The array's R and C.
    acc_bits : int
        log2(acc_depth), the row address width of one bank.
    a_depth : int
        Activation buffer words (the widths of the write counts).
    dsp : str
        How the requantizer's multipliers are built.

    Members
    -------
    start, stop : In(1)
        From :class:`~hdl.matmul_seq.CommandSequencer`.
    command, shape : In
        ``n``, ``out_fmt``, ``interleave``; ``m_one``, ``m_last2``, ``g_one``, ``n_one``.
    result : In(ArrayLayout(32, C))
        The array's result row.
    res_valid, res_tag : In(ArrayLayout(…, 2))
        Two copies of the array's output valid and tag (bank, row): copy 0 beside the memory's
        write port, copy 1 beside the write counts.
    psum_addr : In(acc_bits + 1)
        The issue's read address; ``psum_data`` is that row one cycle later.
    issued, group_issued, bank, issue_active : In(1)
        From :class:`~hdl.matmul_issue.IssueControl`: a row / the last row of a group is issued
        into ``bank``; a row is left to issue.
    rq_addr : Out(range(PARAM_ENTRIES))
        The parameter entry of the N tile being drained (:class:`~hdl.matmul_params.ParamSlots`).
    multiplier, shift : In(ArrayLayout(…, C))
        That entry's requantization values, one cycle after ``rq_addr``.
    o : Out(stream.Signature(result_layout(C)))
        One beat per (N tile, row), N-tile-major; ``last`` on a command's last beat.
    drained, drained_bank : Out(1)
        Bank ``drained_bank`` has been read out in this cycle.
    tile_drained : Out(1)
        The last row of an N tile has been read in this cycle (its parameter entry is free).
    idle : Out(1)
        Nothing left to drain and every result has left the output FIFO.
    stall : Out(1)
        After the last row was issued, the drain waited for room in the output FIFO (registered).
    reads, writes : Out(1)
        An accumulator row read by the drain / written from the array in this cycle.

    The rows of a bank are drained in order (N tile g of the group at rows g·M …), once the
    group's last row has been issued and no row issued into the bank is still in the array.
    Latency: a drained row enters the output FIFO 3 + the requantizer's
    ``latency`` cycles after its read is decided (the memory read, its register, the output
    stage); the FIFO holds ``latency`` + 4 beats and the drain reads only while they have room.
    Throughput: one row per cycle. The memory is not transparent; no read uses a row in the
    cycle it is written.
    """

    def __init__(self, *, rows, cols, acc_bits, a_depth, dsp="generic"):
        check_ints(rows=(rows, 1, 64), cols=(cols, 1, 64), acc_bits=(acc_bits, 1, 16), a_depth=(a_depth, 2, 1 << 20))
        self._rows, self._cols, self._ab, self._a_depth = rows, cols, acc_bits, a_depth
        C, AB = cols, acc_bits
        self._requant = Requantizer(lanes=cols, tag_width=1, dsp=dsp)
        super().__init__({
            "start": In(1), "stop": In(1), "command": In(command_layout()), "shape": In(shape_layout(a_depth)),
            "result": In(data.ArrayLayout(32, C)),
            "res_valid": In(2), "res_tag": In(data.ArrayLayout(1 + AB, 2)),
            "psum_addr": In(1 + AB), "psum_data": Out(data.ArrayLayout(32, C)),
            "issued": In(1), "group_issued": In(1), "bank": In(1), "issue_active": In(1),
            "rq_addr": Out(range(PARAM_ENTRIES)),
            "multiplier": In(data.ArrayLayout(32, C)), "shift": In(data.ArrayLayout(8, C)),
            "o": Out(stream.Signature(result_layout(C))),
            "drained": Out(1), "drained_bank": Out(1), "tile_drained": Out(1), "idle": Out(1), "stall": Out(1),
            "reads": Out(1), "writes": Out(1),
        })

    @property
    def output_latency(self):
        """Cycles from a drain read to its beat entering the output FIFO."""
        return 3 + self._requant.latency

    @property
    def fifo_depth(self):
        return self._requant.latency + 4

    def elaborate(self, platform):
        m = Module()
        C, AB = self._cols, self._ab
        start_d, run_d = run_control(m, self.start, self.stop, "d")
        acc = m.submodules.acc = Memory(shape=data.ArrayLayout(32, C), depth=2 << AB, init=[], attrs=NO_RW_CHECK)
        acc_wp = acc.write_port()
        acc_rp = acc.read_port()        # issue: accumulator so far
        acc_dp = acc.read_port()        # drain: final values
        m.d.comb += [acc_wp.addr.eq(self.res_tag[0][:AB + 1]), acc_wp.data.eq(self.result),
                     acc_wp.en.eq(self.res_valid[0]), self.writes.eq(self.res_valid[0]),
                     acc_rp.addr.eq(self.psum_addr), self.psum_data.eq(acc_rp.data)]
        # rows in flight per bank: +1 per row issued into it, −1 per row written to it;
        # inf_z[b] = (inflight[b] == 0), kept as a register (timing: it gates the drain)
        inflight = [Signal(range(self._a_depth + 1), name=f"inflight{b}") for b in range(2)]
        inf_z = Signal(2, init=0b11)
        i_done = Signal(2)               # bank: all rows of its group issued
        with m.If(start_d):
            m.d.sync += [inf_z.eq(0b11), i_done.eq(0)] + [x.eq(0) for x in inflight]
        for b in range(2):
            up = self.issued & (self.bank == b)
            down = self.res_valid[1] & (self.res_tag[1][AB] == b)
            with m.If(~start_d & up & ~down):
                m.d.sync += [inflight[b].eq(inflight[b] + 1), inf_z[b].eq(0)]
            with m.Elif(~start_d & ~up & down):
                m.d.sync += [inflight[b].eq(inflight[b] - 1), inf_z[b].eq(inflight[b] == 1)]
            with m.If(self.group_issued & (self.bank == b)):
                m.d.sync += i_done[b].eq(1)

        # the drain's loop: d_row (row of the bank), d_end (last row of the N tile), d_glast
        # (last N tile of the group: d_g = 0 or the command's last), d_nrem (N − n0 of the tile)
        d_active, d_bank, d_m, d_row, d_nrem = Signal(), Signal(), Signal(16), Signal(AB + 1), Signal(17)
        d_g = Signal(4)
        d_pt = Signal(range(PARAM_ENTRIES))
        pending = Signal(range(self.fifo_depth + 1))
        cmd, shape = self.command, self.shape
        d_end = Signal()    # d_m == M − 1, a register
        d_glast = Signal()
        with m.If(start_d):
            m.d.sync += [d_active.eq(1), d_bank.eq(0), d_m.eq(0), d_row.eq(0), d_nrem.eq(cmd.n), d_pt.eq(0),
                         d_g.eq(cmd.interleave), d_end.eq(shape.m_one), d_glast.eq(shape.g_one | shape.n_one)]
        d_ready, d_go = Signal(), Signal()
        m.d.comb += d_ready.eq(i_done.bit_select(d_bank, 1) & inf_z.bit_select(d_bank, 1))
        m.d.comb += d_go.eq(run_d & d_active & d_ready & (pending < self.fifo_depth))
        m.d.comb += [acc_dp.addr.eq(Cat(d_row[:AB], d_bank)), self.reads.eq(d_go), self.rq_addr.eq(d_pt)]
        d_last = Signal()
        m.d.comb += [d_last.eq(d_end & (d_nrem <= C)), self.drained.eq(d_go & d_end & d_glast),
                     self.drained_bank.eq(d_bank), self.tile_drained.eq(d_go & d_end)]
        with m.If(d_go):
            with m.If(d_end):
                m.d.sync += [d_m.eq(0), d_end.eq(shape.m_one), d_nrem.eq(d_nrem - C),
                             d_pt.eq(Mux(d_pt == PARAM_ENTRIES - 1, 0, d_pt + 1))]
                with m.If(d_glast):
                    m.d.sync += [d_row.eq(0), i_done.bit_select(d_bank, 1).eq(0), d_bank.eq(~d_bank),
                                 d_g.eq(cmd.interleave), d_glast.eq(shape.g_one | (d_nrem <= 2 * C))]
                with m.Else():
                    m.d.sync += [d_row.eq(d_row + 1), d_g.eq(d_g - 1), d_glast.eq((d_g == 1) | (d_nrem <= 2 * C))]
                with m.If(d_nrem <= C):
                    m.d.sync += d_active.eq(0)
            with m.Else():
                m.d.sync += [d_m.eq(d_m + 1), d_row.eq(d_row + 1), d_end.eq(d_m == shape.m_last2)]
        m.d.sync += self.stall.eq(~d_go & run_d & ~self.issue_active & d_active & d_ready)

        o_fire = self._output_stage(m, acc_dp.data, d_go, d_last)
        with m.If(start_d):
            m.d.sync += pending.eq(0)
        with m.Elif(d_go & ~o_fire):
            m.d.sync += pending.eq(pending + 1)
        with m.Elif(~d_go & o_fire):
            m.d.sync += pending.eq(pending - 1)
        m.d.comb += self.idle.eq(~d_active & (pending == 0))
        return m

    def _output_stage(self, m, row, d_go, d_last):
        """d1 (memory data) → stage 0 → the requantizer → FIFO; returns the ``o`` handshake."""
        C, cmd = self._cols, self.command
        d1_valid, d1_last = Signal(), Signal()
        m.d.sync += [d1_valid.eq(d_go), d1_last.eq(d_last)]
        # The output format: each column has its own three select registers, set from the
        # command's format (timing: one command register reached the 32·C output multiplexers
        # across the die). They follow ``command`` one cycle late; it changes only at an
        # accept, after the previous command's last row.
        sels = []
        for c in range(C):
            sel_q, sel_bf, sel_raw = (Signal(name=f"out_sel{c}_{what}", attrs=KEEP) for what in ("q", "bf", "raw"))
            m.d.sync += [sel_q.eq(cmd.out_fmt == OutFormat.INT8), sel_bf.eq(cmd.out_fmt == OutFormat.BF16),
                         sel_raw.eq((cmd.out_fmt != OutFormat.INT8) & (cmd.out_fmt != OutFormat.BF16))]
            sels.append((sel_q, sel_bf, sel_raw))
        # stage 0 registers the accumulator memory's output (a block RAM's clock-to-output
        # delay leaves no room for logic after it) with the row's parameters (read from their
        # entry in the cycle of the row's read, like the row): the requantizer's
        # input. The other formats pass the accumulators through it unchanged, with multiplier
        # 256 and shift 8: int32/fp32 results come from its pass-through register and the bf16
        # conversion reads its early pass-through.
        rq = m.submodules.requant = self._requant
        rq_in = Signal(requant_input_layout(C, 1), reset_less=True)
        s0_valid = Signal()
        m.d.sync += [rq_in.acc.eq(row), rq_in.tag.eq(d1_last), s0_valid.eq(d1_valid)]
        for c in range(C):
            sel_q = sels[c][0]
            m.d.sync += [
                rq_in.multiplier[c].eq(Mux(sel_q, self.multiplier[c], PASS_MULTIPLIER)),
                rq_in.shift[c].eq(Mux(sel_q, self.shift[c], PASS_SHIFT))]
        m.d.comb += [rq.i.payload.eq(rq_in), rq.i.valid.eq(s0_valid)]
        assert rq.early_lead == Fp32ToBf16Core.latency_for(CVT_STAGES)
        out = Signal(result_layout(C))
        for c in range(C):
            core = m.submodules[f"to_bf16_{c}"] = Fp32ToBf16Core(stages=CVT_STAGES)
            m.d.comb += [core.en.eq(1), core.a.eq(rq.early[c])]
            sel_q, sel_bf, sel_raw = sels[c]
            q_ext = Signal(32, name=f"out_q{c}")
            m.d.comb += [q_ext.eq(rq.o.payload.q[c]),
                         out.data[c].eq((q_ext & sel_q.replicate(32)) | (core.y & sel_bf.replicate(16))
                                        | (rq.o.payload.passthrough[c] & sel_raw.replicate(32)))]
        m.d.comb += out.last.eq(rq.o.payload.tag)
        fifo = m.submodules.out_fifo = SyncFIFOBuffered(width=len(out.as_value()), depth=self.fifo_depth)
        m.d.comb += [fifo.w_data.eq(out), fifo.w_en.eq(rq.o.valid),
                     self.o.valid.eq(fifo.r_rdy), self.o.payload.eq(fifo.r_data), fifo.r_en.eq(self.o.ready)]
        o_fire = Signal()
        m.d.comb += o_fire.eq(self.o.valid & self.o.ready)
        return o_fire
