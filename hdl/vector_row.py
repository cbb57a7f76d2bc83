"""The vector unit's row engine: the first pass of RMSNORM and RMSNORM_FP32 (docs/vector.md).

RMSNORM needs the fp32 sum of squares of the whole row, in element order (``s = fp32_add(s,
bf16_mul(x_i, x_i))``, sequential), before any output. The engine buffers rows and takes two
passes over them:

* **write**: rows arrive on ``a`` (V elements per cycle; fp32 rounded to bf16 for dtype INT8) and
  are stored as bf16 in a *slot* of G = V rows, element i of group row r in bank (r + i) mod V;
* **sum** (pass 1): the slot is read by columns, element i of all G rows per cycle (one word of
  each bank), so lane r accumulates row r in element order at one element per cycle (the fp32
  adder in the loop has one register); the G results go to the finisher;
* **finish**: one row per cycle, ``r = rsqrt(fp32_add(fp32_mul(s, 1/D), eps))``, into the slot's
  per-row scalars;
* **read** (pass 2): the slot is read by rows, one beat per cycle, with the row's scalar, to the
  lanes (``o``), which compute the outputs.

Four slots let the phases of consecutive groups overlap: rows stream in at V elements per
cycle while earlier groups are summed, finished and read out. Each phase of a group of G rows
of D elements takes about D cycles (write and read: G·ceil(D/V); sum: D), so the rate is V
elements per cycle for any D; a group of fewer than G rows still takes D cycles to sum.
Memory: 4·V banks of G·ceil(max_len/V) 16-bit words (4·V·max_len·16 bits, rounded up).

**fp32 rows** (``fp32_in``, RMSNORM_FP32: ``s = fp32_add(s, fp32_mul(x_i, x_i))``): the same
memory holds two groups of fp32 rows instead of four of bf16 rows. Logical slot s keeps its
state and scalars, but its rows go to the memories of slots 2·(s mod 2) (the low 16 bits of
each element) and 2·(s mod 2) + 1 (the high 16 bits), so a beat is still one write of each bank
of the pair, and a column read one read of each. The pass-2 read takes no data: the unit reads
the rows again from its ``b`` stream. A pair is free once its group has been summed, so slot s
is written when it is empty and slot s + 2 (the pair's other user) is not waiting for its sum:
write, sum, finish and read of four consecutive groups still overlap, at V elements per cycle.
Each summing lane has an fp32 multiplier (:class:`~hdl.vector_arith.Fp32MulCore`) for the
square besides the bf16 one.
"""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .arith import Bf16MulCore, Fp32AddCore, Fp32ToBf16Core
from .params import check_int
from .vector_arith import Fp32MulCore, RsqrtCore, RsqrtSeq, delay

__all__ = ["RowEngine", "SLOTS"]

#: Row-group slots of the buffer.
SLOTS = 4
assert SLOTS == 4  # fp32 rows pair slot s with slot s ^ 2
_EMPTY, _FULL, _SUMMING, _SUMMED = 0, 1, 2, 3


