"""The vector unit's token buffer: the first pass of QUANT_TOKEN (docs/vector.md).

Per-token quantization (``golden.layer.quantize_per_token``, ``quantize_per_token_scaled``)
needs each row's largest magnitude before its first output. The maximum needs no element order,
so :class:`TokenBuffer` computes it while the row streams in (a V-input max tree, one level per
cycle, and a running maximum), stores the row in a circular buffer, and reads it back once its
scalars are known:

* **write**: V elements per cycle (bf16 widened exactly to fp32), stored as fp32 words; the
  magnitudes (subnormals read as zero, lanes past the row's end as zero) go to the max tree;
* **row scalars**: at the row's last beat, a = the largest magnitude, E = a's exponent field,
  e = E − 133, j = a's top SCALE_BITS fraction bits (ROW_SCALE), and the multiplier mu[j] read
  from the scale table (1.0 without ROW_SCALE), into a FIFO of :data:`ROWS_IN_FLIGHT` rows;
* **read**: the row again, one beat per cycle, with its s_out word (:func:`spec.vector.row_word`)
  and multiplier, to the lanes.

The buffer holds ceil(max_len/V) + 16 beats: one longest row plus the latency from its last
beat to its first read, so writes and reads of consecutive rows overlap and the rate is one
beat per cycle for any row length. Memory: (ceil(max_len/V) + 16) words of 32·V bits.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from spec.vector import ROW_SCALE_SHIFT, SCALE_BITS, TOKEN_EXP_BIAS

__all__ = ["TokenBuffer", "ROWS_IN_FLIGHT"]

#: Rows written and not yet read out (the row-scalar FIFO's depth).
ROWS_IN_FLIGHT = 16
_ONE = 0x3F800000
_SLACK = 16


def _tree_levels(lanes):
    return max(1, ceil_log2(lanes))


class TokenBuffer(wiring.Component):
    """Buffers QUANT_TOKEN rows and computes each row's exponent, scale index and multiplier.

    Parameters
    ----------
    lanes : int
        V.
    max_len : int
        Longest row.

    Members
    -------
    start : In(1)
        Take a command: ``fp32`` (rows of fp32; else bf16 in the low 16 bits), ``scaled``
        (ROW_SCALE), ``length``, ``beats`` (ceil(length/V)), ``rows``.
    a : In(stream of ArrayLayout(32, V))
        The rows, ``beats`` beats each.
    o : Out(stream of {x: ArrayLayout(32, V), sc: 32, mu: 32})
        The rows (fp32 bits), in order, one beat per cycle, with the row's s_out word ``sc`` and
        its multiplier ``mu`` (fp32 bits).
    mu_j, mu_en : Out; mu : In(32)
        The QUANT scale table's read port: ``mu`` is entry ``mu_j`` the cycle after ``mu_en``.
    buf_writes, buf_reads : Out
        32-bit words of the buffer written / read this cycle.

    Latency of a row: its B beats in, :attr:`scalar_latency` cycles to its scalars, then B beats
    out (the next rows stream in meanwhile).
    """

    def __init__(self, *, lanes, max_len):
        self._v = lanes
        self._lw = max_len.bit_length()
        self._depth = -(-max_len // lanes) + _SLACK
        super().__init__({
            "start": In(1), "fp32": In(1), "scaled": In(1), "length": In(self._lw), "beats": In(self._lw),
            "rows": In(16),
            "a": In(stream.Signature(data.ArrayLayout(32, lanes))),
            "o": Out(stream.Signature(data.StructLayout({"x": data.ArrayLayout(32, lanes), "sc": 32,
                                                         "mu": 32}))),
            "mu_j": Out(SCALE_BITS), "mu_en": Out(1), "mu": In(32),
            "buf_writes": Out(ceil_log2(lanes + 1)), "buf_reads": Out(ceil_log2(lanes + 1)),
        })

    @property
    def tree_levels(self):
        """Registered levels of the max tree (at least one)."""
        return _tree_levels(self._v)

    @property
    def scalar_latency(self):
        """Cycles from a row's last beat taken to its first beat valid on ``o``, no stalls."""
        return self.scalar_latency_for(self._v)

    @staticmethod
    def scalar_latency_for(lanes):
        """:attr:`scalar_latency` of a buffer of ``lanes`` lanes: the max tree, the running
        maximum, the table read, the FIFO write and read, the output register."""
        return _tree_levels(lanes) + 4

    def elaborate(self, platform):
        m = Module()
        c = {k: Signal(len(getattr(self, k)), name=f"cmd_{k}") for k in ("fp32", "scaled", "length", "beats")}
        with m.If(self.start):
            m.d.sync += [c[k].eq(getattr(self, k)) for k in c]
        mem = Memory(shape=unsigned(32 * self._v), depth=self._depth, init=[])
        m.submodules.buf = mem
        m.submodules.scalars = fifo = SyncFIFO(width=64, depth=ROWS_IN_FLIGHT)
        used = Signal(range(self._depth + 1))
        open_rows = Signal(range(ROWS_IN_FLIGHT + 1))
        wr, row_in = self._write(m, c, mem, used, open_rows)
        self._scalars(m, c, row_in, fifo)
        rd, row_out = self._read(m, c, mem, fifo)
        m.d.sync += [used.eq(used + wr - rd), open_rows.eq(open_rows + row_in["open"] - row_out)]
        return m

    def _write(self, m, c, mem, used, open_rows):
        """The write side: (beat written, the row-end events for the max tree)."""
        V = self._v
        rows_left = Signal(16)
        k = Signal(self._lw)
        base = Signal(self._lw + 1)
        wptr = Signal(range(self._depth))
        with m.If(self.start):
            m.d.sync += [rows_left.eq(self.rows), k.eq(0), base.eq(0)]
        first = k == 0
        m.d.comb += self.a.ready.eq((rows_left != 0) & (used < self._depth)
                                    & (~first | (open_rows < ROWS_IN_FLIGHT)))
        fire = self.a.valid & self.a.ready
        last = k == c["beats"] - 1
        words = [Mux(c["fp32"], self.a.payload[j], Cat(Const(0, 16), self.a.payload[j][:16])) for j in range(V)]
        wp = mem.write_port()
        m.d.comb += [wp.addr.eq(wptr), wp.data.eq(Cat(*words)), wp.en.eq(fire),
                     self.buf_writes.eq(Mux(fire, V, 0))]
        with m.If(fire):
            m.d.sync += [k.eq(k + 1), base.eq(base + V), wptr.eq(Mux(wptr == self._depth - 1, 0, wptr + 1))]
            with m.If(last):
                m.d.sync += [k.eq(0), base.eq(0), rows_left.eq(rows_left - 1)]
        # magnitudes (DAZ; lanes past the row's end read as 0), then a registered max tree
        mags = [Mux((words[j][23:31] != 0) & (base + j < c["length"]), words[j][:31], 0) for j in range(V)]
        level = [Signal(31, name=f"tmax0_{j}") for j in range(V)]
        ctl = {"v": Signal(name="tree0_v"), "first": Signal(name="tree0_first"), "last": Signal(name="tree0_last")}
        m.d.sync += [level[j].eq(mags[j]) for j in range(V)]
        m.d.sync += [ctl["v"].eq(fire), ctl["first"].eq(first), ctl["last"].eq(last)]
        for lv in range(1, self.tree_levels):
            nxt = [Signal(31, name=f"tmax{lv}_{j}") for j in range(len(level) // 2)]
            for j, s in enumerate(nxt):
                x, y = level[2 * j], level[2 * j + 1]
                m.d.sync += s.eq(Mux(x > y, x, y))
            level = nxt
            ctl = {key: self._reg(m, v, f"tree{lv}_{key}") for key, v in ctl.items()}
        tmax = level[0] if len(level) == 1 else Mux(level[0] > level[1], level[0], level[1])
        return fire, dict(ctl, max=tmax, open=fire & first)

    @staticmethod
    def _reg(m, value, name):
        sig = Signal(len(value), name=name)
        m.d.sync += sig.eq(value)
        return sig

    def _scalars(self, m, c, t, fifo):
        """Running maximum; at a row's end e, j, the table read and the FIFO write."""
        rmax = Signal(31)
        cur = Mux(t["first"] | (t["max"] > rmax), t["max"], rmax)
        with m.If(t["v"]):
            m.d.sync += rmax.eq(cur)
        done = self._reg(m, t["v"] & t["last"], "row_done")
        amax = self._reg(m, cur, "row_amax")
        j = amax[23 - SCALE_BITS:23]
        m.d.comb += [self.mu_j.eq(j), self.mu_en.eq(done)]
        e = Signal(signed(16), name="row_e")
        m.d.comb += e.eq(amax[23:31] - TOKEN_EXP_BIAS)
        pushed = self._reg(m, done, "row_push")
        # spec.vector.row_word: e sign-extended, or e (16 bits) | j << ROW_SCALE_SHIFT
        assert ROW_SCALE_SHIFT == len(e)
        word = self._reg(m, Mux(c["scaled"], Cat(e, j, Const(0, 32 - ROW_SCALE_SHIFT - SCALE_BITS)),
                                Cat(e, e[-1].replicate(16))), "row_word")
        m.d.comb += [fifo.w_en.eq(pushed), fifo.w_data.eq(Cat(word, Mux(c["scaled"], self.mu, _ONE)))]

    def _read(self, m, c, mem, fifo):
        """The read side: (beat read, row finished)."""
        rptr = Signal(range(self._depth))
        k = Signal(self._lw)
        rp = mem.read_port(domain="sync")
        advance = ~self.o.valid | self.o.ready
        issue = advance & fifo.r_rdy
        last = k == c["beats"] - 1
        m.d.comb += [rp.addr.eq(rptr), rp.en.eq(issue), fifo.r_en.eq(issue & last),
                     self.buf_reads.eq(Mux(issue, self._v, 0))]
        sc, mu = Signal(32), Signal(32)
        with m.If(advance):
            m.d.sync += [self.o.valid.eq(fifo.r_rdy), sc.eq(fifo.r_data[:32]), mu.eq(fifo.r_data[32:])]
        with m.If(issue):
            m.d.sync += [k.eq(k + 1), rptr.eq(Mux(rptr == self._depth - 1, 0, rptr + 1))]
            with m.If(last):
                m.d.sync += k.eq(0)
        m.d.comb += [self.o.payload.x.eq(rp.data), self.o.payload.sc.eq(sc), self.o.payload.mu.eq(mu)]
        return issue, issue & last
