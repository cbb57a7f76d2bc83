"""The vector unit's scale tables and its per-row scalar stage (docs/vector.md, TABLE).

:class:`ScaleTables` holds the two tables of :class:`spec.vector.VectorTable`, SCALE_ENTRIES
fp32 entries each (``golden.layer.token_scale_table``: mu for QUANT_TOKEN with ROW_SCALE, nu for
DEQUANT with ROW_SCALE), written by a TABLE command from ``p`` and kept until reset or the next
TABLE of the same table; ``written`` says which have been written since reset. It also takes
the ``s_in`` words (one per row of REQUANT and DEQUANT with ROW_EXP or ROW_SCALE) through one
register stage that looks up nu[j] of each word's j, so the lanes get the row's scale with its
first beat. Memories: two of SCALE_ENTRIES/V words of 32·V bits (4 kbit each).
"""

from amaranth.hdl import Array, Module, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from spec.vector import ROW_SCALE_SHIFT, ROWS_BITS, SCALE_BITS, SCALE_ENTRIES, VectorTable

__all__ = ["ScaleTables"]


class ScaleTables(wiring.Component):
    """The QUANT and DEQUANT scale tables and the ``s_in`` stage.

    Parameters
    ----------
    lanes : int
        V, a power of two, 1..64.

    Members
    -------
    start : In(1)
        A TABLE command: write table ``table`` (0 QUANT, 1 DEQUANT) from SCALE_ENTRIES/V ``p``
        beats (entry n in lane n mod V of beat n div V).
    p : In(stream of ArrayLayout(32, V))
    busy : Out(1)
        The TABLE command has ``p`` beats left.
    written : Out(2)
        Bit t: table t has been written since reset.
    s_start, s_rows : In
        A command that reads ``s_rows`` words from ``s_in``; the stage takes no more than those.
    s_in : In(stream of 32 bits)
    row : Out(stream of {word: 32, nu: 32})
        Each ``s_in`` word with nu[j] (j = bits ROW_SCALE_SHIFT.. of the word), one cycle later.
    mu_j, mu_en : In; mu : Out(32)
        The QUANT table's read port: ``mu`` is entry ``mu_j`` from the cycle after ``mu_en``.
    """

    def __init__(self, *, lanes):
        self._v = lanes
        self._words = SCALE_ENTRIES // lanes
        super().__init__({
            "start": In(1), "table": In(1),
            "p": In(stream.Signature(data.ArrayLayout(32, lanes))),
            "busy": Out(1), "written": Out(len(VectorTable)),
            "s_start": In(1), "s_rows": In(ROWS_BITS),
            "s_in": In(stream.Signature(32)),
            "row": Out(stream.Signature(data.StructLayout({"word": 32, "nu": 32}))),
            "mu_j": In(SCALE_BITS), "mu_en": In(1), "mu": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        V = self._v
        lv = exact_log2(V)
        mems = [Memory(shape=unsigned(32 * V), depth=self._words, init=[]) for _ in VectorTable]
        m.submodules.mu_table, m.submodules.nu_table = mems
        # TABLE: p beats into the chosen table
        cnt = Signal(range(self._words))
        table = Signal()
        with m.If(self.start):
            m.d.sync += [self.busy.eq(1), table.eq(self.table), cnt.eq(0)]
        m.d.comb += self.p.ready.eq(self.busy)
        fire = self.p.valid & self.p.ready
        for t, mem in enumerate(mems):
            wp = mem.write_port()
            m.d.comb += [wp.addr.eq(cnt), wp.data.eq(self.p.payload), wp.en.eq(fire & (table == t))]
        with m.If(fire):
            m.d.sync += cnt.eq(cnt + 1)
            with m.If(cnt == self._words - 1):
                m.d.sync += [self.busy.eq(0), self.written.bit_select(table, 1).eq(1)]
        # reads: entry j is lane j mod V of word j div V
        def read(mem, j, en, name):
            rp = mem.read_port(domain="sync")
            lo = Signal(max(lv, 1), name=f"{name}_lane")
            m.d.comb += [rp.addr.eq(j[lv:]), rp.en.eq(en)]
            if not lv:
                return rp.data
            with m.If(en):
                m.d.sync += lo.eq(j[:lv])
            return Array(rp.data[32 * i:32 * (i + 1)] for i in range(V))[lo]
        m.d.comb += self.mu.eq(read(mems[VectorTable.QUANT], self.mu_j, self.mu_en, "mu"))
        # s_in: one register stage with the nu lookup, no more words than the command's rows
        left = Signal(ROWS_BITS)
        with m.If(self.s_start):
            m.d.sync += left.eq(self.s_rows)
        m.d.comb += self.s_in.ready.eq((left != 0) & (~self.row.valid | self.row.ready))
        take = self.s_in.valid & self.s_in.ready
        j = self.s_in.payload[ROW_SCALE_SHIFT:ROW_SCALE_SHIFT + SCALE_BITS]
        nu = read(mems[VectorTable.DEQUANT], j, take, "nu")
        with m.If(take):
            m.d.sync += [self.row.valid.eq(1), self.row.payload.word.eq(self.s_in.payload), left.eq(left - 1)]
        with m.Elif(self.row.ready):
            m.d.sync += self.row.valid.eq(0)
        m.d.comb += self.row.payload.nu.eq(nu)
        return m
