"""The matmul engine's issue: decides in every cycle whether the next row enters the array,
and builds it (activation word, starting partial sums, weight bank, accumulator tag)."""

from types import SimpleNamespace

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .dsp import RegisteredMultiplier
from .matmul_abuf import A_FIFO_DEPTH
from .matmul_common import KEEP, command_layout, shape_layout
from .pipeline import check_ints

__all__ = ["IssueControl", "ISSUE_FLAGS"]

#: The one-bit state the issue decision ``go`` tests, with the vectors it is kept from:
#: active: an N tile is left to issue; w_full[b]: weight bank b holds a tile not yet fully
#: issued; tw: the weight bank the issue reads; a_nz: the activation FIFO holds the next word
#: (a_cnt != 0); p_full[b]: parameter slot b is loaded; bank: the accumulator bank of the N
#: tile; kt0: first K tile; first, end: row 0, row M − 1; klast: last K tile; nlast: last N
#: tile; free[b]: accumulator bank b is drained; lag_ok: lag < M; w_ok, p_ok, fr_ok: w_full[tw],
#: ~need_p | p_full[bank], free[bank] (each a register of its own, updated with the vectors:
#: the multiplexers by tw and bank are then not in front of go); a_cnt: words in the FIFO.
ISSUE_FLAGS = dict(active=1, w_full=2, tw=1, a_nz=1, p_full=2, bank=1, kt0=1, first=1, end=1, klast=1,
                   nlast=1, free=2, lag_ok=1, w_ok=1, p_ok=1, fr_ok=1, a_cnt=(A_FIFO_DEPTH + 1).bit_length())


def issue_events_layout(rows, cols):
    """What the issue reports per cycle (one cycle after the cause, four for ``macs``)."""
    return data.StructLayout({"rows": 1, "macs": (rows * cols).bit_length(), "stall_input": 1,
                              "stall_output": 1, "stall_weight": 1, "stall_dependency": 1, "acc_read": 1})


