"""The SOFTMAX unit of the chip: SOFTMAX instructions → the softmax unit, its score reader and
probability writer (docs/chip.md, "SOFTMAX").

* :class:`SoftmaxExec`: one SOFTMAX instruction (``rows`` rows of ``length`` scores) at a time:
  one :class:`hdl.softmax.SoftmaxUnit` command per row, the score rows read from the
  scratchpad, the probability rows written back;
* :class:`WordNarrower`: scratchpad words of L lanes → the unit's beats of P lanes (P divides L);
* :class:`BeatWidener`: the unit's beats of P 16-bit lanes → scratchpad words of L 32-bit lanes.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from spec import isa
from spec.codes import ChipError, SoftmaxStatus

from .agu import SpadReader, SpadWriter, read_data_layout, write_data_layout
from .cmdproc import UnitPortSignature
from .config import ChipConfig
from .exec_vector import exec_events_layout, saturate
from .scratchpad import address_width, check_int, read_port_signature, write_port_signature
from .softmax import SoftmaxUnit
from .softmax import out_layout as softmax_out_layout
from .units import InstrSlot

__all__ = ["SoftmaxExec", "WordNarrower", "BeatWidener"]


def _check_lanes(lanes, beat_lanes):
    check_int("lanes", lanes, 1, 64, pow2=True)
    check_int("beat_lanes", beat_lanes, 1, 64, pow2=True)
    if beat_lanes > lanes:
        raise ValueError(f"beat_lanes ({beat_lanes}) must divide lanes ({lanes})")


class WordNarrower(wiring.Component):
    """Splits the words of rows into beats of P lanes, without the beats past a row's end.

    A row of ``length`` elements is W = ceil(length/L) words; its beats are the ceil(length/P)
    first P-lane pieces of those words, lowest lanes first: every word gives L/P beats except a
    row's last (``last0``), which gives only those holding elements of the row.

    Parameters
    ----------
    lanes : int
        L, lanes of a word (a power of two, 1..64).
    beat_lanes : int
        P, lanes of a beat (a power of two dividing L).
    length_width : int
        Bits of ``length``.

    Members
    -------
    length : In(length_width)
        Elements per row (≥ 1), held while rows pass.
    flush : In(1)
        Take the words and drop them (no beat out).
    i : In(stream of hdl.agu.read_data_layout(L))
        Words with the reader's ``last0`` (a row's last word).
    o : Out(stream of ArrayLayout(32, P))
        Beats.

    Combinational (no latency); one beat per cycle.
    """

    def __init__(self, *, lanes, beat_lanes, length_width):
        _check_lanes(lanes, beat_lanes)
        check_int("length_width", length_width, 1, 32)
        self._l, self._p = lanes, beat_lanes
        super().__init__({
            "length": In(length_width), "flush": In(1),
            "i": In(stream.Signature(read_data_layout(lanes))),
            "o": Out(stream.Signature(data.ArrayLayout(32, beat_lanes))),
        })

    def elaborate(self, platform):
        m = Module()
        L, P = self._l, self._p
        R = L // P
        word = self.i.payload.data.as_value()
        if R == 1:
            m.d.comb += [self.o.payload.eq(word), self.o.valid.eq(self.i.valid & ~self.flush),
                         self.i.ready.eq(self.o.ready | self.flush)]
            return m
        j = Signal(range(R))
        tail = Signal(range(R))          # index of the last beat of a row's last word
        m.d.comb += tail.eq(((self.length - 1) >> exact_log2(P))[:exact_log2(R)])
        word_end = (j == R - 1) | (self.i.payload.last0 & (j == tail))
        m.d.comb += [self.o.payload.eq(word.word_select(j, 32 * P)), self.o.valid.eq(self.i.valid & ~self.flush),
                     self.i.ready.eq((self.o.ready & word_end) | self.flush)]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += j.eq(Mux(word_end, 0, j + 1))
        return m


class BeatWidener(wiring.Component):
    """Gathers beats of P 16-bit lanes into words of L 32-bit lanes (each lane zero-extended);
    a beat with ``last`` (a row's end) ends its word, the lanes after it 0.

    Parameters
    ----------
    lanes, beat_lanes : int
        L and P (P divides L).

    Members
    -------
    i : In(stream of hdl.softmax.out_layout(P))
        ``data`` (P × 16 bits), ``last``.
    o : Out(stream of hdl.agu.write_data_layout(L, with_mask=False))

    Latency 1 cycle (the output register); one word per cycle for L = P, one per L/P beats
    otherwise, without bubbles.
    """

    def __init__(self, *, lanes, beat_lanes):
        _check_lanes(lanes, beat_lanes)
        self._l, self._p = lanes, beat_lanes
        super().__init__({
            "i": In(stream.Signature(softmax_out_layout(beat_lanes))),
            "o": Out(stream.Signature(write_data_layout(lanes, with_mask=False))),
        })

    def elaborate(self, platform):
        m = Module()
        L, P = self._l, self._p
        R = L // P
        beat = Cat(*(Cat(self.i.payload.data[k], Const(0, 16)) for k in range(P)))
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        out = self.o.payload.data.as_value()
        if R == 1:
            m.d.comb += self.i.ready.eq(~self.o.valid | self.o.ready)
            with m.If(self.i.valid & self.i.ready):
                m.d.sync += [out.eq(beat), self.o.valid.eq(1)]
            return m
        acc = [Signal(32 * P, name=f"acc{q}") for q in range(R - 1)]   # the word's earlier beats
        j = Signal(range(R))
        ends = self.i.payload.last | (j == R - 1)
        m.d.comb += self.i.ready.eq(~self.o.valid | self.o.ready | ~ends)
        with m.If(self.i.valid & self.i.ready):
            with m.If(ends):
                pieces = [Mux(j == q, beat, acc[q]) for q in range(R - 1)] + [Mux(j == R - 1, beat, 0)]
                m.d.sync += [out.eq(Cat(*pieces)), self.o.valid.eq(1), j.eq(0)] + [a.eq(0) for a in acc]
            with m.Else():
                m.d.sync += j.eq(j + 1)
                for q in range(R - 1):
                    with m.If(j == q):
                        m.d.sync += acc[q].eq(beat)
        return m


class SoftmaxExec(wiring.Component):
    """SOFTMAX instructions on a :class:`~hdl.softmax.SoftmaxUnit` (built inside).

    Per instruction: one reader descriptor (``rows`` rows of W = ceil(length/L) words at
    ``a_addr``, ``a_stride``), one unit command per row (``length``; ``valid_len`` clamped to
    ``length``; ``causal_pos`` = ``causal_pos0`` + row with ``causal``, clamped to length − 1,
    else length − 1; ``dtype``, ``scale``, ``shift``), the words narrowed to the unit's P-lane
    beats (:class:`WordNarrower`) and its output widened back (:class:`BeatWidener`: uint8
    zero-extended or bf16 in the low 16 bits, lanes past the row's end 0) and written at
    ``o_addr``, ``o_stride`` by one writer descriptor, given when the first word is ready. The
    commands run ahead of the data, so rows follow each other without a gap (the unit takes a
    row's command with its previous row's last beat). The instruction retires when the writer
    signals that its last word is visible.

    A row the unit rejects (``error``: BAD_LENGTH; the dispatcher checks the length first, so
    only a unit with a smaller max_len than the dispatcher's could) stops the commands; every
    row of an instruction has the same length, so none was accepted: the words read ahead are
    dropped and the instruction answers ``ChipError.SOFTMAX`` with the status as detail.

    Parameters
    ----------
    lanes : int
        L: the scratchpad's lanes.
    unit_lanes : int
        P: the softmax unit's lanes (a power of two dividing L).
    max_len : int
        The softmax unit's L_max.
    addr_width : int
        The scratchpad's address width.

    Members
    -------
    port : In(UnitPortSignature())
    spad_r : Out(read_port_signature)
    spad_w : Out(write_port_signature)
    events : Out(exec_events_layout())
    unit_events : Out(hdl.softmax.events_layout(P))

    Latency: the unit's ``row_latency`` for the last row, plus 4 cycles to the first score word,
    2 for the last write, 3 to take, start and answer the instruction. Throughput: P elements
    per cycle (the unit's), across rows.
    """

    def __init__(self, *, lanes, unit_lanes, max_len, addr_width):
        _check_lanes(lanes, unit_lanes)
        check_int("addr_width", addr_width, 2, 32)
        self._l, self._p, self._max_len, self._aw = lanes, unit_lanes, max_len, addr_width
        self._unit = SoftmaxUnit(lanes=unit_lanes, max_len=max_len)
        super().__init__({
            "port": In(UnitPortSignature()),
            "spad_r": Out(read_port_signature(addr_width=addr_width, lanes=lanes)),
            "spad_w": Out(write_port_signature(addr_width=addr_width, lanes=lanes)),
            "events": Out(exec_events_layout()),
            "unit_events": Out(self._unit.events_layout),
        })

    @classmethod
    def from_config(cls, config):
        """The unit of a :class:`~hdl.config.ChipConfig`; ``softmax.lanes`` must divide
        ``memory.spad_lanes``."""
        if not isinstance(config, ChipConfig):
            raise TypeError(f"config must be a ChipConfig, not {type(config).__name__}")
        mem = config.memory
        if config.softmax.lanes > mem.spad_lanes:
            raise ValueError(f"softmax.lanes ({config.softmax.lanes}) must divide memory.spad_lanes "
                             f"({mem.spad_lanes})")
        return cls(lanes=mem.spad_lanes, unit_lanes=config.softmax.lanes, max_len=config.softmax.max_len,
                   addr_width=address_width(words=mem.spad_words, banks=mem.spad_banks))

    @property
    def unit(self):
        """The :class:`~hdl.softmax.SoftmaxUnit`."""
        return self._unit

    def elaborate(self, platform):
        m = Module()
        L, aw = self._l, self._aw
        m.submodules.unit = unit = self._unit
        m.submodules.reader = rd = SpadReader(addr_width=aw, lanes=L)
        m.submodules.writer = wr = SpadWriter(addr_width=aw, lanes=L, with_mask=False)
        m.submodules.narrow = nw = WordNarrower(lanes=L, beat_lanes=self._p, length_width=16)
        m.submodules.widen = wd = BeatWidener(lanes=L, beat_lanes=self._p)
        wiring.connect(m, rd.port, wiring.flipped(self.spad_r))
        wiring.connect(m, wr.port, wiring.flipped(self.spad_w))
        slot = InstrSlot(isa.Opcode.SOFTMAX)
        slot.elaborate_into(m, self.port, self.events)
        f = slot.fields
        running = Signal()
        m.d.comb += running.eq(slot.busy & ~slot.start)
        words = (f.length + (L - 1)) >> exact_log2(L)

        # the commands, one per row
        left = Signal(16)
        cpos = Signal(17)
        rejected = Signal()
        err = Signal(SoftmaxStatus)
        c = unit.cmd.payload
        last_key = f.length - 1
        m.d.comb += [unit.cmd.valid.eq(running & (left != 0) & ~rejected),
                     c.length.eq(saturate(f.length, len(c.length))),
                     c.valid_len.eq(Mux(f.valid_len < f.length, f.valid_len, f.length)),
                     c.causal_pos.eq(Mux(f.causal & (cpos < last_key), cpos, last_key)),
                     c.dtype.eq(f.dtype), c.scale.eq(f.scale), c.shift.eq(f.shift)]
        with m.If(unit.cmd.valid & unit.cmd.ready):
            m.d.sync += [left.eq(left - 1), cpos.eq(cpos + 1)]
        with m.If(unit.error != SoftmaxStatus.OK):
            m.d.sync += [rejected.eq(1), err.eq(unit.error)]

        # scores: reader → narrower → unit
        rd_pend, rd_left = Signal(), Signal()
        d = rd.desc.payload
        m.d.comb += [rd.desc.valid.eq(rd_pend), d.base.eq(f.a_addr), d.count2.eq(1), d.count1.eq(f.rows),
                     d.stride1.eq(f.a_stride), d.count0.eq(words), d.stride0.eq(1)]
        with m.If(rd.desc.valid & rd.desc.ready):
            m.d.sync += rd_pend.eq(0)
        wiring.connect(m, rd.data, nw.i)
        wiring.connect(m, nw.o, unit.i)
        m.d.comb += [nw.length.eq(f.length), nw.flush.eq(rejected)]
        with m.If(rd.data.valid & rd.data.ready & rd.data.payload.last):
            m.d.sync += rd_left.eq(0)

        # probabilities: unit → widener → writer
        wr_pend, wr_wait = Signal(), Signal()
        wiring.connect(m, unit.o, wd.i)
        wiring.connect(m, wd.o, wr.data)
        d = wr.desc.payload
        m.d.comb += [wr.desc.valid.eq(wr_pend & wd.o.valid), d.base.eq(f.o_addr), d.count2.eq(1),
                     d.count1.eq(f.rows), d.stride1.eq(f.o_stride), d.count0.eq(words), d.stride0.eq(1)]
        with m.If(wr.desc.valid & wr.desc.ready):
            m.d.sync += wr_pend.eq(0)
        with m.If(wr.done):
            m.d.sync += wr_wait.eq(0)

        some = (f.rows != 0) & (words != 0)      # (0 rows or elements: a walk without words)
        with m.If(slot.start):
            m.d.sync += [left.eq(f.rows), cpos.eq(f.causal_pos0), rejected.eq(0), rd_pend.eq(1), rd_left.eq(some),
                         wr_pend.eq(1), wr_wait.eq(some)]
        ue = unit.events
        ok_end = ~rejected & (unit.error == SoftmaxStatus.OK) & (left == 0) & ~wr_wait
        err_end = rejected & ~rd_left & ~ue.busy
        m.d.comb += [slot.finish.eq(running & (ok_end | err_end)),
                     slot.status.eq(Mux(ok_end, ChipError.OK, ChipError.SOFTMAX)),
                     slot.detail.eq(Mux(ok_end, 0, err))]

        m.d.comb += [self.unit_events.eq(ue),
                     self.events.stall_input.eq(slot.busy & ue.stall_input),
                     self.events.stall_output.eq(slot.busy & ue.stall_output),
                     self.events.stall_writes.eq(running & ~rejected & (left == 0) & ~ue.busy & ~wd.o.valid
                                                 & wr_wait)]
        moved = [s.valid & s.ready for s in (unit.cmd, rd.data, unit.i, unit.o, wr.data)]
        moved += [wr.done, ue.xring_reads, ue.ering_reads]
        m.d.comb += self.port.progress.eq(Cat(*moved).any())
        return m

