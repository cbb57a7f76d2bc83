"""The matmul engine's weight loader: the ``w`` stream written straight into the weight slots of
the array's PEs, one tile per slot, each slot reused once the rows that read it have passed."""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .matmul_common import KEEP, command_layout, lanes_below, run_control
from .pipeline import check_ints

__all__ = ["WeightLoader"]


class WeightLoader(wiring.Component):
    """Weight tiles from ``w`` into the array's weight slots, in slot order.

    Parameters
    ----------
    rows, cols : int
        The array's R and C.
    slots : int
        The array's weight slots per PE (:class:`~hdl.systolic.SystolicArray`), a power of two.
    weight_hold, int8_weight_hold : int
        The array's slot hold times (:class:`~hdl.systolic.SystolicArray`) in bf16 and int8 mode.

    Members
    -------
    w : In(stream.Signature(ArrayLayout(16, C)))
        Tiles in the command's order ``for group: for kt: for nt in group`` (groups of G =
        ``interleave`` + 1 N tiles; docs/matmul.md, "Weight formats"); row orientation: kv
        beats, beat r = W row kt·R + r; wide rows (int8): ⌈kv/2⌉ beats, beat j = W rows kt·R + 2j
        (low bytes) and + 2j + 1 (high bytes); transposed: nv columns of ⌈R/C⌉ beats. Lanes past K
        or N are ignored. Ready while tiles are due and the next slot is free.
    start, stop : In(1)
        From :class:`~hdl.matmul_seq.CommandSequencer`.
    command : In(command_layout())
        ``k``, ``n``, ``interleave``, ``w_transposed``, ``w_wide``, ``dtype`` (the hold time).
    release : In(1)
        The last row of a tile is issued in this cycle (tiles are issued in slot order): its slot
        may be written ``weight_hold`` (int8: ``int8_weight_hold``) + 2 cycles later, when that
        row has entered the array and passed its last PE.
    w_data, w_en, w_slot : Out
        The array's weight write port (:class:`~hdl.systolic.SystolicArray`): a beat taken in
        cycle t is written in t + 1 into the PEs it fills, the padding of its tile (0x8000, bf16
        −0: rows past K, columns past N) with the tile's last beat.
    loaded : Out(1)
        The last write of a tile happens in this cycle: the tile is in its slot from the next
        cycle on (the issue counts the tiles).

    Latency: a tile's last beat taken in cycle t is written in t + 1 (``loaded``), and a row may
    use it from t + 2. Throughput: one beat per cycle, without a gap between tiles, while a slot
    is free: a tile takes kv (wide: ⌈kv/2⌉) or nv·⌈R/C⌉ beats.
    """

    def __init__(self, *, rows, cols, slots, weight_hold, int8_weight_hold):
        check_ints(rows=(rows, 1, 64), cols=(cols, 1, 64), slots=(slots, 2, 64),
                   weight_hold=(weight_hold, 1, 1 << 12), int8_weight_hold=(int8_weight_hold, 1, weight_hold))
        if slots & (slots - 1):
            raise ValueError(f"slots must be a power of two, not {slots}")
        self._rows, self._cols, self._slots = rows, cols, slots
        self._hold, self._hold8 = weight_hold, int8_weight_hold
        sb = ceil_log2(slots)
        super().__init__({
            "w": In(stream.Signature(data.ArrayLayout(16, cols))),
            "start": In(1), "stop": In(1), "command": In(command_layout()), "release": In(1),
            "w_data": Out(data.ArrayLayout(16, rows * cols)), "w_en": Out(rows * cols),
            "w_slot": Out(data.ArrayLayout(sb, rows)), "loaded": Out(1),
        })

    @property
    def beats_per_column(self):
        """Beats per tile column in transposed orientation: ⌈R/C⌉."""
        return -(-self._rows // self._cols)

    def elaborate(self, platform):
        m = Module()
        R, C, J = self._rows, self._cols, self.beats_per_column
        cmd = self.command
        start_w, run_w = run_control(m, self.start, self.stop, "w")
        wp = Signal(ceil_log2(self._slots))     # the slot the tile being received goes to
        # the tile loop: l_krem (K − k0 of the tile), l_nrem (N − n0), l_grem (N − n0 of the
        # group's first N tile), l_g (G − 1 − g), l_glast (the group's last N tile in this pass)
        l_krem, l_nrem, l_grem = Signal(17), Signal(17), Signal(17)
        l_g, l_glast = Signal(4), Signal()
        l_active = Signal()
        l_r = Signal(range(R + 1))                # row beat (row orientation)
        l_c = Signal(range(C + 1))                # column (transposed)
        l_j = Signal(range(J + 1))                # chunk of a column (transposed)
        with m.If(start_w):
            m.d.sync += [wp.eq(0), l_krem.eq(cmd.k), l_nrem.eq(cmd.n), l_grem.eq(cmd.n), l_g.eq(cmd.interleave),
                         l_glast.eq((cmd.interleave == 0) | (cmd.n <= C)), l_active.eq(1),
                         l_r.eq(0), l_c.eq(0), l_j.eq(0)]
        used = Signal()                 # a tile's last beat is taken: its slot is used
        l_free = self._free_slots(m, start_w, used)
        l_take = Signal()
        fire = Signal()
        m.d.comb += [l_take.eq(run_w & l_active & l_free), self.w.ready.eq(l_take), fire.eq(l_take & self.w.valid)]
        lk_valid = lanes_below(l_krem, R)
        ln_valid = lanes_below(l_nrem, C)
        # the beat is the last of its tile
        tile_last = Signal()
        last_tr = (l_j == J - 1) & ((l_c == C - 1) | (l_c + 1 >= l_nrem))
        last_wide = (l_r == (R - 1) // 2) | (2 * l_r + 2 >= l_krem)
        last_rows = (l_r == R - 1) | (l_r + 1 >= l_krem)
        m.d.comb += tile_last.eq(Mux(cmd.w_transposed, last_tr, Mux(cmd.w_wide, last_wide, last_rows)))
        self._writes(m, fire, tile_last, lk_valid, ln_valid, l_r, l_c, l_j, wp)
        m.d.comb += used.eq(fire & tile_last)
        m.d.sync += self.loaded.eq(used)
        with m.If(fire):
            with m.If(cmd.w_transposed):
                with m.If(l_j == J - 1):
                    m.d.sync += [l_j.eq(0), l_c.eq(l_c + 1)]
                with m.Else():
                    m.d.sync += l_j.eq(l_j + 1)
            with m.Else():
                m.d.sync += l_r.eq(l_r + 1)
            with m.If(tile_last):
                m.d.sync += [wp.eq(wp + 1), l_r.eq(0), l_c.eq(0), l_j.eq(0)]
                g_one = cmd.interleave == 0
                with m.If(~l_glast):
                    # the group's next N tile, same K tile
                    m.d.sync += [l_nrem.eq(l_nrem - C), l_g.eq(l_g - 1),
                                 l_glast.eq((l_g == 1) | (l_nrem <= 2 * C))]
                with m.Elif(l_krem > R):
                    # the next K tile, from the group's first N tile
                    m.d.sync += [l_krem.eq(l_krem - R), l_nrem.eq(l_grem), l_g.eq(cmd.interleave),
                                 l_glast.eq(g_one | (l_grem <= C))]
                with m.Else():
                    # the next group
                    m.d.sync += [l_krem.eq(cmd.k), l_nrem.eq(l_nrem - C), l_grem.eq(l_nrem - C),
                                 l_g.eq(cmd.interleave), l_glast.eq(g_one | (l_nrem <= 2 * C))]
                    with m.If(l_nrem <= C):
                        m.d.sync += l_active.eq(0)
        return m

    def _writes(self, m, fire, tile_last, lk_valid, ln_valid, l_r, l_c, l_j, wp):
        """The array's write port. A beat is written one cycle after it was taken, from registers:
        the beat, and per PE a write enable and a padding flag (timing: the PEs span the array;
        their enables must not start from the loader's logic, nor one enable register reach a
        whole row or column of them). Row orientation: the beat fills row l_r; wide (two rows
        per beat), rows 2·l_r and 2·l_r + 1 from the low and high bytes of its lanes;
        transposed: column l_c, the rows of chunk l_j. Padding (rows past K, columns past N) is
        written as 0x8000: with each beat where the beat covers it, the rest with the tile's
        last beat (rows past K in the row formats, columns past N transposed)."""
        R, C = self._rows, self._cols
        cmd = self.command
        wb_data = Signal.like(self.w.payload, reset_less=True)
        m.d.sync += wb_data.eq(self.w.payload)
        # the orientation and the slot reach the PEs through one register per row of them
        # (timing: each would otherwise drive all R·C write ports)
        row_tr = [Signal(name=f"wl_row{r}_tr", attrs=KEEP) for r in range(R)]
        row_wd = [Signal(name=f"wl_row{r}_wd", attrs=KEEP) for r in range(R)]
        for r in range(R):
            slot_r = Signal.like(self.w_slot[r], name=f"wl_row{r}_slot", attrs=KEEP)
            m.d.sync += [row_tr[r].eq(cmd.w_transposed), row_wd[r].eq(cmd.w_wide), slot_r.eq(wp)]
            m.d.comb += self.w_slot[r].eq(slot_r)
        en_bits = []
        for r in range(R):
            for c in range(C):
                wb_en = Signal(name=f"wb_en{r}_{c}", attrs=KEEP)
                wb_pad = Signal(name=f"wb_pad{r}_{c}", reset_less=True)
                target = Mux(cmd.w_transposed, (l_c == c) & (l_j == r // C),
                             Mux(cmd.w_wide, l_r == r // 2, l_r == r))
                pad_rest = Mux(cmd.w_transposed, ~ln_valid[c], ~lk_valid[r])
                m.d.sync += [wb_en.eq(fire & (target | (tile_last & pad_rest))),
                             wb_pad.eq(~lk_valid[r] | ~ln_valid[c])]
                byte = wb_data[c][8 * (r % 2):8 * (r % 2) + 8]
                m.d.comb += self.w_data[r * C + c].eq(
                    Mux(wb_pad, 0x8000, Mux(row_tr[r], wb_data[r % C],
                                            Mux(row_wd[r], Cat(byte, byte[7].replicate(8)), wb_data[c]))))
                en_bits.append(wb_en)
        m.d.comb += self.w_en.eq(Cat(*en_bits))

    def _free_slots(self, m, start_w, used):
        """Free slots: a slot is taken by a tile's last beat and freed ``weight_hold`` cycles after
        the issue released it (a delay line of the releases, tapped at the data type's hold), so
        that a beat taken in the cycle after can be written (two cycles after the release the
        row enters the array). Returns ``l_free`` (a slot is free, a register: it gates ``w``)."""
        H, H8 = self._hold, self._hold8
        line = [Signal(name=f"wl_rel_d{i + 1}") for i in range(H)]
        with m.If(start_w):
            m.d.sync += [x.eq(0) for x in line]
        with m.Else():
            m.d.sync += [line[0].eq(self.release)] + [line[i].eq(line[i - 1]) for i in range(1, H)]
        freed = Signal()
        m.d.comb += freed.eq(Mux(self.command.dtype, line[H - 1], line[H8 - 1]))
        free_cnt = Signal(range(self._slots + 1), init=self._slots)
        l_free = Signal(init=1)
        with m.If(start_w):
            m.d.sync += [free_cnt.eq(self._slots), l_free.eq(1)]
        with m.Elif(freed & ~used):
            m.d.sync += [free_cnt.eq(free_cnt + 1), l_free.eq(1)]
        with m.Elif(~freed & used):
            m.d.sync += [free_cnt.eq(free_cnt - 1), l_free.eq(free_cnt != 1)]
        return l_free
