"""Processing-element arithmetic: int8 MAC, bf16 multiply, fp32 add, fp32 → bf16.

Two layers per unit (docs/arith.md):

1. Handshake-free pipelined *cores* (:class:`Int8MacCore`, :class:`Bf16MulCore`,
   :class:`Fp32AddCore`, :class:`Fp32ToBf16Core`) for reuse inside the systolic array. Every
   pipeline register advances one stage when ``en`` is 1 and holds when it is 0. A core takes a
   new input every ``en``-cycle; its output ``y`` shows the result of the input presented
   :attr:`latency` ``en``-cycles earlier.
2. *Stream units* (:class:`Int8Mac`, :class:`Bf16Multiplier`, :class:`Fp32Adder`,
   :class:`Fp32ToBf16`) wrapping a core between two ``amaranth.lib.stream`` interfaces, for the
   block boundary and unit tests.

The numerics are docs/numerics.md "Floating point" exactly (DAZ, FTZ, RNE, overflow to ±Inf,
canonical NaN, +0 for an exact zero sum except (−0) + (−0)); the references are
:func:`golden.bf16_mul`, :func:`golden.fp32_add` and :func:`golden.fp32_to_bf16`; the int8 MAC
computes ``acc + a·w`` wrapped to 32 bits.

Pipelining: each core's datapath is a fixed sequence of combinational *steps*. A register can
sit after any step; ``stages`` says how many registers there are (the one after the last step is
always present, so ``y`` is a register output) and a fixed per-core priority list says where
they go. The defaults aim at ≥ 100 MHz on ECP5 (measured figures in docs/arith.md); deeper
pipelines trade latency for clock.
"""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, Value
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .config import ChipConfig

__all__ = [
    "Int8MacCore", "Bf16MulCore", "Fp32AddCore", "Fp32ToBf16Core",
    "Int8Mac", "Bf16Multiplier", "Fp32Adder", "Fp32ToBf16", "leading_zeros",
]

_FP32_QNAN = 0x7FC00000
_BF16_QNAN = 0x7FC0


class _Pipeline:
    """Builds a datapath step by step, inserting an ``en``-gated register after the steps whose
    index is in ``registered`` and plain wires after the others."""

    def __init__(self, m, en, registered):
        self._m = m
        self._en = en
        self._registered = frozenset(registered)
        self._index = 0

    def step(self, name, **values):
        """Close step ``name``: returns an object whose attributes are the ``values``, seen
        through a register (when this step is registered) or a wire."""
        index = self._index
        self._index += 1
        regd = index in self._registered
        out = {}
        for key, value in values.items():
            value = Value.cast(value)
            # pipeline registers hold data only: no reset (the valid bits travel beside them)
            sig = Signal(value.shape(), name=f"{name}_{key}" + ("_q" if regd else ""), reset_less=regd)
            if regd:
                with self._m.If(self._en):
                    self._m.d.sync += sig.eq(value)
            else:
                self._m.d.comb += sig.eq(value)
            out[key] = sig
        return _Values(out)


class _Values:
    def __init__(self, values):
        self.__dict__.update(values)


def leading_zeros(value):
    """Leading-zero count of ``value`` (width a power of two) as a tree: (count, all zero) of
    each half, combined in log2(width) levels, so the depth is logarithmic. The leaves are
    groups of four bits, whose 2-bit count and zero flag are one LUT4 each (an all-zero value
    counts width − 1 either way)."""
    def tree(v):
        if len(v) == 1:
            return Const(0, 0), ~v[0]
        if len(v) == 4:
            return Cat(~v[3] & (v[2] | ~v[1]), ~v[3] & ~v[2]), ~v.any()
        half = len(v) // 2
        hi_count, hi_zero = tree(v[half:])
        lo_count, lo_zero = tree(v[:half])
        count = Mux(hi_zero, Cat(lo_count, 1), Cat(hi_count, 0))
        return count, hi_zero & lo_zero
    count, _ = tree(Value.cast(value))
    return count


