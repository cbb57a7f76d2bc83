"""Arithmetic cores of the vector unit (docs/numerics.md "Vector operations", docs/vector.md).

Handshake-free pipelined cores in the style of :mod:`hdl.arith`: every register advances when
``en`` is 1 and holds when it is 0; ``y`` shows the result of the input presented
:attr:`latency` ``en``-cycles earlier.

=======================  ==================================================================
core                     computes (reference)
=======================  ==================================================================
:class:`Fp32MulCore`     fp32 × fp32 → fp32 (:func:`golden.vector.fp32_mul`)
:class:`Fp32ToInt8Core`  clamp(rne(x), −127, 127) of an fp32 value (quantize_static / _per_token)
:class:`IntScaleCore`    acc·m → fp32 with an exponent adjust (``dequantize_acc``), and
                         ``requantize(acc, m, shift)`` (golden/requant.py)
:class:`SiluCore`        bf16 SiLU by table (:func:`golden.vector.silu_bf16`, spec.vector table)
:class:`RsqrtCore`       reciprocal square root (:func:`golden.vector.rsqrt_fp32_bits`)
=======================  ==================================================================

:class:`RsqrtSeq` computes the same reciprocal square root with a handshake instead: one input
at a time, a few of its 64 steps per cycle, in a fraction of :class:`RsqrtCore`'s area.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from spec import vector as spec

from .params import check_int

__all__ = ["Stages", "delay", "Fp32MulCore", "Fp32ToInt8Core", "IntScaleCore", "SiluCore",
           "RsqrtCore", "RsqrtSeq", "bit_length"]

_FP32_QNAN = 0x7FC00000


class Stages:
    """Builds an ``en``-gated pipeline: :meth:`reg` registers a dict of values into a new stage."""

    def __init__(self, m, en, prefix):
        self._m, self._en, self._prefix, self._n = m, en, prefix, 0

    def reg(self, **values):
        self._n += 1
        out = {}
        for key, value in values.items():
            value = Value.cast(value)
            sig = Signal(value.shape(), name=f"{self._prefix}{self._n}_{key}", reset_less=True)
            with self._m.If(self._en):
                self._m.d.sync += sig.eq(value)
            out[key] = sig
        return out

    @property
    def count(self):
        """Registers so far (the latency of what :meth:`reg` returned last)."""
        return self._n


def delay(m, value, n, en, name, *, reset=False):
    """``value`` seen through ``n`` ``en``-gated registers (``reset``: registers with reset)."""
    value = Value.cast(value)
    for i in range(n):
        sig = Signal(value.shape(), name=f"{name}_d{i}", reset_less=not reset)
        with m.If(en):
            m.d.sync += sig.eq(value)
        value = sig
    return value


def bit_length(m, value, name):
    """Position + 1 of the highest set bit of ``value`` (0 for 0), a priority chain."""
    value = Value.cast(value)
    out = Signal(range(len(value) + 1), name=name)
    for i in range(len(value)):
        with m.If(value[i]):
            m.d.comb += out.eq(i + 1)
    return out


class _EnCore(wiring.Component):
    en: In(1)

    LATENCY = 1

    @property
    def latency(self):
        """``en``-cycles from an input to its result."""
        return self.LATENCY


class Fp32MulCore(_EnCore):
    """fp32 × fp32 → fp32 (:func:`golden.vector.fp32_mul`): DAZ, the exact product rounded once
    (RNE), FTZ of an exact product below 2**−126 (sign a⊕b), overflow to ±Inf, canonical NaN.

    Members: ``en``, ``a``, ``b`` (fp32 bits), ``y`` (fp32 bits). Latency 3 (multiply |
    normalize and round | pack).

    Parameters
    ----------
    b_frac : int
        Fraction bits of ``b`` the multiplier reads (7..23): with 7, ``b`` must be a bf16 value
        widened to fp32 (its low 16 bits 0) and the significand product is 24 × 8 bits.
    """

    a: In(32)
    b: In(32)
    y: Out(32)

    LATENCY = 3

    def __init__(self, *, b_frac=23):
        self._b_frac = check_int("b_frac", b_frac, 7, 23)
        super().__init__()

    @property
    def b_frac(self):
        return self._b_frac

    def elaborate(self, platform):
        m = Module()
        p = Stages(m, self.en, "fmul")
        a, b = self.a, self.b
        ea, eb = a[23:31], b[23:31]
        a_zero, b_zero = ea == 0, eb == 0
        a_inf, b_inf = (ea == 0xFF) & (a[:23] == 0), (eb == 0xFF) & (b[:23] == 0)
        a_nan, b_nan = (ea == 0xFF) & (a[:23] != 0), (eb == 0xFF) & (b[:23] != 0)
        low = 23 - self._b_frac      # fraction bits of b taken as zero
        prod = Cat(Const(0, low), Cat(a[:23], 1) * Cat(b[low:23], 1)) if low else Cat(a[:23], 1) * Cat(b[:23], 1)
        s1 = p.reg(prod=prod, exp=ea + eb - 127,
                   sign=a[31] ^ b[31], nan=a_nan | b_nan | (a_inf & b_zero) | (b_inf & a_zero),
                   inf=a_inf | b_inf, zero=a_zero | b_zero)
        top = s1["prod"][47]
        sig = Mux(top, s1["prod"][24:48], s1["prod"][23:47])
        guard = Mux(top, s1["prod"][23], s1["prod"][22])
        sticky = Mux(top, s1["prod"][:23].any(), s1["prod"][:22].any())
        exp = Signal(signed(11), name="fmul_exp")
        m.d.comb += exp.eq(s1["exp"].as_signed() + top)
        rnd = guard & (sticky | sig[0])
        rounded = Signal(25, name="fmul_rounded")
        m.d.comb += rounded.eq(sig + rnd)
        s2 = p.reg(rounded=rounded, exp=exp, sign=s1["sign"], nan=s1["nan"], inf=s1["inf"],
                   zero=s1["zero"] | (exp <= 0))
        carry = s2["rounded"][24]
        exp2 = Signal(signed(12), name="fmul_exp2")
        m.d.comb += exp2.eq(s2["exp"] + carry)
        frac = Mux(carry, s2["rounded"][1:24], s2["rounded"][:23])
        y = Signal(32, name="fmul_y")
        with m.If(s2["nan"]):
            m.d.comb += y.eq(_FP32_QNAN)
        with m.Elif(s2["inf"] | (~s2["zero"] & (exp2 >= 255))):
            m.d.comb += y.eq(Cat(Const(0x7F800000, 31), s2["sign"]))
        with m.Elif(s2["zero"]):
            m.d.comb += y.eq(Cat(Const(0, 31), s2["sign"]))
        with m.Else():
            m.d.comb += y.eq(Cat(frac[:23], exp2[:8], s2["sign"]))
        s3 = p.reg(y=y)
        m.d.comb += self.y.eq(s3["y"])
        return m


class Fp32ToInt8Core(_EnCore):
    """``clamp(rne(v), −127, 127)`` of ``v = (−1)**sign · sig · 2**(exp − 150)``.

    Members: ``en``; ``sign``; ``exp`` (signed biased exponent, 11 bits: the fp32 field, or that
    field minus a row exponent); ``sig`` (24-bit significand, hidden one included; the value is 0
    when ``zero``); ``zero``; ``nan`` (gives 0); ``inf`` (saturates); ``y`` (int8, 8 bits).
    Latency 2 (shift | round and clamp).
    """

    sign: In(1)
    exp: In(signed(11))
    sig: In(24)
    zero: In(1)
    nan: In(1)
    inf: In(1)
    y: Out(8)

    LATENCY = 2

    def elaborate(self, platform):
        m = Module()
        p = Stages(m, self.en, "toi8")
        # |v| ≥ 128 from exp 134 on; |v| < 0.5 below 126 (rounds to 0); else shift by 150 − exp
        sat = self.inf | (~self.zero & (self.exp >= 134))
        small = self.zero | (self.exp < 126)
        sh = Signal(range(25), name="toi8_sh")
        m.d.comb += sh.eq(Mux(small | sat, 24, 150 - self.exp))
        wide = Cat(Const(0, 24), self.sig) >> sh  # 48 bits: integer part above bit 24
        s1 = p.reg(q=wide[24:32], guard=wide[23], sticky=wide[:23].any(), sign=self.sign,
                   sat=sat & ~self.nan, zero=(small & ~sat) | self.nan)
        q = Signal(9, name="toi8_q")
        m.d.comb += q.eq(s1["q"] + (s1["guard"] & (s1["sticky"] | s1["q"][0])))
        mag = Mux(s1["sat"] | (q > 127), 127, q[:7])
        y = Mux(s1["zero"] & ~s1["sat"], 0, Mux(s1["sign"], -mag, mag))
        s2 = p.reg(y=y[:8])
        m.d.comb += self.y.eq(s2["y"])
        return m


class IntScaleCore(_EnCore):
    """The int32 accumulator scalings of the int8 scheme, sharing one 32 × 31 multiplier.

    * ``yf``: ``acc·m·2**adj`` rounded once to fp32 (RNE), FTZ below 2**−126, ±Inf from 2**128
      (``golden.layer.dequantize_acc`` with ``adj = e_row − s``);
    * ``yq``: ``clamp((acc·m + 2**(sh−1)) >> sh, −128, 127)`` (``golden.requantize``), int8.

    Members: ``en``; ``acc`` (int32); ``m`` (31 bits, unsigned); ``adj`` (signed 11 bits);
    ``sh`` (1..62); ``yf`` (fp32 bits); ``yq`` (int8 bits). Latency 4 (multiply | leading one,
    rounding term | normalize, shift | round, pack, clamp).
    """

    acc: In(signed(32))
    m: In(31)
    adj: In(signed(11))
    sh: In(6)
    yf: Out(32)
    yq: Out(8)

    LATENCY = 4

    def elaborate(self, platform):
        m = Module()
        p = Stages(m, self.en, "isc")
        s1 = p.reg(prod=self.acc * Cat(self.m, Const(0, 1)).as_signed(), adj=self.adj, sh=self.sh)
        prod = s1["prod"]  # |prod| < 2**62
        neg = prod[63]
        mag = Signal(63, name="isc_mag")
        m.d.comb += mag.eq(Mux(neg, -prod, prod)[:63])
        bl = bit_length(m, mag, "isc_bl")
        half = Signal(signed(64), name="isc_half")
        m.d.comb += half.eq((Const(1, 64) << s1["sh"]) >> 1)
        s2 = p.reg(mag=mag, bl=bl, neg=neg, adj=s1["adj"], rq=prod + half, sh=s1["sh"])
        # normalize: the leading one to bit 62 (value = mag · 2**adj)
        norm = Signal(63, name="isc_norm")
        m.d.comb += norm.eq(s2["mag"] << (63 - s2["bl"]).as_unsigned()[:6])
        rq = Signal(signed(66), name="isc_rq")
        m.d.comb += rq.eq(s2["rq"] >> s2["sh"])
        s3 = p.reg(sig=norm[39:63], guard=norm[38], sticky=norm[:38].any(), neg=s2["neg"],
                   zero=s2["bl"] == 0, exp=s2["bl"] - 1 + s2["adj"] + 127,
                   hi=rq > 127, lo=rq < -128, q=rq[:8])
        rounded = Signal(25, name="isc_rounded")
        m.d.comb += rounded.eq(s3["sig"] + (s3["guard"] & (s3["sticky"] | s3["sig"][0])))
        carry = rounded[24]
        exp = Signal(signed(14), name="isc_exp")
        m.d.comb += exp.eq(s3["exp"] + carry)
        frac = Mux(carry, rounded[1:24], rounded[:23])
        yf = Signal(32, name="isc_yf")
        with m.If(s3["zero"] | (exp <= 0)):
            m.d.comb += yf.eq(Cat(Const(0, 31), s3["neg"] & ~s3["zero"]))
        with m.Elif(exp >= 255):
            m.d.comb += yf.eq(Cat(Const(0x7F800000, 31), s3["neg"]))
        with m.Else():
            m.d.comb += yf.eq(Cat(frac, exp[:8], s3["neg"]))
        yq = Mux(s3["hi"], 127, Mux(s3["lo"], -128, s3["q"]))
        s4 = p.reg(yf=yf, yq=yq[:8])
        m.d.comb += [self.yf.eq(s4["yf"]), self.yq.eq(s4["yq"])]
        return m


class SiluCore(_EnCore):
    """bf16 SiLU (:func:`golden.vector.silu_bf16`): the :func:`spec.vector.silu_bf16_table` ROM
    (3328 × 16 bits, synchronous read) for the inputs it holds, the rules of docs/numerics.md
    for the others. Members: ``en``, ``a`` (bf16 bits), ``y`` (bf16 bits). Latency 2 (ROM read
    | select)."""

    a: In(16)
    y: Out(16)

    LATENCY = 2

    def __init__(self, table=None):
        self._table = spec.silu_bf16_table() if table is None else table
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        a = self.a
        e, f, neg = a[7:15], a[:7], a[15]
        pos_lo, pos_hi = spec.SILU_POS_EXP
        neg_lo, neg_hi = spec.SILU_NEG_EXP
        neg_base = 128 * (pos_hi - pos_lo + 1)
        idx = Mux(neg, neg_base + Cat(f, (e - neg_lo)[:4]), Cat(f, (e - pos_lo)[:4]))
        in_table = Mux(neg, (e >= neg_lo) & (e <= neg_hi), (e >= pos_lo) & (e <= pos_hi))
        rule = Signal(16, name="silu_rule")
        with m.If(e == 0xFF):
            m.d.comb += rule.eq(Mux(f != 0, 0x7FC0, Mux(neg, 0x8000, 0x7F80)))
        with m.Elif(e <= 1):  # zeros, subnormals, and x/2 below 2**-126
            m.d.comb += rule.eq(Cat(Const(0, 15), neg))
        with m.Elif(e < pos_lo):
            m.d.comb += rule.eq(Cat(f, (e - 1)[:8], neg))
        with m.Else():  # x ≥ 8 → x, x ≤ −128 → −0
            m.d.comb += rule.eq(Mux(neg, 0x8000, a))
        m.submodules.rom = rom = Memory(shape=unsigned(16), depth=spec.SILU_ENTRIES, init=self._table)
        rd = rom.read_port(domain="sync")
        m.d.comb += [rd.addr.eq(idx), rd.en.eq(self.en)]
        p = Stages(m, self.en, "silu")
        s1 = p.reg(rule=rule, in_table=in_table & (e != 0xFF))
        s2 = p.reg(y=Mux(s1["in_table"], rd.data, s1["rule"]))
        m.d.comb += self.y.eq(s2["y"])
        return m


def _rsqrt_front(m, a):
    """The reciprocal square root's input side (comb): the result of a special input and whether
    it is one, the radicand N = M·2**24 (M·2**25 for odd E) in 50 bits and E/2."""
    e, f, sign = a[23:31], a[:23], a[31]
    special = Signal(32, name="rsq_special_in")
    is_special = Signal(name="rsq_is_special_in")
    m.d.comb += is_special.eq(1)
    with m.If((e == 0xFF) & (f != 0)):
        m.d.comb += special.eq(_FP32_QNAN)
    with m.Elif(e == 0):
        m.d.comb += special.eq(0x7F800000)
    with m.Elif(sign):
        m.d.comb += special.eq(_FP32_QNAN)
    with m.Elif(e == 0xFF):
        m.d.comb += special.eq(0)
    with m.Else():
        m.d.comb += is_special.eq(0)
    # E = e − 150; odd E (odd e) → M·2, E − 1; N = M·2**24 padded to 50 bits
    odd = e[0]
    mant = Cat(f, 1)
    n = Signal(50, name="rsq_n_in")
    m.d.comb += n.eq(Mux(odd, mant << 25, mant << 24))
    half_e = Signal(signed(9), name="rsq_half_e_in")  # E/2 with E = e − 150 − odd
    m.d.comb += half_e.eq((e - 150 - odd).as_signed() >> 1)
    return dict(special=special, is_special=is_special, n=n, half_e=half_e)


def _rsqrt_round(m, inv, half_e, is_special, special):
    """The reciprocal square root's output (comb): ``inv`` (38 or 39 bits) to fp32 with RNE on
    the bits below 24, scaled by 2**(−50 − E/2); or the special input's result."""
    top = inv[38]
    sig = Mux(top, inv[15:39], inv[14:38])
    guard = Mux(top, inv[14], inv[13])
    sticky = Mux(top, inv[:14].any(), inv[:13].any())
    rounded = Signal(25, name="rsq_rounded")
    m.d.comb += rounded.eq(sig + (guard & (sticky | sig[0])))
    exp = Signal(signed(11), name="rsq_exp")  # bit_length(inv) − 1 − 50 − E/2 + 127
    m.d.comb += exp.eq(Mux(top, 38, 37) - 50 - half_e + 127 + rounded[24])
    frac = Mux(rounded[24], rounded[1:24], rounded[:23])
    return Mux(is_special, special, Cat(frac, exp[:8], Const(0, 1)))


