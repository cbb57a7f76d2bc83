"""The softmax golden model (golden/softmax.py) against docs/numerics.md, an independent scalar
Python-integer model, and a float64 reference."""

import math
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest

import golden
from golden import softmax as sm

SEED = 20261126


def _rng(request):
    seed = SEED + sum(map(ord, request.node.name))
    print(f"seed {seed}")
    return np.random.default_rng(seed)


def _attention_scores(rng, rows, length, spread=3.0):
    """Realistic int8 Q·Kᵀ rows: int8 q, k of dimension 64 and a real scale giving logits of
    standard deviation about ``spread``."""
    q = rng.integers(-127, 128, (rows, 64))
    k = rng.integers(-127, 128, (length, 64))
    s = (q @ k.T).astype(np.int32)
    real = spread / max(float(np.std(s)), 1.0)
    return s, real


# --------------------------------------------------------------------------------------------
# an independent scalar model, written from docs/numerics.md with Python integers

def _scalar_row(x, visible):
    """x: Python ints; returns (V, k) lists per docs/numerics.md, steps 2..5."""
    F, EB, SG, RB, RI = sm.FRAC_BITS, sm.EXP_BITS, sm.SUM_GUARD, sm.RCP_BITS, sm.RCP_IN_BITS
    vis = [xi for xi, v in zip(x, visible, strict=True) if v]
    if not vis:
        return [0] * len(x), [0] * len(x)
    R = -((-max(vis)) // (1 << F)) * (1 << F)  # ceil to a whole log2 unit
    parts = []
    S = 0
    for xi, v in zip(x, visible, strict=True):
        if not v:
            parts.append(None)
            continue
        d = R - xi
        n, f = min(d >> F, sm.N_MAX), d & ((1 << F) - 1)
        t = int(math.floor(2.0 ** (EB - f / (1 << F)) + 0.5))
        S += (t << SG) >> n
        parts.append((t, n))
    z = S.bit_length() - 1
    rcp = (1 << (RI - 1 + RB)) // (S >> (z + 1 - RI))
    V, K = [], []
    for p in parts:
        if p is None:
            V.append(0)
            K.append(0)
        else:
            V.append(p[0] * rcp)
            K.append(p[1] + RB + z - SG)
    return V, K


def _scalar_int8(scores, m, sh, visible):
    x = []
    for s in scores:
        v = int(s) * m + ((1 << (sh - 1)) if sh else 0)
        x.append(max(-(1 << 23), min((1 << 23) - 1, v >> sh)))
    V, K = _scalar_row(x, visible)
    return [min(255, (255 * v + (1 << (k - 1))) >> k) if v else 0 for v, k in zip(V, K, strict=True)]


def _scalar_bf16(scores32, c32, visible):
    x = []
    for s in scores32:
        exact = Fraction(float(s)) * Fraction(float(c32)) * (1 << sm.FRAC_BITS)
        v = math.floor(exact + Fraction(1, 2))
        x.append(max(-(1 << 23), min((1 << 23) - 1, v)))
    V, K = _scalar_row(x, visible)
    out = []
    for v, k in zip(V, K, strict=True):
        if v == 0:
            out.append(0)
            continue
        val = Fraction(v, 1 << k) if k >= 0 else Fraction(v * (1 << -k))
        e = math.floor(math.log2(val))
        while Fraction(2) ** e > val:
            e -= 1
        while Fraction(2) ** (e + 1) <= val:
            e += 1
        mant = val / Fraction(2) ** e * 128  # in [128, 256)
        r = math.floor(mant)
        rem = mant - r
        if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and r % 2 == 1):
            r += 1
        if r == 256:
            r, e = 128, e + 1
        out.append(0 if e < -126 else ((e + 127) << 7) | (r & 0x7F))
    return out


@pytest.mark.parametrize("length", [1, 2, 3, 17, 100])
def test_int8_matches_independent_scalar_model(request, length):
    rng = _rng(request)
    s, real = _attention_scores(rng, 6, length)
    m, sh = golden.softmax_scale_int8(real)
    valid = rng.integers(0, length + 1, 6)
    causal = rng.integers(0, length + 2, 6)
    got = golden.softmax_int8(s, (m, sh), valid, causal)
    vis = sm.softmax_visible(6, length, valid, causal)
    for r in range(6):
        assert list(got[r]) == _scalar_int8(s[r], m, sh, vis[r]), f"row {r}"


