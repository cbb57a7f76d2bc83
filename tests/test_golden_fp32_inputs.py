"""The bf16 vector ops with fp32 inputs and one final rounding (golden/vector.py:
``rmsnorm_fp32_in``, ``rope_fp32_in``, ``swiglu_fp32_in``) and the layer option that uses them
(``DecoderLayer(mode="bf16", residual="fp32", fp32_inputs=...)``), on small synthetic shapes.

Proves: each op is the composition of fp32 units docs/numerics.md states (bit for bit against an
independent numpy-float32 implementation of the formula, in the stated order), lies within the
tolerance derived from that arithmetic of the float64 reference (and the bf16-input op does
not), handles ±0, subnormals, Inf and NaN as stated, is deterministic and row-independent,
rejects bad arguments naming them; the layer option keeps decode == prefill, is validated,
changes nothing when off (the default modes' outputs are unchanged) and is refused by
``hardware_params``.
"""

import math
from decimal import Decimal, getcontext

import ml_dtypes
import numpy as np
import pytest

from golden import vector as V
from golden.layer import FP32_INPUTS, DecoderLayer, LayerConfig, LayerWeights, calibrate

BF = ml_dtypes.bfloat16
SEED = 20260715
U = 2.0 ** -24  # unit roundoff of fp32 (RNE)
T64 = LayerConfig(d_model=256, n_heads=4, n_kv_heads=2, head_dim=64, d_ff=192, rms_eps=1e-5, rope_base=1e4)


def _rng(offset):
    seed = SEED + offset
    print(f"seed={seed}")
    return np.random.default_rng(seed)


def _f32(bits):
    return np.asarray(bits, np.uint32).view(np.float32)


def _u16(y):
    return np.asarray(y).view(np.uint16)


def _to_bf16_rne(x32):
    """float32 → bf16 by ml_dtypes (IEEE RNE): an implementation independent of golden.fp."""
    return np.asarray(x32, np.float32).astype(BF)


# ---------------------------------------------------------------- RMSNorm


def _rmsnorm_fp32_numpy(x, g, eps):
    """The stated formula with numpy float32 arithmetic (IEEE RNE, correct for normal data)."""
    d = x.shape[-1]
    s = np.zeros(x.shape[:-1], np.float32)
    for i in range(d):
        s = s + x[..., i] * x[..., i]
    v = s * np.float32(1.0 / d) + np.float32(eps)
    r = _f32(V.rsqrt_fp32_bits(v.view(np.uint32)))
    t = x * r[..., None]
    return _to_bf16_rne(t * g.astype(np.float32))


def _rms_data(rng, rows, d):
    x = (rng.standard_normal((rows, d)) * rng.uniform(0.01, 30, (rows, 1))).astype(np.float32)
    x[:, 5] *= 300  # an outlier channel, like the real residual stream's
    return x, rng.uniform(0.05, 5.0, d).astype(BF)


def test_rmsnorm_fp32_in_is_the_stated_fp32_formula_bit_for_bit():
    x, g = _rms_data(_rng(1), 9, 96)
    np.testing.assert_array_equal(_u16(V.rmsnorm_fp32_in(x, g, eps=1e-5)), _u16(_rmsnorm_fp32_numpy(x, g, 1e-5)))


def test_rmsnorm_fp32_in_is_within_one_bf16_rounding_of_float64_and_the_bf16_input_op_is_not():
    d = 576
    x, g = _rms_data(_rng(2), 24, d)
    ref = V.rmsnorm_reference(x.astype(np.float64), g.astype(np.float64), eps=1e-5)
    y = V.rmsnorm_fp32_in(x, g, eps=1e-5).astype(np.float64)
    # one bf16 rounding (2**-8) + the fp32 sum of squares (D·u, halved by the root), 1/D, eps, rsqrt
    # (2 ulp = 2**-22), x·r and ·g (u each), with second-order slack
    tol = (2.0 ** -8 + (d / 2 + 16) * U) * np.abs(ref)
    err = np.abs(y - ref)
    old = np.abs(V.rmsnorm_bf16(x.astype(BF), g, eps=1e-5).astype(np.float64) - ref)
    print(f"max error / bound: fp32 input {np.max(err / tol):.3f}, bf16 input {np.max(old / tol):.3f}")
    assert np.all(err <= tol)
    assert np.any(old > tol)  # three bf16 roundings (input, x·r, ·g) exceed one