def _check_stages(stages, max_stages):
    if not isinstance(stages, int) or isinstance(stages, bool):
        raise TypeError(f"stages must be an int, not {stages!r}")
    if not 1 <= stages <= max_stages:
        raise ValueError(f"stages must be in 1..{max_stages}, not {stages}")


class _Core(wiring.Component):
    """Common parameter handling of the pipelined cores.

    Subclasses define ``_STEPS`` (step names in datapath order), ``_PRIORITY`` (the order in
    which steps receive a register; the last step first) and ``_DEFAULT_STAGES``.
    """

    _STEPS = ()
    _PRIORITY = ()
    _DEFAULT_STAGES = 1

    def __init__(self, *, stages=None):
        if stages is None:
            stages = self._DEFAULT_STAGES
        _check_stages(stages, len(self._STEPS))
        self._stages = stages
        super().__init__()

    @property
    def stages(self):
        """Number of pipeline registers."""
        return self._stages

    @property
    def latency(self):
        """``en``-cycles from an input to its result on ``y``."""
        return self._stages

    @property
    def throughput(self):
        """New inputs accepted per ``en``-cycle."""
        return 1

    @classmethod
    def max_stages(cls):
        """The deepest pipeline this core supports (a register after every step)."""
        return len(cls._STEPS)

    @classmethod
    def latency_for(cls, stages=None):
        """The ``latency`` a core built with ``stages`` (``None``: the default) would have,
        without building one; raises like the constructor for a bad ``stages``."""
        if stages is None:
            return cls._DEFAULT_STAGES
        _check_stages(stages, len(cls._STEPS))
        return stages

    @classmethod
    def registered_steps(cls, stages=None):
        """``{step name: registered}`` of a core built with ``stages`` (``None``: the default), in
        datapath order; a module that builds the same datapath inline (the PE's multiply) places
        its registers from this."""
        chosen = set(cls._PRIORITY[:cls.latency_for(stages)])
        return {name: name in chosen for name in cls._STEPS}

    def _pipeline(self, m):
        flags = self.registered_steps(self._stages)
        return _Pipeline(m, self.en, {i for i, name in enumerate(flags) if flags[name]})


class Int8MacCore(_Core):
    """int8 multiply-accumulate: ``y = acc + a·w`` wrapped to 32 bits.

    Parameters
    ----------
    stages : int
        Pipeline registers, 1..2 (default 2: multiply | add).

    Members
    -------
    en : In(1)
        Advance every pipeline register by one stage.
    a : In(8)
        Activation: signed int8, or unsigned 8-bit when ``a_unsigned`` is 1.
    a_unsigned : In(1)
        Read ``a`` as unsigned.
    w : In(8)
        Weight, signed int8.
    acc : In(32)
        Partial sum, int32 (two's complement bits).
    y : Out(32)
        ``acc + a·w`` modulo 2**32.

    Latency ``stages`` en-cycles; throughput one input per en-cycle.
    """

    a: In(8)
    a_unsigned: In(1)
    w: In(8)
    acc: In(32)
    en: In(1)
    y: Out(32)

    _STEPS = ("mul", "add")
    _PRIORITY = ("add", "mul")
    _DEFAULT_STAGES = 2

    def elaborate(self, platform):
        m = Module()
        p = self._pipeline(m)
        a9 = Cat(self.a, self.a[7] & ~self.a_unsigned).as_signed()
        s1 = p.step("mul", prod=a9 * self.w.as_signed(), acc=self.acc)
        s2 = p.step("add", y=(s1.acc + s1.prod)[:32])
        m.d.comb += self.y.eq(s2.y)
        return m


