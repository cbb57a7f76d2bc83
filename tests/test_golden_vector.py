"""golden/vector.py: bit-level checks of the integer and bf16 vector operations, and each one
against its float64 reference with the tolerance stated in docs/numerics.md ("Vector operations").

Random data comes from numpy generators with fixed seeds (printed on failure through the test
id); hypothesis runs derandomized, so every failure reproduces by rerunning the test.
"""

import math

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from golden import quantize_multiplier, requantize
from golden import vector as V

SETTINGS = settings(derandomize=True, max_examples=60, deadline=None)
BF = ml_dtypes.bfloat16


def _bf16_values(bits):
    with np.errstate(invalid="ignore"):
        return np.asarray(bits, np.uint16).view(BF).astype(np.float64)


# ---------------------------------------------------------------- isqrt, rsqrt


def test_isqrt_int64_equals_math_isqrt_at_squares_and_their_neighbours():
    rng = np.random.default_rng(11)
    k = np.concatenate([np.arange(0, 70), rng.integers(0, 2 ** 31 - 1, 2000), [2 ** 31 - 1, 3037000499]])
    t = np.concatenate([k * k, np.maximum(k * k - 1, 0), k * k + 1, [2 ** 62 - 1, 2 ** 53 + 1, 2 ** 52 - 1]])
    t = t[t < 2 ** 62]
    got = V.isqrt_int64(t)
    assert got.tolist() == [math.isqrt(int(v)) for v in t]


def test_rsqrt_fp32_is_within_two_ulp_and_handles_special_values():
    rng = np.random.default_rng(12)
    v = np.concatenate([2.0 ** rng.uniform(-125, 127, 3000), [1.0, 2.0, 4.0, 0.25, 3.0]]).astype(np.float32)
    r = V.rsqrt_fp32_bits(v.view(np.uint32)).view(np.float32).astype(np.float64)
    ref = 1.0 / np.sqrt(v.astype(np.float64))
    assert np.all(np.abs(r - ref) <= 2 * 2.0 ** -23 * ref)
    assert V.rsqrt_fp32_bits(np.array([1.0, 4.0], np.float32).view(np.uint32)).view(np.float32).tolist() \
        == [1.0, 0.5]
    specials = np.array([0x00000000, 0x80000000, 0x7F800000, 0xBF800000, 0x7FC00000, 0x00000001], np.uint32)
    assert V.rsqrt_fp32_bits(specials).tolist() == [0x7F800000, 0x7F800000, 0, 0x7FC00000, 0x7FC00000,
                                                    0x7F800000]


# ---------------------------------------------------------------- RMSNorm int8


def _rmsnorm_int_model(row, gain, gain_frac, eps_q):
    """docs/numerics.md's integer RMSNorm, written with Python ints."""
    ss = sum(int(v) * int(v) for v in row)
    r = math.isqrt(ss * 2 ** (2 * V.RMS_FRAC) + eps_q)
    if r == 0:
        return [0] * len(row)
    length = r.bit_length()
    inv = 2 ** (length - 1 + V.RCP_BITS) // r
    k = length - 1 + V.RCP_BITS + gain_frac - V.RMS_FRAC
    out = []
    for x, g in zip(row, gain, strict=True):
        y = (int(x) * int(g) * inv + 2 ** (k - 1)) >> k if 1 <= k <= 62 else 0
        out.append(max(-128, min(127, y)))
    return out


