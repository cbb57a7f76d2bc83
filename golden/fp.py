"""Bit-level models of the floating-point units (docs/numerics.md, "Floating point").

Every function here works on raw bit patterns held in unsigned numpy arrays (``uint16`` for
bf16, ``uint32`` for fp32), elementwise and vectorized, and is the exact reference for the
matching hardware unit in ``hdl/arith.py``:

========================  =====================================  ===========================
function                  computes                               hardware
========================  =====================================  ===========================
:func:`bf16_mul`          bf16 × bf16 → fp32 (exact or ±Inf/±0)  ``Bf16Multiplier``
:func:`fp32_add`          fp32 + fp32 → fp32 (RNE, DAZ, FTZ)      ``Fp32Adder``
:func:`fp32_to_bf16`      fp32 → bf16 (RNE, overflow to ±Inf)     ``Fp32ToBf16``
:func:`bf16_daz`          bf16 subnormal → zero of the same sign  (every bf16 input)
========================  =====================================  ===========================

Rules shared by all of them:

* A subnormal input reads as a zero of the same sign (DAZ).
* A result whose magnitude is below 2**-126 (the smallest normal) becomes a zero of the same
  sign as the exact result (FTZ). No unit ever outputs a subnormal.
* Any NaN result is the canonical quiet NaN: ``0x7FC00000`` (fp32), ``0x7FC0`` (bf16),
  positive sign. Inf − Inf, 0 × Inf and any NaN operand produce it.
* The sign of an exact zero sum is + in round-to-nearest-even, except (−0) + (−0) = −0.

numpy's float32 add and multiply are IEEE 754 binary32 with round-to-nearest-even; these
functions use them for the value and add DAZ/FTZ/canonical-NaN on top. That is exact:
bf16 × bf16 products have at most 16 significant bits and so are exact in fp32 whenever they
are normal, and a sum of two normal fp32 numbers that lands below 2**-126 is exact too (it is
a multiple of 2**-149 with fewer than 24 significant bits), so flushing after IEEE rounding
equals flushing the exact value.
"""

import numpy as np

__all__ = [
    "FP32_QNAN", "BF16_QNAN", "FP32_POS_INF", "FP32_NEG_INF",
    "fp32_daz", "bf16_daz", "bf16_to_fp32_bits", "bf16_mul", "fp32_add", "fp32_to_bf16",
    "as_fp32_bits", "as_bf16_bits", "fp32_from_bits", "bf16_from_bits",
]

FP32_QNAN = np.uint32(0x7FC00000)
BF16_QNAN = np.uint16(0x7FC0)
FP32_POS_INF = np.uint32(0x7F800000)
FP32_NEG_INF = np.uint32(0xFF800000)

_F32_SIGN = np.uint32(0x80000000)
_F32_EXP = np.uint32(0x7F800000)
_F32_MAN = np.uint32(0x007FFFFF)


def _u32(bits):
    bits = np.asarray(bits)
    if bits.dtype != np.uint32:
        if bits.dtype.kind not in "ui" or (bits.size and (bits.min() < 0 or bits.max() > 0xFFFFFFFF)):
            raise TypeError(f"expected fp32 bit patterns (uint32), got dtype {bits.dtype}")
        bits = bits.astype(np.uint32)
    return bits


def _u16(bits):
    bits = np.asarray(bits)
    if bits.dtype != np.uint16:
        if bits.dtype.kind not in "ui" or (bits.size and (bits.min() < 0 or bits.max() > 0xFFFF)):
            raise TypeError(f"expected bf16 bit patterns (uint16), got dtype {bits.dtype}")
        bits = bits.astype(np.uint16)
    return bits


def as_fp32_bits(x):
    """float32 values → uint32 bit patterns."""
    x = np.asarray(x, dtype=np.float32)
    return np.ascontiguousarray(x).view(np.uint32).reshape(x.shape)