class Bf16MulCore(_Core):
    """bf16 × bf16 → fp32, exact (:func:`golden.bf16_mul`).

    Parameters
    ----------
    stages : int
        Pipeline registers, 1..2 (default 2: 8×8 significand multiply | normalize and pack).

    Members
    -------
    en : In(1)
        Advance every pipeline register by one stage.
    a, b : In(16)
        bf16 bit patterns.
    y : Out(32)
        fp32 bit pattern of the product: exact, or ±Inf (≥ 2**128), ±0 (< 2**-126, sign a⊕b),
        canonical NaN (NaN operand, 0 × Inf). Subnormal inputs read as zeros.

    Latency ``stages`` en-cycles; throughput one input per en-cycle.
    """

    a: In(16)
    b: In(16)
    en: In(1)
    y: Out(32)

    _STEPS = ("mul", "pack")
    _PRIORITY = ("pack", "mul")
    _DEFAULT_STAGES = 2

    def elaborate(self, platform):
        m = Module()
        p = self._pipeline(m)
        values, sig_a, sig_b = bf16_mul_unpack(self.a, self.b)
        values.update(bf16_mul_ranges(values))
        s1 = p.step("mul", prod=sig_a * sig_b, **values)
        s2 = p.step("pack", y=bf16_mul_pack(m, s1))
        m.d.comb += self.y.eq(s2.y)
        return m


def bf16_significand(x):
    """The 8-bit significand of bf16 bits ``x``, hidden one included (zeros and subnormals are
    classified apart by :func:`bf16_mul_unpack`)."""
    return Cat(x[:7], 1)


def bf16_mul_unpack(a, b):
    """The ``mul`` step of a bf16 × bf16 product, without the multiplier.

    Returns ``(values, sig_a, sig_b)``: the step's values other than ``prod`` and the range
    tests (biased exponent sums, sign, NaN/Inf/zero classes) and the two 8-bit significands
    (hidden one included), whose product, in [2**14, 2**16), the caller supplies as ``prod``,
    from a multiplier of its own or one shared with other work (the systolic PE's int8
    products). The caller adds the range tests with :func:`bf16_mul_ranges`, in the same step
    (:class:`Bf16MulCore`) or after a register of its own (the PE).
    """
    ea, eb = a[7:15], b[7:15]
    ma, mb = a[:7], b[:7]
    a_zero, b_zero = ea == 0, eb == 0
    a_inf = (ea == 0xFF) & (ma == 0)
    b_inf = (eb == 0xFF) & (mb == 0)
    a_nan = (ea == 0xFF) & (ma != 0)
    b_nan = (eb == 0xFF) & (mb != 0)
    exp = ea + eb - 127                               # biased exponent if prod < 2**15 (signed)
    exp_up = ea + eb - 126                            # ... if prod >= 2**15
    values = dict(
        exp=exp, exp_up=exp_up,
        sign=a[15] ^ b[15],
        nan=a_nan | b_nan | (a_inf & b_zero) | (b_inf & a_zero),
        inf=a_inf | b_inf,
        zero=a_zero | b_zero)
    return values, bf16_significand(a), bf16_significand(b)


def bf16_mul_ranges(values):
    """The exponent range tests of both candidate exponents (``exp``, ``exp_up`` of
    :func:`bf16_mul_unpack`'s values), so the pack step only selects (timing)."""
    exp, exp_up = values["exp"], values["exp_up"]
    return dict(over=exp >= 255, over_up=exp_up >= 255, under=exp <= 0, under_up=exp_up <= 0)


def bf16_mul_pack(m, s1):
    """The ``pack`` step of a bf16 × bf16 product: fp32 bits from the ``mul`` step's values
    (:func:`bf16_mul_unpack`'s, plus ``prod``, of which bits 0..15 are read)."""
    top = s1.prod[15]
    frac = Mux(top, Cat(Const(0, 8), s1.prod[:15]), Cat(Const(0, 9), s1.prod[:14]))
    exp = Mux(top, s1.exp_up[:8], s1.exp[:8])
    y = Signal(32)
    with m.If(s1.nan):
        m.d.comb += y.eq(_FP32_QNAN)
    with m.Elif(s1.inf | Mux(top, s1.over_up, s1.over)):
        m.d.comb += y.eq(Cat(Const(0x7F800000, 31), s1.sign))
    with m.Elif(s1.zero | Mux(top, s1.under_up, s1.under)):
        m.d.comb += y.eq(Cat(Const(0, 31), s1.sign))
    with m.Else():
        m.d.comb += y.eq(Cat(frac, exp, s1.sign))
    return y


