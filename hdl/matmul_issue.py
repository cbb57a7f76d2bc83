"""The matmul engine's issue: decides in every cycle whether the next row enters the array,
and builds it (activation word, starting partial sums, weight slot, accumulator tag)."""

from types import SimpleNamespace

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .dsp import RegisteredMultiplier
from .matmul_abuf import A_FIFO_DEPTH
from .matmul_common import KEEP, PARAM_ENTRIES, command_layout, shape_layout
from .pipeline import check_ints

__all__ = ["IssueControl", "issue_flags"]


def issue_flags(slots):
    """The state the issue decision ``go`` tests, with the counts and vectors it is kept from.
    active: a row is left to issue; w_cnt: weight tiles in their slots and not yet fully issued,
    w_ok: w_cnt != 0; a_cnt: words in the activation FIFO, a_nz: a_cnt != 0; p_cnt: parameter
    entries loaded whose N tile's first K tile is not fully issued, p_ok: ~need_p | p_cnt != 0;
    bank: the accumulator bank of the group; free[b]: bank b is drained, fr_ok: free[bank] (a
    register of its own, updated with the vector: the multiplexer by bank is then not in front
    of go); kt0, klast: first, last K tile; g0, glast: first, last N tile of the group (in this
    K tile's pass); nlast: the N tile is the command's last; first, end: row 0, row M − 1 of
    the tile; lag_ok: the row's partial sum from the previous K tile has been written."""
    return dict(active=1, w_cnt=range(slots + 1), w_ok=1, a_cnt=(A_FIFO_DEPTH + 1).bit_length(), a_nz=1,
                p_cnt=range(PARAM_ENTRIES + 1), p_ok=1, bank=1, free=2, fr_ok=1, kt0=1, klast=1, g0=1, glast=1,
                nlast=1, first=1, end=1, lag_ok=1)


def issue_events_layout(rows, cols):
    """What the issue reports per cycle (one cycle after the cause, four for ``macs``)."""
    return data.StructLayout({"rows": 1, "macs": (rows * cols).bit_length(), "stall_input": 1,
                              "stall_output": 1, "stall_weight": 1, "stall_dependency": 1, "acc_read": 1})