def test_rmsnorm_fp32_in_is_deterministic_and_rows_are_independent():
    x, g = _rms_data(_rng(3), 5, 40)
    full = V.rmsnorm_fp32_in(x, g, eps=1e-6)
    np.testing.assert_array_equal(_u16(full), _u16(V.rmsnorm_fp32_in(x.copy(), g.copy(), eps=1e-6)))
    for i in range(5):
        np.testing.assert_array_equal(_u16(full[i]), _u16(V.rmsnorm_fp32_in(x[i], g, eps=1e-6)))
    np.testing.assert_array_equal(_u16(full.reshape(5, 40)),
                                  _u16(V.rmsnorm_fp32_in(x.reshape(5, 1, 40), g, eps=1e-6).reshape(5, 40)))


def test_rmsnorm_fp32_in_special_values():
    g = np.ones(4, BF)
    sub = np.uint32(0x00000123).view(np.float32)  # a subnormal: read as +0
    rows = np.array([[0.0, -0.0, 0.0, 0.0],          # zero row (eps > 0): zeros, signs kept
                     [sub, 1.0, -2.0, 3.0],           # DAZ: the same as a 0 in its place
                     [0.0, 1.0, -2.0, 3.0],
                     [np.inf, 1.0, -2.0, 0.0],        # Inf: r = +0, Inf·0 = NaN, the rest ±0
                     [np.nan, 1.0, 2.0, 3.0],         # NaN: the whole row NaN
                     [2.0 ** 64, 1.0, -1.0, 0.0]],    # the square overflows: s = Inf, r = +0, all ±0
                    np.float32)
    y = _u16(V.rmsnorm_fp32_in(rows, g, eps=1e-5)).tolist()
    assert y[0] == [0x0000, 0x8000, 0x0000, 0x0000]
    assert y[1] == y[2] and y[1][0] == 0x0000
    assert y[3] == [0x7FC0, 0x0000, 0x8000, 0x0000]
    assert y[4] == [0x7FC0] * 4
    assert y[5] == [0x0000, 0x0000, 0x8000, 0x0000]
    # eps = 0 and a zero row: rsqrt(+0) = +Inf, 0·Inf = NaN (as rmsnorm_bf16)
    assert _u16(V.rmsnorm_fp32_in(np.zeros((1, 4), np.float32), g, eps=0.0)).tolist() == [[0x7FC0] * 4]
    assert _u16(V.rmsnorm_bf16(np.zeros((1, 4), BF), g, eps=0.0)).tolist() == [[0x7FC0] * 4]


@pytest.mark.parametrize("call, exc, message", [
    (lambda: V.rmsnorm_fp32_in(np.zeros((2, 4), BF), np.ones(4, BF), eps=1e-5), TypeError,
     "x must have dtype float32"),
    (lambda: V.rmsnorm_fp32_in(np.zeros((2, 4), np.float32), np.ones(4, np.float32), eps=1e-5), TypeError,
     "gain must have dtype bfloat16"),
    (lambda: V.rmsnorm_fp32_in(np.zeros((2, 5), np.float32), np.ones(4, BF), eps=1e-5), ValueError,
     "D = 4"),
    (lambda: V.rmsnorm_fp32_in(np.zeros((2, 4), np.float32), np.ones(4, BF), eps=-1.0), ValueError,
     "eps must be finite and >= 0"),
])
def test_rmsnorm_fp32_in_rejects_bad_arguments_naming_them(call, exc, message):
    with pytest.raises(exc, match=message):
        call()


# ---------------------------------------------------------------- RoPE


@pytest.fixture(scope="module")
def rope_tab():
    return V.rope_table(head_dim=64, max_pos=256, base=1e5)


def test_rope_table_fp32_entries_are_cos_and_sin_rounded_once(rope_tab):
    ang = np.arange(256)[:, None] * 1e5 ** (-np.arange(0, 64, 2) / 64)
    for got, want in ((rope_tab.cos_fp32, np.cos(ang)), (rope_tab.sin_fp32, np.sin(ang))):
        assert got.dtype == np.float32 and got.shape == (256, 32)
        np.testing.assert_array_equal(got, want.astype(np.float32))


def _rope_fp32_numpy(x, pos, tab):
    h = x.shape[-1] // 2
    a, b = x[..., :h], x[..., h:]
    c, s = tab.cos_fp32[pos], tab.sin_fp32[pos]
    return np.concatenate([_to_bf16_rne(a * c - b * s), _to_bf16_rne(a * s + b * c)], axis=-1)