class Fp32AddCore(_Core):
    """fp32 + fp32 → fp32 with RNE, DAZ, FTZ (:func:`golden.fp32_add`).

    The datapath has six steps: ``unpack`` (order by magnitude, exponent difference, classify),
    ``align`` (shift the smaller significand right, ORing the bits each shift level drops into a
    sticky bit; invert it for a subtraction), ``add`` (one 28-bit carry chain for both add and
    subtract), ``count`` (leading-zero count; the first left-shift level), ``normalize`` (the
    other left-shift levels) and ``round`` (RNE, exponent adjust and rounding carry in one
    chain, overflow/underflow, special values, pack).
    Special operands travel as three class bits (Inf, NaN, both zero); the result word is built
    in ``round``.

    Parameters
    ----------
    stages : int
        Pipeline registers, 1..6. Registers are placed, in order of priority, after ``round``,
        ``add``, ``unpack``, ``normalize``, ``align``, ``count``. Default 4:
        unpack | align+add | count+normalize | round; 6 registers every step.

    Members
    -------
    en : In(1)
        Advance every pipeline register by one stage.
    a, b : In(32)
        fp32 bit patterns.
    y : Out(32)
        fp32 bit pattern of ``a + b`` rounded to nearest even; subnormal inputs read as zeros, a
        result below 2**-126 is written as a zero of the sign of the exact sum, NaN results are
        ``0x7FC00000``, an exact zero sum is +0 except (−0) + (−0) = −0.

    Latency ``stages`` en-cycles; throughput one input per en-cycle.
    """

    a: In(32)
    b: In(32)
    en: In(1)
    y: Out(32)

    _STEPS = ("unpack", "align", "add", "count", "normalize", "round")
    _PRIORITY = ("round", "add", "unpack", "normalize", "align", "count")
    _DEFAULT_STAGES = 4

    def elaborate(self, platform):
        m = Module()
        p = self._pipeline(m)
        a, b = self.a, self.b

        def wire(value, name):
            # a named net: a Python expression used twice would be generated twice
            value = Value.cast(value)
            sig = Signal(value.shape(), name=name)
            m.d.comb += sig.eq(value)
            return sig

        # unpack: x is the operand of larger magnitude (compare of the low 31 bits), y the other.
        # The step swaps y's significand (23 multiplexers after the compare's carry chain) and
        # registers both operands and the compare result ``swap`` for x's swap, which is in the
        # align step, in parallel with the shift (timing: swapping x here as well put a route of
        # fanout ~60 after the compare; swapping y in align put the swap and its fanout of 24
        # at the head of the align step's shift chain, its critical path). The exponent
        # difference is |ea − eb|, chosen by the borrow of ea − eb, not by ``swap`` (equal
        # exponents give 0 either way), and is registered as the align shift, saturated at 31
        # (timing: the saturation in the align step put a LUT before nets of fanout ~30); it and
        # the classes come from a and b in parallel with the compare.
        ea, eb = a[23:31], b[23:31]
        swap = wire(a[:31] < b[:31], "swap")
        sub = wire(a[31] ^ b[31], "sub")
        # DAZ: a subnormal y is zero (a subnormal x means both operands are zeros: ``zero``)
        a_nz, b_nz = wire(ea.any(), "a_nz"), wire(eb.any(), "b_nz")
        a_max, b_max = ea.all(), eb.all()
        x_zero = wire(~a_nz & ~b_nz, "x_zero")      # both operands are zeros
        nan = (a_max & a[:23].any()) | (b_max & b[:23].any()) | (a_max & b_max & sub)
        d_ab = wire(ea - eb, "d_ab")                # 9 bits: d_ab[8] is ea < eb
        d_ba = wire((eb - ea)[:8], "d_ba")
        # |ea − eb| saturated at 31: each difference saturated on its own, then chosen (two LUT
        # levels after the carry chains; saturating the chosen difference took three)
        sat_ab = d_ab[:5] | d_ab[5:8].any().replicate(5)
        sat_ba = d_ba[:5] | d_ba[5:8].any().replicate(5)
        s1 = p.step(
            "unpack",
            sign=Mux(x_zero, a[31] & b[31], Mux(swap, b[31], a[31])),  # x's sign; (−0) + (−0) = −0
            sub=sub,
            swap=swap,
            a=a[:31], b=b[:31],
            y_man=Mux(swap, a[:23], b[:23]),        # y's significand, before DAZ (see align)
            y_nz=Mux(swap, a_nz, b_nz),
            shamt=Mux(d_ab[8], sat_ba, sat_ab),     # shifts from 27 on drop every bit
            inf=a_max | b_max,                      # Inf (or NaN: nan has priority)
            nan=nan,
            zero=x_zero)

        # align: x's swap (exponent and significand) in parallel with y's shift. 27-bit field =
        # y's significand and three bits below it, zero for a subnormal y (DAZ; the mask shares
        # a LUT with the first shift level); each of the five shift levels drops bits into the
        # sticky bit, which lands in the lowest position. The lowest position leaves the step as
        # two halves, the last level's bit with what that level drops (``lo_a``) and what the
        # first four drop (``lo_b``), ORed by the add step (timing: ORing them here made the
        # lowest bit one LUT deeper than the other 26, the align step's critical path). For a
        # subtraction the field is inverted here, and its lowest bit in the add step (which also
        # adds the +1).
        x = wire(Mux(s1.swap, s1.b, s1.a), "x")
        y_man = wire(s1.y_man & s1.y_nz.replicate(23), "y_man")
        shamt = s1.shamt
        v = Cat(Const(0, 3), y_man, s1.y_nz)
        dropped = []
        for k in (4, 3, 2, 1, 0):
            dropped.append(shamt[k] & v[:1 << k].any())
            v = wire(Mux(shamt[k], v >> (1 << k), v)[:27], f"align{1 << k}")
        s2 = p.step(
            "align",
            sign=s1.sign, sub=s1.sub, exp=x[23:31], man=x[:23],
            small=Cat(v[1:], 0) ^ s1.sub.replicate(27),
            lo_a=v[0] | dropped[4], lo_b=Cat(*dropped[:4]).any(),
            inf=s1.inf, nan=s1.nan, zero=s1.zero)

        # add: |x| >= |y|, so big + ~small + 1 never goes negative; the +1 of a subtraction
        # enters as the carry out of an extra low bit, so one carry chain does both
        big = Cat(Const(0, 3), s2.man, 1, 0)
        small = Cat((s2.lo_a | s2.lo_b) ^ s2.sub, s2.small)
        s3 = p.step(
            "add",
            sign=s2.sign, exp=s2.exp,
            total=(Cat(s2.sub, big) + Cat(s2.sub, small))[1:29],
            inf=s2.inf, nan=s2.nan, zero=s2.zero)

        # count: leading zeros of the sum (a log-depth tree; 31 for a zero sum), and the first
        # normalize level, by 16, on the count's top bit (an AND of 16 bits, in parallel with
        # the rest of the tree; timing: in the normalize step it put a net of fanout 28 ahead
        # of the other four levels)
        lzc = wire(leading_zeros(Cat(Const(0xF, 4), s3.total))[:5], "lzc")
        s4 = p.step(
            "count",
            sign=s3.sign, exp=s3.exp,
            total=Mux(lzc[4], s3.total << 16, s3.total)[:28],
            lzc=lzc,
            inf=s3.inf, nan=s3.nan, zero=s3.zero)

        # normalize: leading one to bit 27 with the other four levels (a zero sum stays zero)
        v = s4.total
        for k in (3, 2, 1, 0):
            v = wire(Mux(s4.lzc[k], v << (1 << k), v)[:28], f"norm{1 << k}")
        s5 = p.step(
            "normalize",
            sign=s4.sign, exp=s4.exp, lzc=s4.lzc,
            man=v[4:28], guard=v[3], rest=v[:3].any(),
            inf=s4.inf, nan=s4.nan, zero=s4.zero)

        # round: the biased result exponent is exp + 1 - lzc. The fields are packed as
        # man[:23] + 2**23·(exp + 1 - lzc) + rnd in one carry chain, so a rounding carry out of
        # the significand increments the exponent (1 - lzc is a table of lzc, not a second
        # chain). Overflow and underflow are decided from exp, lzc and the rounding carry in
        # parallel with that chain.
        rnd = wire(s5.guard & (s5.rest | s5.man[0]), "rnd")
        adj = wire(Array([Const((1 - k) % 256, 8) for k in range(32)])[s5.lzc], "adj")
        packed = wire((Cat(rnd, s5.man[:23], s5.exp) + Cat(rnd, Const(0, 23), adj))[1:32], "packed")
        carry = wire(rnd & s5.man[:23].all(), "carry")  # rounds up to the next power of two
        lz0, lz1 = s5.lzc == 0, s5.lzc == 1
        # exp + 1 - lzc + carry >= 255, with exp <= 254
        overflow = ((s5.exp == 254) & (lz0 | (lz1 & carry))) | ((s5.exp == 253) & lz0 & carry)
        underflow = s5.exp < s5.lzc                 # exp + 1 - lzc <= 0: an exact sum, no rounding
        cancel = wire(~s5.man[23], "cancel")        # x + (-x): +0
        inf = wire(s5.inf | overflow, "inf")
        zero = wire(~inf & (s5.zero | underflow | cancel), "zero")
        keep = wire(~(inf | zero), "keep")
        sign = s5.sign & ~s5.nan & ~(cancel & ~s5.zero & ~s5.inf)
        y = Cat((packed[:23] & keep.replicate(23)) | Cat(Const(0, 22), s5.nan),
                Mux(inf, 0xFF, packed[23:31] & keep.replicate(8)),
                sign)
        s6 = p.step("round", y=y)
        m.d.comb += self.y.eq(s6.y)
        return m