class IssueControl(wiring.Component):
    """The issue decision and the row pipeline into the array.

    Rows are issued in the order ``for group: for kt: for nt in group: for m``: groups of G =
    ``interleave`` + 1 N tiles (the last group may have fewer), each group in one accumulator
    bank (banks alternate), N tile g of a group at rows g·M … g·M + M − 1 of the bank.

    Parameters
    ----------
    rows, cols : int
        The array's R and C.
    acc_bits : int
        log2(acc_depth): the accumulator row address width of one bank.
    slots : int
        The array's weight slots (a power of two): tiles are issued from slot 0, 1, … in turn.
    a_depth : int
        Activation buffer words (the width of the read-after-write count).
    dsp : str
        How the MAC count's multiplier is built (:class:`hdl.dsp.RegisteredMultiplier`).

    Members
    -------
    start : In(1)
        From :class:`~hdl.matmul_seq.CommandSequencer`.
    command, shape : In
        ``k``, ``n``, ``interleave``, ``has_bias``; ``m_last``, ``m_last2``, ``m_one``,
        ``k_one``, ``n_one``, ``g_one``, ``need_p``.
    w_loaded : In(1)
        The weight loader completes a tile in its slot in this cycle (the next slot in order).
    p_loaded : In(1)
        A parameter entry is written in this cycle (the next N tile's; it can be read from the
        next cycle on).
    bias : In(ArrayLayout(32, C))
        The bias of entry ``bias_addr`` of the cycle before.
    word_in : In(1)
        A word enters the activation FIFO (:class:`~hdl.matmul_abuf.ActivationBuffer`).
    word : In(ArrayLayout(16, R))
        The word taken two cycles earlier.
    drained, drained_bank : In(1)
        The drain has emptied that accumulator bank in this cycle.
    res_valid, res_tag : In(ArrayLayout(…, 2))
        Two copies of the array's output valid and tag (copy 0 beside the issue counters, 1
        beside the read-after-write count).
    psum_data : In(ArrayLayout(32, C))
        The accumulator row read at ``psum_addr`` in the cycle before.
    take, take_lanes : Out(1)
        A row is issued in this cycle (the two copies of ``go``; the activation buffer's inputs).
    release : Out(1)
        The last row of a weight tile is issued (from the oldest slot in use).
    group_issued, bank : Out(1)
        The last row of a group is issued; the group's accumulator bank.
    active : Out(1)
        A row is left to issue.
    psum_addr : Out(acc_bits + 1)
        The accumulator row the issued row adds to (bank, g·M + m).
    bias_addr : Out(range(PARAM_ENTRIES))
        The parameter entry of the N tile (its N tile index modulo the entries).
    valid, a, psum, slot, tag : Out
        The row into the array (its ``valid``, ``a``, ``psum``, ``slot``, ``tag`` inputs), two
        cycles after its issue.
    events : Out(issue_events_layout(R, C))
        Rows issued, MACs, stall causes, accumulator reads.

    Issue rule: a row issues when a row is left, its weight tile is in its slot, its activation
    word is in the FIFO, its parameters are loaded (first K tile, if the command has any), its
    accumulator bank is drained (first row of a group), and (K tiles after the first) its
    accumulator row has been written by the previous K tile. Latency: a row enters the array
    two cycles after its issue. Throughput: one row per cycle.
    """

    def __init__(self, *, rows, cols, acc_bits, slots, a_depth, dsp="generic"):
        check_ints(rows=(rows, 1, 64), cols=(cols, 1, 64), acc_bits=(acc_bits, 1, 16), slots=(slots, 2, 64),
                   a_depth=(a_depth, 2, 1 << 20))
        if slots & (slots - 1):
            raise ValueError(f"slots must be a power of two, not {slots}")
        self._rows, self._cols, self._ab, self._a_depth, self._dsp = rows, cols, acc_bits, a_depth, dsp
        self._slots = slots
        R, C, AB = rows, cols, acc_bits
        super().__init__({
            "start": In(1), "command": In(command_layout()), "shape": In(shape_layout(a_depth)),
            "w_loaded": In(1), "p_loaded": In(1), "bias": In(data.ArrayLayout(32, C)),
            "word_in": In(1), "word": In(data.ArrayLayout(16, R)),
            "drained": In(1), "drained_bank": In(1),
            "res_valid": In(2), "res_tag": In(data.ArrayLayout(1 + AB, 2)),
            "psum_data": In(data.ArrayLayout(32, C)),
            "take": Out(1), "take_lanes": Out(1), "release": Out(1),
            "group_issued": Out(1), "bank": Out(1), "active": Out(1),
            "psum_addr": Out(1 + AB), "bias_addr": Out(range(PARAM_ENTRIES)),
            "valid": Out(1), "a": Out(data.ArrayLayout(16, R)), "psum": Out(data.ArrayLayout(32, C)),
            "slot": Out(ceil_log2(slots)), "tag": Out(1 + AB),
            "events": Out(issue_events_layout(R, C)),
        })

    def elaborate(self, platform):
        m = Module()
        R, C, AB = self._rows, self._cols, self._ab
        cmd = self.command
        # The issue decision ``go`` and the flags it tests exist in two copies, each with its own
        # registers and its own ``go``: "i" beside the issue counters (the copy the rest of the
        # engine reads), "l" beside the read-after-write count (``lag``). Both take the same
        # updates, so they hold the same values in every cycle. A path from a flag through ``go``
        # to the state it updates stays inside its group; what crosses between groups is state
        # register to flag logic (timing: with one ``go``, the placer split that loop between the
        # two ends of the die).
        F = {g: SimpleNamespace(go=Signal(name=f"iss_{g}_go"),
                                **{f: Signal(w, name=f"iss_{g}_{f}", attrs=KEEP)
                                   for f, w in issue_flags(self._slots).items()})
             for g in ("i", "l")}
        starts = {g: Signal(name=f"start_{g}", attrs=KEEP) for g in ("i", "l")}
        m.d.sync += [s.eq(self.start) for s in starts.values()]
        fi = F["i"]
        go = fi.go
        # the issue counters: i_m (row of the tile), i_row (row of the bank: g·M + m), i_krem
        # (K − k0 of the K tile), i_nrem (N − n0 of the N tile), i_grem (N − n0 of the group's
        # first N tile), i_g (G − 1 − g: N tiles left in the group after this one), tw (the
        # weight slot), i_pt (the N tile's parameter entry)
        i_m, i_row = Signal(16), Signal(AB + 1)
        i_krem, i_nrem, i_grem = Signal(17), Signal(17), Signal(17)
        i_g = Signal(4)
        tw = Signal(ceil_log2(self._slots))
        i_pt = Signal(range(PARAM_ENTRIES))
        tile_end = go & fi.end
        pass_end = tile_end & fi.glast
        group_end = pass_end & fi.klast
        m.d.comb += [self.take.eq(go), self.take_lanes.eq(F["l"].go), self.release.eq(tile_end),
                     self.group_issued.eq(group_end), self.bank.eq(fi.bank), self.active.eq(fi.active),
                     self.psum_addr.eq(Cat(i_row[:AB], fi.bank)), self.bias_addr.eq(i_pt)]
        with m.If(starts["i"]):
            m.d.sync += [i_m.eq(0), i_row.eq(0), i_krem.eq(cmd.k), i_nrem.eq(cmd.n), i_grem.eq(cmd.n),
                         i_g.eq(cmd.interleave), tw.eq(0), i_pt.eq(0)]
        with m.Elif(go):
            m.d.sync += [i_m.eq(Mux(fi.end, 0, i_m + 1)), i_row.eq(Mux(pass_end, 0, i_row + 1))]
            with m.If(fi.end):
                m.d.sync += tw.eq(tw + 1)
                with m.If(fi.kt0):
                    m.d.sync += i_pt.eq(Mux(i_pt == PARAM_ENTRIES - 1, 0, i_pt + 1))
                with m.If(~fi.glast):
                    m.d.sync += [i_nrem.eq(i_nrem - C), i_g.eq(i_g - 1)]
                with m.Else():
                    m.d.sync += i_g.eq(cmd.interleave)
                    with m.If(~fi.klast):
                        m.d.sync += [i_krem.eq(i_krem - R), i_nrem.eq(i_grem)]
                    with m.Else():
                        m.d.sync += [i_krem.eq(cmd.k), i_nrem.eq(i_nrem - C), i_grem.eq(i_nrem - C)]
        self._loop_flags(m, F, starts, i_m, i_krem, i_nrem, i_grem, i_g)
        self._lag(m, F, starts)
        self._counts(m, F, starts)
        for f in F.values():
            m.d.comb += f.go.eq(f.active & f.w_ok & f.a_nz & (~f.kt0 | f.p_ok) & (~(f.kt0 & f.g0 & f.first) | f.fr_ok)
                                & (f.kt0 | f.lag_ok))
        self._events(m, fi, i_krem, i_nrem)
        self._row(m, fi, i_row, tw)
        return m

    def _loop_flags(self, m, F, starts, i_m, i_krem, i_nrem, i_grem, i_g):
        """The loop flags of both copies, from the issue counters: at the end of a tile, the next
        N tile of the group's pass; at the end of a pass, the group's first N tile again for the
        next K tile; at the end of a group, the next group's first N tile and K tile."""
        R, C, shape = self._rows, self._cols, self.shape
        for f in F.values():
            with m.If(starts["i"] if f is F["i"] else starts["l"]):
                m.d.sync += [f.first.eq(1), f.end.eq(shape.m_one), f.kt0.eq(1), f.klast.eq(shape.k_one), f.g0.eq(1),
                             f.glast.eq(shape.g_one | shape.n_one), f.nlast.eq(shape.n_one), f.active.eq(1),
                             f.bank.eq(0)]
            with m.Elif(f.go):
                with m.If(~f.end):
                    m.d.sync += [f.first.eq(0), f.end.eq(i_m == shape.m_last2)]
                with m.Else():
                    m.d.sync += [f.first.eq(1), f.end.eq(shape.m_one)]
                    with m.If(~f.glast):
                        # the group's next N tile (i_g ≥ 1): the last if i_g = 1 or it is N's last
                        m.d.sync += [f.g0.eq(0), f.glast.eq((i_g == 1) | (i_nrem <= 2 * C)),
                                     f.nlast.eq(i_nrem <= 2 * C)]
                    with m.Elif(~f.klast):
                        # the next K tile's pass, from the group's first N tile
                        m.d.sync += [f.g0.eq(1), f.kt0.eq(0), f.klast.eq(i_krem <= 2 * R),
                                     f.glast.eq(shape.g_one | (i_grem <= C)), f.nlast.eq(i_grem <= C)]
                    with m.Else():
                        # the next group
                        m.d.sync += [f.g0.eq(1), f.kt0.eq(1), f.klast.eq(shape.k_one), f.bank.eq(~f.bank),
                                     f.glast.eq(shape.g_one | (i_nrem <= 2 * C)), f.nlast.eq(i_nrem <= 2 * C)]
                        with m.If(f.nlast):
                            m.d.sync += f.active.eq(0)

    def _lag(self, m, F, starts):
        """Read after write: the pass over K tile kt ≥ 1 reads accumulator row g·M + m, which the
        pass over kt − 1 wrote, P = Gv·M rows earlier (Gv: the group's N tiles). Rows are written
        in issue order, so a row may issue once fewer than P rows of its group are in flight: the
        issue keeps lag = rows issued − rows written in the group's bank (+1 per issued row, −1
        per row written to the bank; 0 from a group's end, while its next first pass ignores it)
        and lag_ok = lag < P, one comparison with a register (timing: this gates the issue of
        every row). P is counted during the group's first pass (p_rows = P, p_rows1 = P − 1);
        at its end lag < P holds if a row of the group has been written (wr_any); after it,
        lag moves by one per cycle, so its next value's test is chosen from three compares of
        the current one. Also counts the FIFO's words (a_cnt, a_nz)."""
        fl = F["l"]
        AB = self._ab
        lag = Signal(range(self._a_depth + 1))
        p_rows, p_rows1 = Signal(AB + 2), Signal(AB + 2)
        wr_any = Signal()
        wr_cur = {}
        for i, (g, f) in enumerate(F.items()):
            wr_cur[g] = Signal(name=f"iss_{g}_wr_cur")
            m.d.comb += wr_cur[g].eq(self.res_valid[i] & (self.res_tag[i][AB] == f.bank))
        group_end_l = fl.go & fl.end & fl.glast & fl.klast
        with m.If(starts["l"] | group_end_l):
            m.d.sync += [lag.eq(0), p_rows.eq(0), p_rows1.eq((1 << len(p_rows1)) - 1), wr_any.eq(0)]
        with m.Else():
            with m.If(fl.go & ~wr_cur["l"]):
                m.d.sync += lag.eq(lag + 1)
            with m.Elif(~fl.go & wr_cur["l"]):
                m.d.sync += lag.eq(lag - 1)
            with m.If(fl.go & fl.kt0):
                m.d.sync += [p_rows.eq(p_rows + 1), p_rows1.eq(p_rows1 + 1)]
            with m.If(wr_cur["l"]):
                m.d.sync += wr_any.eq(1)
        for g, f in F.items():
            with m.If(starts[g]):
                m.d.sync += [f.a_nz.eq(0), f.a_cnt.eq(0)]
            with m.Elif(self.word_in & ~f.go):
                m.d.sync += [f.a_nz.eq(1), f.a_cnt.eq(f.a_cnt + 1)]
            with m.Elif(~self.word_in & f.go):
                m.d.sync += [f.a_nz.eq(f.a_cnt != 1), f.a_cnt.eq(f.a_cnt - 1)]
            with m.If(starts[g] | (f.go & f.end & f.glast & f.klast)):
                m.d.sync += f.lag_ok.eq(1)      # the first pass does not test it
            with m.Elif(f.go & f.end & f.glast & f.kt0):
                m.d.sync += f.lag_ok.eq(wr_any | wr_cur[g])                      # lag + 1 − w < P + 1
            with m.Elif(f.go & ~wr_cur[g]):
                m.d.sync += f.lag_ok.eq(lag < p_rows1)                           # lag + 1 < P
            with m.Elif(~f.go & wr_cur[g]):
                m.d.sync += f.lag_ok.eq((lag != 0) & (lag <= p_rows))            # lag − 1 < P

    def _counts(self, m, F, starts):
        """The counts w_cnt, p_cnt and the vector free, with the flags w_ok, p_ok and fr_ok.
        w_cnt: +1 when a tile is loaded into its slot, −1 at the end of a tile's rows. p_cnt: +1
        when a parameter entry is written, −1 at the end of a first K tile's rows (its bias has
        been read). free[b]: cleared by the first row of a group issued into b, set when b is
        drained; fr_ok is its bit at the next bank, from one next value."""
        need_p = self.shape.need_p
        for g, f in F.items():
            tile_end = f.go & f.end
            drained = [self.drained & (self.drained_bank == b) for b in range(2)]
            fr_next = [(f.free[b] & ~(f.go & f.kt0 & f.g0 & f.first & (f.bank == b))) | drained[b] for b in range(2)]
            bank_next = f.bank ^ (tile_end & f.glast & f.klast)
            p_used = tile_end & f.kt0
            with m.If(starts[g]):
                m.d.sync += [f.w_cnt.eq(0), f.w_ok.eq(0), f.p_cnt.eq(0), f.p_ok.eq(~need_p), f.free.eq(0b11),
                             f.fr_ok.eq(1)]
            with m.Else():
                m.d.sync += [f.free.eq(Cat(*fr_next)), f.fr_ok.eq(Mux(bank_next, fr_next[1], fr_next[0]))]
                with m.If(self.w_loaded & ~tile_end):
                    m.d.sync += [f.w_cnt.eq(f.w_cnt + 1), f.w_ok.eq(1)]
                with m.Elif(~self.w_loaded & tile_end):
                    m.d.sync += [f.w_cnt.eq(f.w_cnt - 1), f.w_ok.eq(f.w_cnt != 1)]
                with m.If(need_p):
                    with m.If(self.p_loaded & ~p_used):
                        m.d.sync += [f.p_cnt.eq(f.p_cnt + 1), f.p_ok.eq(1)]
                    with m.Elif(~self.p_loaded & p_used):
                        m.d.sync += [f.p_cnt.eq(f.p_cnt - 1), f.p_ok.eq(f.p_cnt != 1)]

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
            with m.Elif(~fi.a_nz | (fi.kt0 & ~fi.p_ok)):
                m.d.sync += ev.stall_input.eq(1)
            with m.Elif(fi.kt0 & fi.g0 & fi.first & ~fi.fr_ok):
                m.d.sync += ev.stall_output.eq(1)
            with m.Else():
                m.d.sync += ev.stall_dependency.eq(1)

    def _row(self, m, fi, i_row, tw):
        """The row pipeline: s1 (the accumulator, parameter and FIFO reads), s2 (their registers,
        the partial-sum select), then the array."""
        C, AB = self._cols, self._ab
        cmd = self.command
        s1_valid, s1_kt0, s1_bank, s1_tw = Signal(), Signal(), Signal(), Signal.like(tw)
        s1_row = Signal(AB)
        m.d.sync += [s1_valid.eq(fi.go), s1_kt0.eq(fi.kt0), s1_bank.eq(fi.bank), s1_tw.eq(tw), s1_row.eq(i_row[:AB])]
        m.d.sync += self.events.acc_read.eq(fi.go & ~fi.kt0)
        # s2 registers the memories' outputs (a block RAM's clock-to-output delay leaves no
        # room for the partial-sum multiplexer); a row enters the array two cycles after it was
        # issued
        s2_valid, s2_bank, s2_tw = Signal(), Signal(), Signal.like(tw)
        s2_row = Signal(AB)
        acc_q = Signal.like(self.psum_data, reset_less=True)
        bias_q = Signal.like(self.bias, reset_less=True)
        m.d.sync += [s2_valid.eq(s1_valid), s2_bank.eq(s1_bank), s2_tw.eq(s1_tw), s2_row.eq(s1_row),
                     acc_q.eq(self.psum_data), bias_q.eq(self.bias)]
        # The partial sums entering the array: the N tile's bias or zero (first K tile), else the
        # accumulator so far. Each column has its own two select registers, set from the s1
        # values (timing: one select net would reach all 32·C multiplexers across the array's
        # width).
        for n in range(C):
            sel_acc, sel_b = (Signal(name=f"psum_sel{n}_{what}", attrs=KEEP) for what in ("acc", "b"))
            m.d.sync += [sel_acc.eq(~s1_kt0), sel_b.eq(s1_kt0 & cmd.has_bias)]
            m.d.comb += self.psum[n].eq((acc_q[n] & sel_acc.replicate(32)) | (bias_q[n] & sel_b.replicate(32)))
        m.d.comb += [self.valid.eq(s2_valid), self.a.eq(self.word), self.slot.eq(s2_tw),
                     self.tag.eq(Cat(s2_row, s2_bank))]