def test_rope_fp32_in_is_the_stated_fp32_formula_bit_for_bit(rope_tab):
    rng = _rng(11)
    x = (rng.standard_normal((20, 3, 64)) * 4).astype(np.float32)
    pos = rng.integers(0, 256, 20)[:, None]
    np.testing.assert_array_equal(_u16(V.rope_fp32_in(x, pos, rope_tab)), _u16(_rope_fp32_numpy(x, pos, rope_tab)))


def test_rope_fp32_in_is_within_one_bf16_rounding_of_float64_and_the_bf16_input_op_is_not(rope_tab):
    rng = _rng(12)
    x = (rng.standard_normal((40, 3, 64)) * 4).astype(np.float32)
    pos = rng.integers(0, 256, 40)[:, None]
    xf = x.astype(np.float64)
    ref = V.rope_reference(xf, pos, base=1e5)
    a, b = np.abs(xf[..., :32]), np.abs(xf[..., 32:])
    pair = np.concatenate([a + b, a + b], axis=-1)
    # output rounding (2**-8 relative) + fp32 cos/sin (u), two products (u), the sum (u): < 2**-22·(|a|+|b|)
    tol = 2.0 ** -8 * np.abs(ref) + pair * 2.0 ** -21
    err = np.abs(V.rope_fp32_in(x, pos, rope_tab).astype(np.float64) - ref)
    old = np.abs(V.rope_bf16(x.astype(BF), pos, rope_tab).astype(np.float64) - ref)
    print(f"max error / bound: fp32 input {np.max(err / tol):.3f}, bf16 input {np.max(old / tol):.3f}")
    assert np.all(err <= tol)
    assert np.any(old > tol)  # input rounding and bf16 cos/sin exceed one rounding


def test_rope_fp32_in_at_position_zero_is_one_rounding_of_the_input(rope_tab):
    x = (_rng(13).standard_normal((4, 64)) * 3).astype(np.float32)
    np.testing.assert_array_equal(_u16(V.rope_fp32_in(x, 0, rope_tab)), _u16(_to_bf16_rne(x)))


def test_rope_fp32_in_special_values_and_pairings(rope_tab):
    x = np.ones((6, 64), np.float32)
    x[0, 0] = np.nan                                     # NaN: its pair's two outputs NaN
    x[1, 1] = np.inf                                     # Inf at position 0: a' = Inf, b' = Inf·(+0) = NaN
    x[2, 2] = np.uint32(0x00000005).view(np.float32)     # subnormal: read as +0
    x[3, 2] = 0.0
    y = _u16(V.rope_fp32_in(x, np.array([5, 0, 7, 7, 1, 2]), rope_tab))
    assert y[0, 0] == y[0, 32] == 0x7FC0 and np.all(np.delete(y[0], [0, 32]) != 0x7FC0)
    assert y[1, 1] == 0x7F80 and y[1, 33] == 0x7FC0
    np.testing.assert_array_equal(y[2], y[3])
    perm = np.stack([np.arange(32), np.arange(32) + 32], axis=1).reshape(-1)  # half → interleaved order
    xi = (_rng(14).standard_normal((3, 64)) * 2).astype(np.float32)
    np.testing.assert_array_equal(_u16(V.rope_fp32_in(xi, 9, rope_tab))[:, perm],
                                  _u16(V.rope_fp32_in(xi[:, perm], 9, rope_tab, pairing="interleaved")))


def test_rope_fp32_in_needs_the_fp32_table_entries_and_fp32_input(rope_tab):
    import dataclasses
    no_fp32 = dataclasses.replace(rope_tab, cos_fp32=None, sin_fp32=None)
    with pytest.raises(ValueError, match="needs the table's fp32 entries"):
        V.rope_fp32_in(np.zeros((2, 64), np.float32), 0, no_fp32)
    with pytest.raises(TypeError, match="x must have dtype float32"):
        V.rope_fp32_in(np.zeros((2, 64), BF), 0, rope_tab)
    with pytest.raises(ValueError, match="head_dim = 64"):
        V.rope_fp32_in(np.zeros((2, 32), np.float32), 0, rope_tab)
    with pytest.raises(ValueError, match=r"pos must be in \[0, 255\]"):
        V.rope_fp32_in(np.zeros((2, 64), np.float32), 256, rope_tab)


