"""golden.matmul_int8 / matmul_bf16 against independent references (docs/numerics.md, matmul).

The bf16 reference below is written from the contract alone: Python floats for the exact
products, numpy float32 scalar additions for the RNE sums, explicit DAZ/FTZ/canonical NaN. It
does not use golden/fp.py. Hypothesis runs derandomized (fixed examples), so any failure
reproduces by rerunning the test.
"""

import math

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from golden import int8_matmul_max_k, matmul_bf16, matmul_int8
from golden.matmul import _fast_path_applies, _matmul_bf16_bitwise, _matmul_bf16_fast

SETTINGS = settings(derandomize=True, max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
TINY = 2.0 ** -126
QNAN = 0x7FC00000

# ---------------------------------------------------------------- independent bf16 reference


def _daz(v):
    return math.copysign(0.0, v) if v != 0 and abs(v) < TINY else v


def _ref_dot_bf16(a_row, w_col, bias):
    """One output element, sequential in k, from the contract (Python float + float32 scalars)."""
    with np.errstate(all="ignore"):
        acc = np.float32(_daz(float(bias)))
        for x, y in zip(a_row, w_col, strict=True):
            x, y = _daz(float(x)), _daz(float(y))
            p = x * y  # exact: two 8-bit significands, and Python floats have range to spare
            if math.isnan(p):
                p = math.nan
            elif abs(p) >= 2.0 ** 128:
                p = math.copysign(math.inf, p)
            elif abs(p) < TINY:
                p = math.copysign(0.0, p)
            s = acc + np.float32(p)  # numpy float32 scalar add: IEEE RNE
            if s != 0 and abs(float(s)) < TINY:
                s = np.float32(math.copysign(0.0, float(s)))
            acc = np.float32(s)
    if math.isnan(float(acc)):
        return QNAN
    return int(np.array(acc, dtype=np.float32).view(np.uint32))


def _ref_matmul_bf16_bits(a, w, bias):
    m, n = a.shape[0], w.shape[1]
    bias = np.zeros(n, np.float32) if bias is None else bias
    return np.array([[_ref_dot_bf16(a[i, :], w[:, j], bias[j]) for j in range(n)] for i in range(m)],
                    dtype=np.uint32).reshape(m, n)


_BF16_SPECIALS = [0x0000, 0x8000, 0x7F80, 0xFF80, 0x7FC0, 0xFFC1, 0x7F81, 0x0001, 0x807F, 0x0080,
                  0x8080, 0x7F7F, 0xFF7F, 0x3F80, 0xBF80]


def _bf16_bits_strategy():
    ordinary = st.builds(lambda s, e, f: (s << 15) | (e << 7) | f, st.integers(0, 1), st.integers(118, 136),
                         st.integers(0, 127))
    tiny = st.builds(lambda s, e, f: (s << 15) | (e << 7) | f, st.integers(0, 1), st.integers(0, 8),
                     st.integers(0, 127))
    huge = st.builds(lambda s, e, f: (s << 15) | (e << 7) | f, st.integers(0, 1), st.integers(240, 254),
                     st.integers(0, 127))
    return st.one_of(ordinary, ordinary, st.sampled_from(_BF16_SPECIALS), tiny, huge, st.integers(0, 0xFFFF))


@st.composite
def _bf16_case(draw):
    m, k, n = draw(st.integers(1, 3)), draw(st.integers(0, 6)), draw(st.integers(1, 4))
    el = _bf16_bits_strategy()
    a = draw(hnp.arrays(np.uint16, (m, k), elements=el)).view(ml_dtypes.bfloat16)
    w = draw(hnp.arrays(np.uint16, (k, n), elements=el)).view(ml_dtypes.bfloat16)
    bias = None
    if draw(st.booleans()):
        b16 = draw(hnp.arrays(np.uint16, (n,), elements=el)).astype(np.uint32) << 16
        low = draw(hnp.arrays(np.uint32, (n,), elements=st.integers(0, 0xFFFF)))
        bias = (b16 | low).view(np.float32)
    return a, w, bias


@SETTINGS
@given(_bf16_case())
def test_matmul_bf16_equals_independent_sequential_fp32_model_on_special_values(case):
    a, w, bias = case
    got = matmul_bf16(a, w, bias)
    assert got.dtype == np.float32 and got.shape == (a.shape[0], w.shape[1])
    np.testing.assert_array_equal(got.view(np.uint32), _ref_matmul_bf16_bits(a, w, bias))


@SETTINGS
@given(st.integers(0, 2 ** 32 - 1))
def test_matmul_bf16_fast_path_equals_bitwise_definition_on_ordinary_data(seed):
    rng = np.random.default_rng(seed)
    m, k, n = rng.integers(1, 6, size=3)
    scale = 2.0 ** rng.integers(-30, 30)
    a = (rng.standard_normal((m, k)) * scale).astype(ml_dtypes.bfloat16)
    w = rng.standard_normal((k, n)).astype(ml_dtypes.bfloat16)
    # sprinkle zeros, ±Inf, NaN, cancelling pairs: all allowed on the fast path
    a.flat[rng.integers(0, a.size)] = rng.choice([0.0, -0.0, np.inf, -np.inf, np.nan])
    if k >= 2:
        a[:, 1] = -a[:, 0]
        w[1, :] = w[0, :]
    acc = (rng.standard_normal((m, n)) * scale).astype(np.float32).view(np.uint32)
    a_bits, w_bits = a.view(np.uint16), w.view(np.uint16)
    assert _fast_path_applies(a_bits, w_bits, acc)
    np.testing.assert_array_equal(_matmul_bf16_fast(a_bits, w_bits, acc),
                                  _matmul_bf16_bitwise(a_bits, w_bits, acc))


def test_matmul_bf16_fast_path_is_refused_when_a_product_or_bias_could_be_subnormal():
    one = np.array([[1.0]], ml_dtypes.bfloat16).view(np.uint16)
    small = np.array([[2.0 ** -64]], ml_dtypes.bfloat16).view(np.uint16)
    zero_acc = np.zeros((1, 1), np.uint32)
    assert _fast_path_applies(one, one, zero_acc)
    assert not _fast_path_applies(small, small, zero_acc)
    assert not _fast_path_applies(one, one, np.array([[2.0 ** -110]], np.float32).view(np.uint32))


def test_matmul_bf16_accumulates_sequentially_in_k_not_pairwise():
    # 2**24 + 1 rounds to 2**24 (tie to even), then − 2**24 gives 0; any other order gives 1.
    a = np.array([[2.0 ** 24, 1.0, -(2.0 ** 24)]], ml_dtypes.bfloat16)
    w = np.ones((3, 1), ml_dtypes.bfloat16)
    assert matmul_bf16(a, w)[0, 0] == 0.0
    assert matmul_bf16(a[:, ::-1].copy(), w)[0, 0] == 1.0


def test_matmul_bf16_flushes_a_subnormal_partial_sum_and_reads_a_subnormal_bias_as_zero():
    x = 2.0 ** -63 * (1 + 2.0 ** -7)
    a = np.array([[x, -(2.0 ** -63), 2.0 ** -63]], ml_dtypes.bfloat16)
    w = np.array([[2.0 ** -63], [2.0 ** -63], [2.0 ** -63]], ml_dtypes.bfloat16)
    # x·2**-63 − 2**-126 = 2**-133 → FTZ → +0; then + 2**-126 = 2**-126 exactly
    assert matmul_bf16(a, w)[0, 0] == np.float32(2.0 ** -126)
    neg_sub_bias = np.array([-(2.0 ** -130)], np.float32)
    out = matmul_bf16(np.zeros((1, 0), ml_dtypes.bfloat16), np.zeros((0, 1), ml_dtypes.bfloat16), neg_sub_bias)
    assert out.view(np.uint32)[0, 0] == 0x80000000  # −0: DAZ keeps the sign


def test_matmul_bf16_reads_subnormal_operands_as_signed_zeros():
    sub = np.array([0x0001, 0x807F], np.uint16).view(ml_dtypes.bfloat16)  # +2**-133, −(127·2**-133)
    ones = np.array([[1.0, 2.0 ** 100]], ml_dtypes.bfloat16)
    negz = np.array([-0.0, -0.0], np.float32)  # (−0) + (±0) keeps the product's sign visible
    out = matmul_bf16(sub.reshape(2, 1), ones, negz).view(np.uint32)
    assert out.tolist() == [[0, 0], [0x80000000, 0x80000000]]
    out = matmul_bf16(ones.T.copy(), sub.reshape(1, 2), negz).view(np.uint32)
    assert out.tolist() == [[0, 0x80000000], [0, 0x80000000]]
    # among ordinary operands (where the fast path runs), a subnormal still counts as zero
    a = np.array([[1.5, 0.0]], ml_dtypes.bfloat16)
    a.view(np.uint16)[0, 1] = 0x0040
    w = np.array([[1.0], [2.0 ** 120]], ml_dtypes.bfloat16)
    assert matmul_bf16(a, w)[0, 0] == 1.5


def test_matmul_bf16_special_values_give_inf_and_canonical_nan():
    inf, nan = np.inf, np.nan
    a = np.array([[inf, 1.0], [inf, -inf], [0.0, inf], [nan, 1.0], [3e38, 3e38]], ml_dtypes.bfloat16)
    w = np.array([[1.0], [1.0]], ml_dtypes.bfloat16)
    out = matmul_bf16(a, w).view(np.uint32)[:, 0]
    assert list(out) == [0x7F800000, QNAN, 0x7F800000, QNAN, 0x7F800000]
    z = matmul_bf16(np.array([[0.0]], ml_dtypes.bfloat16), np.array([[inf]], ml_dtypes.bfloat16))
    assert z.view(np.uint32)[0, 0] == QNAN  # 0 × Inf
    negz = matmul_bf16(np.array([[-0.0]], ml_dtypes.bfloat16), np.array([[1.0]], ml_dtypes.bfloat16),
                       np.array([-0.0], np.float32))
    assert negz.view(np.uint32)[0, 0] == 0x80000000  # (−0) + (−0) = −0
    posz = matmul_bf16(np.array([[-0.0]], ml_dtypes.bfloat16), np.array([[1.0]], ml_dtypes.bfloat16))
    assert posz.view(np.uint32)[0, 0] == 0  # the default bias is +0.0


def test_matmul_bf16_result_does_not_depend_on_tiling_of_m_and_n():
    rng = np.random.default_rng(7)
    a = rng.standard_normal((9, 40)).astype(ml_dtypes.bfloat16)
    w = rng.standard_normal((40, 11)).astype(ml_dtypes.bfloat16)
    full = matmul_bf16(a, w)
    tiled = np.block([[matmul_bf16(a[i:i + 4], w[:, j:j + 3]) for j in range(0, 11, 3)]
                      for i in range(0, 9, 4)])
    np.testing.assert_array_equal(full.view(np.uint32), tiled.view(np.uint32))
    # and it is the float64 product within fp32 accumulation error (K·2**-24 relative to Σ|a·w|)
    ref = a.astype(np.float64) @ w.astype(np.float64)
    bound = np.abs(a.astype(np.float64)) @ np.abs(w.astype(np.float64)) * 40 * 2.0 ** -24
    assert np.all(np.abs(full - ref) <= bound)


@pytest.mark.parametrize("a, w, bias, exc, message", [
    (np.zeros((2, 3), np.float32), np.zeros((3, 2), ml_dtypes.bfloat16), None, TypeError, "a must have dtype bfloat16"),
    (np.zeros((2, 3), ml_dtypes.bfloat16), np.zeros((3, 2), np.float16), None, TypeError, "w must have dtype"),
    (np.zeros((2, 3), ml_dtypes.bfloat16), np.zeros((4, 2), ml_dtypes.bfloat16), None, ValueError, "K differ"),
    (np.zeros(3, ml_dtypes.bfloat16), np.zeros((3, 2), ml_dtypes.bfloat16), None, ValueError, "a must be 2-D"),
    (np.zeros((2, 3), ml_dtypes.bfloat16), np.zeros((3, 2), ml_dtypes.bfloat16), np.zeros(3, np.float32),
     ValueError, "bias must have shape"),
    (np.zeros((2, 3), ml_dtypes.bfloat16), np.zeros((3, 2), ml_dtypes.bfloat16), np.zeros(2, np.float64),
     TypeError, "bias must have dtype"),
])
def test_matmul_bf16_rejects_bad_dtypes_and_shapes_naming_the_argument(a, w, bias, exc, message):
    with pytest.raises(exc, match=message):
        matmul_bf16(a, w, bias)


# ---------------------------------------------------------------- int8


@st.composite
def _int8_case(draw):
    m, k, n = draw(st.integers(1, 4)), draw(st.integers(0, 8)), draw(st.integers(1, 4))
    unsigned = draw(st.booleans())
    a_dtype = np.uint8 if unsigned else np.int8
    a_el = st.one_of(st.sampled_from([0, 255, 128, 1]) if unsigned else st.sampled_from([-128, 127, -1, 0]),
                     st.integers(0, 255) if unsigned else st.integers(-128, 127))
    w_el = st.one_of(st.sampled_from([-128, 127, -1, 0]), st.integers(-128, 127))
    a = draw(hnp.arrays(a_dtype, (m, k), elements=a_el))
    w = draw(hnp.arrays(np.int8, (k, n), elements=w_el))
    bias = draw(st.none() | hnp.arrays(np.int32, (n,), elements=st.integers(-2 ** 31, 2 ** 31 - 1)))
    return a, w, bias


@SETTINGS
@given(_int8_case())
def test_matmul_int8_equals_python_integer_sum_wrapped_to_int32(case):
    a, w, bias = case
    got = matmul_int8(a, w, bias)
    assert got.dtype == np.int32
    for i in range(a.shape[0]):
        for j in range(w.shape[1]):
            exact = sum(int(a[i, k]) * int(w[k, j]) for k in range(a.shape[1]))
            exact += 0 if bias is None else int(bias[j])
            wrapped = (exact + 2 ** 31) % 2 ** 32 - 2 ** 31
            assert int(got[i, j]) == wrapped


def test_matmul_int8_max_k_bounds_are_tight_for_signed_activations():
    k = int8_matmul_max_k()
    assert k == 131071
    a = np.full((1, k + 1), -128, np.int8)
    w = np.full((k + 1, 1), -128, np.int8)
    assert int(matmul_int8(a[:, :k], w[:k])[0, 0]) == k * 16384  # no wrap at K_max
    assert int(matmul_int8(a, w)[0, 0]) == -(2 ** 31)  # (K_max + 1)·2**14 = 2**31 wraps


def test_matmul_int8_max_k_bounds_are_tight_for_unsigned_activations():
    k = int8_matmul_max_k(unsigned_activations=True)
    assert k == 65793
    a = np.full((1, k + 1), 255, np.uint8)
    w = np.full((k + 1, 1), -128, np.int8)
    assert int(matmul_int8(a[:, :k], w[:k])[0, 0]) == -k * 32640
    assert int(matmul_int8(a, w)[0, 0]) > 0  # wrapped


def test_matmul_int8_max_k_with_a_bias_bound_is_tight():
    for unsigned, bound in [(False, 2 ** 30), (True, 2 ** 30), (False, 2 ** 24), (True, 12345)]:
        k = int8_matmul_max_k(unsigned_activations=unsigned, bias_bound=bound)
        lo, hi = (-32640, 32385) if unsigned else (-16256, 16384)
        assert k * hi + bound <= 2 ** 31 - 1 and k * -lo + bound <= 2 ** 31
        assert (k + 1) * hi + bound > 2 ** 31 - 1 or (k + 1) * -lo + bound > 2 ** 31
    with pytest.raises(ValueError, match="bias_bound must be in"):
        int8_matmul_max_k(bias_bound=-1)
    with pytest.raises(TypeError, match="unsigned_activations must be a bool"):
        int8_matmul_max_k(unsigned_activations=1)


def test_matmul_int8_reads_uint8_activations_as_unsigned():
    a = np.array([[200, 255]], np.uint8)
    w = np.array([[-128], [1]], np.int8)
    assert int(matmul_int8(a, w)[0, 0]) == 200 * -128 + 255
    assert int(matmul_int8(a.view(np.int8), w)[0, 0]) == -56 * -128 - 1


def test_matmul_int8_bias_wraps_like_a_32_bit_accumulator():
    a = np.ones((1, 1), np.int8)
    w = np.ones((1, 1), np.int8)
    assert int(matmul_int8(a, w, np.array([2 ** 31 - 1], np.int32))[0, 0]) == -(2 ** 31)


@pytest.mark.parametrize("a, w, bias, exc, message", [
    (np.zeros((2, 3), np.int16), np.zeros((3, 2), np.int8), None, TypeError, "a must have dtype int8 or uint8"),
    (np.zeros((2, 3), np.int8), np.zeros((3, 2), np.uint8), None, TypeError, "w must have dtype int8"),
    (np.zeros((2, 3), np.int8), np.zeros((3, 2), np.int8), np.zeros(2, np.int64), TypeError,
     "bias must have dtype int32"),
    (np.zeros((2, 3), np.int8), np.zeros((2, 3), np.int8), None, ValueError, "K differ"),
    (np.zeros((2, 3), np.int8), np.zeros((3, 2, 1), np.int8), None, ValueError, "w must be 2-D"),
    (np.zeros((2, 3), np.int8), np.zeros((3, 2), np.int8), np.zeros((1, 2), np.int32), ValueError,
     "bias must have shape"),
    ([[1, 2]], np.zeros((2, 2), np.int8), None, TypeError, "a must have dtype"),
])
def test_matmul_int8_rejects_bad_dtypes_and_shapes_naming_the_argument(a, w, bias, exc, message):
    with pytest.raises(exc, match=message):
        matmul_int8(a, w, bias)
