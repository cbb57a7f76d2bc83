"""Requantizer: lanes of int32 accumulators → int8, exactly :func:`golden.requantize`.

``y = clamp((acc·m + 2^(s−1)) >> s, −128, 127)`` per lane, with the exact 63-bit product of the
signed 32-bit accumulator and the unsigned 31-bit multiplier (docs/numerics.md, "Requantization
int32 → int8"). The matmul engine's output stage is one (every output format goes through it),
and the vector unit reuses it.

Interface: a pipeline that never stalls. The input and the output are
``amaranth.lib.stream`` interfaces with ``always_ready``: a beat enters in every cycle its
``valid`` is 1 and leaves exactly :attr:`Requantizer.latency` cycles later on ``o`` (``valid``
and the ``tag`` travel beside it). There is no enable: the multiplier blocks of an FPGA
(:class:`hdl.dsp.RegisteredMultiplier`, ``dsp="ecp5"``) have none. A consumer that can apply
backpressure counts the beats in flight and keeps room for them (the matmul engine sends a beat
only while its output FIFO has room for every beat in flight).

Pass-through: multiplier 256 and shift 8 give the accumulator back unchanged
(``(256·acc + 128) >> 8 = acc``) in ``o.passthrough``, and :attr:`Requantizer.early_lead`
cycles earlier on ``early``, so a consumer needs no delay line of its own for formats that
are not requantized (the engine reads int32/fp32 results from ``o.passthrough`` and feeds its
fp32 → bf16 conversion from ``early``).
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .dsp import RegisteredMultiplier, check_dsp
from .pipeline import check_ints, delay

__all__ = ["Requantizer", "requant_input_layout", "requant_output_layout", "requant_params_bad",
           "SHIFT_MIN", "SHIFT_MAX", "PASS_MULTIPLIER", "PASS_SHIFT"]

#: ``shift`` range; a shift outside it is clamped into it (0 → 1, 63..255 → 62).
SHIFT_MIN, SHIFT_MAX = 1, 62
#: (multiplier, shift) of the pass-through: the output is the accumulator unchanged.
PASS_MULTIPLIER, PASS_SHIFT = 256, 8


def requant_params_bad(multiplier, shift):
    """1 when a (multiplier, shift) pair is outside the contract: ``multiplier`` ≥ 2^31 (its
    top bit is ignored) or ``shift`` outside 1..62 (clamped). For a block that reports such
    parameters (the matmul engine answers BAD_REQUANT)."""
    return multiplier[31] | (shift == 0) | (shift > SHIFT_MAX)


def requant_input_layout(lanes, tag_width=0):
    """Payload of :attr:`Requantizer.i`: ``acc`` (int32 per lane), ``multiplier`` (32 bits, the
    low 31 used), ``shift`` (8 bits, clamped into 1..62), and ``tag`` (``tag_width`` bits,
    returned with the result) when ``tag_width`` > 0."""
    fields = {"acc": data.ArrayLayout(signed(32), lanes), "multiplier": data.ArrayLayout(32, lanes),
              "shift": data.ArrayLayout(8, lanes)}
    if tag_width:
        fields["tag"] = tag_width
    return data.StructLayout(fields)


def requant_output_layout(lanes, tag_width=0):
    """Payload of :attr:`Requantizer.o`: ``q`` (int8 per lane), ``passthrough`` (int32 per lane:
    the accumulator itself when the lane's multiplier is 256 and its shift 8), and ``tag``."""
    fields = {"q": data.ArrayLayout(signed(8), lanes), "passthrough": data.ArrayLayout(32, lanes)}
    if tag_width:
        fields["tag"] = tag_width
    return data.StructLayout(fields)


class Requantizer(wiring.Component):
    """``lanes`` requantizations int32 → int8 per cycle, pipelined (:func:`golden.requantize`).

    Parameters
    ----------
    lanes : int
        Lanes, 1..64; each has its own multiplier and shift.
    tag_width : int
        Width of an opaque ``tag`` that travels with each beat (0..64; 0: none).
    dsp : str
        How the four partial products of a lane are built (:class:`hdl.dsp.RegisteredMultiplier`):
        ``"generic"`` or ``"ecp5"``; same cycle behaviour.

    Members
    -------
    i : In(stream.Signature(requant_input_layout(lanes, tag_width), always_ready=True))
        One beat per cycle while ``valid``; never refused.
    o : Out(stream.Signature(requant_output_layout(lanes, tag_width), always_ready=True))
        The beat that entered ``latency`` cycles earlier; the consumer must take it.
    early : Out(ArrayLayout(32, lanes))
        The pass-through value of the beat that entered ``latency − early_lead`` cycles earlier
        (no valid of its own: ``o.valid`` follows it by ``early_lead`` cycles).

    Raises
    ------
    TypeError, ValueError
        A parameter of the wrong type or outside its range.

    Latency: 9 cycles (``latency``); throughput: one beat (``lanes`` results) per cycle.

    Pipeline (no stage holds more than one DSP product, one 64-bit carry chain or three shifter
    levels): 1, 2: four 16×16-bit partial products of acc (signed) × multiplier (unsigned 31-bit),
    each a :class:`hdl.dsp.RegisteredMultiplier` (its operand and product registers), the clamped
    shift beside them; 3: the products registered again; 4: ``mid = lo·hi + hi·lo``,
    ``low = lo·lo + 2^(s−1)``; 5: ``high = hi·hi·2^32 + mid·2^16``; 6: ``rounded = high + low``;
    7: ``>> 8·⌊s/8⌋`` (``early`` reads this register); 8: ``>> s mod 8``; 9: clamp to int8 (and
    the pass-through register).
    """

    #: Registers after the multipliers' two: products, mid/low, high, rounded, coarse, fine, result.
    _AFTER_PRODUCTS = 7

    def __init__(self, *, lanes, tag_width=0, dsp="generic"):
        check_ints(lanes=(lanes, 1, 64), tag_width=(tag_width, 0, 64))
        check_dsp(dsp)
        self._lanes, self._tag_width, self._dsp = lanes, tag_width, dsp
        super().__init__({
            "i": In(stream.Signature(requant_input_layout(lanes, tag_width), always_ready=True)),
            "o": Out(stream.Signature(requant_output_layout(lanes, tag_width), always_ready=True)),
            "early": Out(data.ArrayLayout(32, lanes)),
        })

    @property
    def lanes(self):
        return self._lanes

    @property
    def tag_width(self):
        return self._tag_width

    @property
    def latency(self):
        """Cycles from a beat on ``i`` to its result on ``o``."""
        return RegisteredMultiplier.latency + self._AFTER_PRODUCTS

    @property
    def early_lead(self):
        """Cycles by which ``early`` leads ``o.passthrough``."""
        return 2

    @property
    def throughput(self):
        """Beats per cycle."""
        return 1

    def elaborate(self, platform):
        m = Module()
        for c in range(self._lanes):
            q, raw, early = self._lane(m, c, self.i.payload.acc[c], self.i.payload.multiplier[c],
                                       self.i.payload.shift[c])
            m.d.comb += [self.o.payload.q[c].eq(q), self.o.payload.passthrough[c].eq(raw),
                         self.early[c].eq(early)]
        m.d.comb += self.o.valid.eq(delay(m, self.i.valid, self.latency, "rq_valid", reset_less=False))
        if self._tag_width:
            m.d.comb += self.o.payload.tag.eq(delay(m, self.i.payload.tag, self.latency, "rq_tag"))
        return m

    def _lane(self, m, c, acc, mult, shift):
        """One lane's datapath; returns (int8 result, pass-through, early pass-through)."""
        def reg(shape, name):
            return Signal(shape, name=f"rq_{name}{c}", reset_less=True)
        sh_c = Signal(range(SHIFT_MAX + 1), name=f"rq_shc{c}")
        m.d.comb += sh_c.eq(Mux(shift == 0, SHIFT_MIN, Mux(shift > SHIFT_MAX, SHIFT_MAX, shift[:6])))
        # operands as signed values for the multipliers (unsigned halves zero-extended)
        acc = Value.cast(acc)
        r_lo, r_hi = Cat(acc[:16], 0).as_signed(), acc[16:].as_signed()
        m_lo, m_hi = Cat(mult[:16], 0).as_signed(), Cat(mult[16:31], 0).as_signed()
        pp = [reg(signed(34), f"pp{i}_") for i in range(4)]
        for i, (x, y) in enumerate([(r_lo, m_lo), (r_lo, m_hi), (r_hi, m_lo), (r_hi, m_hi)]):
            mul = m.submodules[f"rq_mul{i}_{c}"] = RegisteredMultiplier(len(x), len(y), dsp=self._dsp)
            m.d.comb += [mul.a.eq(x), mul.b.eq(y)]
            m.d.sync += pp[i].eq(mul.p)
        sh_m = delay(m, sh_c, RegisteredMultiplier.latency, f"rq_shm{c}")
        half, sh1 = reg(unsigned(62), "half"), reg(range(SHIFT_MAX + 1), "sh1_")
        m.d.sync += [half.eq((Const(1, 62) << (sh_m - 1)[:6])[:62]), sh1.eq(sh_m)]
        mid, low = reg(signed(35), "mid"), reg(signed(64), "low")
        hh2, sh2 = reg(signed(34), "hh2_"), reg(range(SHIFT_MAX + 1), "sh2_")
        m.d.sync += [mid.eq(pp[1] + pp[2]), low.eq(pp[0] + half), hh2.eq(pp[3]), sh2.eq(sh1)]
        high, low3, sh3 = reg(signed(64), "high"), reg(signed(64), "low3_"), reg(range(SHIFT_MAX + 1), "sh3_")
        m.d.sync += [high.eq((hh2 << 32) + (mid << 16)), low3.eq(low), sh3.eq(sh2)]
        rounded, sh4 = reg(signed(64), "rounded"), reg(range(SHIFT_MAX + 1), "sh4_")
        m.d.sync += [rounded.eq(high + low3), sh4.eq(sh3)]
        coarse, sh5 = reg(signed(64), "coarse"), reg(3, "sh5_")
        m.d.sync += [coarse.eq(rounded >> Cat(Const(0, 3), sh4[3:6])), sh5.eq(sh4[:3])]
        fine = reg(signed(64), "fine")
        m.d.sync += fine.eq(coarse >> sh5)
        clamped, raw = reg(signed(8), "q"), reg(32, "raw")
        over = ~fine[63] & fine[7:].any()       # > 127
        under = fine[63] & ~fine[7:].all()      # < -128
        m.d.sync += [clamped.eq(Mux(over, 127, Mux(under, -128, fine[:8]))), raw.eq(fine[:32])]
        return clamped, raw, coarse[:32]