class Fp32ToBf16Core(_Core):
    """fp32 → bf16 with RNE (:func:`golden.fp32_to_bf16`).

    Parameters
    ----------
    stages : int
        Pipeline registers, 1..2 (default 1; 2 adds a register between the 32-bit rounding
        add and the result select).

    Members
    -------
    en : In(1)
        Advance every pipeline register by one stage.
    a : In(32)
        fp32 bit pattern.
    y : Out(16)
        bf16 bit pattern: ``(a + 0x7FFF + a[16]) >> 16`` (rounding carries into the exponent
        and overflows to ±Inf); a subnormal input gives a zero of its sign, NaN gives ``0x7FC0``.

    Latency ``stages`` en-cycles; throughput one input per en-cycle.
    """

    a: In(32)
    en: In(1)
    y: Out(16)

    _STEPS = ("round", "select")
    _PRIORITY = ("select", "round")
    _DEFAULT_STAGES = 1

    def elaborate(self, platform):
        m = Module()
        p = self._pipeline(m)
        a = self.a
        exp, man = a[23:31], a[:23]
        s1 = p.step(
            "round",
            rounded=(a + 0x7FFF + a[16])[16:32],
            nan=(exp == 0xFF) & (man != 0),
            zero=exp == 0,
            sign=a[31])
        y = Mux(s1.nan, _BF16_QNAN, Mux(s1.zero, Cat(Const(0, 15), s1.sign), s1.rounded))
        s2 = p.step("select", y=y)
        m.d.comb += self.y.eq(s2.y)
        return m