class IssueControl(wiring.Component):
    """The issue decision and the row pipeline into the array.

    Parameters
    ----------
    rows, cols : int
        The array's R and C.
    acc_bits : int
        log2(acc_depth): the accumulator row address width of one bank.
    a_depth : int
        Activation buffer words (the width of the read-after-write count).
    dsp : str
        How the MAC count's multiplier is built (:class:`hdl.dsp.RegisteredMultiplier`).

    Members
    -------
    start : In(1)
        From :class:`~hdl.matmul_seq.CommandSequencer`.
    command, shape : In
        ``k``, ``n``, ``m``, ``has_bias``; ``m_last``, ``m_last2``, ``m_one``, ``k_one``,
        ``n_one``, ``need_p``.
    w_loaded, w_loaded_bank : In(1)
        The weight loader copies a tile into that bank in this cycle.
    p_loaded, p_loaded_slot : In(1)
        A parameter beat goes into that slot in this cycle.
    bias : In(ArrayLayout(ArrayLayout(32, C), 2))
        The parameter slots' biases.
    word_in : In(1)
        A word enters the activation FIFO (:class:`~hdl.matmul_abuf.ActivationBuffer`).
    word : In(ArrayLayout(16, R))
        The word taken two cycles earlier.
    drained, drained_bank : In(1)
        The drain empties that accumulator bank in this cycle.
    res_valid, res_tag : In(ArrayLayout(…, 2))
        Two copies of the array's output valid and tag (copy 0 beside the issue counters, 1
        beside the read-after-write count).
    psum_data : In(ArrayLayout(32, C))
        The accumulator row read at ``psum_addr`` in the cycle before.
    take, take_lanes : Out(1)
        A row is issued in this cycle (the two copies of ``go``; the activation buffer's inputs).
    w_full, p_full : Out(2)
        Weight banks holding a tile not fully issued; parameter slots loaded (the loader's and the
        slots' ``full`` inputs).
    release, release_bank : Out(1)
        The last row of a weight tile is issued from that bank.
    tile_start, tile_issued, bank : Out(1)
        The first row of an N tile is issued (its bank's write count restarts); the last row of
        an N tile is issued; the N tile's accumulator bank.
    active : Out(1)
        An N tile is left to issue.
    psum_addr : Out(acc_bits + 1)
        The accumulator row the issued row adds to (bank, m).
    valid, a, psum, w_bank, tag : Out
        The row into the array (its ``valid``, ``a``, ``psum``, ``bank``, ``tag`` inputs), two
        cycles after its issue.
    events : Out(issue_events_layout(R, C))
        Rows issued, MACs, stall causes, accumulator reads.

    Issue rule: a row issues when its N tile is left, its weight tile is in the array, its
    activation word is in the FIFO, its parameters are loaded (if any), its accumulator bank is
    drained (first row of an N tile), and (K tiles after the first) its accumulator row has been
    written by the previous K tile. Latency: a row enters the array two cycles after its issue.
    Throughput: one row per cycle.
    """

    def __init__(self, *, rows, cols, acc_bits, a_depth, dsp="generic"):
        check_ints(rows=(rows, 1, 64), cols=(cols, 1, 64), acc_bits=(acc_bits, 1, 16), a_depth=(a_depth, 2, 1 << 20))
        self._rows, self._cols, self._ab, self._a_depth, self._dsp = rows, cols, acc_bits, a_depth, dsp
        R, C, AB = rows, cols, acc_bits
        super().__init__({
            "start": In(1), "command": In(command_layout()), "shape": In(shape_layout(a_depth)),
            "w_loaded": In(1), "w_loaded_bank": In(1), "p_loaded": In(1), "p_loaded_slot": In(1),
            "bias": In(data.ArrayLayout(data.ArrayLayout(32, C), 2)),
            "word_in": In(1), "word": In(data.ArrayLayout(16, R)),
            "drained": In(1), "drained_bank": In(1),
            "res_valid": In(2), "res_tag": In(data.ArrayLayout(1 + AB, 2)),
            "psum_data": In(data.ArrayLayout(32, C)),
            "take": Out(1), "take_lanes": Out(1), "w_full": Out(2), "p_full": Out(2),
            "release": Out(1), "release_bank": Out(1),
            "tile_start": Out(1), "tile_issued": Out(1), "bank": Out(1), "active": Out(1),
            "psum_addr": Out(1 + AB),
            "valid": Out(1), "a": Out(data.ArrayLayout(16, R)), "psum": Out(data.ArrayLayout(32, C)),
            "w_bank": Out(1), "tag": Out(1 + AB),
            "events": Out(issue_events_layout(R, C)),
        })

    def elaborate(self, platform):
        m = Module()
        R, C, AB = self._rows, self._cols, self._ab
        cmd, shape = self.command, self.shape
        # The issue decision ``go`` and the flags it tests exist in two copies, each with its own
        # registers and its own ``go``: "i" beside the issue counters (the copy the rest of the
        # engine reads), "l" beside the read-after-write count (``lag``). Both take the same
        # updates, so they hold the same values in every cycle. A path from a flag through ``go``
        # to the state it updates stays inside its group; what crosses between groups is state
        # register to flag logic (timing: with one ``go``, the placer split that loop between the
        # two ends of the die).
        F = {g: SimpleNamespace(go=Signal(name=f"iss_{g}_go"),
                                **{f: Signal(w, name=f"iss_{g}_{f}", attrs=KEEP) for f, w in ISSUE_FLAGS.items()})
             for g in ("i", "l")}
        starts = {g: Signal(name=f"start_{g}", attrs=KEEP) for g in ("i", "l")}
        m.d.sync += [s.eq(self.start) for s in starts.values()]
        fi = F["i"]
        i_m, i_krem, i_nrem = Signal(16), Signal(17), Signal(17)
        go = fi.go
        m.d.comb += [self.take.eq(go), self.take_lanes.eq(F["l"].go), self.w_full.eq(fi.w_full),
                     self.p_full.eq(fi.p_full), self.release.eq(go & fi.end), self.release_bank.eq(fi.tw),
                     self.tile_start.eq(go & fi.kt0 & fi.first), self.tile_issued.eq(go & fi.end & fi.klast),
                     self.bank.eq(fi.bank), self.active.eq(fi.active),
                     self.psum_addr.eq(Cat(i_m[:AB], fi.bank))]
        with m.If(starts["i"]):
            m.d.sync += [i_m.eq(0), i_krem.eq(cmd.k), i_nrem.eq(cmd.n)]
        for f in F.values():
            with m.If(starts["i"]):
                m.d.sync += [f.first.eq(1), f.end.eq(shape.m_one), f.klast.eq(shape.k_one), f.nlast.eq(shape.n_one),
                             f.active.eq(1), f.kt0.eq(1), f.bank.eq(0), f.tw.eq(0)]
        self._lag(m, F, starts)
        self._flag_vectors(m, F, starts)
        for f in F.values():
            with m.If(f.go):
                with m.If(f.end):
                    m.d.sync += [f.tw.eq(~f.tw), f.first.eq(1), f.end.eq(shape.m_one)]
                    with m.If(f.klast):
                        m.d.sync += [f.klast.eq(shape.k_one), f.kt0.eq(1), f.bank.eq(~f.bank),
                                     f.nlast.eq(i_nrem <= 2 * C)]
                        with m.If(f.nlast):
                            m.d.sync += f.active.eq(0)
                    with m.Else():
                        m.d.sync += [f.kt0.eq(0), f.klast.eq(i_krem <= 2 * R)]
                with m.Else():
                    m.d.sync += [f.first.eq(0), f.end.eq(i_m == shape.m_last2)]
        with m.If(go):
            with m.If(fi.end):
                m.d.sync += i_m.eq(0)
                with m.If(fi.klast):
                    m.d.sync += [i_krem.eq(cmd.k), i_nrem.eq(i_nrem - C)]
                with m.Else():
                    m.d.sync += i_krem.eq(i_krem - R)
            with m.Else():
                m.d.sync += i_m.eq(i_m + 1)
        for f in F.values():
            m.d.comb += f.go.eq(f.active & f.w_ok & f.a_nz & f.p_ok & (~(f.kt0 & f.first) | f.fr_ok)
                                & (f.kt0 | f.lag_ok))
        self._events(m, fi, i_krem, i_nrem)
        self._row(m, fi, i_m)
        return m

    def _lag(self, m, F, starts):
        """Read after write: a pass over K tile kt ≥ 1 reads accumulator row m, which the pass
        over kt − 1 wrote. Row li of the N tile may issue once wr_cnt[bank] + M > li. The issue
        keeps lag = li − wr_cnt[bank] in a register instead (+1 per issued row, −1 per row
        written to the bank; 0 from an N tile's end, while its next first pass ignores it), so
        the test is one comparison with a register (timing: this gates the issue of every row).
        lag < M is itself a flag (lag_ok): lag moves by one per cycle, so its next value's test
        is chosen from three compares of the current one. Also counts the FIFO's words (a_cnt,
        a_nz)."""
        cmd, shape, fl = self.command, self.shape, F["l"]
        AB = self._ab
        lag = Signal(range(self._a_depth + 1))
        wr_cur = {}
        for i, (g, f) in enumerate(F.items()):
            wr_cur[g] = Signal(name=f"iss_{g}_wr_cur")
            m.d.comb += wr_cur[g].eq(self.res_valid[i] & (self.res_tag[i][AB] == f.bank))
        with m.If(starts["l"] | (fl.go & fl.end & fl.klast)):
            m.d.sync += lag.eq(0)
        with m.Elif(fl.go & ~wr_cur["l"]):
            m.d.sync += lag.eq(lag + 1)
        with m.Elif(~fl.go & wr_cur["l"]):
            m.d.sync += lag.eq(lag - 1)
        for g, f in F.items():
            with m.If(starts[g]):
                m.d.sync += [f.a_nz.eq(0), f.a_cnt.eq(0)]
            with m.Elif(self.word_in & ~f.go):
                m.d.sync += [f.a_nz.eq(1), f.a_cnt.eq(f.a_cnt + 1)]
            with m.Elif(~self.word_in & f.go):
                m.d.sync += [f.a_nz.eq(f.a_cnt != 1), f.a_cnt.eq(f.a_cnt - 1)]
            with m.If(starts[g] | (f.go & f.end & f.klast)):
                m.d.sync += f.lag_ok.eq(1)      # 0 < M
            with m.Elif(f.go & ~wr_cur[g]):
                m.d.sync += f.lag_ok.eq(lag < shape.m_last)                 # lag + 1 < M
            with m.Elif(~f.go & wr_cur[g]):
                m.d.sync += f.lag_ok.eq((lag != 0) & (lag <= cmd.m))        # lag − 1 < M

    def _flag_vectors(self, m, F, starts):
        """The vectors w_full, p_full, free and the flags w_ok, p_ok, fr_ok, their bits at the
        next tw or bank, from one next value each. w_full[b]: set by a copy into b, cleared by
        the end of a K tile issued from b. p_full[b]: set by a parameter beat into slot b,
        cleared when bank b is drained. free[b]: cleared by the first row of an N tile issued
        into b, set when b is drained. (A set and a clear never meet in one bit.)"""
        need_p = self.shape.need_p
        for g, f in F.items():
            tile_end = f.go & f.end
            ntile_end = tile_end & f.klast
            drained = [self.drained & (self.drained_bank == b) for b in range(2)]
            w_next = [(f.w_full[b] | (self.w_loaded & (self.w_loaded_bank == b))) & ~(tile_end & (f.tw == b))
                      for b in range(2)]
            p_next = [(f.p_full[b] | (self.p_loaded & (self.p_loaded_slot == b))) & ~drained[b] for b in range(2)]
            fr_next = [(f.free[b] & ~(f.go & f.kt0 & f.first & (f.bank == b))) | drained[b] for b in range(2)]
            tw_next, bank_next = f.tw ^ tile_end, f.bank ^ ntile_end
            with m.If(starts[g]):
                m.d.sync += [f.w_full.eq(0), f.p_full.eq(0), f.free.eq(0b11),
                             f.w_ok.eq(0), f.p_ok.eq(~need_p), f.fr_ok.eq(1)]
            with m.Else():
                m.d.sync += [f.w_full.eq(Cat(*w_next)), f.p_full.eq(Cat(*p_next)), f.free.eq(Cat(*fr_next)),
                             f.w_ok.eq(Mux(tw_next, w_next[1], w_next[0])),
                             f.p_ok.eq(~need_p | Mux(bank_next, p_next[1], p_next[0])),
                             f.fr_ok.eq(Mux(bank_next, fr_next[1], fr_next[0]))]

    def _events(self, m, fi, i_krem, i_nrem):
        """Rows, MACs and stall causes, registered. The MAC count of an issued row is added four
        cycles later (timing: the tile's K and N extents, zero for a cycle without an issue, then
        their product in a DSP block with its own operand and product registers, one register
        apart); stalls one cycle later, from the registered causes."""
        R, C = self._rows, self._cols
        ev, go = self.events, fi.go
        kv_q, nv_q, mg_q = Signal(8), Signal(8), Signal()
        m.d.sync += [kv_q.eq(Mux(go, Mux(i_krem >= R, R, i_krem[:7]), 0)),
                     nv_q.eq(Mux(go, Mux(i_nrem >= C, C, i_nrem[:7]), 0)), mg_q.eq(go)]
        mac_mul = m.submodules.mac_mul = RegisteredMultiplier(8, 8, dsp=self._dsp)
        m.d.comb += [mac_mul.a.eq(kv_q.as_signed()), mac_mul.b.eq(nv_q.as_signed())]
        m.d.sync += [ev.macs.eq(mac_mul.p[:len(ev.macs)]), ev.rows.eq(mg_q)]
        m.d.sync += [ev.stall_weight.eq(0), ev.stall_input.eq(0), ev.stall_output.eq(0), ev.stall_dependency.eq(0)]
        with m.If(~go & fi.active):
            with m.If(~fi.w_ok):
                m.d.sync += ev.stall_weight.eq(1)
            with m.Elif(~fi.a_nz | ~fi.p_ok):
                m.d.sync += ev.stall_input.eq(1)
            with m.Elif(fi.kt0 & fi.first & ~fi.fr_ok):
                m.d.sync += ev.stall_output.eq(1)
            with m.Else():
                m.d.sync += ev.stall_dependency.eq(1)

    def _row(self, m, fi, i_m):
        """The row pipeline: s1 (the accumulator and FIFO reads), s2 (their registers, the
        partial-sum select), then the array."""
        C, AB = self._cols, self._ab
        cmd = self.command
        s1_valid, s1_kt0, s1_bank, s1_tw = Signal(), Signal(), Signal(), Signal()
        s1_m = Signal(AB)
        m.d.sync += [s1_valid.eq(fi.go), s1_kt0.eq(fi.kt0), s1_bank.eq(fi.bank), s1_tw.eq(fi.tw), s1_m.eq(i_m[:AB])]
        m.d.sync += self.events.acc_read.eq(fi.go & ~fi.kt0)
        # s2 registers the memories' outputs (a block RAM's clock-to-output delay leaves no
        # room for the bias multiplexer); a row enters the array two cycles after it was issued
        s2_valid, s2_bank, s2_tw = Signal(), Signal(), Signal()
        s2_m = Signal(AB)
        acc_q = Signal.like(self.psum_data, reset_less=True)
        m.d.sync += [s2_valid.eq(s1_valid), s2_bank.eq(s1_bank), s2_tw.eq(s1_tw), s2_m.eq(s1_m),
                     acc_q.eq(self.psum_data)]
        # The partial sums entering the array: the bias of the row's bank or zero (first K tile),
        # else the accumulator so far. Each column has its own three select registers, set from
        # the s1 values (timing: one select net would reach all 32·C multiplexers across the
        # array's width).
        for n in range(C):
            sel_acc, sel_b0, sel_b1 = (Signal(name=f"psum_sel{n}_{what}", attrs=KEEP) for what in ("acc", "b0", "b1"))
            m.d.sync += [sel_acc.eq(~s1_kt0), sel_b0.eq(s1_kt0 & cmd.has_bias & ~s1_bank),
                         sel_b1.eq(s1_kt0 & cmd.has_bias & s1_bank)]
            m.d.comb += self.psum[n].eq((acc_q[n] & sel_acc.replicate(32)) | (self.bias[0][n] & sel_b0.replicate(32))
                                        | (self.bias[1][n] & sel_b1.replicate(32)))
        m.d.comb += [self.valid.eq(s2_valid), self.a.eq(self.word), self.w_bank.eq(s2_tw),
                     self.tag.eq(Cat(s2_m, s2_bank))]