class RsqrtCore(_EnCore):
    """Reciprocal square root (:func:`golden.vector.rsqrt_fp32_bits`), one input per ``en``-cycle.

    For a positive normal v = M·2**E (E even after M ← 2M): ``q = isqrt(M·2**24)`` (25 bits,
    restoring, 25 steps), ``inv = 2**62 // q`` (39 quotient bits, restoring division),
    ``inv·2**(−50 − E/2)`` rounded to fp32 (RNE; never out of range). ±0 → +Inf, +Inf → +0,
    negative or NaN → canonical NaN, subnormal → +Inf (DAZ).

    Parameters
    ----------
    steps_per_stage : int
        Square-root or division steps between two registers (1..8, default 2).

    Members: ``en``, ``a`` (fp32 bits), ``y`` (fp32 bits). Latency :attr:`latency`.
    """

    a: In(32)
    y: Out(32)

    _SQRT_STEPS = 25
    _DIV_STEPS = 39

    def __init__(self, *, steps_per_stage=2):
        self._sps = check_int("steps_per_stage", steps_per_stage, 1, 8)
        super().__init__()

    @property
    def latency(self):
        steps = self._SQRT_STEPS + self._DIV_STEPS
        return 2 + -(-steps // self._sps)

    def elaborate(self, platform):
        m = Module()
        p = Stages(m, self.en, "rsq")
        fr = _rsqrt_front(m, self.a)
        n, half_e, special, is_special = fr["n"], fr["half_e"], fr["special"], fr["is_special"]
        state = dict(n=n, rem=Const(0, 27), root=Const(0, 25), half_e=half_e,
                     special=special, is_special=is_special)
        state = p.reg(**state)
        step = 0
        for i in range(self._SQRT_STEPS):
            pair = state["n"][48 - 2 * i:50 - 2 * i]
            rem = Cat(pair, state["rem"])[:27]
            trial = Cat(Const(1, 2), state["root"])[:27]
            ge = rem >= trial
            state = dict(state, rem=Mux(ge, rem - trial, rem)[:27], root=Cat(ge, state["root"])[:25])
            step += 1
            if step % self._sps == 0:
                state = p.reg(**state)
        q = state["root"]
        state = dict(half_e=state["half_e"], special=state["special"], is_special=state["is_special"],
                     q=q, rem=Const(1 << 23, 26), inv=Const(0, 39))
        for _ in range(self._DIV_STEPS):
            rem = Cat(Const(0, 1), state["rem"])[:26]
            ge = rem >= state["q"]
            state = dict(state, rem=Mux(ge, rem - state["q"], rem)[:26], inv=Cat(ge, state["inv"])[:39])
            step += 1
            if step % self._sps == 0:
                state = p.reg(**state)
        if step % self._sps:
            state = p.reg(**state)
        y = _rsqrt_round(m, state["inv"], state["half_e"], state["is_special"], state["special"])
        out = p.reg(y=y)
        assert p.count == self.latency, (p.count, self.latency)
        m.d.comb += self.y.eq(out["y"])
        return m


class RsqrtSeq(wiring.Component):
    """:class:`RsqrtCore`'s reciprocal square root, sequential: one input at a time, ``steps``
    of its 25 square-root and 39 division steps per cycle, one set of registers and ``2·steps``
    compare-and-subtract stages instead of 64 (the same results, bit for bit).

    Parameters
    ----------
    steps : int
        Steps per cycle (1..8, default 2).

    Members
    -------
    start : In(1)
        Takes ``a`` while ``ready``; ignored otherwise.
    a : In(32)
        fp32 bits.
    ready : Out(1)
        Idle: no input in progress.
    valid : Out(1)
        One-cycle pulse: ``y`` is the result of the last input taken; ``y`` holds it until the
        next result.
    y : Out(32)

    Latency: :attr:`latency` cycles from ``start`` to ``valid`` (``ready`` again in that cycle).
    """

    start: In(1)
    a: In(32)
    ready: Out(1)
    valid: Out(1)
    y: Out(32)

    _SQRT_STEPS = RsqrtCore._SQRT_STEPS
    _DIV_STEPS = RsqrtCore._DIV_STEPS

    def __init__(self, *, steps=2):
        self._k = check_int("steps", steps, 1, 8)
        super().__init__()

    @property
    def steps(self):
        return self._k

    @property
    def latency(self):
        """Cycles from ``start`` to ``valid``: one to take the input, the square root's and the
        division's cycles, one to round."""
        k = self._k
        return 1 + -(-self._SQRT_STEPS // k) + -(-self._DIV_STEPS // k) + 1

    def elaborate(self, platform):
        m = Module()
        k = self._k
        fr = _rsqrt_front(m, self.a)
        n = Signal(50, name="rsq_n")                   # the radicand, its next pair at the top
        rem = Signal(27, name="rsq_rem")
        root = Signal(25, name="rsq_root")
        q = Signal(25, name="rsq_q")
        drem = Signal(26, name="rsq_drem")
        inv = Signal(39, name="rsq_inv")
        half_e = Signal(signed(9), name="rsq_half_e")
        special = Signal(32, name="rsq_special")
        is_special = Signal(name="rsq_is_special")
        cnt = Signal(range(max(self._SQRT_STEPS, self._DIV_STEPS) + k), name="rsq_cnt")
        y = Signal(32, name="rsq_y")
        m.d.comb += self.y.eq(y)
        m.d.sync += self.valid.eq(0)

        with m.FSM(name="rsq"):
            with m.State("IDLE"):
                m.d.comb += self.ready.eq(1)
                with m.If(self.start):
                    m.d.sync += [n.eq(fr["n"]), half_e.eq(fr["half_e"]), special.eq(fr["special"]),
                                 is_special.eq(fr["is_special"]),
                                 rem.eq(0), root.eq(0), cnt.eq(0)]
                    m.next = "SQRT"
            with m.State("SQRT"):
                nn, r, rt = n, rem, root
                for j in range(k):
                    go = cnt + j < self._SQRT_STEPS
                    r2 = Cat(nn[48:50], r)[:27]
                    trial = Cat(Const(1, 2), rt)[:27]
                    ge = r2 >= trial
                    nxt = [Signal(50, name=f"rsq_n_s{j}"), Signal(27, name=f"rsq_rem_s{j}"),
                           Signal(25, name=f"rsq_root_s{j}")]
                    m.d.comb += [nxt[0].eq(Mux(go, (nn << 2)[:50], nn)),
                                 nxt[1].eq(Mux(go, Mux(ge, r2 - trial, r2)[:27], r)),
                                 nxt[2].eq(Mux(go, Cat(ge, rt)[:25], rt))]
                    nn, r, rt = nxt
                m.d.sync += [n.eq(nn), rem.eq(r), root.eq(rt), cnt.eq(cnt + k)]
                with m.If(cnt + k >= self._SQRT_STEPS):
                    m.d.sync += [q.eq(rt), drem.eq(1 << 23), inv.eq(0), cnt.eq(0)]
                    m.next = "DIV"
            with m.State("DIV"):
                r, iv = drem, inv
                for j in range(k):
                    go = cnt + j < self._DIV_STEPS
                    r2 = Cat(Const(0, 1), r)[:26]
                    ge = r2 >= q
                    nxt = [Signal(26, name=f"rsq_drem_s{j}"), Signal(39, name=f"rsq_inv_s{j}")]
                    m.d.comb += [nxt[0].eq(Mux(go, Mux(ge, r2 - q, r2)[:26], r)),
                                 nxt[1].eq(Mux(go, Cat(ge, iv)[:39], iv))]
                    r, iv = nxt
                m.d.sync += [drem.eq(r), inv.eq(iv), cnt.eq(cnt + k)]
                with m.If(cnt + k >= self._DIV_STEPS):
                    m.next = "ROUND"
            with m.State("ROUND"):
                m.d.sync += [y.eq(_rsqrt_round(m, inv, half_e, is_special, special)),
                             self.valid.eq(1)]
                m.next = "IDLE"
        return m