# ---------------------------------------------------------------- SiLU with an fp32 result, SwiGLU


def _silu_decimal(v):
    """silu(v) of a float, in 60-digit decimal arithmetic."""
    getcontext().prec = 60
    d = Decimal(v)
    if d >= 0:
        return d / (1 + (-d).exp())
    ex = d.exp()
    return d * ex / (1 + ex)


def _rne_fp32(d):
    """A nonzero decimal → the nearest fp32 (ties to even), as a float; FTZ below 2**-126."""
    a = abs(d)
    if a < Decimal(2) ** -126:
        return math.copysign(0.0, d)
    e = math.frexp(float(a))[1] - 1
    while Decimal(2) ** e > a:
        e -= 1
    while Decimal(2) ** (e + 1) <= a:
        e += 1
    q = a / Decimal(2) ** (e - 23)
    n = int(q)
    if q - n > Decimal("0.5") or (q - n == Decimal("0.5") and n % 2):
        n += 1
    return math.copysign(n * 2.0 ** (e - 23), d)


def _all_bf16():
    bits = np.arange(1 << 16, dtype=np.uint16)
    with np.errstate(invalid="ignore"):
        x = bits.view(BF).astype(np.float64)
    return bits, x, ((bits >> 7) & 0xFF).astype(np.int64) - 127, (bits >> 15) == 1


def test_silu_fp32_out_table_entries_are_the_exact_silu_rounded_once_to_fp32():
    bits, x, e, neg = _all_bf16()
    table = np.isfinite(x) & (e >= V.SILU_FP32_EXP_MIN) & np.where(
        neg, e <= V.SILU_FP32_NEG_EXP_MAX, e <= V.SILU_FP32_POS_EXP_MAX)
    assert int(table.sum()) == 3584  # 13·128 positive, 15·128 negative
    y = V.silu_fp32_out(bits[table].view(BF)).astype(np.float64)
    want = np.array([_rne_fp32(_silu_decimal(float(v))) for v in x[table]])
    np.testing.assert_array_equal(y, want)


def test_silu_fp32_out_rules_outside_the_table_and_their_error():
    bits, x, e, neg = _all_bf16()
    fin = np.isfinite(x)
    y = V.silu_fp32_out(bits.view(BF))
    yb = y.view(np.uint32)
    small = fin & (e < V.SILU_FP32_EXP_MIN)
    half = np.where(np.abs(x / 2) < 2.0 ** -126, np.copysign(0.0, x), x / 2)  # DAZ'd input, FTZ'd result
    half = np.where(e == -127, np.copysign(0.0, x), half)
    np.testing.assert_array_equal(y[small].astype(np.float64), half[small])
    assert np.all(np.signbit(y[small]) == neg[small])
    big = fin & ~small & ~neg & (e > V.SILU_FP32_POS_EXP_MAX)
    np.testing.assert_array_equal(y[big].astype(np.float64), x[big])
    assert np.all(x[big] >= 32)
    low = fin & ~small & neg & (e > V.SILU_FP32_NEG_EXP_MAX)
    assert np.all(yb[low] == 0x80000000) and np.all(x[low] <= -128)
    # the rules are correctly rounded too, except x/2 for |x| < 2**-8 (low by x²/4 < 2**-9·|x/2|)
    ref = V.silu_reference(np.where(fin, x, 0.0))
    rel = np.abs(y.astype(np.float64) - ref) / np.maximum(np.abs(ref), 1e-300)
    ok = fin & (np.abs(ref) >= 2.0 ** -126)
    assert np.all(rel[ok & ~small] <= 2.0 ** -24 * (1 + 2.0 ** -20))
    assert np.all(rel[ok & small] <= 2.0 ** -9)


def test_silu_fp32_out_special_values():
    bits = np.array([0x0000, 0x8000, 0x7F80, 0xFF80, 0x7FC0, 0xFFC1, 0x0001, 0x8001, 0x0080], np.uint16)
    out = V.silu_fp32_out(bits.view(BF)).view(np.uint32).tolist()
    # ±0, +Inf, −Inf → −0, NaN, NaN, subnormals read as ±0, 2**-126 / 2 flushed to +0
    assert out == [0, 0x80000000, 0x7F800000, 0x80000000, 0x7FC00000, 0x7FC00000, 0, 0x80000000, 0]
    assert V.silu_fp32_out(np.zeros((2, 3), BF)).dtype == np.float32
    with pytest.raises(TypeError, match="x must have dtype bfloat16"):
        V.silu_fp32_out(np.zeros(3, np.float32))