@SETTINGS
@given(st.data())
def test_rmsnorm_int8_equals_a_python_integer_model_of_the_formula(data):
    d = data.draw(st.integers(1, 12))
    dtype = data.draw(st.sampled_from([np.int8, np.int16]))
    info = np.iinfo(dtype)
    x = data.draw(hnp.arrays(dtype, (3, d), elements=st.one_of(
        st.integers(info.min, info.max), st.sampled_from([info.min, info.max, 0, 1, -1]))))
    gain = data.draw(hnp.arrays(np.int32, (d,), elements=st.integers(-(2 ** 31) + 1, 2 ** 31 - 1)))
    frac = data.draw(st.integers(0, 40))
    eps = data.draw(st.one_of(st.just(0), st.integers(0, 2 ** 61 - 1), st.integers(0, 1000)))
    params = V.RMSNormInt8(gain=gain, gain_frac=frac, eps=eps)
    got = V.rmsnorm_int8(x, params)
    for i in range(3):
        assert got[i].tolist() == _rmsnorm_int_model(x[i], gain, frac, eps)


@pytest.mark.parametrize("seed, d, in_dtype, in_scale", [(1, 576, np.int8, 0.05), (2, 64, np.int16, 1e-3),
                                                         (3, 16, np.int8, 2.0)])
