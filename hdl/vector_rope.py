"""The vector unit's RoPE front end: pairs element i with element i + head_dim/2 of each head.

:class:`RopeFront` stores each head of ``a`` (head_dim elements, its first and second halves in
two memories) with its ``p`` words (head_dim/2 words, ``cos | sin << 16``), then emits the
head's head_dim/V output beats in order, each with both halves' elements of its pair columns and
their cos/sin: beat k < hb (hb = head_dim/(2V)) computes a' of columns [kV, kV+V), beat hb + k
computes b' of the same columns. Two head slots: the next head is stored while the current one
is read out, so a head's input and output overlap and the rate is one beat per cycle.

Memories (1 write, 1 synchronous read port each): first halves and second halves, 2·MAX_HEAD_DIM/(2V)
beats of 16·V bits each, and the cos/sin words, 2·MAX_HEAD_DIM/(2V) beats of 32·V bits.
"""

from amaranth.hdl import Array, Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from spec.vector import MAX_HEAD_DIM

__all__ = ["RopeFront"]


class RopeFront(wiring.Component):
    """Head buffer of the RoPE op.

    Parameters
    ----------
    lanes : int
        V.
    total_width : int
        Width of ``total`` (a beats of the command).

    Members
    -------
    start : In(1)
        Take ``total`` (a beats of the command) and ``hb`` (head_dim / (2V), ≥ 1).
    a, p : In(stream of ArrayLayout(32, V))
        The rows (int8 or bf16 in the low 16 bits) and the cos/sin words (hb beats per head).
    o : Out(stream of {a, b: ArrayLayout(16, V), cs: ArrayLayout(32, V), half: 1})
    busy : Out(1)
    buf_writes, buf_reads : Out
        Buffer elements written / read this cycle (event amounts).
    """

    def __init__(self, *, lanes, total_width):
        self._v = lanes
        self._hbmax = max(1, MAX_HEAD_DIM // (2 * lanes))
        V = lanes
        super().__init__({
            "start": In(1), "total": In(total_width), "hb": In(range(self._hbmax + 1)),
            "a": In(stream.Signature(data.ArrayLayout(32, V))),
            "p": In(stream.Signature(data.ArrayLayout(32, V))),
            "o": Out(stream.Signature(data.StructLayout({
                "a": data.ArrayLayout(16, V), "b": data.ArrayLayout(16, V),
                "cs": data.ArrayLayout(32, V), "half": 1}))),
            "busy": Out(1),
            "buf_writes": Out(range(3 * V + 1)), "buf_reads": Out(range(4 * V + 1)),
        })

    def elaborate(self, platform):
        m = Module()
        V, hbmax = self._v, self._hbmax
        depth = 2 * hbmax
        iw = ceil_log2(hbmax)  # address bits of a beat within a slot
        mem_lo = Memory(shape=unsigned(16 * V), depth=depth, init=[])
        mem_hi = Memory(shape=unsigned(16 * V), depth=depth, init=[])
        mem_p = Memory(shape=unsigned(32 * V), depth=depth, init=[])
        m.submodules.head_lo, m.submodules.head_hi, m.submodules.head_cs = mem_lo, mem_hi, mem_p
        w_lo, w_hi, w_p = mem_lo.write_port(), mem_hi.write_port(), mem_p.write_port()
        r_lo, r_hi, r_p = (mem.read_port(domain="sync") for mem in (mem_lo, mem_hi, mem_p))
        total = Signal.like(self.total)
        hb = Signal.like(self.hb)
        with m.If(self.start):
            m.d.sync += [total.eq(self.total), hb.eq(self.hb)]
        full = Array([Signal(name="slot0_full"), Signal(name="slot1_full")])
        # ---- write: the head's 2·hb a beats and hb p beats into slot ws
        ws = Signal()
        a_cnt = Signal(range(2 * hbmax + 1))
        p_cnt = Signal(range(hbmax + 1))
        taken = Signal.like(self.total)
        room = ~full[ws] & ((taken != total) | (a_cnt != 0) | (p_cnt != 0))
        m.d.comb += [self.a.ready.eq(room & (a_cnt != 2 * hb)), self.p.ready.eq(room & (p_cnt != hb))]
        a_fire = self.a.valid & self.a.ready
        p_fire = self.p.valid & self.p.ready
        second = a_cnt >= hb
        idx = Mux(second, a_cnt - hb, a_cnt)[:len(a_cnt)]
        a16 = Cat(*[self.a.payload[j][:16] for j in range(V)])
        m.d.comb += [
            w_lo.addr.eq(Cat(idx[:iw], ws)), w_hi.addr.eq(Cat(idx[:iw], ws)),
            w_p.addr.eq(Cat(p_cnt[:iw], ws)),
            w_lo.data.eq(a16), w_hi.data.eq(a16), w_p.data.eq(self.p.payload),
            w_lo.en.eq(a_fire & ~second), w_hi.en.eq(a_fire & second), w_p.en.eq(p_fire),
        ]
        a_cnt_n = Signal.like(a_cnt)
        p_cnt_n = Signal.like(p_cnt)
        m.d.comb += [a_cnt_n.eq(a_cnt + a_fire), p_cnt_n.eq(p_cnt + p_fire)]
        head_done = (a_cnt_n == 2 * hb) & (p_cnt_n == hb) & (a_fire | p_fire)
        m.d.sync += [a_cnt.eq(a_cnt_n), p_cnt.eq(p_cnt_n), taken.eq(taken + a_fire)]
        with m.If(head_done):
            m.d.sync += [a_cnt.eq(0), p_cnt.eq(0), full[ws].eq(1), ws.eq(~ws)]
        with m.If(self.start):
            m.d.sync += [taken.eq(0), a_cnt.eq(0), p_cnt.eq(0)]
        # ---- read: 2·hb output beats of slot rs
        rs = Signal()
        k = Signal(range(2 * hbmax + 1))
        advance = ~self.o.valid | self.o.ready
        issue = advance & full[rs]
        half_k = k >= hb
        ridx = Mux(half_k, k - hb, k)[:len(k)]
        raddr = Cat(ridx[:iw], rs)
        for rp in (r_lo, r_hi, r_p):
            m.d.comb += [rp.addr.eq(raddr), rp.en.eq(issue)]
        o_half = Signal()
        with m.If(advance):
            m.d.sync += [self.o.valid.eq(full[rs]), o_half.eq(half_k)]
        with m.If(issue):
            m.d.sync += k.eq(k + 1)
            with m.If(k == 2 * hb - 1):
                m.d.sync += [k.eq(0), full[rs].eq(0), rs.eq(~rs)]
        m.d.comb += [self.o.payload.a.eq(r_lo.data), self.o.payload.b.eq(r_hi.data),
                     self.o.payload.cs.eq(r_p.data), self.o.payload.half.eq(o_half),
                     self.busy.eq((taken != total) | full[0] | full[1] | self.o.valid),
                     self.buf_writes.eq(Mux(a_fire, V, 0) + Mux(p_fire, V, 0)),
                     self.buf_reads.eq(Mux(issue, 3 * V, 0))]
        return m