@pytest.mark.parametrize("length", [1, 5, 64])
def test_bf16_matches_independent_scalar_model(request, length):
    rng = _rng(request)
    s = (rng.normal(0, 30, (5, length)) * rng.uniform(0.01, 10, (5, 1))).astype(np.float32)
    c = golden.softmax_scale_bf16(0.125)
    valid = rng.integers(1, length + 1, 5)
    got = golden.softmax_bf16(s, c, valid)
    vis = sm.softmax_visible(5, length, valid, None)
    bits = got.view(np.uint16)
    for r in range(5):
        assert list(bits[r]) == _scalar_bf16(s[r], c, vis[r]), f"row {r}"


# --------------------------------------------------------------------------------------------
# accuracy against float64

@pytest.mark.parametrize("length", [1, 7, 64, 300, 4096])
@pytest.mark.parametrize("spread", [0.5, 3.0, 12.0])
def test_int8_error_against_float_softmax_is_below_one_step(request, length, spread):
    """Contract target: max |p - p_float| ≤ 2/256. Measured: ≈ 0.52/256 (rounding to 1/255
    dominates), so the test asserts 1/256."""
    rng = _rng(request)
    s, real = _attention_scores(rng, 8 if length < 4096 else 2, length, spread)
    causal = rng.integers(0, length, s.shape[0])
    q = golden.softmax_int8(s, golden.softmax_scale_int8(real), None, causal)
    ref = golden.softmax_reference(s, real, None, causal)
    assert np.abs(q.astype(np.float64) / 255 - ref).max() <= 1 / 256


@pytest.mark.parametrize("length", [1, 7, 64, 1000])
def test_bf16_relative_error_is_about_one_rounding(request, length):
    """bf16 rounding alone allows 2**-8 relative; the exp table (2**10 steps per octave) and
    the 16-bit reciprocal add ≈ 10 % of that (docs/numerics.md, measured widths)."""
    rng = _rng(request)
    s = (rng.normal(0, 1, (8, length)) * rng.uniform(0.5, 40, (8, 1))).astype(np.float32)
    real = 0.7
    p = golden.softmax_bf16(s, golden.softmax_scale_bf16(real)).astype(np.float64)
    ref = golden.softmax_reference(s.astype(np.float64), real)
    ok = ref > 2.0 ** -100
    assert (np.abs(p - ref)[ok] / ref[ok]).max() <= 1.2 * 2.0 ** -8
    assert np.all(p[~ok] <= 2.0 ** -99)


# --------------------------------------------------------------------------------------------
# properties

