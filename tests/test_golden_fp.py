"""golden/fp.py's bit functions against independent references: exact rational arithmetic
(fractions) rounded by a separate round-to-nearest-even encoder, and ml_dtypes' own casts.
Hypothesis runs derandomized, so a failure reproduces by rerunning the test."""

import math
from fractions import Fraction

import ml_dtypes
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from golden import bf16_daz, bf16_mul, fp32_add, fp32_daz, fp32_to_bf16
from golden.vector import fp32_mul

SETTINGS = settings(derandomize=True, max_examples=300, deadline=None)
QNAN32, QNAN16 = 0x7FC00000, 0x7FC0


def _decode32(bits):
    """fp32 bits → ('nan'|'inf'|Fraction, sign), with DAZ."""
    sign = bits >> 31
    e, f = (bits >> 23) & 0xFF, bits & 0x7FFFFF
    if e == 0xFF:
        return ("nan" if f else "inf"), sign
    if e == 0:
        return Fraction(0), sign  # zero or DAZ'd subnormal
    return Fraction((1 << 23) | f) * Fraction(2) ** (e - 150) * (-1 if sign else 1), sign


def _encode32(q, zero_sign):
    """Exact rational → fp32 bits: RNE to 24 bits, overflow → Inf, |x| < 2**-126 → signed zero."""
    if q == 0:
        return zero_sign << 31
    sign = 1 if q < 0 else 0
    q = abs(q)
    e = q.numerator.bit_length() - q.denominator.bit_length()
    if Fraction(2) ** e > q:
        e -= 1
    if e < -126:
        return sign << 31  # FTZ on the exact value
    scaled = q / Fraction(2) ** (e - 23)  # in [2**23, 2**24)
    n = math.floor(scaled)
    rem = scaled - n
    if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and n % 2 == 1):
        n += 1
    if n == 1 << 24:
        n, e = n >> 1, e + 1
    if e > 127:
        return (sign << 31) | 0x7F800000
    return (sign << 31) | ((e + 127) << 23) | (n - (1 << 23))


def _ref_add(x, y):
    (vx, sx), (vy, sy) = _decode32(x), _decode32(y)
    if "nan" in (vx, vy) or (vx == "inf" and vy == "inf" and sx != sy):
        return QNAN32
    if vx == "inf":
        return (sx << 31) | 0x7F800000
    if vy == "inf":
        return (sy << 31) | 0x7F800000
    return _encode32(vx + vy, 1 if (sx and sy) else 0)  # exact zero: −0 only for (−0) + (−0)


def _ref_bf16_mul(x, y):
    (vx, sx), (vy, sy) = _decode32(x << 16), _decode32(y << 16)
    s = sx ^ sy
    if "nan" in (vx, vy) or ("inf" in (vx, vy) and 0 in (vx, vy)):
        return QNAN32
    if "inf" in (vx, vy):
        return (s << 31) | 0x7F800000
    return _encode32(vx * vy, s)


_F32_SPECIALS = [0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00001, 0x7F800001,
                 0x00000001, 0x807FFFFF, 0x00800000, 0x80800000, 0x7F7FFFFF, 0xFF7FFFFF, 0x3F800000,
                 0xBF800000, 0x4B800000, 0x33800000, 0x00800001]
_f32 = st.one_of(st.sampled_from(_F32_SPECIALS), st.integers(0, 2 ** 32 - 1),
                 st.builds(lambda s, e, f: (s << 31) | (e << 23) | f, st.integers(0, 1), st.integers(100, 155),
                           st.integers(0, 2 ** 23 - 1)),
                 st.builds(lambda s, e, f: (s << 31) | (e << 23) | f, st.integers(0, 1), st.integers(1, 3),
                           st.integers(0, 2 ** 23 - 1)))


@SETTINGS
@given(_f32, _f32)
def test_fp32_add_equals_exact_sum_rounded_to_nearest_even_with_daz_ftz(x, y):
    got = int(fp32_add(np.uint32(x), np.uint32(y)))
    assert got == _ref_add(x, y), f"{x:#010x} + {y:#010x}: {got:#010x}"


def test_fp32_add_cancellation_ties_and_tiny_differences():
    one, min_normal = 0x3F800000, 0x00800000
    cases = [
        (one, 0xBF800000, 0x00000000),            # 1 − 1 = +0
        (0x80000000, 0x80000000, 0x80000000),     # (−0) + (−0) = −0
        (0x4B800000, one, 0x4B800000),            # 2**24 + 1: tie → even (2**24)
        (0x4B800001, one, 0x4B800002),            # (2**24 + 2) + 1: tie → even (2**24 + 4)
        (0x00800001, 0x80800000, 0x00000000),     # 2**-126(1 + 2**-23) − 2**-126 = 2**-149 → FTZ +0
        (0x80800001, min_normal, 0x80000000),     # same, negative → −0
        (0x00000001, 0x80000000, 0x00000000),     # DAZ: the subnormal reads as +0; (+0) + (−0) = +0
        (0x80000001, 0x80000000, 0x80000000),     # DAZ keeps the sign: (−0) + (−0) = −0
    ]
    for x, y, want in cases:
        assert int(fp32_add(np.uint32(x), np.uint32(y))) == want == _ref_add(x, y)