class _StreamUnit(wiring.Component):
    """A core between an input and an output stream.

    The core advances when the output register is empty or being read
    (``en = o.ready | ~o.valid``); ``i.ready = en``. No beat is lost or duplicated under
    backpressure; ``o.valid`` is a register and never depends on ``o.ready``.
    """

    _CORE = None
    _IN_FIELDS = {}
    _OUT_WIDTH = 32

    def __init__(self, *, stages=None):
        if stages is None:
            stages = self._CORE._DEFAULT_STAGES
        _check_stages(stages, self._CORE.max_stages())
        self._stages = stages
        super().__init__({
            "i": In(stream.Signature(data.StructLayout(self._IN_FIELDS))),
            "o": Out(stream.Signature(data.StructLayout({"y": self._OUT_WIDTH}))),
        })

    @classmethod
    def from_config(cls, config):
        """The unit for a :class:`~hdl.config.ChipConfig` (the arithmetic units have no
        configuration-dependent parameters; the default pipeline depth is used)."""
        if not isinstance(config, ChipConfig):
            raise TypeError(f"config must be a ChipConfig, not {type(config).__name__}")
        return cls()

    @property
    def stages(self):
        """Pipeline registers of the core."""
        return self._stages

    @property
    def latency(self):
        """Cycles from an accepted input beat to its output beat, without backpressure."""
        return self._stages

    @property
    def throughput(self):
        """Beats per cycle without backpressure."""
        return 1

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = self._CORE(stages=self._stages)
        en = Signal()
        m.d.comb += en.eq(self.o.ready | ~self.o.valid)
        m.d.comb += [core.en.eq(en), self.i.ready.eq(en)]
        for name in self._IN_FIELDS:
            m.d.comb += getattr(core, name).eq(getattr(self.i.payload, name))
        valid = Signal(core.latency, name="valid_pipe")
        with m.If(en):
            m.d.sync += valid.eq(Cat(self.i.valid, valid[:-1]))
        m.d.comb += [self.o.valid.eq(valid[-1]), self.o.payload.y.eq(core.y)]
        return m