def test_int8_outputs_are_bounded_and_rows_sum_to_about_one(request):
    rng = _rng(request)
    s, real = _attention_scores(rng, 32, 200)
    q = golden.softmax_int8(s, golden.softmax_scale_int8(real)).astype(np.int64)
    assert q.dtype == np.int64 and q.min() >= 0 and q.max() <= 255
    assert np.all(np.abs(q.sum(axis=1) - 255) <= 200 // 2 + 1)


@pytest.mark.parametrize("path", ["int8", "bf16"])
def test_probability_is_monotonic_in_the_score(request, path):
    rng = _rng(request)
    s, real = _attention_scores(rng, 16, 90)
    if path == "int8":
        p = golden.softmax_int8(s, golden.softmax_scale_int8(real)).astype(np.float64)
    else:
        p = golden.softmax_bf16(s.astype(np.float32), golden.softmax_scale_bf16(real)).astype(np.float64)
    order = np.argsort(s, axis=1, kind="stable")
    ps = np.take_along_axis(p, order, axis=1)
    assert np.all(np.diff(ps, axis=1) >= 0)


def test_a_row_of_length_one_is_exactly_one():
    s = np.array([[-(1 << 31)], [0], [(1 << 31) - 1]], dtype=np.int32)
    assert golden.softmax_int8(s, (40000, 20)).tolist() == [[255]] * 3
    f = np.array([[-3e38], [0.0], [1e-40], [np.inf]], dtype=np.float32)
    assert golden.softmax_bf16(f, golden.softmax_scale_bf16(1.0)).astype(np.float32).tolist() == [[1.0]] * 4


def test_fully_masked_rows_are_all_zero_never_nan():
    s = np.arange(12, dtype=np.int32).reshape(2, 6)
    assert not golden.softmax_int8(s, (1 << 15, 10), valid_len=0).any()
    f = np.full((2, 6), np.nan, dtype=np.float32)
    out = golden.softmax_bf16(f, golden.softmax_scale_bf16(1.0), valid_len=[0, 0])
    assert out.view(np.uint16).tolist() == [[0] * 6] * 2


def test_masked_scores_are_never_read(request):
    rng = _rng(request)
    s, real = _attention_scores(rng, 10, 40)
    valid, causal = rng.integers(0, 41, 10), rng.integers(0, 40, 10)
    vis = sm.softmax_visible(10, 40, valid, causal)
    junk = np.where(vis, s, rng.integers(-(1 << 31), 1 << 31, s.shape)).astype(np.int32)
    sq = golden.softmax_scale_int8(real)
    a = golden.softmax_int8(s, sq, valid, causal)
    assert np.array_equal(a, golden.softmax_int8(junk, sq, valid, causal))
    assert not a[~vis].any()
    f = s.astype(np.float32)
    fj = np.where(vis, f, np.float32(np.nan))
    c = golden.softmax_scale_bf16(real)
    b = golden.softmax_bf16(f, c, valid, causal).view(np.uint16)
    assert np.array_equal(b, golden.softmax_bf16(fj, c, valid, causal).view(np.uint16))


def test_padding_equals_a_shorter_row(request):
    rng = _rng(request)
    s, real = _attention_scores(rng, 1, 50)
    sq = golden.softmax_scale_int8(real)
    short = golden.softmax_int8(s[:, :23], sq)
    padded = golden.softmax_int8(s, sq, valid_len=23)
    assert np.array_equal(padded[:, :23], short) and not padded[:, 23:].any()
    causal = golden.softmax_int8(s, sq, causal_pos=22)
    assert np.array_equal(causal, padded)


def test_causal_rows_see_keys_up_to_their_position(request):
    rng = _rng(request)
    s, real = _attention_scores(rng, 20, 20)
    q = golden.softmax_int8(s, golden.softmax_scale_int8(real), causal_pos=np.arange(20))
    assert not np.triu(q, 1).any()
    assert q[0, 0] == 255


def test_all_equal_rows_give_equal_probabilities():
    for length in (1, 3, 255, 256, 1000):
        s = np.full((1, length), 12345, dtype=np.int32)
        q = golden.softmax_int8(s, (50000, 30))
        assert len(set(q[0].tolist())) == 1 and abs(int(q[0, 0]) - 255 / length) <= 0.5
        b = golden.softmax_bf16(np.full((1, length), -7.5, np.float32), golden.softmax_scale_bf16(1.0))
        assert len(set(b.view(np.uint16)[0].tolist())) == 1
        assert abs(float(b[0, 0]) * length - 1) <= 2.0 ** -7


def test_huge_spread_puts_all_mass_on_the_maximum():
    s = np.array([[-(1 << 31), (1 << 31) - 1, 0, 5, (1 << 31) - 2]], dtype=np.int32)
    q = golden.softmax_int8(s, (65535, 0))  # saturates x at ±8192 log2 units
    assert q.tolist() == [[0, 127, 0, 0, 127]]  # saturated: a tie, 127.5 → 127
    s[0, 4] = (1 << 31) - 10**4
    q = golden.softmax_int8(s, golden.softmax_scale_int8(2e-6))  # logits from -4300 to 4300
    assert q[0, [0, 2, 3]].tolist() == [0, 0, 0] and q[0, 1] > q[0, 4] >= 126
    f = np.array([[-3e38, 3e38, 0.0, np.inf, -np.inf]], dtype=np.float32)
    b = golden.softmax_bf16(f, golden.softmax_scale_bf16(1.0)).astype(np.float32)
    assert b.tolist() == [[0.0, 0.5, 0.0, 0.5, 0.0]]


def test_bf16_nan_in_a_visible_position_makes_the_row_nan():
    f = np.array([[1.0, np.nan, 2.0, 3.0], [0.0, np.inf, 1.0, 1.0]], dtype=np.float32)
    out = golden.softmax_bf16_bits(f.view(np.uint32), np.uint32(0), valid_len=[4, 2])
    # row 0: a NaN score; row 1: Inf × scale 0 = NaN; masked positions stay 0
    assert out.tolist() == [[0x7FC0] * 4, [0x7FC0, 0x7FC0, 0, 0]]


def test_bf16_score_times_scale_is_rounded_once_from_the_exact_product(request):
    rng = _rng(request)
    bits = rng.integers(0, 1 << 32, 2000, dtype=np.uint64).astype(np.uint32)
    bits = np.concatenate([bits, np.array([0x00000001, 0x80400000, 0x7F7FFFFF, 0x3F800000,
                                           0xBF800000, 0x34000000, 0x33800000], np.uint32)])
    c = np.uint32(0x3FB8AA3B)  # log2(e)
    x, nan = sm.softmax_x_bf16(bits[None, :], np.array([c]))
    for b, xv, nv in zip(bits.tolist(), x[0].tolist(), nan[0].tolist(), strict=True):
        v = np.array([b], np.uint32).view(np.float32)[0]
        if np.isnan(v):
            assert nv
            continue
        assert not nv
        if (b >> 23) & 0xFF == 0:
            v = np.float32(0.0)
        if np.isinf(v):
            want = (1 << 23) - 1 if v > 0 else -(1 << 23)
        else:
            exact = Fraction(float(v)) * Fraction(float(np.array([c]).view(np.float32)[0])) * 1024
            want = max(-(1 << 23), min((1 << 23) - 1, math.floor(exact + Fraction(1, 2))))
        assert xv == want, hex(b)


def test_scale_constants_round_trip():
    for real in (2.0 ** -40, 1e-6, 0.0123, 1.0, 32.0):
        m, sh = golden.softmax_scale_int8(real)
        assert 1 << 15 <= m < 1 << 16 and 0 <= sh <= 63
        assert abs(m / 2.0 ** sh / 1024 / math.log2(math.e) / real - 1) <= 2.0 ** -15
    assert float(golden.softmax_scale_bf16(1.0)) == np.float32(math.log2(math.e))


@pytest.mark.parametrize("call, exc, message", [
    (lambda: golden.softmax_int8(np.zeros(3, np.float32), (1, 0)), TypeError, "scores must be an int32"),
    (lambda: golden.softmax_int8(np.zeros((2, 0), np.int32), (1, 0)), ValueError, "length ≥ 1"),
    (lambda: golden.softmax_int8(np.zeros((2, 2, 2), np.int32), (1, 0)), ValueError, "1-D .* or 2-D"),
    (lambda: golden.softmax_int8(np.array([1 << 40]), (1, 0)), ValueError, "fit in int32"),
    (lambda: golden.softmax_int8(np.zeros(3, np.int32), 5), TypeError, "scale_q must be a pair"),
    (lambda: golden.softmax_int8(np.zeros(3, np.int32), (1 << 16, 0)), ValueError, "multiplier m must be in"),
    (lambda: golden.softmax_int8(np.zeros(3, np.int32), (1, 64)), ValueError, "shift sh must be in 0..63"),
    (lambda: golden.softmax_int8(np.zeros(3, np.int32), (1, 0), valid_len=4), ValueError, "valid_len must be in 0..3"),
    (lambda: golden.softmax_int8(np.zeros(3, np.int32), (1, 0), causal_pos=-1), ValueError, "causal_pos must be"),
    (lambda: golden.softmax_int8(np.zeros((2, 3), np.int32), (1, 0), valid_len=[1, 2, 3]), ValueError,
     "one value per row"),
    (lambda: golden.softmax_int8(np.zeros(3, np.int32), (1, 0), valid_len=1.5), TypeError,
     "valid_len must be an integer"),
    (lambda: golden.softmax_bf16(np.zeros(3, np.float64), np.float32(1)), TypeError, "scores must be a float32"),
    (lambda: golden.softmax_bf16(np.zeros(3, np.float32), 1), TypeError, "scale_q must be float32"),
    (lambda: golden.softmax_scale_int8(0.0), ValueError, "real_scale must be in"),
    (lambda: golden.softmax_scale_int8("1"), TypeError, "real_scale must be a real number"),
    (lambda: golden.softmax_scale_bf16(-1.0), ValueError, "finite and > 0"),
    (lambda: golden.softmax_scale_bf16(float("nan")), ValueError, "finite and > 0"),
])
def test_bad_input_raises_naming_the_problem(call, exc, message):
    with pytest.raises(exc, match=message):
        call()


def test_bf16_api_returns_bfloat16_and_keeps_1d_shape():
    out = golden.softmax_bf16(np.array([0.0, 1.0], np.float32), golden.softmax_scale_bf16(1.0))
    assert out.dtype == ml_dtypes.bfloat16 and out.shape == (2,)
    q = golden.softmax_int8(np.array([3, 3], np.int32), (1 << 15, 10))
    assert q.shape == (2,) and q[0] == q[1] and q[0] in (127, 128)