def test_swiglu_fp32_in_is_the_fp32_silu_of_the_rounded_gate_times_fp32_up_rounded_once():
    rng = _rng(21)
    g = (rng.standard_normal((6, 50)) * 4).astype(np.float32)
    u = (rng.standard_normal((6, 50)) * 2).astype(np.float32)
    silu = V.silu_fp32_out(_to_bf16_rne(g))
    np.testing.assert_array_equal(_u16(V.swiglu_fp32_in(g, u)), _u16(_to_bf16_rne(silu * u)))


def test_swiglu_fp32_in_is_within_its_stated_bound_of_float64_and_tighter_than_the_bf16_op():
    rng = _rng(22)
    g = (rng.standard_normal((64, 96)) * 3).astype(np.float32)
    g[0, :8] = np.float32(2.0 ** -12) * np.arange(1, 9)  # the x/2 rule
    u = (rng.standard_normal((64, 96)) * 2).astype(np.float32)
    gf, uf = g.astype(np.float64), u.astype(np.float64)
    ref = V.silu_reference(gf) * uf
    # output rounding (2**-8) + gate rounding (2**-8·|g|, |silu'| ≤ 1.1) + the x/2 rule (≤ |g|·2**-10)
    # + fp32 table and product (u each), with second-order slack
    tol = (1 + 2.0 ** -6) * (2.0 ** -8 * np.abs(ref) + (1.1 * 2.0 ** -8 + 2.0 ** -10) * np.abs(gf * uf))
    err = np.abs(V.swiglu_fp32_in(g, u).astype(np.float64) - ref)
    old = np.abs(V.swiglu_bf16(g.astype(BF), u.astype(BF)).astype(np.float64) - ref)
    print(f"mean |error|: fp32 inputs {err.mean():.3e}, bf16 inputs {old.mean():.3e}")
    assert np.all(err <= tol)
    assert err.mean() < old.mean()  # no SiLU-table or up rounding to bf16


def test_the_bf16_silu_table_is_biased_where_silu_rounds_to_x_and_the_fp32_table_is_not():
    # for 6 ≤ x < 8 (and similar ranges) silu(x) = x − x·sigmoid(−x) lies within half a bf16 ulp
    # below x, so every bf16 entry rounds up: a systematic error the fp32 entries remove
    x = np.arange(6.0, 8.0, 2.0 ** -5).astype(BF)
    ref = V.silu_reference(x.astype(np.float64))
    e16 = V.silu_bf16(x).astype(np.float64) - ref
    e32 = V.silu_fp32_out(x).astype(np.float64) - ref
    print(f"mean error on [6, 8): bf16 table {e16.mean():.2e}, fp32 table {e32.mean():.2e}")
    assert np.all(e16 > 0) and abs(e32.mean()) < 1e-3 * e16.mean()


def test_swiglu_fp32_in_special_values():
    sub = np.uint32(0x00000042).view(np.float32)
    g = np.array([np.nan, 1.0, np.inf, -np.inf, -np.inf, 0.0, -0.0, 2.0, sub], np.float32)
    u = np.array([1.0, np.nan, 2.0, 3.0, np.inf, np.inf, 5.0, sub, 1.0], np.float32)
    y = _u16(V.swiglu_fp32_in(g, u)).tolist()
    # NaN, NaN, Inf·2, (−0)·3, (−0)·Inf, 0·Inf, (−0)·5, 2·DAZ(sub), silu(DAZ(sub))·1
    assert y == [0x7FC0, 0x7FC0, 0x7F80, 0x8000, 0x7FC0, 0x7FC0, 0x8000, 0x0000, 0x0000]


def test_swiglu_fp32_in_rejects_bad_arguments_naming_them():
    with pytest.raises(TypeError, match="gate must have dtype float32"):
        V.swiglu_fp32_in(np.zeros(3, BF), np.zeros(3, np.float32))
    with pytest.raises(TypeError, match="up must have dtype float32"):
        V.swiglu_fp32_in(np.zeros(3, np.float32), np.zeros(3, np.float64))
    with pytest.raises(ValueError, match="gate and up must have the same shape"):
        V.swiglu_fp32_in(np.zeros(3, np.float32), np.zeros(4, np.float32))


# ---------------------------------------------------------------- the layer option