def fp32_from_bits(bits):
    """uint32 bit patterns → float32 values."""
    bits = _u32(bits)
    return np.ascontiguousarray(bits).view(np.float32).reshape(bits.shape)


def as_bf16_bits(x):
    """``ml_dtypes.bfloat16`` values → uint16 bit patterns."""
    import ml_dtypes
    x = np.asarray(x)
    if x.dtype != ml_dtypes.bfloat16:
        raise TypeError(f"expected ml_dtypes.bfloat16 values, got dtype {x.dtype}")
    return np.ascontiguousarray(x).view(np.uint16).reshape(x.shape)


def bf16_from_bits(bits):
    """uint16 bit patterns → ``ml_dtypes.bfloat16`` values."""
    import ml_dtypes
    bits = _u16(bits)
    return np.ascontiguousarray(bits).view(ml_dtypes.bfloat16).reshape(bits.shape)


def fp32_daz(bits):
    """Subnormal fp32 → zero of the same sign; everything else unchanged."""
    bits = _u32(bits)
    sub = ((bits & _F32_EXP) == 0) & ((bits & _F32_MAN) != 0)
    return np.where(sub, bits & _F32_SIGN, bits).astype(np.uint32)


def bf16_daz(bits):
    """Subnormal bf16 → zero of the same sign; everything else unchanged."""
    bits = _u16(bits)
    sub = ((bits & np.uint16(0x7F80)) == 0) & ((bits & np.uint16(0x007F)) != 0)
    return np.where(sub, bits & np.uint16(0x8000), bits).astype(np.uint16)


def bf16_to_fp32_bits(bits):
    """bf16 bit patterns → the fp32 bit patterns of the same value (exact widening, no DAZ)."""
    return _u16(bits).astype(np.uint32) << np.uint32(16)


def _canonicalize(bits):
    """FTZ and canonical NaN on fp32 result bit patterns."""
    bits = fp32_daz(bits)  # a subnormal result flushes to a zero of its own sign
    nan = ((bits & _F32_EXP) == _F32_EXP) & ((bits & _F32_MAN) != 0)
    return np.where(nan, FP32_QNAN, bits).astype(np.uint32)


def bf16_mul(a, b):
    """bf16 × bf16 → fp32 bit patterns.

    Inputs are DAZ'd; the product is exact in fp32 unless it overflows (→ ±Inf) or falls below
    2**-126 (→ zero with sign a⊕b). NaN operands and 0 × Inf give the canonical NaN.
    """
    a = bf16_to_fp32_bits(bf16_daz(a))
    b = bf16_to_fp32_bits(bf16_daz(b))
    with np.errstate(all="ignore"):
        p = fp32_from_bits(a) * fp32_from_bits(b)
    return _canonicalize(as_fp32_bits(p))


def fp32_add(a, b):
    """fp32 + fp32 → fp32 bit patterns: DAZ inputs, IEEE RNE sum, FTZ result, canonical NaN."""
    a = fp32_daz(a)
    b = fp32_daz(b)
    with np.errstate(all="ignore"):
        s = fp32_from_bits(a) + fp32_from_bits(b)
    return _canonicalize(as_fp32_bits(s))


def fp32_to_bf16(bits):
    """fp32 → bf16 bit patterns: DAZ input, round to nearest even, overflow to ±Inf,
    canonical NaN. (A normal fp32 never rounds to a bf16 subnormal: the exponent ranges match.)
    """
    bits = fp32_daz(bits)
    nan = ((bits & _F32_EXP) == _F32_EXP) & ((bits & _F32_MAN) != 0)
    lsb = (bits >> np.uint32(16)) & np.uint32(1)
    rounded = (bits.astype(np.uint64) + np.uint64(0x7FFF) + lsb.astype(np.uint64)) >> np.uint64(16)
    out = rounded.astype(np.uint16)
    return np.where(nan, BF16_QNAN, out).astype(np.uint16)
