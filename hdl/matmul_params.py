"""The matmul engine's parameters: the ``p`` stream (bias, requantization multiplier and shift of
an N tile) into a ring of entries, read by the issue (bias) and by the drain (multiplier and
shift), and the requantization check."""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from spec.codes import OutFormat

from .matmul_common import PARAM_ENTRIES, command_layout, lanes_below, param_layout, run_control
from .pipeline import check_ints
from .requant import requant_params_bad

__all__ = ["ParamSlots"]


class ParamSlots(wiring.Component):
    """A ring of :data:`~hdl.matmul_common.PARAM_ENTRIES` per-N-tile parameter entries, filled
    from ``p`` in N-tile order: N tile nt is entry nt mod PARAM_ENTRIES.

    Parameters
    ----------
    cols : int
        Lanes C.

    Members
    -------
    p : In(stream.Signature(param_layout(C)))
        One beat per N tile when ``need_p``; ready while an entry is free and beats are due.
    start, stop : In(1)
        From :class:`~hdl.matmul_seq.CommandSequencer`.
    command : In(command_layout())
        ``n`` and ``out_fmt``.
    need_p : In(1)
        The command takes parameter beats.
    tile_drained : In(1)
        The drain has read the last row of an N tile (the oldest entry is free again).
    loaded : Out(1)
        The next entry is written in this cycle (a beat taken in the cycle before); it can be
        read from the next cycle on.
    bias_addr : In(range(PARAM_ENTRIES))
    bias : Out(ArrayLayout(32, C))
        The bias of entry ``bias_addr`` of the cycle before (the issue's read port).
    rq_addr : In(range(PARAM_ENTRIES))
    multiplier, shift : Out(ArrayLayout(…, C))
        The requantization values of entry ``rq_addr`` of the cycle before (the drain's port).
    requant_err : Out(1)
        An INT8-format command had a multiplier ≥ 2^31 or a shift outside 1..62 in a column
        inside N (:func:`hdl.requant.requant_params_bad`); valid two cycles after the beat, kept
        until ``start``.

    Latency: a beat taken in cycle t is written in t + 1 (``loaded``) and can be read from t + 2.
    The entries are two memories (bias; multiplier and shift), each with one read port, not
    transparent: no read uses an entry in the cycle it is written.
    """

    def __init__(self, *, cols):
        check_ints(cols=(cols, 1, 64))
        self._cols = cols
        C = cols
        super().__init__({
            "p": In(stream.Signature(param_layout(C))),
            "start": In(1), "stop": In(1), "command": In(command_layout()), "need_p": In(1),
            "tile_drained": In(1), "loaded": Out(1),
            "bias_addr": In(range(PARAM_ENTRIES)), "bias": Out(data.ArrayLayout(32, C)),
            "rq_addr": In(range(PARAM_ENTRIES)),
            "multiplier": Out(data.ArrayLayout(32, C)), "shift": Out(data.ArrayLayout(8, C)),
            "requant_err": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        C = self._cols
        cmd = self.command
        start_p, run_p = run_control(m, self.start, self.stop, "p")
        p_wr = Signal(range(PARAM_ENTRIES))
        p_nrem = Signal(17)
        p_active = Signal()
        # entries written and not yet drained, and room = (occ != PARAM_ENTRIES), a register
        occ = Signal(range(PARAM_ENTRIES + 1))
        room = Signal(init=1)
        with m.If(start_p):
            m.d.sync += [p_wr.eq(0), p_nrem.eq(cmd.n), p_active.eq(self.need_p), occ.eq(0), room.eq(1)]
        p_take = Signal()
        taken = Signal()
        m.d.comb += [p_take.eq(run_p & p_active & room), self.p.ready.eq(p_take), taken.eq(p_take & self.p.valid)]
        with m.If(~start_p):
            with m.If(taken & ~self.tile_drained):
                m.d.sync += [occ.eq(occ + 1), room.eq(occ != PARAM_ENTRIES - 1)]
            with m.Elif(~taken & self.tile_drained):
                m.d.sync += [occ.eq(occ - 1), room.eq(1)]
        # A beat is written one cycle after it was taken, from registers (the beat, the entry
        # and the enable)
        p_in = Signal(param_layout(C), reset_less=True)
        wr_addr = Signal.like(p_wr)
        m.d.sync += [p_in.eq(self.p.payload), wr_addr.eq(p_wr), self.loaded.eq(taken & ~start_p)]
        bias_mem = m.submodules.bias_mem = Memory(shape=data.ArrayLayout(32, C), depth=PARAM_ENTRIES, init=[])
        rq_mem = m.submodules.rq_mem = Memory(
            shape=data.StructLayout({"multiplier": data.ArrayLayout(32, C), "shift": data.ArrayLayout(8, C)}),
            depth=PARAM_ENTRIES, init=[])
        for mem, value in ((bias_mem, p_in.bias), (rq_mem, Cat(p_in.multiplier, p_in.shift))):
            wp = mem.write_port()
            m.d.comb += [wp.addr.eq(wr_addr), wp.data.eq(value), wp.en.eq(self.loaded)]
        bias_rp = bias_mem.read_port()
        rq_rp = rq_mem.read_port()
        m.d.comb += [bias_rp.addr.eq(self.bias_addr), self.bias.eq(bias_rp.data),
                     rq_rp.addr.eq(self.rq_addr), self.multiplier.eq(rq_rp.data.multiplier),
                     self.shift.eq(rq_rp.data.shift)]
        # The int8 requantization's parameters are checked on p_in, one cycle after the take,
        # column by column, into a flag per column (p_err*), and requant_err is their OR one
        # cycle later (timing: one check gathered the compares of all C columns into one flag
        # across the die). p_nval[c] = lane c < p_nrem, a register updated with p_nrem;
        # p_inval[c] is lane c of a beat taken in the cycle before, for an int8 output only. The
        # sequencer reads the flag long after.
        p_nval = Signal(C)
        p_inval = Signal(C)
        m.d.sync += p_inval.eq(Mux(taken & (cmd.out_fmt == OutFormat.INT8), p_nval, 0))
        with m.If(start_p):
            m.d.sync += p_nval.eq(Cat(*lanes_below(cmd.n, C)))
        with m.Elif(taken):
            m.d.sync += p_nval.eq(Cat(*lanes_below(p_nrem, 2 * C)[C:]))
        p_err = [Signal(name=f"p_err{c}") for c in range(C)]
        for c in range(C):
            with m.If(start_p):
                m.d.sync += p_err[c].eq(0)
            with m.Elif(p_inval[c] & requant_params_bad(p_in.multiplier[c], p_in.shift[c])):
                m.d.sync += p_err[c].eq(1)
        m.d.sync += self.requant_err.eq(Cat(*p_err).any())
        with m.If(taken & ~start_p):
            m.d.sync += [p_wr.eq(Mux(p_wr == PARAM_ENTRIES - 1, 0, p_wr + 1)), p_nrem.eq(p_nrem - C)]
            with m.If(p_nrem <= C):
                m.d.sync += p_active.eq(0)
        return m
