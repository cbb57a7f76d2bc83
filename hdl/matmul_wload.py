"""The matmul engine's weight loader: the ``w`` stream into a staging register of one R×C tile,
copied into the idle weight bank of the array when that bank is free."""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .matmul_common import KEEP, command_layout, lanes_below, run_control
from .pipeline import check_ints

__all__ = ["WeightLoader"]


class WeightLoader(wiring.Component):
    """Weight tiles from ``w`` into a staging register, then into the array's idle bank.

    Parameters
    ----------
    rows, cols : int
        The array's R and C.
    weight_hold, int8_weight_hold : int
        The array's bank hold times (:class:`~hdl.systolic.SystolicArray`) in bf16 and int8 mode.
    load_cycles : int
        Cycles after a copy during which the array still samples the staging register.

    Members
    -------
    w : In(stream.Signature(ArrayLayout(16, C)))
        Tiles in order ``for nt: for kt``; row orientation: kv beats, beat r = W row kt·R + r;
        wide rows (int8): ⌈kv/2⌉ beats, beat j = W rows kt·R + 2j (low bytes) and + 2j + 1 (high
        bytes); transposed: nv columns of ⌈R/C⌉ beats (docs/matmul.md). Lanes past K or N are
        ignored.
        Ready while the staging register is empty and tiles are due.
    start, stop : In(1)
        From :class:`~hdl.matmul_seq.CommandSequencer`.
    command : In(command_layout())
        ``k``, ``n``, ``w_transposed``, ``w_wide``, ``dtype`` (the hold time).
    bank_full : In(2)
        Weight bank b holds a tile whose rows have not all been issued (the issue's flags).
    release, release_bank : In(1)
        The last row of a tile from bank ``release_bank`` is issued in this cycle: the bank may be
        reloaded ``weight_hold`` (int8: ``int8_weight_hold``) + 1 cycles later.
    tile : Out(ArrayLayout(16, R·C))
        The staging register (element k·C + n), padding rows and columns 0x8000 (bf16 −0).
    load, load_bank : Out(1)
        Copy ``tile`` into bank ``load_bank`` (the array's ``w_load``, ``w_bank``); the issue
        marks the bank full.

    Latency: a tile's last beat taken in cycle t is copied from t + 2 on, as soon as its bank
    is free; after a copy the loader takes no beat for ``load_cycles`` cycles (the array's control
    chain still samples the register) and clears the register in the last of them. Throughput: one
    beat per cycle; a tile takes kv (wide: ⌈kv/2⌉) or nv·⌈R/C⌉ beats plus ``load_cycles`` + 1
    cycles.
    """

    def __init__(self, *, rows, cols, weight_hold, int8_weight_hold, load_cycles):
        check_ints(rows=(rows, 1, 64), cols=(cols, 1, 64), weight_hold=(weight_hold, 1, 1 << 12),
                   int8_weight_hold=(int8_weight_hold, 1, weight_hold), load_cycles=(load_cycles, 1, 256))
        self._rows, self._cols = rows, cols
        self._hold, self._hold8, self._load_cycles = weight_hold, int8_weight_hold, load_cycles
        super().__init__({
            "w": In(stream.Signature(data.ArrayLayout(16, cols))),
            "start": In(1), "stop": In(1), "command": In(command_layout()),
            "bank_full": In(2), "release": In(1), "release_bank": In(1),
            "tile": Out(data.ArrayLayout(16, rows * cols)), "load": Out(1), "load_bank": Out(1),
        })

    @property
    def beats_per_column(self):
        """Beats per tile column in transposed orientation: ⌈R/C⌉."""
        return -(-self._rows // self._cols)

    def elaborate(self, platform):
        m = Module()
        R, C, J = self._rows, self._cols, self.beats_per_column
        cmd, stg = self.command, self.tile
        start_w, run_w = run_control(m, self.start, self.stop, "w")
        staged = Signal()
        l_bank = Signal()
        l_krem, l_nrem = Signal(17), Signal(17)
        l_active = Signal()
        l_r = Signal(range(R + 1))                # row beat (row orientation)
        l_c = Signal(range(C + 1))                # column (transposed)
        l_j = Signal(range(J + 1))                # chunk of a column (transposed)
        with m.If(start_w):
            m.d.sync += [staged.eq(0), l_bank.eq(0), l_krem.eq(cmd.k), l_nrem.eq(cmd.n),
                         l_active.eq(1), l_r.eq(0), l_c.eq(0), l_j.eq(0)]
        free = self._bank_holds(m, start_w)
        # After a copy the array samples the staged tile for load_cycles more cycles (its
        # control chain); the staging register is cleared in the last of them, and the loader
        # takes no beat until then.
        l_wait = Signal(range(self._load_cycles + 1))
        l_idle = Signal(init=1)                 # l_wait == 0, a register
        with m.If(~l_idle):
            m.d.sync += [l_wait.eq(l_wait - 1), l_idle.eq(l_wait == 1)]
        # the clear and the orientation reach the staging register through one register per row
        # of it (timing: each would otherwise drive all R·C·16 bits); the clear comes in the
        # last of those cycles, and with ``start`` (from the sequencer's pulse)
        stg_clr = [Signal(name=f"stg_row{r}_clr", attrs=KEEP) for r in range(R)]
        stg_tr = [Signal(name=f"stg_row{r}_tr", attrs=KEEP) for r in range(R)]
        stg_wd = [Signal(name=f"stg_row{r}_wd", attrs=KEEP) for r in range(R)]
        for r in range(R):
            m.d.sync += [stg_clr[r].eq((l_wait == 2) | self.start), stg_tr[r].eq(cmd.w_transposed),
                         stg_wd[r].eq(cmd.w_wide)]
            with m.If(stg_clr[r]):
                for c in range(C):
                    m.d.sync += stg[r * C + c].eq(0x8000)
        l_take = Signal()
        m.d.comb += [l_take.eq(run_w & l_active & ~staged & l_idle), self.w.ready.eq(l_take)]
        lk_valid = lanes_below(l_krem, R)
        ln_valid = lanes_below(l_nrem, C)
        # A beat is written into the staging register one cycle after it was taken, from
        # registers: the beat and one write enable per staging word, (r, c) (timing: the staging
        # register spans the array; its enables must not start from the loader's logic, nor one
        # enable register reach a whole row or column of it). Row orientation: the beat fills
        # row l_r, the columns inside N; wide (two rows per beat), rows 2·l_r and 2·l_r + 1
        # (inside K) from the low and high bytes of its lanes. Transposed: it fills column l_c,
        # the rows of chunk l_j inside K.
        wb_data = Signal.like(self.w.payload, reset_less=True)
        m.d.sync += wb_data.eq(self.w.payload)
        for r in range(R):
            for c in range(C):
                wb_en = Signal(name=f"wb_en{r}_{c}", attrs=KEEP)
                rows_en = Mux(cmd.w_wide, (l_r == r // 2) & lk_valid[r], l_r == r) & ln_valid[c]
                m.d.sync += wb_en.eq(l_take & self.w.valid
                                     & Mux(cmd.w_transposed, (l_c == c) & (l_j == r // C) & lk_valid[r], rows_en))
                byte = wb_data[c][8 * (r % 2):8 * (r % 2) + 8]
                with m.If(wb_en):
                    m.d.sync += stg[r * C + c].eq(Mux(stg_tr[r], wb_data[r % C],
                                                      Mux(stg_wd[r], Cat(byte, byte[7].replicate(8)), wb_data[c])))
        with m.If(l_take & self.w.valid):
            with m.If(cmd.w_transposed):
                with m.If(l_j == J - 1):
                    m.d.sync += [l_j.eq(0), l_c.eq(l_c + 1)]
                    with m.If((l_c == C - 1) | (l_c + 1 >= l_nrem)):
                        m.d.sync += [staged.eq(1), l_c.eq(0)]
                with m.Else():
                    m.d.sync += l_j.eq(l_j + 1)
            with m.Elif(cmd.w_wide):
                m.d.sync += l_r.eq(l_r + 1)
                with m.If((l_r == (R - 1) // 2) | (2 * l_r + 2 >= l_krem)):
                    m.d.sync += [staged.eq(1), l_r.eq(0)]
            with m.Else():
                m.d.sync += l_r.eq(l_r + 1)
                with m.If((l_r == R - 1) | (l_r + 1 >= l_krem)):
                    m.d.sync += [staged.eq(1), l_r.eq(0)]
        commit = Signal()
        m.d.comb += commit.eq(run_w & staged & ~self.bank_full.bit_select(l_bank, 1) & free.bit_select(l_bank, 1))
        m.d.comb += [self.load.eq(commit), self.load_bank.eq(l_bank)]
        with m.If(commit):
            m.d.sync += [staged.eq(0), l_bank.eq(~l_bank), l_wait.eq(self._load_cycles), l_idle.eq(0)]
            with m.If(l_krem <= R):
                m.d.sync += [l_krem.eq(cmd.k), l_nrem.eq(l_nrem - C)]
                with m.If(l_nrem <= C):
                    m.d.sync += l_active.eq(0)
            with m.Else():
                m.d.sync += l_krem.eq(l_krem - R)
        return m

    def _bank_holds(self, m, start_w):
        """The hold count of each bank after its last row was issued; returns ``free`` (bank b's
        hold has passed, a register: it gates the copy)."""
        w_hold = [Signal(range(max(self._hold, self._hold8) + 2), name=f"w_hold{b}") for b in range(2)]
        free = Signal(2, init=0b11)
        with m.If(start_w):
            m.d.sync += [w_hold[0].eq(0), w_hold[1].eq(0), free.eq(0b11)]
        for b in range(2):
            with m.If(~free[b]):
                m.d.sync += [w_hold[b].eq(w_hold[b] - 1), free[b].eq(w_hold[b] == 1)]
            with m.If(self.release & (self.release_bank == b)):   # + 1: the s2 register
                m.d.sync += [w_hold[b].eq(Mux(self.command.dtype, self._hold, self._hold8) + 1), free[b].eq(0)]
        return free
