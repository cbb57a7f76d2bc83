"""The vector unit's Hadamard front end: the first five butterfly stages of HADAMARD.

``golden.vector.hadamard_fp32`` transforms each block of 64 consecutive elements with six
butterfly stages, h = 1, 2, 4, …, 32 in this order: ``(v[i], v[i+h]) ← (fp32_add(v[i], v[i+h]),
fp32_add(v[i], −v[i+h]))`` for every i with ``i & h = 0``. With V elements per beat (beat k of a
block holds elements kV … kV + V − 1), a stage with h < V pairs lanes of one beat and a stage
with h ≥ V pairs lane j of beat k with lane j of beat k + h/V. :class:`HadamardFront`
computes the first five stages at one beat per ``en``-cycle with V :class:`hdl.arith.Fp32AddCore`
per stage, and emits the operands of the sixth (h = 32) to the lanes, whose fp32 adder computes
it (the lane's ADD of dtype INT8):

* **in-beat stages** (h < V): V adders on the beat, no buffer;
* **cross-beat stages** (h ≥ V, D = h/V beats): each lane runs a serial stage of its own column.
  The stage stores groups of 2D beats in two memories (``top``: beats 0 … D−1 of the group,
  ``bottom``: D … 2D−1; two group slots each) and reads one pair per cycle in output order,
  ``(top[t], bottom[t])`` for output t < D and ``(top[t−D], −bottom[t−D])`` for t ≥ D, as soon
  as bottom[t mod D] has been written. The reader keeps pace with the writer (it reads D pairs
  while the writer writes a group's first D beats), so two slots never overflow and the stage
  adds D + 2 cycles of latency.

Blocks are back to back in the stream (rows are whole blocks), so the stages never reset their
group position. Every register advances with ``en = ~o.valid | o.ready``; a missing input beat
enters as a bubble (valid 0), which the stages skip. Cost: 5V fp32 adders; memories 2 · 2 · 2D
words of 32·V bits per cross-beat stage (in total 4·(64 − V)·32 bits; 7 kbit for V = 8).
"""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from spec.vector import HADAMARD_BLOCK

from .arith import Fp32AddCore
from .params import check_int
from .vector_arith import delay

__all__ = ["HadamardFront"]

_SIGN = 0x80000000


def _neg(x):
    return x ^ _SIGN


