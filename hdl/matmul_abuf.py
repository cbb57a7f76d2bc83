"""The matmul engine's activation buffer: the ``a`` stream written once into one memory per
lane, read ahead in issue order into a FIFO of registers per lane, from which the issue takes
one word per row."""

import operator
from functools import reduce

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .matmul_common import KEEP, NO_RW_CHECK, lanes_below, run_control, shape_layout
from .pipeline import check_ints

__all__ = ["ActivationBuffer", "A_FIFO_DEPTH"]

#: Words per lane in the FIFO between the buffer's reads and the issue.
A_FIFO_DEPTH = 5


class ActivationBuffer(wiring.Component):
    """Activation memory (one per lane), its write side, the prefetch and the issue's FIFO.

    Parameters
    ----------
    rows : int
        Lanes R.
    cols : int
        The array's C (N tiles of C columns).
    a_depth : int
        Words per lane memory.

    Members
    -------
    a : In(stream.Signature(ArrayLayout(16, R)))
        Beat j = kt·M + m carries A[m, kt·R + r] in lane r; ready while the command still needs
        beats. Lanes past K are written as 0.
    start, stop : In(1)
        From :class:`~hdl.matmul_seq.CommandSequencer`.
    k, n, interleave : In
        The command's K, N and interleave (G − 1).
    shape : In(shape_layout(a_depth))
        ``words``, ``m_one``, ``k_one``, ``n_one``, ``g_one``, ``m_last``, ``m_last2``.
    take, take_lanes : In(1)
        The issue takes the next word in this cycle (two copies of one value: ``take`` steers the
        issue-side prefetch copy and the FIFO's read place, ``take_lanes`` the per-lane copies).
        Only while the FIFO holds a word (the issue counts them with ``word_in``).
    word_in : Out(1)
        A word enters the FIFO in this cycle (the issue may take it from the next cycle on).
    word : Out(ArrayLayout(16, R))
        The word taken two cycles earlier (a register).
    reads, writes : Out(1)
        A row of R words is read from / written into the lane memories in this cycle (events).

    The words are read in issue order (docs/matmul.md, "Schedule"): for each group of G N tiles,
    for each K tile kt, words kt·M … kt·M + M − 1 once per N tile of the group. Latency: a word
    taken from ``a`` in cycle t enters the FIFO (``word_in``) in cycle t + 4 and can be taken in
    cycle t + 5. Throughput: one word
    per cycle in and out. The lane memories are not transparent; no read uses a word in the
    cycle it is written.
    """

    def __init__(self, *, rows, cols, a_depth):
        check_ints(rows=(rows, 1, 64), cols=(cols, 1, 64), a_depth=(a_depth, 2, 1 << 20))
        self._rows, self._cols, self._a_depth = rows, cols, a_depth
        super().__init__({
            "a": In(stream.Signature(data.ArrayLayout(16, rows))),
            "start": In(1), "stop": In(1), "k": In(16), "n": In(16), "interleave": In(4),
            "shape": In(shape_layout(a_depth)),
            "take": In(1), "take_lanes": In(1),
            "word_in": Out(1), "word": Out(data.ArrayLayout(16, rows)),
            "reads": Out(1), "writes": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        R = self._rows
        start_a, run_a = run_control(m, self.start, self.stop, "a")
        # one memory per lane, each read at its own copy of the prefetch address ``li`` (below)
        a_wps, a_rps = [], []
        for r in range(R):
            abuf = m.submodules[f"abuf{r}"] = Memory(shape=16, depth=self._a_depth, init=[], attrs=NO_RW_CHECK)
            a_wps.append(abuf.write_port())
            a_rps.append(abuf.read_port())
        a_in_q = self._write_side(m, start_a, run_a, a_wps)

        # the copy of the prefetch control: its pf_q2 is word_in
        start_pfi = Signal(name="start_pfi", attrs=KEEP)
        go_pf = Signal(name="a_pfi_go", attrs=KEEP)     # take, one cycle late
        m.d.sync += [start_pfi.eq(self.start), go_pf.eq(self.take)]
        _, pf_q2, _ = self._prefetch_control(m, "a_pfi", start_pfi, a_in_q, go_pf, address=False)
        m.d.comb += self.word_in.eq(pf_q2)
        # each lane's copy: its read address li (the lane memory's own), its registered memory
        # output a_mq and its FIFO of registers, written at a one-hot place
        a_mq = [Signal(16, name=f"a_mq{r}", reset_less=True) for r in range(R)]
        a_fifo = [[Signal(16, name=f"a_fifo{r}_{i}", reset_less=True) for i in range(A_FIFO_DEPTH)]
                  for r in range(R)]
        for r in range(R):
            start_r = Signal(name=f"start_pf{r}", attrs=KEEP)
            go_r = Signal(name=f"a_pf{r}_go", attrs=KEEP)
            wsel = Signal(A_FIFO_DEPTH, init=1, name=f"a_pf{r}_wsel", attrs=KEEP)
            m.d.sync += [start_r.eq(self.start), go_r.eq(self.take_lanes)]
            pf_r, pf_q2_r, li = self._prefetch_control(m, f"a_pf{r}", start_r, a_wps[r].en, go_r, address=True)
            if r == 0:
                m.d.comb += self.reads.eq(pf_r)
            m.d.comb += a_rps[r].addr.eq(li)
            m.d.sync += a_mq[r].eq(a_rps[r].data)
            with m.If(start_r):
                m.d.sync += wsel.eq(1)
            with m.Elif(pf_q2_r):
                m.d.sync += wsel.eq(wsel.rotate_left(1))
            for i in range(A_FIFO_DEPTH):
                with m.If(pf_q2_r & wsel[i]):
                    m.d.sync += a_fifo[r][i].eq(a_mq[r])

        # The issue takes the FIFO's words in order at a_rp (one-hot); ``word`` reads the word a
        # cycle later through a copy of the place per lane (a_rd*: the entry is not written
        # again before the registered take has freed it). One-hot, the read is an AND-OR of the
        # words (timing: a binary place put its decode before a net across the lanes' rows).
        start_rp = Signal(name="start_rp", attrs=KEEP)
        m.d.sync += start_rp.eq(self.start)
        a_rp = Signal(A_FIFO_DEPTH, init=1)
        with m.If(start_rp):
            m.d.sync += a_rp.eq(1)
        with m.Elif(self.take):
            m.d.sync += a_rp.eq(a_rp.rotate_left(1))
        for r in range(R):
            rd = Signal(A_FIFO_DEPTH, init=1, name=f"a_rd{r}", attrs=KEEP)
            word = reduce(operator.or_, (a_fifo[r][i] & rd[i].replicate(16) for i in range(A_FIFO_DEPTH)))
            w_q = Signal(16, name=f"a_q{r}", reset_less=True)
            m.d.sync += [rd.eq(a_rp), w_q.eq(word)]
            m.d.comb += self.word[r].eq(w_q)
        return m

    def _write_side(self, m, start_a, run_a, a_wps):
        """The ``a`` stream into the lane memories; returns ``a_in_q`` (a word is written in this
        cycle)."""
        R, shape = self._rows, self.shape
        a_wr = Signal(range(self._a_depth + 1))
        a_m = Signal(16)
        a_krem = Signal(17)  # K − k0 of the K tile being written
        # a_left = words − a_wr, a register, and a_more = (a_left != 0) as a flag beside it
        # (timing: a.ready and the buffer's write enables test it)
        a_left = Signal(range(self._a_depth + 1))
        a_more = Signal()
        # a_kval[r] = lane r < a_krem (lane r of this K tile is inside K), a register updated with
        # a_krem (timing: the compares of a_krem fed the write-data registers' resets)
        a_kval = Signal(R)
        # a_mend = (a_m == m_last), a flag updated with a_m (timing: the compare sat between the
        # beat's accept and the K-tile step of a_krem and a_kval)
        a_mend = Signal()
        with m.If(start_a):
            m.d.sync += [a_wr.eq(0), a_m.eq(0), a_mend.eq(shape.m_one), a_krem.eq(self.k),
                         a_left.eq(shape.words), a_more.eq(shape.words != 0),
                         a_kval.eq(Cat(*lanes_below(self.k, R)))]
        a_take = Signal()
        a_in = Signal()     # a beat is written
        m.d.comb += [a_take.eq(run_a & a_more), self.a.ready.eq(a_take), a_in.eq(a_take & self.a.valid)]
        # A beat is written one cycle after it was taken, from registers of each lane's own
        # (address, enable, data) (timing: one address and enable net reached the block RAMs of
        # all lanes, spread over the die's block-RAM rows). ``a_in_q`` is a_in one cycle late:
        # the prefetch counts a word as written with it.
        a_in_q = Signal()
        m.d.sync += a_in_q.eq(a_in)
        m.d.comb += self.writes.eq(a_in_q)
        for r in range(R):
            wa = Signal.like(a_wr, name=f"a_wp{r}_addr", attrs=KEEP)
            we = Signal(name=f"a_wp{r}_en", attrs=KEEP)
            wd = Signal(16, name=f"a_wp{r}_data", reset_less=True, attrs=KEEP)
            m.d.sync += [wa.eq(a_wr), we.eq(a_in), wd.eq(Mux(a_kval[r], self.a.payload[r], 0))]
            m.d.comb += [a_wps[r].addr.eq(wa), a_wps[r].en.eq(we), a_wps[r].data.eq(wd)]
        with m.If(a_in):
            m.d.sync += [a_wr.eq(a_wr + 1), a_left.eq(a_left - 1), a_more.eq(a_left != 1)]
            with m.If(a_mend):
                # the next K tile's mask: lane r < a_krem − R, that is a_krem > r + R
                m.d.sync += [a_m.eq(0), a_mend.eq(shape.m_one), a_krem.eq(a_krem - R),
                             a_kval.eq(Cat(*lanes_below(a_krem, 2 * R)[R:]))]
            with m.Else():
                m.d.sync += [a_m.eq(a_m + 1), a_mend.eq(a_m == shape.m_last2)]
        return a_in_q

    def _prefetch_control(self, m, prefix, start, written, go, address):
        """One copy of the prefetch control. The buffer is read ahead of the issue, in issue
        order, into the FIFO: ``pf`` reads the next word when a FIFO place is free (room) and,
        for a word read for the first time (``fresh``: the first N tile of the first group), when
        it has been written (anz: words written − fresh words read != 0). A place is counted free
        again one cycle after the issue took its word (``go``, a register), so occ never
        undercounts; a place is taken from its read to that cycle, so five places carry one word
        per cycle. The read order's loop: mend (the last of the K tile's M words), glast (the
        group's last N tile: g_rem = G − 1 − g is 0 or the tile is N's last), klast (the last K
        tile); at the end of a tile the words of its K tile again for the group's next N tile,
        at the end of a pass the next K tile's, at the end of a group from word 0. (timing: the
        issue's decision used to steer the read addresses of all lanes, spread over the
        block-RAM rows, and the count of words written ahead of them in the same cycle.) The
        copies (one per lane, beside its memory, and one beside the issue) take the same inputs
        and hold the same values in every cycle. ``written``: a word is written into the buffer
        in this cycle. ``address``: this copy keeps the read address li (and kb, li at the start
        of the pass). Returns (pf, pf_q2, li or None)."""
        R, C, shape = self._rows, self._cols, self.shape

        def sig(name, shape=1, **kwargs):
            return Signal(shape, name=f"{prefix}_{name}", attrs=KEEP, **kwargs)
        pf = Signal(name=f"{prefix}_rd")                # read the next word in this cycle
        pf_q = sig("q")                                 # the word is on the memories' outputs
        pf_q2 = sig("q2")                               # ... and in the a_mq registers
        ahead = sig("ahead", range(self._a_depth + 1))  # words written − fresh words read
        anz = sig("anz")                                # ahead != 0
        occ = sig("occ", range(A_FIFO_DEPTH + 1))       # places taken (read, not yet freed)
        room = sig("room")                              # occ != A_FIFO_DEPTH
        mcnt, mend = sig("mcnt", 16), sig("mend")       # M − 1 − m, mcnt == 0
        g_rem, glast = sig("g_rem", 4), sig("glast")
        t_nrem, grp_nrem = sig("t_nrem", 17), sig("grp_nrem", 17)   # N − n0 of the tile, of the group
        krem, klast = sig("krem", 17), sig("klast")     # K − k0 of the K tile, krem ≤ R
        fresh, first_grp = sig("fresh"), sig("first_grp")
        li = kb = None
        if address:
            li, kb = sig("li", range(self._a_depth)), sig("kb", range(self._a_depth))
        m.d.comb += pf.eq(room & (anz | ~fresh))
        m.d.sync += [pf_q.eq(pf & ~start), pf_q2.eq(pf_q & ~start)]
        with m.If(start):
            m.d.sync += [ahead.eq(0), anz.eq(0), occ.eq(0), room.eq(1), mcnt.eq(shape.m_last), mend.eq(shape.m_one),
                         g_rem.eq(self.interleave), glast.eq(shape.g_one | shape.n_one), t_nrem.eq(self.n),
                         grp_nrem.eq(self.n), krem.eq(self.k), klast.eq(shape.k_one), fresh.eq(1), first_grp.eq(1)]
            if address:
                m.d.sync += [li.eq(0), kb.eq(0)]
        with m.Else():
            with m.If(pf & ~mend):
                m.d.sync += [mcnt.eq(mcnt - 1), mend.eq(mcnt == 1)]
                if address:
                    m.d.sync += li.eq(li + 1)
            with m.Elif(pf):
                m.d.sync += [mcnt.eq(shape.m_last), mend.eq(shape.m_one)]
                with m.If(~glast):
                    # the same K tile's words for the group's next N tile
                    m.d.sync += [g_rem.eq(g_rem - 1), t_nrem.eq(t_nrem - C),
                                 glast.eq((g_rem == 1) | (t_nrem <= 2 * C)), fresh.eq(0)]
                    if address:
                        m.d.sync += li.eq(kb)
                with m.Elif(~klast):
                    # the next K tile's words, from the group's first N tile
                    m.d.sync += [g_rem.eq(self.interleave), t_nrem.eq(grp_nrem),
                                 glast.eq(shape.g_one | (grp_nrem <= C)), krem.eq(krem - R),
                                 klast.eq(krem <= 2 * R), fresh.eq(first_grp)]
                    if address:
                        m.d.sync += [li.eq(li + 1), kb.eq(li + 1)]
                with m.Else():
                    # the next group, from word 0 (every word has been written by then)
                    m.d.sync += [g_rem.eq(self.interleave), t_nrem.eq(t_nrem - C), grp_nrem.eq(t_nrem - C),
                                 glast.eq(shape.g_one | (t_nrem <= 2 * C)), krem.eq(self.k), klast.eq(shape.k_one),
                                 fresh.eq(0), first_grp.eq(0)]
                    if address:
                        m.d.sync += [li.eq(0), kb.eq(0)]
            with m.If(written & ~(pf & fresh)):
                m.d.sync += [ahead.eq(ahead + 1), anz.eq(1)]
            with m.Elif(~written & pf & fresh):
                m.d.sync += [ahead.eq(ahead - 1), anz.eq(ahead != 1)]
            with m.If(pf & ~go):
                m.d.sync += [occ.eq(occ + 1), room.eq(occ != A_FIFO_DEPTH - 1)]
            with m.Elif(~pf & go):
                m.d.sync += [occ.eq(occ - 1), room.eq(1)]
        return pf, pf_q2, li
