"""The matmul engine's command sequencer: accepts a command, checks it, derives its sizes,
starts the other parts and answers with the response when they are done."""

import numpy as np
from amaranth.hdl import Array, Const, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from spec.codes import MatmulStatus as Status
from spec.codes import OutFormat

from .dsp import RegisteredMultiplier
from .matmul_common import CYCLES_WIDTH, MAX_INTERLEAVE, command_layout, response_layout, shape_layout
from .pipeline import check_ints

__all__ = ["CommandSequencer", "SETUP_CYCLES"]

#: Cycles of setup in a command's ``cycles``: SETUP1..4, the product's three cycles and START
#: (``start`` comes in the last setup state, SETUP4, seven cycles after the accept).
SETUP_CYCLES = 8


def _reciprocal(divisor, bits):
    """(multiplier, shift) with ``x * multiplier >> shift == x // divisor`` for all x < 2**bits."""
    shift = bits + ceil_log2(divisor)
    mult = -(-(1 << shift) // divisor)
    x = np.arange(1 << bits, dtype=np.int64)
    # exhaustive check at elaboration (x·mult < 2**63 for bits ≤ 17, divisor ≤ 64)
    if not np.array_equal((x * mult) >> shift, x // divisor):
        raise AssertionError(f"no exact reciprocal of {divisor} for {bits}-bit numerators")
    return mult, shift


class CommandSequencer(wiring.Component):
    """Command checks, sizes, start and response of the matmul engine.

    Parameters
    ----------
    rows, cols : int
        The array's R and C.
    acc_depth, a_depth : int
        Largest M; activation buffer words.
    dsp : str
        How the setup's product M·⌈K/R⌉ is built (:class:`hdl.dsp.RegisteredMultiplier`).

    Members
    -------
    cmd : In(stream.Signature(command_layout()))
        Accepted only while idle (``ready`` is a state of its own, independent of ``valid``).
    resp : Out(stream.Signature(response_layout()))
        One beat per command: ``code`` (:class:`spec.codes.MatmulStatus`) and ``cycles``.
    busy : Out(1)
        From the cycle after an accept to the response's handshake (``~cmd.ready``).
    command : Out(command_layout())
        The accepted command, a register (changes only at an accept).
    shape : Out(shape_layout(a_depth))
        Its derived sizes, registers, valid from ``start`` on.
    start : Out(1)
        One cycle: the command is good and runs; every part registers it into its own
        ``start`` copy (the cycle after) and runs from the cycle after that.
    stop : Out(1)
        One cycle: ``done`` while running; the parts' ``running`` copies end.
    done : In(1)
        Every result of the running command has left (the drain is idle).
    requant_err : In(1)
        A requantization parameter was out of contract (answered BAD_REQUANT).

    Latency: a bad command (ZERO_DIM, M_TOO_LARGE, GROUP_TOO_LARGE, BAD_FORMAT, BAD_W_FORMAT) is
    answered two cycles after its accept, A_TOO_LARGE eight; a good one's ``start`` comes seven cycles after
    its accept, and the parts run from the ninth (``SETUP_CYCLES`` cycles of setup are counted in
    ``cycles``).
    """

    def __init__(self, *, rows, cols, acc_depth, a_depth, dsp="generic"):
        check_ints(rows=(rows, 1, 64), cols=(cols, 1, 64), acc_depth=(acc_depth, 2, 65536),
                   a_depth=(a_depth, 2, 1 << 20))
        self._rows, self._cols, self._acc_depth, self._a_depth, self._dsp = rows, cols, acc_depth, a_depth, dsp
        super().__init__({
            "cmd": In(stream.Signature(command_layout())),
            "resp": Out(stream.Signature(response_layout())),
            "busy": Out(1),
            "command": Out(command_layout()),
            "shape": Out(shape_layout(a_depth)),
            "start": Out(1), "stop": Out(1),
            "done": In(1), "requant_err": In(1),
        })

    @property
    def setup_cycles(self):
        return SETUP_CYCLES

    def elaborate(self, platform):
        m = Module()
        R, C = self._rows, self._cols
        cmd, shape = self.command, self.shape
        code = Signal(4)
        cycles = Signal(CYCLES_WIDTH)
        kt_count = Signal(16)
        words_full = Signal(33)
        a_too_large = Signal()  # words_full > a_depth, a register (timing: start tests it)
        k_pad = Signal(17)
        rmult, rshift = _reciprocal(R, 17)  # ceil(K / R) = (K + R − 1)·rmult >> rshift
        # M·kt_count, the activation words of the command, in a DSP block with its registers
        # (timing: a one-off product, but an unregistered one was a critical path on ECP5)
        words_mul = m.submodules.words_mul = RegisteredMultiplier(17, 17, dsp=self._dsp)
        m.d.comb += [words_mul.a.eq(cmd.m), words_mul.b.eq(kt_count)]
        m.d.comb += [self.resp.payload.code.eq(code), self.resp.payload.cycles.eq(cycles)]
        # the largest M of each interleave, acc_depth // G, looked up as the command is accepted:
        # G·M ≤ acc_depth is then one comparison in SETUP1
        m_max = Signal(range(self._acc_depth + 1))
        m_max_of = Array(Const(self._acc_depth // (g + 1), len(m_max)) for g in range(MAX_INTERLEAVE))

        # Setup is a chain of registered steps (each one adder, multiplier or comparison)
        with m.FSM(name="engine"):
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    m.d.sync += [cmd.eq(self.cmd.payload), m_max.eq(m_max_of[self.cmd.payload.interleave])]
                    m.next = "SETUP1"
            with m.State("SETUP1"):
                m.d.sync += [k_pad.eq(cmd.k + (R - 1)), shape.m_last.eq(cmd.m - 1), shape.m_last2.eq(cmd.m - 2),
                             shape.m_one.eq(cmd.m == 1), shape.k_one.eq(cmd.k <= R), shape.n_one.eq(cmd.n <= C),
                             shape.g_one.eq(cmd.interleave == 0),
                             shape.need_p.eq(cmd.has_bias | (cmd.out_fmt == OutFormat.INT8))]
                with m.If((cmd.m == 0) | (cmd.k == 0) | (cmd.n == 0)):
                    m.d.sync += code.eq(Status.ZERO_DIM)
                    m.next = "RESP"
                with m.Elif(cmd.m > self._acc_depth):
                    m.d.sync += code.eq(Status.M_TOO_LARGE)
                    m.next = "RESP"
                with m.Elif(cmd.m > m_max):
                    m.d.sync += code.eq(Status.GROUP_TOO_LARGE)
                    m.next = "RESP"
                with m.Elif(cmd.dtype != cmd.out_fmt[1]):
                    m.d.sync += code.eq(Status.BAD_FORMAT)
                    m.next = "RESP"
                with m.Elif(cmd.w_wide & (cmd.dtype | cmd.w_transposed)):
                    m.d.sync += code.eq(Status.BAD_W_FORMAT)
                    m.next = "RESP"
                with m.Else():
                    m.d.sync += code.eq(Status.OK)
                    m.next = "SETUP2"
            with m.State("SETUP2"):
                if R & (R - 1) == 0:
                    m.d.sync += kt_count.eq(k_pad >> (R.bit_length() - 1))
                else:
                    m.d.sync += kt_count.eq((k_pad * rmult) >> rshift)
                m.next = "SETUP3"
            with m.State("SETUP3"):
                # the product M·kt_count leaves the multiplier two cycles after its operands
                m.next = "SETUP3_MUL"
            with m.State("SETUP3_MUL"):
                m.next = "SETUP3_P"
            with m.State("SETUP3_P"):
                m.d.sync += words_full.eq(words_mul.p)
                m.next = "SETUP3_CHK"
            with m.State("SETUP3_CHK"):
                m.d.sync += a_too_large.eq(words_full > self._a_depth)
                m.next = "SETUP4"
            with m.State("SETUP4"):
                with m.If(a_too_large):
                    m.d.sync += code.eq(Status.A_TOO_LARGE)
                    m.next = "RESP"
                with m.Else():
                    m.d.sync += shape.words.eq(words_full)
                    m.d.comb += self.start.eq(1)
                    m.next = "START"
            with m.State("START"):
                m.next = "RUN"
            with m.State("RUN"):
                with m.If(self.done):
                    m.d.comb += self.stop.eq(1)
                    with m.If(self.requant_err):
                        m.d.sync += code.eq(Status.BAD_REQUANT)
                    m.next = "RESP"
            with m.State("RESP"):
                m.d.comb += self.resp.valid.eq(1)
                with m.If(self.resp.ready):
                    m.next = "IDLE"
        # cycles: from the cycle after the command was accepted to the response (inclusive); it
        # restarts at 1 in SETUP1 from a clear register (timing: not from the accept itself)
        clear = Signal()
        m.d.sync += clear.eq(self.cmd.valid & self.cmd.ready)
        with m.If(clear):
            m.d.sync += cycles.eq(1)
        with m.Elif(~self.cmd.ready & ~self.resp.valid):
            m.d.sync += cycles.eq(cycles + 1)
        m.d.comb += self.busy.eq(~self.cmd.ready)
        return m