def _setup(offset, tokens, config=T64):
    rng = _rng(offset)
    w = LayerWeights.random(config, seed=SEED + offset)
    x = rng.standard_normal((tokens, config.d_model)) * 2.0
    x[:, 3] *= 20  # an outlier channel
    return w, x


def _bits(a):
    a = np.asarray(a)
    return a.view(np.uint16 if a.dtype == BF else np.uint32)


@pytest.mark.parametrize("ops", [("rmsnorm",), ("rope",), ("swiglu",), ("rmsnorm", "rope"), FP32_INPUTS])
def test_fp32_inputs_keep_decode_and_chunked_prefill_bit_identical_to_one_prefill(ops):
    w, x = _setup(31, 9)
    kw = dict(mode="bf16", residual="fp32", fp32_inputs=ops)
    full = DecoderLayer(w, **kw)
    y_full = full.prefill(full.to_input(x))
    inc = DecoderLayer(w, **kw)
    y = [inc.prefill(inc.to_input(x[:3])), inc.prefill(inc.to_input(x[3:5]))]
    y += [inc.decode(inc.to_input(x[t]))[None] for t in range(5, len(x))]
    assert y_full.dtype == np.float32
    np.testing.assert_array_equal(_bits(np.concatenate(y)), _bits(y_full))


def test_fp32_inputs_bring_a_synthetic_layer_closer_to_float64_than_the_fp32_residual_alone():
    # (one random layer: the SwiGLU change is below its noise, the whole model measures it)
    w, x = _setup(32, 12)
    ref = DecoderLayer(w).prefill(x)
    err = {}
    for ops in ((), ("rmsnorm", "rope"), FP32_INPUTS):
        layer = DecoderLayer(w, mode="bf16", residual="fp32", fp32_inputs=ops)
        y = layer.prefill(layer.to_input(x)).astype(np.float64)
        err[ops] = np.linalg.norm(y - ref) / np.linalg.norm(ref)
    print("relative error: " + ", ".join(f"{'+'.join(k) or 'fp32 residual'} {v:.3e}" for k, v in err.items()))
    assert err[FP32_INPUTS] < err[()] and err[("rmsnorm", "rope")] < err[()]


def test_fp32_inputs_off_changes_nothing_in_the_default_modes():
    w, x = _setup(33, 8)
    cal = calibrate(w, x * 0.9)
    for mode, kw in (("bf16", {}), ("bf16", dict(residual="fp32")), ("int8", {})):
        c = cal if mode == "int8" else None
        base = DecoderLayer(w, mode=mode, calibration=c, **kw)
        off = DecoderLayer(w, mode=mode, calibration=c, fp32_inputs=(), **kw)
        np.testing.assert_array_equal(_bits(off.prefill(off.to_input(x))), _bits(base.prefill(base.to_input(x))))
    # the int8 mode ignores the bf16 mode's option, as it ignores residual
    base = DecoderLayer(w, mode="int8", calibration=cal)
    other = DecoderLayer(w, mode="int8", calibration=cal, residual="fp32", fp32_inputs=FP32_INPUTS)
    assert other.options == base.options and other.options["fp32_inputs"] == ()
    np.testing.assert_array_equal(_bits(other.prefill(other.to_input(x))), _bits(base.prefill(base.to_input(x))))


def test_fp32_inputs_are_validated_naming_the_problem():
    w, _ = _setup(34, 1)
    with pytest.raises(ValueError, match=r"fp32_inputs=\('rmsnorm',\) needs residual='fp32'"):
        DecoderLayer(w, mode="bf16", fp32_inputs=("rmsnorm",))
    for bad in ("rmsnorm", ("rmsnorm", "gelu"), ("rope", "rope"), 1, None):
        with pytest.raises(ValueError, match="fp32_inputs must be a tuple of distinct names from"):
            DecoderLayer(w, mode="bf16", residual="fp32", fp32_inputs=bad)
    layer = DecoderLayer(w, mode="bf16", residual="fp32", fp32_inputs=["swiglu", "rmsnorm"])
    assert layer.options["fp32_inputs"] == ("rmsnorm", "swiglu")  # canonical order
    with pytest.raises(ValueError, match=r"not residual='fp32', fp32_inputs=\('rmsnorm', 'swiglu'\)"):
        layer.hardware_params()
    assert math.isfinite(float(layer.prefill(layer.to_input(np.ones((1, 256)))).sum()))