class RowEngine(wiring.Component):
    """Buffers rows and computes each row's RMSNORM reciprocal root.

    Parameters
    ----------
    lanes : int
        V (elements per beat; also G, the rows of a slot).
    max_len : int
        Longest row.

    Members
    -------
    start : In(1)
        Take a command (``fp32``, ``fp32_in``, ``length``, ``beats``, ``rows``, ``eps``, ``inv_d``):
        ``fp32`` rounds fp32 rows to bf16 on entry, ``fp32_in`` keeps them fp32 (no ``x`` on ``o``).
    a : In(stream of ArrayLayout(32, V))
        The rows, ``beats`` beats each.
    o : Out(stream of {x: ArrayLayout(16, V), sc: 32, r: range(V)})
        The stored rows (bf16), in order, one beat per cycle, with the row's r (fp32 bits) in ``sc``
        (``fp32_in``: ``x`` is not read; the unit takes the row from ``b``).
    busy : Out(1)
        A row of the command is not yet out on ``o``.
    buf_writes, buf_reads, sq_ops, fin_ops : Out
        Event amounts: buffer words written and read (16-bit words), squares (bf16, or fp32 with
        ``fp32_in``) and fp32 adds of pass 1, and finisher rows (one fp32 multiply, one fp32 add,
        one rsqrt each).

    rsqrt_steps : int
        0 (default): the finisher's reciprocal square root is the pipelined
        :class:`~hdl.vector_arith.RsqrtCore` (one row per cycle); 1..8: the sequential
        :class:`~hdl.vector_arith.RsqrtSeq` doing that many steps per cycle, one row at a time
        (the same results in a fraction of the area).

    Latency of a group: write G·B cycles, sum D + 5 (``fp32_in``: D + 6), finish
    G − 1 + :attr:`finish_latency` (sequential: G·(:attr:`finish_latency` + 1) − 1), read G·B.
    """

    def __init__(self, *, lanes, max_len, rsqrt_steps=0):
        self._rsqrt_steps = check_int("rsqrt_steps", rsqrt_steps, 0, 8)
        self._v = lanes
        self._max_len = max_len
        self._bmax = -(-max_len // lanes)
        self._depth = max(2, lanes * self._bmax)
        lw = max_len.bit_length()
        self._lw = lw
        super().__init__({
            "start": In(1), "fp32": In(1), "fp32_in": In(1), "length": In(lw), "beats": In(lw),
            "rows": In(16), "eps": In(32), "inv_d": In(32),
            "a": In(stream.Signature(data.ArrayLayout(32, lanes))),
            "o": Out(stream.Signature(self.out_layout)),
            "busy": Out(1),
            "buf_writes": Out(ceil_log2(2 * lanes + 1)), "buf_reads": Out(ceil_log2(4 * lanes + 1)),
            "sq_ops": Out(ceil_log2(lanes + 1)), "fin_ops": Out(1),
        })

    @property
    def out_layout(self):
        return data.StructLayout({"x": data.ArrayLayout(16, self._v), "sc": 32,
                                  "r": range(max(self._v, 2))})

    def _rsqrt(self):
        return RsqrtSeq(steps=self._rsqrt_steps) if self._rsqrt_steps else RsqrtCore()

    @property
    def finish_latency(self):
        """Cycles from a row's sum taken by the finisher to its scalar written."""
        return Fp32MulCore.LATENCY + 4 + self._rsqrt().latency

    def elaborate(self, platform):
        m = Module()
        V = self._v
        # command registers
        c = {k: Signal(len(getattr(self, k)), name=f"cmd_{k}") for k in
             ("fp32", "fp32_in", "length", "beats", "eps", "inv_d")}
        with m.If(self.start):
            m.d.sync += [c[k].eq(getattr(self, k)) for k in c]
        mems = [[Memory(shape=unsigned(16), depth=self._depth, init=[]) for _ in range(V)]
                for _ in range(SLOTS)]
        wps, rps = [], []
        for s in range(SLOTS):
            wps.append([])
            rps.append([])
            for b in range(V):
                m.submodules[f"buf{s}_{b}"] = mems[s][b]
                wps[s].append(mems[s][b].write_port())
                rps[s].append(mems[s][b].read_port(domain="sync"))
                m.d.comb += rps[s][b].en.eq(0)  # read ports hold their data unless read
        state = Array(Signal(2, name=f"slot{s}_state") for s in range(SLOTS))
        nrows = Array(Signal(range(V + 1), name=f"slot{s}_rows") for s in range(SLOTS))
        scal = Array(Array(Signal(32, name=f"slot{s}_sc{r}") for r in range(V)) for s in range(SLOTS))
        ctx = dict(c=c, rps=rps, wps=wps, state=state, nrows=nrows, scal=scal)
        w_busy = self._write(m, ctx)
        sums = self._sum(m, ctx)
        self._finish(m, ctx, sums)
        n_busy = self._read(m, ctx)
        m.d.comb += self.busy.eq(w_busy | n_busy | Cat(*[st != _EMPTY for st in state]).any())
        return m

    def _rot(self, lanes, amount):
        """Lane j of the result is ``lanes[(j + amount) mod V]``."""
        V = self._v
        arr = Array(lanes)
        return [arr[(j + amount)[:max(1, ceil_log2(V))] if V > 1 else 0] for j in range(V)]

    def _write(self, m, x):
        V, c = self._v, x["c"]
        rows_left = Signal(16)
        slot = Signal(range(SLOTS))
        r = Signal(range(V + 1))
        k = Signal(self._lw)
        n = Signal(range(V + 1))
        addr = Signal(range(self._depth))
        with m.If(self.start):
            m.d.sync += [rows_left.eq(self.rows), r.eq(0), k.eq(0), addr.eq(0)]
        # fp32 rows: slot s shares its memories with slot s ^ 2 (see the module's docstring)
        free = (x["state"][slot] == _EMPTY) & ~(c["fp32_in"] & (x["state"][slot ^ 2] == _FULL))
        m.d.comb += [n.eq(Mux(rows_left < V, rows_left, V)), self.a.ready.eq((rows_left != 0) & free)]
        fire = self.a.valid & self.a.ready
        last_beat = k == c["beats"] - 1
        last_row = r == n - 1
        cvts = []
        for j in range(V):
            cv = Fp32ToBf16Core()
            m.submodules[f"wcvt{j}"] = cv
            m.d.comb += [cv.en.eq(1), cv.a.eq(self.a.payload[j])]
            cvts.append(cv.y)
        w1_valid = Signal()
        w1_last = Signal()
        w1 = {"slot": Signal(range(SLOTS)), "addr": Signal(range(self._depth)), "r": Signal(range(V + 1)),
              "raw": Signal(32 * V), "n": Signal(range(V + 1))}
        m.d.sync += [w1_valid.eq(fire), w1_last.eq(fire & last_beat & last_row), w1["slot"].eq(slot),
                     w1["addr"].eq(addr), w1["r"].eq(r), w1["n"].eq(n),
                     w1["raw"].eq(Cat(*[self.a.payload[j] for j in range(V)]))]
        with m.If(fire):
            m.d.sync += [k.eq(k + 1), addr.eq(addr + 1)]
            with m.If(last_beat):
                m.d.sync += [k.eq(0), r.eq(r + 1)]
                with m.If(last_row):
                    m.d.sync += [r.eq(0), addr.eq(0), rows_left.eq(rows_left - n),
                                 slot.eq(Mux(slot == SLOTS - 1, 0, slot + 1))]
        raw = [w1["raw"][32 * j:32 * (j + 1)] for j in range(V)]
        lanes = [Mux(c["fp32_in"], raw[j], Cat(Mux(c["fp32"], cvts[j], raw[j][:16]), Const(0, 16)))
                 for j in range(V)]
        # bank b holds lane (b − r) mod V
        by_bank = self._rot(lanes, (V - w1["r"]) if V > 1 else 0) if V > 1 else lanes
        for s in range(SLOTS):
            mine = Mux(c["fp32_in"], w1["slot"][0] == s // 2, w1["slot"] == s)
            for b in range(V):
                wp = x["wps"][s][b]
                half = by_bank[b][16:] if s % 2 else by_bank[b][:16]
                m.d.comb += [wp.addr.eq(w1["addr"]), wp.data.eq(Mux(c["fp32_in"], half, by_bank[b][:16])),
                             wp.en.eq(w1_valid & mine)]
        with m.If(w1_last):
            m.d.sync += [x["state"][w1["slot"]].eq(_FULL), x["nrows"][w1["slot"]].eq(w1["n"])]
        m.d.comb += [self.buf_writes.eq(Mux(w1_valid, Mux(c["fp32_in"], 2 * V, V), 0))]
        return (rows_left != 0) | w1_valid

    def _sum(self, m, x):
        """Pass 1: column reads, squares and the sequential fp32 sums."""
        V, c = self._v, x["c"]
        lv = max(1, ceil_log2(V))
        slot = Signal(range(SLOTS))
        active = Signal()
        i = Signal(self._lw)
        j = Signal(range(max(V, 2)))
        k = Signal(self._lw)
        in_flight = Signal(2)
        fifo_level = Signal(2)
        credit = (in_flight + fifo_level) < 2
        go = active | ((x["state"][slot] == _FULL) & credit)
        last = go & (i == c["length"] - 1)
        with m.If(go):
            m.d.sync += [active.eq(~last), i.eq(i + 1), j.eq(Mux(j == V - 1, 0, j + 1)),
                         k.eq(k + (j == V - 1))]
            with m.If(last):
                m.d.sync += [i.eq(0), j.eq(0), k.eq(0), x["state"][slot].eq(_SUMMING),
                             slot.eq(Mux(slot == SLOTS - 1, 0, slot + 1))]
        # bank b holds element i of row (b − j) mod V, at row·B + k
        for b in range(V):
            row = (b - j)[:lv] if V > 1 else 0
            for s in range(SLOTS):
                rp = x["rps"][s][b]
                with m.If(go & Mux(c["fp32_in"], slot[0] == s // 2, slot == s)):
                    m.d.comb += [rp.addr.eq(row * c["beats"] + k), rp.en.eq(1)]
        s1 = {"valid": Signal(name="sum1_valid"), "first": Signal(name="sum1_first"),
              "last": Signal(name="sum1_last"), "slot": Signal(range(SLOTS), name="sum1_slot"),
              "j": Signal(range(max(V, 2)), name="sum1_j")}
        m.d.sync += [s1["valid"].eq(go), s1["first"].eq(i == 0), s1["last"].eq(last),
                     s1["slot"].eq(slot), s1["j"].eq(j)]
        banks = [Mux(c["fp32_in"], Cat(Array(x["rps"][2 * q][b].data for q in range(2))[s1["slot"][0]],
                                       Array(x["rps"][2 * q + 1][b].data for q in range(2))[s1["slot"][0]]),
                     Array(x["rps"][s][b].data for s in range(SLOTS))[s1["slot"]]) for b in range(V)]
        xs = self._rot(banks, s1["j"]) if V > 1 else banks
        # registered column, then the squares (bf16: 2, fp32: 3) and the accumulators (1)
        s2 = {k2: Signal(len(v), name=f"sum2_{k2}") for k2, v in (("valid", s1["valid"]), ("first", s1["first"]),
                                                                   ("last", s1["last"]), ("slot", s1["slot"]))}
        m.d.sync += [s2[k2].eq(s1[k2]) for k2 in s2]
        xr = [Signal(32, name=f"sum2_x{lane}") for lane in range(V)]
        m.d.sync += [xr[lane].eq(xs[lane]) for lane in range(V)]
        ctl = {}
        for k2, v in s2.items():
            d2 = delay(m, v, 2, 1, f"sum3_{k2}", reset=True)
            ctl[k2] = Mux(c["fp32_in"], delay(m, d2, 1, 1, f"sum4_{k2}", reset=True), d2)
        accs = []
        for lane in range(V):
            mul = Bf16MulCore()
            m.submodules[f"sq{lane}"] = mul
            m.d.comb += [mul.en.eq(1), mul.a.eq(xr[lane][:16]), mul.b.eq(xr[lane][:16])]
            fmul = Fp32MulCore()
            m.submodules[f"sq32_{lane}"] = fmul
            m.d.comb += [fmul.en.eq(1), fmul.a.eq(xr[lane]), fmul.b.eq(xr[lane])]
            add = Fp32AddCore(stages=1)
            m.submodules[f"acc{lane}"] = add
            m.d.comb += [add.en.eq(ctl["valid"]), add.a.eq(Mux(ctl["first"], 0, add.y)),
                         add.b.eq(Mux(c["fp32_in"], fmul.y, mul.y))]
            accs.append(add.y)
        done = Signal()
        done_slot = Signal(range(SLOTS))
        m.d.sync += [done.eq(ctl["valid"] & ctl["last"]), done_slot.eq(ctl["slot"])]
        m.d.sync += in_flight.eq(in_flight + last - done)
        m.d.comb += self.sq_ops.eq(Mux(s2["valid"], V, 0))
        return dict(done=done, slot=done_slot, vals=accs, fifo_level=fifo_level)

    def _finish(self, m, x, sums):
        """One row per cycle: r = rsqrt(s·(1/D) + eps), into the slot's scalars."""
        V, c = self._v, x["c"]
        layout = data.StructLayout({"vals": data.ArrayLayout(32, V), "slot": range(SLOTS)})
        m.submodules.fin_fifo = fifo = SyncFIFO(width=layout.size, depth=2)
        w = Signal(layout)
        m.d.comb += [w.vals.eq(Cat(*sums["vals"])), w.slot.eq(sums["slot"]), fifo.w_data.eq(w),
                     fifo.w_en.eq(sums["done"]), sums["fifo_level"].eq(fifo.level)]
        rd = data.View(layout, fifo.r_data)
        cnt = Signal(range(max(V, 2)))
        n = x["nrows"][rd.slot]
        busy = Signal(name="fin_busy")    # a row is in the sequential root (never, with the pipelined one)
        go = fifo.r_rdy & ~busy
        lastc = cnt == n - 1
        with m.If(go):
            m.d.sync += cnt.eq(Mux(lastc, 0, cnt + 1))
        m.d.comb += fifo.r_en.eq(go & lastc)
        val = Array(rd.vals)[cnt]
        m.submodules.fin_mul = fm = Fp32MulCore()
        m.submodules.fin_add = fa = Fp32AddCore()
        m.submodules.fin_rsqrt = rs = self._rsqrt()
        m.d.comb += [fm.en.eq(1), fm.a.eq(val), fm.b.eq(c["inv_d"]),
                     fa.en.eq(1), fa.a.eq(fm.y), fa.b.eq(c["eps"]), rs.a.eq(fa.y)]
        if self._rsqrt_steps:
            # one row at a time: its root starts when the add's result is out, and the next row
            # goes in once the root is written
            m.d.comb += rs.start.eq(delay(m, go, fm.latency + fa.latency, 1, "fin_start", reset=True))
            slot_r, row_r, last_r = Signal(range(SLOTS), name="fin_slot"), Signal.like(cnt, name="fin_row"), \
                Signal(name="fin_last")
            with m.If(go):
                m.d.sync += [slot_r.eq(rd.slot), row_r.eq(cnt), last_r.eq(lastc), busy.eq(1)]
            with m.If(rs.valid):
                m.d.sync += [x["scal"][slot_r][row_r].eq(rs.y), busy.eq(0)]
                with m.If(last_r):
                    m.d.sync += x["state"][slot_r].eq(_SUMMED)
            m.d.comb += self.fin_ops.eq(go)
            return
        m.d.comb += rs.en.eq(1)
        lat = fm.latency + fa.latency + rs.latency
        v_out = delay(m, go, lat, 1, "fin_valid", reset=True)
        slot_out = delay(m, rd.slot, lat, 1, "fin_slot")
        cnt_out = delay(m, cnt, lat, 1, "fin_row")
        last_out = delay(m, go & lastc, lat, 1, "fin_last", reset=True)
        with m.If(v_out):
            m.d.sync += x["scal"][slot_out][cnt_out].eq(rs.y)
        with m.If(last_out):
            m.d.sync += x["state"][slot_out].eq(_SUMMED)
        m.d.comb += self.fin_ops.eq(go)

    def _read(self, m, x):
        """Pass 2: the slot's rows, one beat per cycle, with the row's scalar, to ``o``."""
        V, c = self._v, x["c"]
        slot = Signal(range(SLOTS))
        r = Signal(range(V + 1))
        k = Signal(self._lw)
        addr = Signal(range(self._depth))
        ready = x["state"][slot] == _SUMMED
        advance = ~self.o.valid | self.o.ready
        issue = advance & ready
        last_beat = k == c["beats"] - 1
        last_row = r == x["nrows"][slot] - 1
        o_slot = Signal(range(SLOTS))
        o_r = Signal(range(max(V, 2)))
        o_sc = Signal(32)
        with m.If(advance):
            m.d.sync += [self.o.valid.eq(ready), o_slot.eq(slot), o_r.eq(r), o_sc.eq(x["scal"][slot][r])]
        for s in range(SLOTS):
            for b in range(V):
                rp = x["rps"][s][b]
                with m.If(issue & (slot == s) & ~c["fp32_in"]):
                    m.d.comb += [rp.addr.eq(addr), rp.en.eq(1)]
        with m.If(issue):
            m.d.sync += [k.eq(k + 1), addr.eq(addr + 1)]
            with m.If(last_beat):
                m.d.sync += [k.eq(0), r.eq(r + 1)]
                with m.If(last_row):
                    m.d.sync += [r.eq(0), addr.eq(0), x["state"][slot].eq(_EMPTY),
                                 slot.eq(Mux(slot == SLOTS - 1, 0, slot + 1))]
        banks = [Array(x["rps"][s][b].data for s in range(SLOTS))[o_slot] for b in range(V)]
        lanes = self._rot(banks, o_r) if V > 1 else banks
        m.d.comb += [self.o.payload.x.eq(Cat(*lanes)), self.o.payload.sc.eq(o_sc),
                     self.o.payload.r.eq(o_r),
                     self.buf_reads.eq(Mux(issue & ~c["fp32_in"], V, 0)
                                       + Mux(self.sq_ops != 0, Mux(c["fp32_in"], 2 * V, V), 0))]
        return self.o.valid