def test_rmsnorm_int8_is_within_the_stated_bound_of_the_float_reference(seed, d, in_dtype, in_scale):
    rng = np.random.default_rng(seed)
    info = np.iinfo(in_dtype)
    x = rng.integers(info.min // 2, info.max // 2, (32, d)).astype(in_dtype)
    x[0] = 0
    x[0, 0] = 1  # a nearly empty row: the isqrt error is largest there
    gain = rng.uniform(0.2, 4.0, d) * rng.choice([-1, 1], d)
    eps = 1e-5
    ref = V.rmsnorm_reference(x * in_scale, gain, eps=eps)
    out_scale = float(np.abs(ref).max() / 100)
    p = V.RMSNormInt8.from_float(gain, eps=eps, in_scale=in_scale, out_scale=out_scale)
    y = V.rmsnorm_int8(x, p).astype(np.float64)
    ref_lsb = ref / out_scale
    ss = np.sum(x.astype(np.int64) ** 2, axis=-1)
    t = ss * 2 ** (2 * V.RMS_FRAC) + p.eps
    r = np.sqrt(t.astype(np.float64))
    rel = (1 + 1 / (r - 1)) * (1 + 2.0 ** -(V.RCP_BITS - 1)) * (1 + 2.0 ** -29) * (1 + 1 / t) - 1
    tol = 0.5 + np.abs(ref_lsb) * rel[:, None] + 1e-9
    assert np.all(np.abs(y - ref_lsb) <= tol)
    assert np.max(np.abs(y - ref_lsb)[1:]) <= 0.51  # ordinary rows: rounding plus ~2**-15


def test_rmsnorm_int8_saturates_and_maps_an_all_zero_row_to_zero():
    # gains 2047.99…, −2047.99…, 128.0; third channel: 1·128/√20001 = 0.905 → 1
    p = V.RMSNormInt8(gain=np.array([2 ** 31 - 1, -(2 ** 31) + 1, 2 ** 27], np.int32), gain_frac=20, eps=0)
    x = np.array([[100, 100, 1], [0, 0, 0]], np.int8)
    assert V.rmsnorm_int8(x, p).tolist() == [[127, -128, 1], [0, 0, 0]]


def test_rmsnorm_int8_is_vectorized_over_leading_axes():
    rng = np.random.default_rng(5)
    x = rng.integers(-128, 128, (2, 3, 8)).astype(np.int8)
    p = V.RMSNormInt8.from_float(rng.uniform(0.5, 1.5, 8), eps=1e-5, in_scale=0.1, out_scale=0.02)
    full = V.rmsnorm_int8(x, p)
    for i in range(2):
        for j in range(3):
            assert full[i, j].tolist() == V.rmsnorm_int8(x[i, j], p).tolist()


@pytest.mark.parametrize("call, exc, message", [
    (lambda: V.rmsnorm_int8(np.zeros((2, 4), np.int32), V.RMSNormInt8(np.ones(4, np.int32), 0, 0)),
     TypeError, "x must have dtype int8 or int16"),
    (lambda: V.rmsnorm_int8(np.zeros((2, 5), np.int8), V.RMSNormInt8(np.ones(4, np.int32), 0, 0)),
     ValueError, "last axis must have D = 4"),
    (lambda: V.rmsnorm_int8(np.zeros((2, 4), np.int8), None), TypeError, "params must be an RMSNormInt8"),
    (lambda: V.RMSNormInt8(np.ones(4, np.int64), 0, 0), TypeError, "gain must have dtype int32"),
    (lambda: V.RMSNormInt8(np.ones(4, np.int32), 41, 0), ValueError, r"gain_frac must be in \[0, 40\]"),
    (lambda: V.RMSNormInt8(np.ones(4, np.int32), 0, -1), ValueError, "eps must be in"),
    (lambda: V.RMSNormInt8.from_float(np.ones(4), eps=1e-5, in_scale=0.0, out_scale=1.0), ValueError,
     "in_scale and out_scale must be > 0"),
    (lambda: V.RMSNormInt8.from_float(np.ones(4), eps=-1.0, in_scale=1.0, out_scale=1.0), ValueError,
     "eps must be >= 0"),
    (lambda: V.rmsnorm_bf16(np.zeros((2, 4), np.float32), np.ones(4, BF), eps=1e-5), TypeError,
     "x must have dtype bfloat16"),
    (lambda: V.rmsnorm_bf16(np.zeros((2, 4), BF), np.ones(4, BF), eps=float("nan")), ValueError,
     "eps must be finite"),
])
def test_rmsnorm_rejects_bad_arguments_naming_them(call, exc, message):
    with pytest.raises(exc, match=message):
        call()


# ---------------------------------------------------------------- RMSNorm bf16


def test_rmsnorm_bf16_is_within_two_bf16_roundings_of_the_float_reference():
    rng = np.random.default_rng(21)
    d = 576
    x = (rng.standard_normal((16, d)) * rng.uniform(0.01, 30, (16, 1))).astype(BF)
    gain = rng.uniform(0.05, 5.0, d).astype(BF)
    y = V.rmsnorm_bf16(x, gain, eps=1e-5).astype(np.float64)
    ref = V.rmsnorm_reference(x.astype(np.float64), gain.astype(np.float64), eps=1e-5)
    # two bf16 roundings (2**-8 each), fp32 sum of squares (D·2**-24, halved by the root), rsqrt
    assert np.all(np.abs(y - ref) <= (2.0 ** -7 + 2.0 ** -12) * np.abs(ref))


def test_rmsnorm_bf16_rows_are_independent_and_zero_rows_stay_zero():
    rng = np.random.default_rng(22)
    x = rng.standard_normal((3, 8)).astype(BF)
    x[1] = 0
    g = np.ones(8, BF)
    full = V.rmsnorm_bf16(x, g, eps=1e-5)
    for i in range(3):
        np.testing.assert_array_equal(full[i].view(np.uint16), V.rmsnorm_bf16(x[i], g, eps=1e-5).view(np.uint16))
    assert not np.any(full[1].astype(np.float64))


# ---------------------------------------------------------------- SiLU


@pytest.mark.parametrize("in_scale", [0.001, 0.03, 0.1, 1.0])
def test_silu_table_int8_is_within_half_an_entry_of_float_silu(in_scale):
    table, table_scale = V.silu_table_int8(in_scale)
    q = np.arange(-128, 128)
    ref = V.silu_reference(q * in_scale) / table_scale
    got = table[q & 0xFF].astype(np.float64)
    assert np.all(np.abs(got - ref) <= 0.5 + 1e-9)
    assert int(np.abs(table.astype(np.int32)).max()) == V.SILU_TABLE_MAX
    t2, s2 = V.silu_table_int8(in_scale)
    assert np.array_equal(table, t2) and s2 == table_scale


def test_silu_int8_looks_up_twos_complement_codes():
    table, _ = V.silu_table_int8(0.05)
    x = np.array([-128, -1, 0, 1, 127], np.int8)
    assert V.silu_int8(x, table).tolist() == [table[128], table[255], table[0], table[1], table[127]]
    assert V.silu_int8(x, table).dtype == np.int16


def test_silu_bf16_is_correctly_rounded_for_every_finite_input():
    bits = np.arange(1 << 16, dtype=np.uint16)
    y = _bf16_values(V.silu_bf16(bits.view(BF)).view(np.uint16))
    x = _bf16_values(bits)
    ref = V.silu_reference(np.where(np.isfinite(x), x, 0.0))
    normal = np.isfinite(x) & (np.abs(x) >= 2.0 ** -126) & (np.abs(ref) >= 2.0 ** -126)
    assert np.all(np.abs(y[normal] - ref[normal]) <= 2.0 ** -8 * np.abs(ref[normal]))
    tiny = np.isfinite(x) & ~normal
    assert np.all(y[tiny] == 0)  # DAZ input or FTZ result


def test_silu_bf16_special_values():
    bits = np.array([0x0000, 0x8000, 0x7F80, 0xFF80, 0x7FC0, 0xFFC1, 0x0001, 0x8001], np.uint16)
    out = V.silu_bf16(bits.view(BF)).view(np.uint16).tolist()
    assert out == [0x0000, 0x8000, 0x7F80, 0x8000, 0x7FC0, 0x7FC0, 0x0000, 0x8000]


def test_silu_bf16_needs_a_table_only_for_the_stated_3328_inputs():
    # docs/numerics.md: outside positive exponents [-8, 2] and negative exponents [-8, 6] the
    # result is x (x >= 6), x/2 (|x| < 2**-8, FTZ for |x| < 2**-125), or -0 (x <= -92).
    bits = np.arange(1 << 16, dtype=np.uint16)
    y = V.silu_bf16(bits.view(BF)).view(np.uint16)
    x = _bf16_values(bits)
    e = ((bits >> 7) & 0xFF).astype(np.int64) - 127
    neg = (bits >> 15) == 1
    finite = np.isfinite(x)
    in_rom = finite & (e >= -8) & (np.where(neg, e <= 6, e <= 2))
    assert int(in_rom.sum()) == 3328
    rest = finite & ~in_rom
    expect = np.empty(rest.sum(), np.uint16)
    xr, br, er, nr = x[rest], bits[rest], e[rest], neg[rest]
    small = er < -8
    halved = np.where(er > -126, (br - (1 << 7)), br & 0x8000)  # exponent − 1, or FTZ
    halved = np.where(er == -127, br & 0x8000, halved)  # zero / subnormal input
    expect = np.where(small, halved, np.where(nr, np.uint16(0x8000), br)).astype(np.uint16)
    assert np.all(np.where(nr & ~small, xr <= -92, True))
    assert np.all(np.where(~nr & ~small, xr >= 6, True))
    np.testing.assert_array_equal(y[rest], expect)


# ---------------------------------------------------------------- multiply / SwiGLU


@SETTINGS
@given(hnp.arrays(np.int16, (4, 6)), hnp.arrays(np.int8, (4, 6)),
       hnp.arrays(np.int64, (6,), elements=st.integers(0, 2 ** 31 - 1)), st.integers(1, 62))
def test_mul_int8_is_the_exact_product_requantized(a, b, m, s):
    want = [[max(-128, min(127, (int(a[i, j]) * int(b[i, j]) * int(m[j]) + 2 ** (s - 1)) >> s))
             for j in range(6)] for i in range(4)]
    assert V.mul_int8(a, b, m, s).tolist() == want


def test_swiglu_int8_is_within_the_stated_bound_of_the_float_reference():
    rng = np.random.default_rng(31)
    sg, su = 0.04, 0.02
    gate = rng.integers(-128, 128, (8, 64)).astype(np.int8)
    up = rng.integers(-128, 128, (8, 64)).astype(np.int8)
    ref = V.silu_reference(gate * sg) * (up * su)
    out_scale = float(np.abs(ref).max() / 127)
    table, ts = V.silu_table_int8(sg)
    m, s = quantize_multiplier(ts * su / out_scale)
    y = V.swiglu_int8(gate, up, table, m, s).astype(np.float64)
    # table rounding (½ entry) scaled by |up|, multiplier (2**-31 relative), output rounding (½)
    tol = 0.5 + 0.5 * ts * np.abs(up) * su / out_scale + np.abs(ref / out_scale) * 2.0 ** -30 + 1e-9
    assert np.all(np.abs(y - ref / out_scale) <= tol)


def test_swiglu_bf16_is_silu_times_up_with_one_rounding_each():
    rng = np.random.default_rng(32)
    g = (rng.standard_normal((4, 32)) * 3).astype(BF)
    u = rng.standard_normal((4, 32)).astype(BF)
    y = V.swiglu_bf16(g, u).astype(np.float64)
    ref = V.silu_reference(g.astype(np.float64)) * u.astype(np.float64)
    assert np.all(np.abs(y - ref) <= (2.0 ** -7 + 2.0 ** -16) * np.abs(ref))
    assert np.array_equal(V.mul_bf16(V.silu_bf16(g), u).view(np.uint16), V.swiglu_bf16(g, u).view(np.uint16))


def test_mul_rejects_mismatched_shapes_and_dtypes():
    with pytest.raises(ValueError, match="a and b must have the same shape"):
        V.mul_int8(np.zeros(3, np.int8), np.zeros(4, np.int8), 1, 1)
    with pytest.raises(TypeError, match="b must have dtype int8"):
        V.mul_int8(np.zeros(3, np.int8), np.zeros(3, np.int16), 1, 1)
    with pytest.raises(ValueError, match=r"table must have shape \[256\]"):
        V.silu_int8(np.zeros(3, np.int8), np.zeros(255, np.int16))
    with pytest.raises(ValueError, match="in_scale must be finite and > 0"):
        V.silu_table_int8(0.0)


# ---------------------------------------------------------------- RoPE


@pytest.fixture(scope="module")
def rope_tab():
    return V.rope_table(head_dim=64, max_pos=256, base=1e5)


def test_rope_table_entries_are_rounded_q1_14_and_bf16(rope_tab):
    p = np.arange(256)[:, None]
    ang = p * 1e5 ** (-np.arange(0, 64, 2) / 64)
    assert np.all(np.abs(rope_tab.cos_q / 2 ** 14 - np.cos(ang)) <= 2.0 ** -15 + 1e-12)
    assert np.all(np.abs(rope_tab.sin_q / 2 ** 14 - np.sin(ang)) <= 2.0 ** -15 + 1e-12)
    assert np.all(np.abs(rope_tab.cos_bf16.astype(np.float64) - np.cos(ang)) <= 2.0 ** -8 * np.abs(np.cos(ang)))
    assert rope_tab.cos_q[0].tolist() == [16384] * 32 and rope_tab.sin_q[0].tolist() == [0] * 32


def test_rope_int8_is_within_the_stated_bound_of_the_float_reference(rope_tab):
    rng = np.random.default_rng(41)
    x = rng.integers(-89, 90, (40, 3, 64)).astype(np.int8)  # pair norms ≤ 127: no saturation
    pos = rng.integers(0, 256, 40)[:, None]
    y = V.rope_int8(x, pos, rope_tab).astype(np.float64)
    ref = V.rope_reference(x, pos, base=1e5)
    a, b = np.abs(x[..., :32]).astype(np.float64), np.abs(x[..., 32:]).astype(np.float64)
    pair = np.concatenate([a + b, a + b], axis=-1)
    assert np.all(np.abs(y - ref) <= 0.5 + pair * 2.0 ** -15 + 1e-9)


def test_rope_int8_at_position_zero_is_the_identity_and_large_pairs_saturate(rope_tab):
    x = np.arange(-64, 64, 2, dtype=np.int8).reshape(1, 64)
    assert V.rope_int8(x, 0, rope_tab).tolist() == x.tolist()
    big = np.zeros(64, np.int8)
    big[0], big[32] = 127, 127  # frequency 0 is 1 rad/position: at p = 1 the pair norm 180 > 127
    y = V.rope_int8(big, 1, rope_tab)
    assert int(y[32]) == 127 and int(y[0]) == round(127 * (math.cos(1) - math.sin(1)))


def _gguf_permute(x):
    """llama.cpp's Q/K row permutation per head: HF order → adjacent pairs (GGUF order)."""
    hd = x.shape[-1]
    return x.reshape(x.shape[:-1] + (2, hd // 2)).swapaxes(-1, -2).reshape(x.shape)


def test_rope_half_pairing_on_hf_order_equals_interleaved_pairing_on_gguf_order(rope_tab):
    rng = np.random.default_rng(42)
    xi = rng.integers(-128, 128, (6, 2, 64)).astype(np.int8)
    xb = rng.standard_normal((6, 2, 64)).astype(BF)
    pos = np.arange(6)[:, None] * 37
    half = V.rope_int8(xi, pos, rope_tab, pairing="half")
    inter = V.rope_int8(_gguf_permute(xi), pos, rope_tab, pairing="interleaved")
    np.testing.assert_array_equal(_gguf_permute(half), inter)
    half_b = V.rope_bf16(xb, pos, rope_tab, pairing="half")
    inter_b = V.rope_bf16(_gguf_permute(xb), pos, rope_tab, pairing="interleaved")
    np.testing.assert_array_equal(_gguf_permute(half_b).view(np.uint16), inter_b.view(np.uint16))
    ref = V.rope_reference(_gguf_permute(xb.astype(np.float64)), pos, base=1e5, pairing="interleaved")
    np.testing.assert_allclose(_gguf_permute(V.rope_reference(xb.astype(np.float64), pos, base=1e5)), ref)


def test_rope_bf16_is_within_the_stated_bound_of_the_float_reference(rope_tab):
    rng = np.random.default_rng(43)
    x = (rng.standard_normal((30, 3, 64)) * 4).astype(BF)
    pos = rng.integers(0, 256, 30)[:, None]
    y = V.rope_bf16(x, pos, rope_tab).astype(np.float64)
    xf = x.astype(np.float64)
    ref = V.rope_reference(xf, pos, base=1e5)
    a, b = np.abs(xf[..., :32]), np.abs(xf[..., 32:])
    pair = np.concatenate([a + b, a + b], axis=-1)
    # bf16 cos/sin (2**-9 relative each), fp32 add (2**-24), output rounding (2**-8 relative)
    assert np.all(np.abs(y - ref) <= pair * 2.0 ** -9 * (1 + 2.0 ** -7) + 2.0 ** -8 * (np.abs(ref) + pair * 2.0 ** -8))


@pytest.mark.parametrize("call, exc, message", [
    (lambda t: V.rope_int8(np.zeros((2, 64), np.int8), 256, t), ValueError, r"pos must be in \[0, 255\]"),
    (lambda t: V.rope_int8(np.zeros((2, 32), np.int8), 0, t), ValueError, "head_dim = 64"),
    (lambda t: V.rope_int8(np.zeros((2, 64), np.int16), 0, t), TypeError, "x must have dtype int8"),
    (lambda t: V.rope_int8(np.zeros((2, 64), np.int8), np.zeros(3, np.int64), t), ValueError, "does not broadcast"),
    (lambda t: V.rope_int8(np.zeros((2, 64), np.int8), 0, t, pairing="neox"), ValueError, "pairing must be"),
    (lambda t: V.rope_bf16(np.zeros((2, 64), BF), 0, None), TypeError, "table must be a RopeTable"),
    (lambda t: V.rope_table(head_dim=63, max_pos=4, base=1e4), ValueError, "head_dim must be even"),
    (lambda t: V.rope_table(head_dim=64, max_pos=0, base=1e4), ValueError, r"max_pos must be in"),
    (lambda t: V.rope_table(head_dim=64, max_pos=4, base=1.0), ValueError, "base must be finite and > 1"),
])
def test_rope_rejects_bad_arguments_naming_them(rope_tab, call, exc, message):
    with pytest.raises(exc, match=message):
        call(rope_tab)


# ---------------------------------------------------------------- residual add


def test_residual_add_int_saturates_to_the_output_type():
    a = np.array([100, -100, 127, -128, 5], np.int8)
    b = np.array([100, -100, 127, -128, -7], np.int8)
    assert V.residual_add_int(a, b).tolist() == [127, -128, 127, -128, -2]
    assert V.residual_add_int(a, b, out_dtype=np.int16).tolist() == [200, -200, 254, -256, -2]
    w = np.array([30000, -30000], np.int16)
    assert V.residual_add_int(w, w, out_dtype=np.int16).tolist() == [32767, -32768]


@SETTINGS
@given(hnp.arrays(np.int16, 8), hnp.arrays(np.int8, 8), st.integers(0, 2 ** 31 - 1), st.integers(0, 2 ** 31 - 1),
       st.integers(0, 62))
def test_residual_add_int_equals_the_python_integer_formula(a, b, ma, mb, s):
    got = V.residual_add_int(a, b, a_multiplier=ma, b_multiplier=mb, shift=s)
    rnd = 2 ** (s - 1) if s else 0
    want = [max(-128, min(127, (int(x) * ma + int(y) * mb + rnd) >> s)) for x, y in zip(a, b, strict=True)]
    assert got.tolist() == want


def test_residual_add_int_with_rescaling_is_within_one_lsb_of_the_float_sum():
    rng = np.random.default_rng(51)
    a = rng.integers(-128, 128, 1000).astype(np.int8)
    b = rng.integers(-128, 128, 1000).astype(np.int8)
    sa, sb, so = 0.05, 0.013, 0.09
    ma, mb, s = V.residual_add_params(sa, sb, so)
    y = V.residual_add_int(a, b, a_multiplier=ma, b_multiplier=mb, shift=s).astype(np.float64)
    ref = (a * sa + b * sb) / so
    # one rounding (½) plus the multipliers' error (2**-31 relative to each ratio, ×|a|, |b| ≤ 128)
    assert np.all(np.abs(y - np.clip(ref, -128, 127)) <= 0.5 + 2 * 128 * 2.0 ** -30)


def test_residual_add_bf16_is_the_sum_rounded_once_to_bf16():
    rng = np.random.default_rng(52)
    a = (rng.standard_normal(4000) * 2.0 ** rng.integers(-20, 20, 4000)).astype(BF)
    b = (rng.standard_normal(4000) * 2.0 ** rng.integers(-20, 20, 4000)).astype(BF)
    b[:100] = -a[:100]
    got = V.residual_add_bf16(a, b)
    exact = a.astype(np.float64) + b.astype(np.float64)
    ref = exact.astype(BF)  # one RNE rounding of the exact sum (no subnormals in this range)
    np.testing.assert_array_equal(got.view(np.uint16), ref.view(np.uint16))
    assert np.all(got.view(np.uint16)[:100] == 0)  # x + (−x) = +0


def test_residual_add_rejects_bad_arguments_naming_them():
    with pytest.raises(ValueError, match="a and b must have the same shape"):
        V.residual_add_int(np.zeros(2, np.int8), np.zeros(3, np.int8))
    with pytest.raises(TypeError, match="out_dtype must be int8 or int16"):
        V.residual_add_int(np.zeros(2, np.int8), np.zeros(2, np.int8), out_dtype=np.int32)
    with pytest.raises(ValueError, match=r"shift must be in \[0, 62\]"):
        V.residual_add_int(np.zeros(2, np.int8), np.zeros(2, np.int8), shift=63)
    with pytest.raises(TypeError, match="b must have dtype int8 or int16"):
        V.residual_add_int(np.zeros(2, np.int8), np.zeros(2, np.int32))
    with pytest.raises(TypeError, match="a must have dtype bfloat16"):
        V.residual_add_bf16(np.zeros(2, np.float32), np.zeros(2, BF))


def test_requantize_of_rope_default_scale_is_the_identity_scale():
    # the rope_int8 defaults (2**30, 44) are exactly the scale 2**-14 of the Q1.14 tables
    acc = np.array([16384 * 100, -16384 * 3, 8192, -8192], np.int32)
    assert requantize(acc, 1 << 30, 30 + V.ROPE_FRAC).tolist() == [100, -3, 1, 0]


# ---------------------------------------------------------------- Hadamard transform


def test_hadamard_matrix_is_sylvester_and_its_own_inverse_up_to_n():
    for n in (1, 2, 8, 64):
        h = V.hadamard_matrix(n)
        i, j = np.indices((n, n))
        popcount = np.vectorize(lambda v: bin(int(v)).count("1"))(i & j)
        assert np.array_equal(h, (-1.0) ** popcount)
        assert np.array_equal(h @ h, n * np.eye(n))
    for bad in (0, 3, 8192, 2.0, True):
        with pytest.raises(ValueError, match="n must be a power of two"):
            V.hadamard_matrix(bad)


def test_hadamard_fp32_is_exact_on_small_integers_and_follows_the_sylvester_order():
    rng = np.random.default_rng(60)
    x = rng.integers(-2 ** 16, 2 ** 16, (7, 3 * 64)).astype(np.float32)  # partial sums < 2**24
    np.testing.assert_array_equal(V.hadamard_fp32(x), V.hadamard_reference(x))
    e1 = np.zeros((1, 64), np.float32)
    e1[0, 1] = 1
    assert V.hadamard_fp32(e1)[0].tolist() == [1.0, -1.0] * 32
    # twice is 64 times the input (H·H = 64·I), exactly here
    np.testing.assert_array_equal(V.hadamard_fp32(V.hadamard_fp32(x[:, :64] / 64)), x[:, :64])


@pytest.mark.parametrize("dtype", [np.float32, BF])
def test_hadamard_fp32_is_within_its_rounding_bound_of_float64(dtype):
    # each of the log2(block) butterfly stages rounds once (2**-24 of a partial sum, which is at
    # most the block's sum of magnitudes): |y − ref| ≤ log2(block)·2**-24·Σ|x| per block
    rng = np.random.default_rng(61)
    scale = np.exp(rng.uniform(-10, 10, (50, 4, 1))).repeat(64, -1).reshape(50, 4 * 64)
    x = (rng.standard_normal((50, 4 * 64)) * scale).astype(dtype)
    x[0, :64] = 0
    for block in (2, 16, 64):
        got = V.hadamard_fp32(x, block=block).astype(np.float64)
        assert got.dtype == np.float64 and V.hadamard_fp32(x, block=block).dtype == np.float32
        xf = x.astype(np.float64)
        ref = V.hadamard_reference(xf, block=block)
        mag = np.abs(xf).reshape(50, -1, block).sum(-1).repeat(block, -1)
        assert np.all(np.abs(got - ref) <= math.log2(block) * 2.0 ** -24 * mag)
    assert np.all(V.hadamard_fp32(x)[0, :64].view(np.uint32) == 0)  # +0 from an all-zero block


def test_hadamard_fp32_rejects_bad_arguments_naming_them():
    with pytest.raises(ValueError, match="multiple of block = 64"):
        V.hadamard_fp32(np.zeros((2, 96), np.float32))
    with pytest.raises(TypeError, match="x must have dtype bfloat16 or float32"):
        V.hadamard_fp32(np.zeros((2, 64)))
    with pytest.raises(ValueError, match="n must be a power of two"):
        V.hadamard_fp32(np.zeros((2, 64), np.float32), block=48)
