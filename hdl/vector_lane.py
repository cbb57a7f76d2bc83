"""One lane of the vector unit: every element-wise computation, one element per ``en``-cycle.

:class:`VectorLane` registers its inputs, runs them through four chains that share their
multipliers and adders between ops, and selects the op's result into an output register:

=========  ==================================================================  ============
chain      ops (docs/numerics.md)                                               units
=========  ==================================================================  ============
fadd       ADD (fp32_add, then fp32_to_bf16 for bf16), ROPE bf16, HADAMARD's   2 bf16 mul, fp32 add
           last butterfly stage (fp32_add of the front end's operand pair)
silu       SWIGLU: silu_bf16(a)·b (after fp32 → bf16 of both for dtype INT8)    SiLU ROM, bf16 mul
fmul       RMSNORM's second pass t = bf16(x·r), y = bf16(t·g); RMSNORM_FP32's   fp32 mul, bf16 mul,
           t = x·r (fp32), y = bf16(t·g) (fp32 × bf16); QUANT_STATIC;           fp32 × bf16 mul
           QUANT_TOKEN's second pass clamp(rne(fp32_mul(x·2**−e, mu))); the
           row scale of DEQUANT with ROW_SCALE (after the int chain)
int        DEQUANT, REQUANT, ROPE int8 (requantize(a·C ∓ b·S))                  32×31 mul, 2 × 8×16
=========  ==================================================================  ============

Every op takes :data:`LANE_LATENCY` ``en``-cycles from input to ``y``. DEQUANT with ROW_SCALE
feeds the int chain's fp32 result (after 5 of the 7 datapath stages) to the fmul chain's
multiplier, whose third register is the output register of that op (the other ops' results go
through the output select and its register).
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from spec.codes import Dtype
from spec.vector import EXP_BITS, VectorFlag, VectorOp

from .arith import Bf16MulCore, Fp32AddCore, Fp32ToBf16Core
from .vector_arith import Fp32MulCore, Fp32ToInt8Core, IntScaleCore, SiluCore, Stages, delay

__all__ = ["VectorLane", "LANE_LATENCY"]

#: en-cycles from a lane's inputs to its output (input register, 7 datapath stages, output select).
LANE_LATENCY = 9
_CHAIN = 7  # datapath stages after the input register


def _sext(m, value, width, name):
    s = Signal(signed(width), name=name)
    m.d.comb += s.eq(value.as_signed())
    return s


class VectorLane(wiring.Component):
    """One element per ``en``-cycle of any element-wise op.

    Parameters
    ----------
    silu_table : optional
        The SiLU table (default :func:`spec.vector.silu_bf16_table`).
    ops : collection of VectorOp, optional
        The unit's ops (default all, :class:`hdl.vector.VectorUnit`): without RMSNORM_FP32 no
        fp32 × bf16 gain multiplier, without HADAMARD no fp32 operands for its stage, without
        TABLE no row-scale path.

    Members
    -------
    en : In(1)
    op : In(VectorOp); dtype : In(Dtype); flags : In(2); half : In(1)
        The command's op, dtype and flags; ``half`` (ROPE) is 1 for the second half of a head.
    a, b, p : In(32)
        The element of a, b and p (bf16 in the low 16 bits, fp32/int32 whole, int8 sign-extended).
    cs : In(32)
        ROPE: cos (bits 0..15) and sin (16..31) of the pair (bf16, or Q1.14 int16).
    sc : In(32)
        Per-row scalar: RMSNORM r (fp32), QUANT_TOKEN / DEQUANT / REQUANT the row exponent (bits
        0..EXP_BITS − 1).
    rsc : In(32)
        Per-row fp32 scale: QUANT_TOKEN mu[j] (1.0 without ROW_SCALE), DEQUANT with ROW_SCALE nu[j].
    imm0 : In(32); shift : In(6)
        QUANT_STATIC 1/scale (fp32); ROPE int8 multiplier and shift.
    mask : In(1)
        0 for a lane past the row's end: ``y`` is 0.
    y : Out(32)
        The result (bf16 zero-extended, fp32, or int8 sign-extended), LANE_LATENCY en-cycles later.
    """

    en: In(1)
    op: In(VectorOp)
    dtype: In(Dtype)
    flags: In(2)
    half: In(1)
    a: In(32)
    b: In(32)
    p: In(32)
    cs: In(32)
    sc: In(32)
    rsc: In(32)
    imm0: In(32)
    shift: In(6)
    mask: In(1)
    y: Out(32)

    def __init__(self, silu_table=None, ops=None):
        self._silu_table = silu_table
        self._ops = frozenset(VectorOp if ops is None else ops)
        super().__init__()

    def _is(self, r, op):
        """``r["op"] == op``, or a constant 0 when the lane is built without ``op`` (its logic
        then drops out of the netlist)."""
        return (r["op"] == op) if op in self._ops else Const(0)

    @property
    def latency(self):
        return LANE_LATENCY

    def elaborate(self, platform):
        m = Module()
        en = self.en
        r = Stages(m, en, "lin").reg(op=self.op, dtype=self.dtype, flags=self.flags, half=self.half,
                                      a=self.a, b=self.b, p=self.p, cs=self.cs, sc=self.sc,
                                      rsc=self.rsc, imm0=self.imm0, shift=self.shift, mask=self.mask)
        ctl = {k: r[k] for k in ("op", "dtype", "mask")}
        late = {k: delay(m, v, _CHAIN, en, f"lctl_{k}") for k, v in ctl.items()}
        res = {}
        res.update(self._fadd_chain(m, r))
        res.update(self._silu_chain(m, r))
        res.update(self._int_chain(m, r))
        res.update(self._fmul_chain(m, r, res["yf_conv"]))
        out = Signal(32, name="lane_out")
        op, int8 = late["op"], late["dtype"] == Dtype.INT8
        sx8 = lambda v: Cat(v, v[7].replicate(24))
        with m.Switch(op):
            with m.Case(VectorOp.ADD):
                m.d.comb += out.eq(Mux(int8, res["fadd32"], res["fadd16"]))
            with m.Case(VectorOp.HADAMARD):
                m.d.comb += out.eq(res["fadd32"])
            with m.Case(VectorOp.ROPE):
                m.d.comb += out.eq(Mux(int8, sx8(res["yq"]), res["fadd16"]))
            with m.Case(VectorOp.SWIGLU):
                m.d.comb += out.eq(res["silu"])
            with m.Case(VectorOp.RMSNORM, VectorOp.RMSNORM_FP32):
                m.d.comb += out.eq(res["rms"])
            with m.Case(VectorOp.QUANT_STATIC):
                m.d.comb += out.eq(sx8(res["qstatic"]))
            with m.Case(VectorOp.QUANT_TOKEN):
                m.d.comb += out.eq(sx8(res["qstatic"]))
            with m.Case(VectorOp.DEQUANT):
                m.d.comb += out.eq(res["yf"])
            with m.Case(VectorOp.REQUANT):
                m.d.comb += out.eq(sx8(res["yq"]))
        y = Stages(m, en, "lout").reg(y=Mux(late["mask"], out, 0))
        m.d.comb += self.y.eq(Mux(res["row_scaled"], res["fmul32"], y["y"]))
        return m

    def _fadd_chain(self, m, r):
        """ADD and ROPE bf16: two bf16 products (ROPE), the fp32 add, fp32 → bf16."""
        en = self.en
        c, s = r["cs"][:16], r["cs"][16:]
        m.submodules.rope_mul0 = mul0 = Bf16MulCore()
        m.submodules.rope_mul1 = mul1 = Bf16MulCore()
        # a' = a·C + b·(−S) (first half), b' = a·S + b·C (second half)
        m.d.comb += [mul0.en.eq(en), mul0.a.eq(r["a"][:16]), mul0.b.eq(Mux(r["half"], s, c)),
                     mul1.en.eq(en), mul1.a.eq(r["b"][:16]), mul1.b.eq(Mux(r["half"], c, s ^ 0x8000))]
        fp32 = (r["dtype"] == Dtype.INT8) | self._is(r, VectorOp.HADAMARD)
        xa = delay(m, Mux(fp32, r["a"], Cat(Const(0, 16), r["a"][:16])), 2, en, "add_a")
        xb = delay(m, Mux(fp32, r["b"], Cat(Const(0, 16), r["b"][:16])), 2, en, "add_b")
        rope = delay(m, r["op"] == VectorOp.ROPE, 2, en, "add_rope")
        m.submodules.fadd = add = Fp32AddCore()
        m.d.comb += [add.en.eq(en), add.a.eq(Mux(rope, mul0.y, xa)), add.b.eq(Mux(rope, mul1.y, xb))]
        m.submodules.fadd_bf16 = cvt = Fp32ToBf16Core()
        m.d.comb += [cvt.en.eq(en), cvt.a.eq(add.y)]
        assert 2 + add.latency + cvt.latency == _CHAIN
        return {"fadd32": delay(m, add.y, 1, en, "add_y"), "fadd16": cvt.y}

    def _silu_chain(self, m, r):
        """SWIGLU: (fp32 → bf16), SiLU table, bf16 product, fp32 → bf16."""
        en = self.en
        m.submodules.sw_cvt_a = cva = Fp32ToBf16Core()
        m.submodules.sw_cvt_b = cvb = Fp32ToBf16Core()
        m.d.comb += [cva.en.eq(en), cva.a.eq(r["a"]), cvb.en.eq(en), cvb.a.eq(r["b"])]
        fp32 = delay(m, r["dtype"] == Dtype.INT8, 1, en, "sw_fp32")
        ga = Mux(fp32, cva.y, delay(m, r["a"][:16], 1, en, "sw_a"))
        gb = Mux(fp32, cvb.y, delay(m, r["b"][:16], 1, en, "sw_b"))
        m.submodules.silu = silu = SiluCore(self._silu_table)
        m.d.comb += [silu.en.eq(en), silu.a.eq(ga)]
        m.submodules.sw_mul = mul = Bf16MulCore()
        m.d.comb += [mul.en.eq(en), mul.a.eq(silu.y), mul.b.eq(delay(m, gb, silu.latency, en, "sw_up"))]
        m.submodules.sw_out = cvt = Fp32ToBf16Core()
        m.d.comb += [cvt.en.eq(en), cvt.a.eq(mul.y)]
        n = 1 + silu.latency + mul.latency + cvt.latency
        return {"silu": delay(m, cvt.y, _CHAIN - n, en, "sw_y")}

    def _fmul_chain(self, m, r, yf_conv):
        """QUANT_STATIC: clamp(rne(x·inv)); QUANT_TOKEN: clamp(rne(fp32_mul(x·2**−e, mu)));
        RMSNORM: bf16(bf16(x·r)·g); RMSNORM_FP32: bf16(fp32_mul(fp32_mul(x, r), g));
        DEQUANT with ROW_SCALE: fp32_mul(the int chain's yf, nu)."""
        en = self.en
        rms32 = self._is(r, VectorOp.RMSNORM_FP32)
        rms = (r["op"] == VectorOp.RMSNORM) | rms32
        qtok = r["op"] == VectorOp.QUANT_TOKEN
        x = Mux(rms32, r["a"], Mux(rms | (r["dtype"] == Dtype.BF16), Cat(Const(0, 16), r["a"][:16]), r["a"]))
        # QUANT_TOKEN (fp32 rows from the token buffer): x·2**−e exactly, a zero below 2**−126
        a = r["a"]
        ef = a[23:31]
        es = Signal(signed(12), name="qt_exp")
        m.d.comb += es.eq(ef - _sext(m, r["sc"][:EXP_BITS], EXP_BITS, "qt_rowexp"))
        xs = Mux(ef == 0xFF, a, Mux((ef == 0) | (es <= 0), Cat(Const(0, 31), a[31]), Cat(a[:23], es[:8], a[31])))
        # DEQUANT with ROW_SCALE: the multiplier takes the int chain's result and the row's nu
        # (5 en-cycles after the input register; zeros in a lane past the row's end)
        # (no ROW_SCALE command runs on a unit without TABLE: its tables are never written)
        rs = ((r["op"] == VectorOp.DEQUANT) & (r["flags"] & VectorFlag.ROW_SCALE).any()
              if VectorOp.TABLE in self._ops else Const(0))
        late = _CHAIN - 2
        rs_late = delay(m, rs, late, en, "rs_on")
        mask_late = delay(m, r["mask"], late, en, "rs_mask")
        nu_late = delay(m, r["rsc"], late, en, "rs_nu")
        m.submodules.fmul = mul = Fp32MulCore()
        m.d.comb += [mul.en.eq(en),
                     mul.a.eq(Mux(rs_late, Mux(mask_late, yf_conv, 0), Mux(qtok, xs, x))),
                     mul.b.eq(Mux(rs_late, Mux(mask_late, nu_late, 0),
                                  Mux(rms, r["sc"], Mux(qtok, r["rsc"], r["imm0"]))))]
        m.submodules.qs_int8 = q = Fp32ToInt8Core()
        y = mul.y
        e = y[23:31]
        m.d.comb += [q.en.eq(en), q.sign.eq(y[31]), q.exp.eq(e), q.sig.eq(Cat(y[:23], 1)),
                     q.zero.eq(e == 0), q.nan.eq((e == 0xFF) & (y[:23] != 0)),
                     q.inf.eq((e == 0xFF) & (y[:23] == 0))]
        m.submodules.rms_t = cvt_t = Fp32ToBf16Core()
        m.d.comb += [cvt_t.en.eq(en), cvt_t.a.eq(y)]
        m.submodules.rms_mul = gmul = Bf16MulCore()
        gain = delay(m, r["p"][:16], mul.latency + cvt_t.latency, en, "rms_g")
        m.d.comb += [gmul.en.eq(en), gmul.a.eq(cvt_t.y), gmul.b.eq(gain)]
        # RMSNORM_FP32: t stays fp32, the gain product is fp32 × bf16 (a 24 × 8-bit significand product)
        m.submodules.rms_gmul32 = gmul32 = Fp32MulCore(b_frac=7)
        gain32 = delay(m, r["p"][:16], mul.latency, en, "rms_g32")
        m.d.comb += [gmul32.en.eq(en), gmul32.a.eq(mul.y), gmul32.b.eq(Cat(Const(0, 16), gain32))]
        fp32_in = delay(m, rms32, mul.latency + gmul32.latency, en, "rms_fp32_in")
        m.submodules.rms_y = cvt_y = Fp32ToBf16Core()
        m.d.comb += [cvt_y.en.eq(en), cvt_y.a.eq(Mux(fp32_in, gmul32.y, gmul.y))]
        assert mul.latency + cvt_t.latency + gmul.latency + cvt_y.latency == _CHAIN
        assert mul.latency + gmul32.latency + cvt_y.latency == _CHAIN
        assert late + mul.latency == _CHAIN + 1  # mul.y is then the output register's peer
        return {"qstatic": delay(m, q.y, _CHAIN - mul.latency - q.latency, en, "qs_y"), "rms": cvt_y.y,
                "fmul32": mul.y, "row_scaled": delay(m, rs_late, mul.latency, en, "rs_out")}

    def _int_chain(self, m, r):
        """DEQUANT, REQUANT, ROPE int8 through one IntScaleCore."""
        en = self.en
        a8, b8 = r["a"][:8].as_signed(), r["b"][:8].as_signed()
        c, s = r["cs"][:16].as_signed(), r["cs"][16:].as_signed()
        rope_acc = Signal(signed(32), name="rope_acc")
        m.d.comb += rope_acc.eq(Mux(r["half"], a8 * s + b8 * c, a8 * c - b8 * s))
        e = _sext(m, r["sc"][:EXP_BITS], EXP_BITS, "int_rowexp")
        sh_in = r["b"][:6]
        use_e = (r["op"] == VectorOp.REQUANT) | (r["flags"] & VectorFlag.ROW_EXP).any()
        e_used = Mux(use_e, e, 0)
        rq = Signal(signed(12), name="int_rq_shift")
        m.d.comb += rq.eq(sh_in - e_used)
        rope = r["op"] == VectorOp.ROPE
        st = Stages(m, en, "int").reg(
            acc=Mux(rope, rope_acc, r["a"].as_signed()),
            m=Mux(rope, r["imm0"][:31], r["p"][:31]),
            adj=(e_used - sh_in)[:11],
            sh=Mux(rope, r["shift"], Mux(rq < 1, 1, Mux(rq > 62, 62, rq[:6]))))
        m.submodules.iscale = isc = IntScaleCore()
        m.d.comb += [isc.en.eq(en), isc.acc.eq(st["acc"]), isc.m.eq(st["m"]),
                     isc.adj.eq(st["adj"]), isc.sh.eq(st["sh"])]
        n = 1 + isc.latency
        assert n == _CHAIN - 2  # the row scale's multiply starts here (_fmul_chain)
        return {"yf": delay(m, isc.yf, _CHAIN - n, en, "int_yf"),
                "yq": delay(m, isc.yq, _CHAIN - n, en, "int_yq"), "yf_conv": isc.yf}
