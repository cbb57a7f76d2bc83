"""The matmul engine's parameter slots: the ``p`` stream (bias, requantization multiplier and
shift of an N tile) into two slots, one per accumulator bank, and the requantization check."""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from spec.codes import OutFormat

from .matmul_common import KEEP, command_layout, lanes_below, param_layout, run_control
from .pipeline import check_ints
from .requant import requant_params_bad

__all__ = ["ParamSlots"]


class ParamSlots(wiring.Component):
    """Two slots of per-N-tile parameters, filled from ``p`` in N-tile order.

    Parameters
    ----------
    cols : int
        Lanes C.

    Members
    -------
    p : In(stream.Signature(param_layout(C)))
        One beat per N tile when ``need_p``; ready while a slot is free and beats are due.
    start, stop : In(1)
        From :class:`~hdl.matmul_seq.CommandSequencer`.
    command : In(command_layout())
        ``n`` and ``out_fmt``.
    need_p : In(1)
        The command takes parameter beats.
    full : In(2)
        Slot b holds an N tile's parameters not yet drained (the issue's copy of its flags).
    loaded, loaded_slot : Out(1)
        A beat is taken into slot ``loaded_slot`` in this cycle (the issue marks it full; its
        registers hold the values from the cycle after next, when the bias is first read).
    bias, multiplier, shift : Out(ArrayLayout(…, 2))
        The slots (registers): ``bias[b][c]``, ``multiplier[b][c]``, ``shift[b][c]``.
    requant_err : Out(1)
        An INT8-format command had a multiplier ≥ 2^31 or a shift outside 1..62 in a column
        inside N (:func:`hdl.requant.requant_params_bad`); valid two cycles after the beat, kept
        until ``start``.

    Latency: a beat taken in cycle t is in its slot's registers from t + 2.
    """

    def __init__(self, *, cols):
        check_ints(cols=(cols, 1, 64))
        self._cols = cols
        C = cols
        super().__init__({
            "p": In(stream.Signature(param_layout(C))),
            "start": In(1), "stop": In(1), "command": In(command_layout()), "need_p": In(1),
            "full": In(2), "loaded": Out(1), "loaded_slot": Out(1),
            "bias": Out(data.ArrayLayout(data.ArrayLayout(32, C), 2)),
            "multiplier": Out(data.ArrayLayout(data.ArrayLayout(32, C), 2)),
            "shift": Out(data.ArrayLayout(data.ArrayLayout(8, C), 2)),
            "requant_err": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        C = self._cols
        cmd = self.command
        start_p, run_p = run_control(m, self.start, self.stop, "p")
        p_slot = Signal()
        p_nrem = Signal(17)
        p_active = Signal()
        with m.If(start_p):
            m.d.sync += [p_slot.eq(0), p_nrem.eq(cmd.n), p_active.eq(self.need_p)]
        p_take = Signal()
        m.d.comb += [p_take.eq(run_p & p_active & ~self.full.bit_select(p_slot, 1)), self.p.ready.eq(p_take),
                     self.loaded.eq(p_take & self.p.valid), self.loaded_slot.eq(p_slot)]
        # A beat is copied into its slot one cycle after it was taken: every cycle p_in registers
        # the payload, and per-column load strobes (one register per slot and column) enable the
        # slot's registers (timing: one enable net would reach the 72·C flip-flops of a slot
        # across the die). The slot is marked full at once: its first reader, the bias select of
        # a row issued from the next cycle on, samples it two cycles after the issue.
        p_in = Signal(param_layout(C), reset_less=True)
        m.d.sync += p_in.eq(self.p.payload)
        # The int8 requantization's parameters are checked on p_in, one cycle after the take,
        # column by column, into a flag per column (p_err*) beside that column's slot registers,
        # and requant_err is their OR one cycle later (timing: one check gathered the compares
        # of all C columns into one flag across the die). p_nval[c] = lane c < p_nrem, a
        # register updated with p_nrem; p_inval[c] is lane c of a beat taken in the cycle
        # before, for an int8 output only. The sequencer reads the flag long after.
        p_nval = Signal(C)
        p_inval = Signal(C)
        m.d.sync += p_inval.eq(Mux(self.loaded & (cmd.out_fmt == OutFormat.INT8), p_nval, 0))
        with m.If(start_p):
            m.d.sync += p_nval.eq(Cat(*lanes_below(cmd.n, C)))
        with m.Elif(self.loaded):
            m.d.sync += p_nval.eq(Cat(*lanes_below(p_nrem, 2 * C)[C:]))
        p_err = [Signal(name=f"p_err{c}") for c in range(C)]
        for c in range(C):
            with m.If(start_p):
                m.d.sync += p_err[c].eq(0)
            with m.Elif(p_inval[c] & requant_params_bad(p_in.multiplier[c], p_in.shift[c])):
                m.d.sync += p_err[c].eq(1)
        m.d.sync += self.requant_err.eq(Cat(*p_err).any())
        for b in range(2):
            for c in range(C):
                ld = Signal(name=f"p_ld{b}_{c}", attrs=KEEP)
                m.d.sync += ld.eq(self.loaded & (p_slot == b))
                with m.If(ld):
                    m.d.sync += [self.bias[b][c].eq(p_in.bias[c]), self.multiplier[b][c].eq(p_in.multiplier[c]),
                                 self.shift[b][c].eq(p_in.shift[c])]
        with m.If(self.loaded):
            m.d.sync += [p_slot.eq(~p_slot), p_nrem.eq(p_nrem - C)]
            with m.If(p_nrem <= C):
                m.d.sync += p_active.eq(0)
        return m