@SETTINGS
@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
def test_bf16_mul_equals_exact_product_with_daz_ftz_and_overflow(x, y):
    got = int(bf16_mul(np.uint16(x), np.uint16(y)))
    assert got == _ref_bf16_mul(x, y), f"{x:#06x} * {y:#06x}: {got:#010x}"


def test_bf16_mul_extremes():
    assert int(bf16_mul(np.uint16(0x7F7F), np.uint16(0x7F7F))) == 0x7F800000   # overflow → +Inf
    assert int(bf16_mul(np.uint16(0x7F7F), np.uint16(0xFF7F))) == 0xFF800000   # → −Inf
    assert int(bf16_mul(np.uint16(0x0080), np.uint16(0x3F00))) == 0x00000000   # 2**-127 → FTZ
    assert int(bf16_mul(np.uint16(0x8080), np.uint16(0x3F00))) == 0x80000000   # → −0
    assert int(bf16_mul(np.uint16(0x0080), np.uint16(0x3F80))) == 0x00800000   # min normal stays
    assert int(bf16_mul(np.uint16(0x0000), np.uint16(0xFF80))) == QNAN32       # 0 × −Inf
    assert int(bf16_mul(np.uint16(0x0001), np.uint16(0x7F80))) == QNAN32       # subnormal is 0


@SETTINGS
@given(hnp.arrays(np.uint32, 64, elements=_f32))
def test_fp32_to_bf16_equals_ml_dtypes_cast_after_daz_with_canonical_nan(bits):
    got = fp32_to_bf16(bits)
    flushed = np.where((bits & 0x7F800000) == 0, bits & 0x80000000, bits).astype(np.uint32)
    with np.errstate(all="ignore"):
        ref = flushed.view(np.float32).astype(ml_dtypes.bfloat16).view(np.uint16)
    ref = np.where(np.isnan(flushed.view(np.float32)), np.uint16(QNAN16), ref)
    np.testing.assert_array_equal(got, ref)


def test_fp32_to_bf16_rounding_edges():
    cases = {0x3F808000: 0x3F80, 0x3F818000: 0x3F82, 0x3F808001: 0x3F81, 0x7F7FFFFF: 0x7F80,
             0xFF7FFFFF: 0xFF80, 0x7F7F7FFF: 0x7F7F, 0x007FFFFF: 0x0000, 0x807FFFFF: 0x8000,
             0xFF800001: QNAN16, 0x7F800000: 0x7F80}
    got = fp32_to_bf16(np.array(list(cases), np.uint32))
    assert [int(g) for g in got] == list(cases.values())


def test_daz_flushes_subnormals_only_and_keeps_the_sign():
    f = np.array([0x00000001, 0x807FFFFF, 0x00800000, 0x80000000, 0x7FC00000], np.uint32)
    assert fp32_daz(f).tolist() == [0, 0x80000000, 0x00800000, 0x80000000, 0x7FC00000]
    b = np.array([0x0001, 0x807F, 0x0080, 0x8000, 0x7F80], np.uint16)
    assert bf16_daz(b).tolist() == [0, 0x8000, 0x0080, 0x8000, 0x7F80]


def _ref_fp32_mul(x, y):
    (vx, sx), (vy, sy) = _decode32(x), _decode32(y)
    s = sx ^ sy
    if "nan" in (vx, vy) or ("inf" in (vx, vy) and 0 in (vx, vy)):
        return QNAN32
    if "inf" in (vx, vy):
        return (s << 31) | 0x7F800000
    return _encode32(vx * vy, s)


@SETTINGS
@given(_f32, _f32)
def test_vector_fp32_mul_equals_exact_product_rounded_to_nearest_even_with_daz_ftz(x, y):
    got = int(fp32_mul(np.uint32(x), np.uint32(y)))
    assert got == _ref_fp32_mul(x, y), f"{x:#010x} * {y:#010x}: {got:#010x}"


def test_vector_fp32_mul_flushes_on_the_exact_product_not_the_rounded_one():
    # x·y = 2**-126·(1 − 2**-24), just below 2**-126: IEEE (with subnormals) rounds this tie to
    # even, 2**-126, but the contract flushes the exact product to +0
    x = 0x207FFFFF  # 2**-62·(1 − 2**-24)
    y = 0x1F800000  # 2**-64
    assert _ref_fp32_mul(x, y) == 0
    assert int(fp32_mul(np.uint32(x), np.uint32(y))) == 0