class Int8Mac(_StreamUnit):
    """Stream int8 multiply-accumulate (:class:`Int8MacCore` between two streams).

    Parameters
    ----------
    stages : int
        Pipeline depth of the core, 1..2 (default 2).

    Members
    -------
    i : In(stream.Signature(StructLayout({"a": 8, "w": 8, "acc": 32, "a_unsigned": 1})))
        ``a`` signed int8 (unsigned when ``a_unsigned``), ``w`` signed int8, ``acc`` int32, as
        bit patterns; 49-bit payload, ``a`` in the low bits.
    o : Out(stream.Signature(StructLayout({"y": 32})))
        ``acc + a·w`` modulo 2**32.

    Latency ``stages`` cycles; throughput one beat per cycle.
    """

    _CORE = Int8MacCore
    _IN_FIELDS = {"a": 8, "w": 8, "acc": 32, "a_unsigned": 1}
    _OUT_WIDTH = 32


class Bf16Multiplier(_StreamUnit):
    """Stream bf16 × bf16 → fp32 (:class:`Bf16MulCore` between two streams).

    Parameters
    ----------
    stages : int
        Pipeline depth of the core, 1..2 (default 2).

    Members
    -------
    i : In(stream.Signature(StructLayout({"a": 16, "b": 16})))
        bf16 bit patterns, ``a`` in the low bits.
    o : Out(stream.Signature(StructLayout({"y": 32})))
        fp32 product bits (:func:`golden.bf16_mul`).

    Latency ``stages`` cycles; throughput one beat per cycle.
    """

    _CORE = Bf16MulCore
    _IN_FIELDS = {"a": 16, "b": 16}
    _OUT_WIDTH = 32


class Fp32Adder(_StreamUnit):
    """Stream fp32 + fp32 (:class:`Fp32AddCore` between two streams).

    Parameters
    ----------
    stages : int
        Pipeline depth of the core, 1..6 (default 4).

    Members
    -------
    i : In(stream.Signature(StructLayout({"a": 32, "b": 32})))
        fp32 bit patterns, ``a`` in the low bits.
    o : Out(stream.Signature(StructLayout({"y": 32})))
        fp32 sum bits (:func:`golden.fp32_add`).

    Latency ``stages`` cycles; throughput one beat per cycle.
    """

    _CORE = Fp32AddCore
    _IN_FIELDS = {"a": 32, "b": 32}
    _OUT_WIDTH = 32


class Fp32ToBf16(_StreamUnit):
    """Stream fp32 → bf16 (:class:`Fp32ToBf16Core` between two streams).

    Parameters
    ----------
    stages : int
        Pipeline depth of the core, 1..2 (default 1).

    Members
    -------
    i : In(stream.Signature(StructLayout({"a": 32})))
        fp32 bit pattern.
    o : Out(stream.Signature(StructLayout({"y": 16})))
        bf16 bits (:func:`golden.fp32_to_bf16`).

    Latency ``stages`` cycles; throughput one beat per cycle.
    """

    _CORE = Fp32ToBf16Core
    _IN_FIELDS = {"a": 32}
    _OUT_WIDTH = 16
