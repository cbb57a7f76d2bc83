"""golden.requantize / quantize_multiplier against exact rational arithmetic (Python ints and
fractions). Hypothesis runs derandomized, so a failure reproduces by rerunning the test."""

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from golden import quantize_multiplier, requantize
from golden.requant import SCALE_MAX, SCALE_MIN

SETTINGS = settings(derandomize=True, max_examples=200, deadline=None)

_acc = st.one_of(st.sampled_from([-(2 ** 31), 2 ** 31 - 1, 0, -1, 1]), st.integers(-(2 ** 31), 2 ** 31 - 1),
                 st.integers(-5000, 5000))
_mult = st.one_of(st.sampled_from([0, 2 ** 31 - 1, 2 ** 30]), st.integers(0, 2 ** 31 - 1))
_shift = st.integers(1, 62)


def _exact(acc, m, s):
    y = math.floor(Fraction(acc * m, 2 ** s) + Fraction(1, 2))
    return max(-128, min(127, y))


@SETTINGS
@given(st.data())
def test_requantize_equals_exact_rational_round_half_up_then_saturate(data):
    rows, n = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 5))
    acc = data.draw(hnp.arrays(np.int32, (rows, n), elements=_acc))
    per_channel = data.draw(st.booleans())
    if per_channel:
        m = data.draw(hnp.arrays(np.int64, (n,), elements=_mult))
        s = data.draw(hnp.arrays(np.int64, (n,), elements=_shift))
    else:
        m, s = data.draw(_mult), data.draw(_shift)
    got = requantize(acc, m, s)
    assert got.dtype == np.int8 and got.shape == acc.shape
    for i in range(rows):
        for j in range(n):
            mj, sj = (int(m[j]), int(s[j])) if per_channel else (m, s)
            assert int(got[i, j]) == _exact(int(acc[i, j]), mj, sj)


def test_requantize_rounds_ties_up_towards_plus_infinity():
    acc = np.array([3, -3, 1, -1, 5, -5], np.int32)
    # m·2**-s = 1/2: 1.5 → 2, −1.5 → −1, 0.5 → 1, −0.5 → 0, 2.5 → 3, −2.5 → −2
    assert requantize(acc, 2 ** 30, 31).tolist() == [2, -1, 1, 0, 3, -2]


def test_requantize_saturates_at_int8_limits():
    acc = np.array([2 ** 31 - 1, -(2 ** 31), 128, -129, 127, -128], np.int32)
    assert requantize(acc, 2 ** 30, 30).tolist() == [127, -128, 127, -128, 127, -128]


def test_requantize_applies_per_channel_parameters_along_the_last_axis():
    acc = np.full((2, 3), 1000, np.int32)
    y = requantize(acc, np.array([2 ** 30, 2 ** 30, 2 ** 30]), np.array([31, 33, 42]))
    assert y.tolist() == [[127, 125, 0]] * 2


@SETTINGS
@given(st.floats(SCALE_MIN, SCALE_MAX, exclude_max=True))
def test_quantize_multiplier_is_normalised_and_within_half_an_ulp_of_the_scale(scale):
    m, s = quantize_multiplier(scale)
    assert isinstance(m, int) and isinstance(s, int)
    assert 2 ** 30 <= m < 2 ** 31 and 1 <= s <= 62
    assert abs(Fraction(m, 2 ** s) - Fraction(scale)) <= Fraction(1, 2 ** (s + 1))


def test_quantize_multiplier_range_edges():
    assert quantize_multiplier(SCALE_MIN) == (2 ** 30, 62)
    assert quantize_multiplier(2.0 ** -32) == (2 ** 30, 62)
    assert quantize_multiplier(np.nextafter(SCALE_MAX, 0))[1] == 1
    assert quantize_multiplier(1.0) == (2 ** 30, 30)
    m, s = quantize_multiplier(np.array([[0.5, 0.25], [0.75, 1e-6]]))
    assert m.shape == s.shape == (2, 2) and m.dtype == np.int64
    assert m[0].tolist() == [2 ** 30, 2 ** 30] and s[0].tolist() == [31, 32]


@pytest.mark.parametrize("scale", [np.nextafter(SCALE_MIN, 0), SCALE_MAX, 0.0, -0.5, np.inf, np.nan,
                                   np.array([0.5, 2.0 ** 31])])
def test_quantize_multiplier_rejects_scales_outside_the_stated_range(scale):
    with pytest.raises(ValueError, match="scale must be finite and in"):
        quantize_multiplier(scale)


def test_quantize_multiplier_rejects_non_real_scales():
    with pytest.raises(TypeError, match="scale must be a real number"):
        quantize_multiplier("0.5")
    with pytest.raises(TypeError, match="scale must be a real number"):
        quantize_multiplier(np.array([1 + 1j]))


@SETTINGS
@given(hnp.arrays(np.int32, (16,), elements=_acc), st.floats(1e-9, 10.0))
def test_requantize_with_quantized_scale_is_within_one_of_the_float_reference(acc, scale):
    # tolerance 1: m·2**-s is the scale within a relative 2**-31, so where the output does not
    # saturate (|acc·scale| < 129) the two pre-rounding values differ by < 129·2**-31, and two
    # roundings to the nearest integer can then land at most one apart.
    y = requantize(acc, *quantize_multiplier(scale)).astype(np.int64)
    ref = np.clip(np.floor(acc.astype(np.float64) * scale + 0.5), -128, 127)
    assert np.all(np.abs(y - ref) <= 1)


@pytest.mark.parametrize("args, exc, message", [
    ((np.zeros(3, np.float32), 1, 1), TypeError, "acc must be an integer"),
    ((np.array([2 ** 31], np.int64), 1, 1), ValueError, r"acc must be in \[-2147483648, 2147483647\]"),
    ((np.zeros(3, np.int32), 2 ** 31, 1), ValueError, "multiplier must be in"),
    ((np.zeros(3, np.int32), -1, 1), ValueError, "multiplier must be in"),
    ((np.zeros(3, np.int32), 1.0, 1), TypeError, "multiplier must be an integer"),
    ((np.zeros(3, np.int32), 1, 0), ValueError, r"shift must be in \[1, 62\]"),
    ((np.zeros(3, np.int32), 1, 63), ValueError, r"shift must be in \[1, 62\]"),
    ((np.zeros((2, 3), np.int32), np.ones(2, np.int64), 1), ValueError, "multiplier has 2 values"),
    ((np.zeros((2, 3), np.int32), 1, np.ones((1, 3), np.int64)), ValueError, "shift must be 0 or 1-D"),
    ((np.zeros(3, np.int32), True, 1), TypeError, "multiplier must be an integer"),
])
def test_requantize_rejects_bad_arguments_naming_them(args, exc, message):
    with pytest.raises(exc, match=message):
        requantize(*args)