class HadamardFront(wiring.Component):
    """Butterfly stages h = 1 … 16 of the 64-point fp32 Hadamard transform, and the operand pairs
    of stage h = 32.

    Parameters
    ----------
    lanes : int
        V, a power of two, 1..64.
    total_width : int
        Width of ``total``.

    Members
    -------
    start : In(1)
        Take a command: ``total`` (its ``a`` beats, a multiple of 64/V) and ``fp32`` (1: fp32
        elements; 0: bf16 in the low 16 bits, widened exactly).
    a : In(stream of ArrayLayout(32, V))
        The rows, V elements per beat, blocks of 64 elements back to back.
    o : Out(stream of {a, b: ArrayLayout(32, V)})
        Per beat of the transform's output, in order, the operands of its last stage: the
        result is ``fp32_add(a[j], b[j])`` in every lane.
    buf_writes, buf_reads : Out
        32-bit words of the stage memories written / read this cycle (event amounts).

    Latency :attr:`latency` cycles from a block's first beat taken to its first ``o`` beat valid
    (no stalls); throughput one beat per cycle.
    """

    def __init__(self, *, lanes, total_width):
        check_int("lanes", lanes, 1, HADAMARD_BLOCK, pow2=True)
        self._v = lanes
        V = lanes
        n_serial = exact_log2(HADAMARD_BLOCK // V)
        w = ceil_log2(3 * V * max(n_serial, 1) + 1)
        super().__init__({
            "start": In(1), "total": In(total_width), "fp32": In(1),
            "a": In(stream.Signature(data.ArrayLayout(32, V))),
            "o": Out(stream.Signature(data.StructLayout({"a": data.ArrayLayout(32, V),
                                                         "b": data.ArrayLayout(32, V)}))),
            "buf_writes": Out(w), "buf_reads": Out(w),
        })

    @property
    def lanes(self):
        return self._v

    @staticmethod
    def _stages(lanes):
        """[("beat", h) | ("serial", D)] of the five computed stages, then the emitted one."""
        out = []
        h = 1
        while h < HADAMARD_BLOCK:
            out.append(("beat", h) if h < lanes else ("serial", h // lanes))
            h *= 2
        return out

    @property
    def latency(self):
        """Cycles from a block's first ``a`` beat taken to its first ``o`` beat valid, no stalls."""
        return self.latency_for(self._v)

    @classmethod
    def latency_for(cls, lanes):
        """:attr:`latency` of a front end of ``lanes`` lanes: the input register, 4 per in-beat
        stage, D + 6 per cross-beat stage (D + 2 for the emitted last one)."""
        add = Fp32AddCore.latency_for()
        total = 1
        stages = cls._stages(lanes)
        for kind, n in stages[:-1]:
            total += add if kind == "beat" else n + 2 + add
        kind, n = stages[-1]
        return total + (n + 2 if kind == "serial" else 0)

    def elaborate(self, platform):
        m = Module()
        V = self._v
        en = Signal()
        m.d.comb += en.eq(~self.o.valid | self.o.ready)
        total = Signal.like(self.total)
        taken = Signal.like(self.total)
        fp32 = Signal()
        with m.If(self.start):
            m.d.sync += [total.eq(self.total), taken.eq(0), fp32.eq(self.fp32)]
        m.d.comb += self.a.ready.eq(en & (taken != total))
        take = self.a.valid & self.a.ready
        with m.If(take):
            m.d.sync += taken.eq(taken + 1)
        # the input register: bf16 widened to fp32 (exact)
        x = [Signal(32, name=f"had_in{j}") for j in range(V)]
        valid = Signal(name="had_in_valid")
        with m.If(en):
            m.d.sync += valid.eq(take)
            for j in range(V):
                e = self.a.payload[j]
                m.d.sync += x[j].eq(Mux(fp32, e, Cat(Const(0, 16), e[:16])))
        writes, reads = [], []
        stages = self._stages(V)
        for i, (kind, n) in enumerate(stages):
            last = i == len(stages) - 1
            if kind == "beat":
                pairs = self._beat_pairs(x, n)
                if last:
                    a, b = pairs
                    m.d.comb += self.o.valid.eq(valid)
                    break
                valid, x = self._adders(m, en, valid, *pairs, f"s{i}")
            else:
                pv, a, b, w, r = self._serial(m, en, valid, x, n, f"s{i}")
                writes.append(w)
                reads.append(r)
                if last:
                    m.d.comb += self.o.valid.eq(pv)
                    break
                valid, x = self._adders(m, en, pv, a, b, f"s{i}")
        for j in range(V):
            m.d.comb += [self.o.payload.a[j].eq(a[j]), self.o.payload.b[j].eq(b[j])]
        m.d.comb += [self.buf_writes.eq(sum(writes) if writes else 0),
                     self.buf_reads.eq(sum(reads) if reads else 0)]
        return m

    @staticmethod
    def _beat_pairs(x, h):
        """Operands of an in-beat stage: lane j pairs with lane j ^ h."""
        a = [x[j & ~h] for j in range(len(x))]
        b = [x[j | h] if not j & h else _neg(x[j]) for j in range(len(x))]
        return a, b

    def _adders(self, m, en, valid, a, b, name):
        """V fp32 adders ``a[j] + b[j]`` and the valid bit delayed with them."""
        ys = []
        for j in range(self._v):
            add = Fp32AddCore()
            m.submodules[f"{name}_add{j}"] = add
            m.d.comb += [add.en.eq(en), add.a.eq(a[j]), add.b.eq(b[j])]
            ys.append(add.y)
        return delay(m, valid, Fp32AddCore.latency_for(), en, f"{name}_valid", reset=True), ys

    def _serial(self, m, en, valid, x, D, name):
        """A cross-beat stage of D beats: (pair valid, a operands, b operands, words written,
        words read), the pair valid and operands one cycle after the read (registered with en)."""
        V = self._v
        lg = exact_log2(D)
        top = Memory(shape=unsigned(32 * V), depth=2 * D, init=[])
        bot = Memory(shape=unsigned(32 * V), depth=2 * D, init=[])
        m.submodules[f"{name}_top"], m.submodules[f"{name}_bot"] = top, bot
        w_top, w_bot = top.write_port(), bot.write_port()
        r_top, r_bot = top.read_port(domain="sync"), bot.read_port(domain="sync")
        # writer: beat index within the group of 2D, group slot, bottoms written per slot
        wcnt = Signal(lg + 1, name=f"{name}_wcnt")
        wslot = Signal(name=f"{name}_wslot")
        avail = Array(Signal(range(D + 1), name=f"{name}_avail{s}") for s in range(2))
        wr = en & valid
        second_w = wcnt[lg]
        addr_w = Cat(wcnt[:lg], wslot)
        beat = Cat(*x)
        m.d.comb += [w_top.addr.eq(addr_w), w_bot.addr.eq(addr_w), w_top.data.eq(beat), w_bot.data.eq(beat),
                     w_top.en.eq(wr & ~second_w), w_bot.en.eq(wr & second_w)]
        with m.If(wr):
            m.d.sync += wcnt.eq(wcnt + 1)
            with m.If(second_w):
                m.d.sync += avail[wslot].eq(wcnt[:lg] + 1)
            with m.If(wcnt == 2 * D - 1):
                m.d.sync += [wcnt.eq(0), wslot.eq(~wslot)]
        # reader: output index t within the group, pair (t mod D) once bottom[t mod D] is written
        rcnt = Signal(lg + 1, name=f"{name}_rcnt")
        rslot = Signal(name=f"{name}_rslot")
        u = rcnt[:lg] if lg else Const(0, 1)
        ok = avail[rslot] > u
        rd = en & ok
        addr_r = Cat(rcnt[:lg], rslot)
        m.d.comb += [r_top.addr.eq(addr_r), r_bot.addr.eq(addr_r), r_top.en.eq(en), r_bot.en.eq(en)]
        pv = Signal(name=f"{name}_pair_valid")
        neg = Signal(name=f"{name}_pair_neg")
        with m.If(en):
            m.d.sync += [pv.eq(ok), neg.eq(rcnt[lg])]
        with m.If(rd):
            m.d.sync += rcnt.eq(rcnt + 1)
            with m.If(rcnt == 2 * D - 1):
                m.d.sync += [rcnt.eq(0), rslot.eq(~rslot), avail[rslot].eq(0)]
        td = data.View(data.ArrayLayout(32, V), r_top.data)
        bd = data.View(data.ArrayLayout(32, V), r_bot.data)
        a = [td[j] for j in range(V)]
        b = [Mux(neg, _neg(bd[j]), bd[j]) for j in range(V)]
        return pv, a, b, Mux(wr, V, 0), Mux(rd, 2 * V, 0)
