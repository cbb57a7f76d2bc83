"""Bit-exact models of the vector unit (docs/numerics.md, "Vector operations").

Each operation has an int8 flavour (integer arithmetic, defined bit for bit), a bf16 flavour
(the fp32 units of ``golden/fp.py`` plus an fp32 multiplier :func:`fp32_mul` and a defined
reciprocal square root :func:`rsqrt_fp32_bits`), and a float64 reference. All functions are
vectorized over leading axes; the feature axis is the last one.

=====================  ===========================================  =============================
operation              int8 flavour                                 bf16 flavour
=====================  ===========================================  =============================
RMSNorm                :func:`rmsnorm_int8` (+ :class:`RMSNormInt8`)  :func:`rmsnorm_bf16`
SiLU                   :func:`silu_int8` (+ :func:`silu_table_int8`)  :func:`silu_bf16`
multiply (SwiGLU gate) :func:`mul_int8`, :func:`swiglu_int8`          :func:`mul_bf16`, :func:`swiglu_bf16`
RoPE                   :func:`rope_int8` (+ :func:`rope_table`)       :func:`rope_bf16`
residual add           :func:`residual_add_int` (+ :func:`residual_add_params`)  :func:`residual_add_bf16`
Hadamard transform     -                                            :func:`hadamard_fp32`
=====================  ===========================================  =============================

Float references: :func:`rmsnorm_reference`, :func:`silu_reference`, :func:`rope_reference`,
:func:`hadamard_reference`.

bf16 flavours with fp32 inputs and one final rounding to bf16 (the measured alternative
``DecoderLayer(mode="bf16", residual="fp32", fp32_inputs=...)``; the default bf16 layer does not
use them): :func:`rmsnorm_fp32_in` (the fp32 residual stream), :func:`rope_fp32_in` (the fp32
q/k matmul outputs, fp32 cos/sin), :func:`swiglu_fp32_in` (the fp32 gate/up matmul outputs).
"""

import math
from dataclasses import dataclass

import numpy as np

from ._check import array_of, bf16_array, check_ndim, int_array, real_array
from .fp import (
    as_bf16_bits,
    as_fp32_bits,
    bf16_daz,
    bf16_from_bits,
    bf16_mul,
    bf16_to_fp32_bits,
    fp32_add,
    fp32_daz,
    fp32_from_bits,
    fp32_to_bf16,
)
from .requant import MULTIPLIER_MAX, SHIFT_MAX, SHIFT_MIN, quantize_multiplier, requantize

__all__ = [
    "RMS_FRAC", "RCP_BITS", "ROPE_FRAC", "SILU_TABLE_MAX",
    "SILU_FP32_EXP_MIN", "SILU_FP32_POS_EXP_MAX", "SILU_FP32_NEG_EXP_MAX",
    "isqrt_int64", "fp32_mul", "rsqrt_fp32_bits",
    "RMSNormInt8", "rmsnorm_int8", "rmsnorm_bf16", "rmsnorm_fp32_in", "rmsnorm_reference",
    "silu_table_int8", "silu_int8", "silu_bf16", "silu_fp32_out", "silu_reference",
    "mul_int8", "mul_bf16", "swiglu_int8", "swiglu_bf16", "swiglu_fp32_in",
    "RopeTable", "rope_table", "rope_int8", "rope_bf16", "rope_fp32_in", "rope_reference",
    "residual_add_params", "residual_add_int", "residual_add_bf16",
    "HADAMARD_BLOCK", "hadamard_fp32", "hadamard_reference", "hadamard_matrix",
]

#: Fractional bits of the RMSNorm root: r = isqrt(ss·2**(2·RMS_FRAC) + eps_q) ≈ rms·√D·2**RMS_FRAC.
RMS_FRAC = 8
#: Bits of the normalised reciprocal: inv = 2**(L−1+RCP_BITS) // r ∈ (2**(RCP_BITS−1), 2**RCP_BITS].
RCP_BITS = 16
#: RoPE cos/sin tables are signed Q1.14 (int16, scale 2**−14).
ROPE_FRAC = 14
#: SiLU int8 table entries are int16 with the largest magnitude scaled to this value.
SILU_TABLE_MAX = 32767
#: Block length of the Hadamard transform of the int8 layer's matmul inputs.
HADAMARD_BLOCK = 64

_MAX_D = 1 << 15
_EPS_Q_MAX = 1 << 61

# ---------------------------------------------------------------- primitives


def isqrt_int64(t):
    """Exact ``floor(sqrt(t))`` elementwise for integers 0 ≤ t < 2**62 (== ``math.isqrt``)."""
    t = int_array(t, "t", 0, (1 << 62) - 1)
    r = np.floor(np.sqrt(t.astype(np.float64))).astype(np.int64)
    for _ in range(2):  # the float estimate is off by at most one
        r = np.where(r * r > t, r - 1, r)
        r = np.where((r + 1) * (r + 1) <= t, r + 1, r)
    return r


def _u32(x):
    return np.asarray(x).astype(np.uint32)


def fp32_mul(a, b):
    """fp32 × fp32 → fp32 bit patterns: DAZ inputs, exact product rounded once (RNE), FTZ of an
    exact product below 2**−126 (sign a⊕b), overflow to ±Inf, canonical NaN (NaN, 0 × Inf).

    The product of two 24-bit significands is exact in float64, and the cast to float32 rounds
    it once (RNE), so this is the correctly rounded product.
    """
    with np.errstate(all="ignore"):
        a = fp32_from_bits(fp32_daz(a)).astype(np.float64)
        b = fp32_from_bits(fp32_daz(b)).astype(np.float64)
        p = a * b
        tiny = (p != 0) & (np.abs(p) < 2.0 ** -126)
        p = np.where(tiny, np.copysign(0.0, p), p)
        out = np.ascontiguousarray(p.astype(np.float32)).view(np.uint32).reshape(p.shape)
    return np.where(np.isnan(p), np.uint32(0x7FC00000), out).astype(np.uint32)


def _int_to_fp32_bits(n, e):
    """The fp32 bits of n·2**e (Python ints, n > 0) rounded to nearest even; FTZ; overflow Inf."""
    shift = n.bit_length() - 24
    if shift > 0:
        q, rem = n >> shift, n & ((1 << shift) - 1)
        half = 1 << (shift - 1)
        if rem > half or (rem == half and q & 1):
            q += 1
        if q == 1 << 24:
            q, shift = q >> 1, shift + 1
        n, e = q, e + shift
    else:
        n, e = n << -shift, e + shift
    exp = e + 23 + 127  # n in [2**23, 2**24): value = (n / 2**23) · 2**(e + 23)
    if exp >= 255:
        return 0x7F800000
    if exp <= 0:
        return 0  # below 2**-126: FTZ
    return (exp << 23) | (n - (1 << 23))


def rsqrt_fp32_bits(v):
    """The vector unit's reciprocal square root on fp32 bit patterns (docs/numerics.md).

    For a positive normal ``v = M·2**E`` (M the 24-bit significand; if E is odd, M ← 2M and
    E ← E − 1): ``q = isqrt(M·2**24)``, ``inv = 2**62 // q``, result = ``inv·2**(−50 − E/2)``
    rounded to fp32 (RNE). Within 2 ulp of 1/√v. Special values: ±0 → +Inf, +Inf → +0,
    negative or NaN → canonical NaN; a subnormal input reads as +0 (DAZ).
    """
    bits = fp32_daz(_u32(v))
    out = np.empty(bits.shape, dtype=np.uint32)
    flat_in, flat_out = bits.ravel(), out.reshape(-1)
    for i, b in enumerate(flat_in.tolist()):
        e_field, frac = (b >> 23) & 0xFF, b & 0x7FFFFF
        if e_field == 0xFF and frac:
            flat_out[i] = 0x7FC00000
        elif b & 0x7FFFFFFF == 0:
            flat_out[i] = 0x7F800000
        elif b >> 31:
            flat_out[i] = 0x7FC00000
        elif e_field == 0xFF:
            flat_out[i] = 0
        else:
            m, e = (1 << 23) | frac, e_field - 150
            if e & 1:
                m, e = m << 1, e - 1
            q = math.isqrt(m << 24)
            flat_out[i] = _int_to_fp32_bits((1 << 62) // q, -50 - e // 2)
    return out


def _to_fp32_const(x, name):
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"{name} must be finite, got {x!r}")
    return np.asarray(np.float32(x)).reshape(()).view(np.uint32).copy()


def _bf16_bits(x, name):
    return bf16_daz(as_bf16_bits(bf16_array(x, name)))


def _fp32_neg(bits):
    return bits ^ np.uint32(0x80000000)


# ---------------------------------------------------------------- RMSNorm


@dataclass(frozen=True, eq=False)
class RMSNormInt8:
    """Integer RMSNorm parameters for one gain vector.

    Attributes
    ----------
    gain : ndarray of int32, shape [D]
        Fixed-point gains ``G[i] = round(g[i]·√D / out_scale · 2**gain_frac)`` (half away from 0).
    gain_frac : int
        Fractional bits of ``gain``, in [0, 40].
    eps : int
        ``eps_q = round(D·eps·2**(2·RMS_FRAC) / in_scale**2)``, in [0, 2**61).
    """

    gain: np.ndarray
    gain_frac: int
    eps: int

    def __post_init__(self):
        g = array_of(self.gain, "gain", [np.int32])
        check_ndim(g, "gain", (1,), " [D]")
        if not 1 <= g.shape[0] <= _MAX_D:
            raise ValueError(f"gain length D must be in [1, {_MAX_D}], got {g.shape[0]}")
        int_array(self.gain_frac, "gain_frac", 0, 40)
        int_array(self.eps, "eps", 0, _EPS_Q_MAX - 1)

    @classmethod
    def from_float(cls, gain, *, eps, in_scale, out_scale):
        """Parameters for ``y ≈ x·in_scale / rms(x·in_scale) · gain / out_scale``.

        ``gain_frac`` is the largest value in [0, 40] that keeps every |G| < 2**31.
        """
        g = real_array(gain, "gain")
        check_ndim(g, "gain", (1,), " [D]")
        d = g.shape[0]
        if not 1 <= d <= _MAX_D:
            raise ValueError(f"gain length D must be in [1, {_MAX_D}], got {d}")
        for name, v in (("eps", eps), ("in_scale", in_scale), ("out_scale", out_scale)):
            if not (isinstance(v, (int, float, np.floating, np.integer)) and math.isfinite(v)):
                raise TypeError(f"{name} must be a finite real number, got {v!r}")
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        if not in_scale > 0 or not out_scale > 0:
            raise ValueError(f"in_scale and out_scale must be > 0, got {in_scale}, {out_scale}")
        if not np.all(np.isfinite(g)):
            raise ValueError("gain must be finite")
        real = g * math.sqrt(d) / out_scale
        peak = float(np.max(np.abs(real))) if d else 0.0
        frac = 40 if peak == 0 else max(0, min(40, 30 - math.floor(math.log2(peak))))
        while frac > 0 and np.max(np.abs(np.trunc(np.abs(real) * 2.0 ** frac + 0.5))) >= 2 ** 31:
            frac -= 1
        q = np.sign(real) * np.floor(np.abs(real) * 2.0 ** frac + 0.5)
        if np.max(np.abs(q)) >= 2 ** 31:
            raise ValueError("gain·√D/out_scale is too large for an int32 fixed-point gain")
        eps_q = math.floor(d * eps * 2.0 ** (2 * RMS_FRAC) / in_scale ** 2 + 0.5)
        if not eps_q < _EPS_Q_MAX:
            raise ValueError(f"eps/in_scale**2 is too large: eps_q = {eps_q} must be below 2**61")
        return cls(gain=q.astype(np.int32), gain_frac=int(frac), eps=int(eps_q))


def rmsnorm_int8(x, params):
    """Integer RMSNorm of the last axis: int8/int16 in, int8 out.

    ``ss = Σ x_i²`` (int64, exact); ``t = ss·2**(2·RMS_FRAC) + eps_q``; ``r = isqrt(t)``;
    ``L = bit_length(r)``; ``inv = 2**(L−1+RCP_BITS) // r``;
    ``y_i = clamp((x_i·G_i·inv + 2**(k−1)) >> k, −128, 127)`` with
    ``k = L − 1 + RCP_BITS + gain_frac − RMS_FRAC`` (y = 0 where r = 0 or k > 62, where the
    rounding gives 0 anyway since |x·G·inv| < 2**62).

    Parameters
    ----------
    x : ndarray of int8 or int16, shape [..., D]
    params : RMSNormInt8
        With ``params.gain`` of length D.

    Returns
    -------
    ndarray of int8, the shape of ``x``
    """
    if not isinstance(params, RMSNormInt8):
        raise TypeError(f"params must be an RMSNormInt8, got {type(params).__name__}")
    x = array_of(x, "x", [np.int8, np.int16])
    if x.ndim == 0 or x.shape[-1] != params.gain.shape[0]:
        raise ValueError(f"x's last axis must have D = {params.gain.shape[0]} elements, got shape {x.shape}")
    xi = x.astype(np.int64)
    ss = np.sum(xi * xi, axis=-1)
    t = ss * (1 << (2 * RMS_FRAC)) + int(params.eps)
    r = isqrt_int64(t)
    nz = r > 0
    length = np.frexp(r.astype(np.float64))[1].astype(np.int64)  # bit_length: exact, r < 2**31
    safe_r = np.where(nz, r, 1)
    inv = (np.int64(1) << (np.maximum(length, 1) - 1 + RCP_BITS)) // safe_r
    k = length - 1 + RCP_BITS + int(params.gain_frac) - RMS_FRAC
    v = xi * params.gain.astype(np.int64) * inv[..., None]
    kk = np.clip(k, 1, 62)[..., None]
    y = (v + (np.int64(1) << (kk - 1))) >> kk
    y = np.where((nz & (k >= 1) & (k <= 62))[..., None], y, 0)
    return np.clip(y, -128, 127).astype(np.int8)


def _check_eps(eps):
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating, np.integer)):
        raise TypeError(f"eps must be a real number, got {type(eps).__name__}")
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be finite and >= 0, got {eps}")


def _rms_rsqrt(xb, gb, eps, square):
    """RMSNorm's per-row ``r = rsqrt(Σ_i square(x_i, x_i) · fp32(1/D) + fp32(eps))`` (fp32 bit
    patterns; the sum sequential in i from +0), after checking x against the gain and eps."""
    check_ndim(gb, "gain", (1,), " [D]")
    if xb.ndim == 0 or xb.shape[-1] != gb.shape[0]:
        raise ValueError(f"x's last axis must have D = {gb.shape[0]} elements, got shape {xb.shape}")
    _check_eps(eps)
    d = gb.shape[0]
    s = np.zeros(xb.shape[:-1], dtype=np.uint32)
    for i in range(d):
        s = fp32_add(s, square(xb[..., i], xb[..., i]))
    v = fp32_add(fp32_mul(s, _to_fp32_const(1.0 / d, "1/D")), fp32_daz(_to_fp32_const(eps, "eps")))
    return rsqrt_fp32_bits(v)


def rmsnorm_bf16(x, gain, *, eps):
    """RMSNorm of the last axis in bf16 (Hugging Face LlamaRMSNorm order, fp32 internals).

    ``s = Σ_i x_i²`` with ``s = fp32_add(s, bf16_mul(x_i, x_i))`` sequentially in i from +0;
    ``v = fp32_add(fp32_mul(s, fp32(1/D)), fp32(eps))``; ``r = rsqrt_fp32_bits(v)``;
    ``t_i = fp32_to_bf16(fp32_mul(x_i, r))``; ``y_i = fp32_to_bf16(bf16_mul(t_i, g_i))``.

    Parameters
    ----------
    x : ndarray of ml_dtypes.bfloat16, shape [..., D]
    gain : ndarray of ml_dtypes.bfloat16, shape [D]
    eps : float
        Rounded to fp32 (RNE); must be finite and ≥ 0.

    Returns
    -------
    ndarray of ml_dtypes.bfloat16, the shape of ``x``
    """
    xb = _bf16_bits(x, "x")
    gb = _bf16_bits(gain, "gain")
    r = _rms_rsqrt(xb, gb, eps, bf16_mul)
    t = fp32_to_bf16(fp32_mul(bf16_to_fp32_bits(xb), r[..., None]))
    return bf16_from_bits(fp32_to_bf16(bf16_mul(t, gb)))


def _fp32_bits_in(x, name):
    """A float32 array → its DAZ'd fp32 bit patterns (uint32, the array's shape)."""
    arr = array_of(x, name, [np.float32])
    return fp32_daz(np.ascontiguousarray(arr).view(np.uint32).reshape(arr.shape))


def rmsnorm_fp32_in(x, gain, *, eps):
    """RMSNorm of the last axis with an fp32 input and one final rounding to bf16 (the fp32
    residual stream read as it is, not rounded to bf16 first).

    ``s = Σ_i x_i²`` with ``s = fp32_add(s, fp32_mul(x_i, x_i))`` sequentially in i from +0;
    ``v = fp32_add(fp32_mul(s, fp32(1/D)), fp32(eps))``; ``r = rsqrt_fp32_bits(v)``;
    ``t_i = fp32_mul(x_i, r)`` (fp32, not rounded to bf16);
    ``y_i = fp32_to_bf16(fp32_mul(t_i, g_i))`` (the bf16 gain widened exactly to fp32).
    DAZ on x and g; the rules of :func:`fp32_mul`, :func:`golden.fp32_add` and
    :func:`rsqrt_fp32_bits` for every special value (an Inf or NaN element makes the row's r
    +0 or NaN, exactly as :func:`rmsnorm_bf16`).

    Parameters
    ----------
    x : ndarray of float32, shape [..., D]
    gain : ndarray of ml_dtypes.bfloat16, shape [D]
    eps : float
        Rounded to fp32 (RNE); must be finite and ≥ 0.

    Returns
    -------
    ndarray of ml_dtypes.bfloat16, the shape of ``x``
    """
    xb = _fp32_bits_in(x, "x")
    gb = _bf16_bits(gain, "gain")
    r = _rms_rsqrt(xb, gb, eps, fp32_mul)
    t = fp32_mul(xb, r[..., None])
    return bf16_from_bits(fp32_to_bf16(fp32_mul(t, bf16_to_fp32_bits(gb))))


def rmsnorm_reference(x, gain, *, eps):
    """float64 RMSNorm of the last axis: ``x / sqrt(mean(x²) + eps) · gain``."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * np.asarray(gain, np.float64)


# ---------------------------------------------------------------- SiLU and the SwiGLU gate


def silu_reference(x):
    """float64 ``x · sigmoid(x)``."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore"):
        return x / (1.0 + np.exp(-x))


def _silu_exact(x):
    """SiLU of one Python float, computed in float64 with libm's exp (deterministic)."""
    if x >= 0:
        return x / (1.0 + math.exp(-x))
    e = math.exp(x)
    return x * e / (1.0 + e)


def silu_table_int8(in_scale):
    """The 256-entry SiLU table of the int8 path, and its output scale.

    ``T[q & 0xFF] = round(silu(q·in_scale) / table_scale)`` for q = −128 … 127 (float64, libm
    exp, round half away from zero), with ``table_scale = max_q |silu(q·in_scale)| / 32767``, so
    the entries are int16 and the largest magnitude is 32767. The table is data that the host
    writes into the vector unit; this function is its one definition.

    Returns
    -------
    (table, table_scale) : (ndarray of int16, shape [256]; float)
    """
    if isinstance(in_scale, bool) or not isinstance(in_scale, (int, float, np.floating, np.integer)):
        raise TypeError(f"in_scale must be a real number, got {type(in_scale).__name__}")
    if not (math.isfinite(in_scale) and in_scale > 0):
        raise ValueError(f"in_scale must be finite and > 0, got {in_scale}")
    vals = [_silu_exact(q * float(in_scale)) for q in range(-128, 128)]
    table_scale = max(abs(v) for v in vals) / SILU_TABLE_MAX
    table = np.zeros(256, dtype=np.int16)
    for q, v in zip(range(-128, 128), vals, strict=True):
        table[q & 0xFF] = int(math.copysign(math.floor(abs(v) / table_scale + 0.5), v))
    return table, table_scale


def silu_int8(x, table):
    """int8 SiLU by table lookup: ``T[x & 0xFF]`` (int16, scale ``table_scale``)."""
    x = array_of(x, "x", [np.int8])
    table = array_of(table, "table", [np.int16])
    if table.shape != (256,):
        raise ValueError(f"table must have shape [256], got {list(table.shape)}")
    return table[x.view(np.uint8).astype(np.intp)]


def mul_int8(a, b, multiplier, shift):
    """Elementwise product with requantization: ``requantize(a·b, multiplier, shift)``.

    ``a`` int8 or int16, ``b`` int8 (same shape); the product is exact (|a·b| ≤ 2**22), then
    :func:`golden.requantize` (per channel along the last axis, or scalar) gives int8.
    """
    a = array_of(a, "a", [np.int8, np.int16])
    b = array_of(b, "b", [np.int8])
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {a.shape} and {b.shape}")
    return requantize(a.astype(np.int32) * b.astype(np.int32), multiplier, shift)


def swiglu_int8(gate, up, table, multiplier, shift):
    """The SwiGLU gate, int8: ``mul_int8(silu_int8(gate, table), up, multiplier, shift)``.

    ``multiplier, shift = quantize_multiplier(table_scale · up_scale / out_scale)``.
    """
    return mul_int8(silu_int8(gate, table), up, multiplier, shift)


def _round_f64_to_bf16_bits(y):
    """float64 → bf16 bits, one RNE rounding straight from float64 (no double rounding), FTZ
    below 2**−126, overflow to ±Inf, canonical NaN."""
    y = np.asarray(y, dtype=np.float64)
    y = np.where(np.abs(y) < 2.0 ** -126, np.copysign(0.0, y), y)  # FTZ on the exact value
    b = np.ascontiguousarray(y).view(np.uint64).reshape(y.shape)
    sign = (b >> np.uint64(63)).astype(np.uint16) << np.uint16(15)
    mag = b & np.uint64(0x7FFFFFFFFFFFFFFF)
    # keep 8 significant bits of the float64 (52 − 7 = 45 dropped bits), RNE
    lsb = (mag >> np.uint64(45)) & np.uint64(1)
    r = (mag + np.uint64((1 << 44) - 1) + lsb) >> np.uint64(45)  # float64 fields with a 7-bit fraction
    exp64 = (r >> np.uint64(7)).astype(np.int64)
    frac = (r & np.uint64(0x7F)).astype(np.uint16)
    exp32 = exp64 - 1023 + 127
    out = np.where(exp32 >= 255, np.uint16(0x7F80), (np.clip(exp32, 0, 254).astype(np.uint16) << np.uint16(7)) | frac)
    out = np.where(exp32 <= 0, np.uint16(0), out)
    out = (out | sign).astype(np.uint16)
    return np.where(np.isnan(y), np.uint16(0x7FC0), out).astype(np.uint16)


def silu_bf16(x):
    """bf16 SiLU, correctly rounded: ``bf16_RNE(x·sigmoid(x))`` of the DAZ'd input.

    Defined as the exact value rounded once to bf16 (RNE); computed here in float64, whose
    error (~1e−16 relative) is far below the distance to any bf16 rounding boundary, FTZ below 2**−126; silu(±0) = ±0,
    silu(+Inf) = +Inf, silu(−Inf) = −0, NaN → 0x7FC0. Since the input has 16 bits the function
    is a table; docs/numerics.md states which part of it the hardware must store.
    """
    xb = _bf16_bits(x, "x")
    with np.errstate(all="ignore"):
        xf = bf16_from_bits(xb).astype(np.float64)
        pos = xf / (1.0 + np.exp(-np.abs(xf)))  # x ≥ 0 branch, and reused below
        e = np.exp(-np.abs(xf))
        neg = xf * e / (1.0 + e)
        y = np.where(xf >= 0, pos, neg)
    y = np.where(np.isinf(xf) & (xf < 0), -0.0, y)
    y = np.where(xf == 0, xf, y)  # keeps the sign of zero
    return bf16_from_bits(_round_f64_to_bf16_bits(y))


def mul_bf16(a, b):
    """Elementwise bf16 product: ``fp32_to_bf16(bf16_mul(a, b))`` (exact product, one RNE)."""
    ab, bb = _bf16_bits(a, "a"), _bf16_bits(b, "b")
    if ab.shape != bb.shape:
        raise ValueError(f"a and b must have the same shape, got {ab.shape} and {bb.shape}")
    return bf16_from_bits(fp32_to_bf16(bf16_mul(ab, bb)))


def swiglu_bf16(gate, up):
    """The SwiGLU gate, bf16: ``mul_bf16(silu_bf16(gate), up)``."""
    return mul_bf16(silu_bf16(gate), up)


#: SiLU with an fp32 result (:func:`silu_fp32_out`): the table covers bf16 inputs with these
#: unbiased exponents (2**-8 ≤ x < 32 and −128 < x ≤ −2**-8); outside, a rule gives the result.
SILU_FP32_EXP_MIN, SILU_FP32_POS_EXP_MAX, SILU_FP32_NEG_EXP_MAX = -8, 4, 6


def silu_fp32_out(x):
    """SiLU of a bf16 input with an fp32 result (a table of fp32 entries and three rules).

    DAZ on x. For 2**−8 ≤ x < 32 and −128 < x ≤ −2**−8 (3584 bf16 values) the result is the
    exact silu(x) rounded once to fp32 (RNE): the table. Elsewhere: |x| < 2**−8 → x/2 (an
    exponent decrement; ±0 when below 2**−126); x ≥ 32 → x (silu(x) rounds to x from x ≈ 17);
    x ≤ −128 → −0 (|silu(x)| < 2**−126 from x ≈ −88); ±0 → ±0, +Inf → +Inf, −Inf → −0, NaN →
    ``0x7FC00000``. So the result is correctly rounded except for |x| < 2**−8, where x/2 is low by
    x²/4 (a relative error below |x|/2 < 2**−9). (Computed in float64, whose error is far below
    the distance of every table entry to an fp32 rounding boundary: tested against 60-digit
    decimal arithmetic.)

    Parameters
    ----------
    x : ndarray of ml_dtypes.bfloat16

    Returns
    -------
    ndarray of float32, the shape of ``x``
    """
    xb = _bf16_bits(x, "x")
    with np.errstate(all="ignore"):
        xf = bf16_from_bits(xb).astype(np.float64)
    e = ((xb >> np.uint16(7)) & np.uint16(0xFF)).astype(np.int64) - 127
    neg = (xb >> np.uint16(15)) == 1
    with np.errstate(all="ignore"):
        ex = np.exp(-np.abs(xf))
        y = np.where(xf >= 0, xf / (1.0 + ex), xf * ex / (1.0 + ex))
    small = e < SILU_FP32_EXP_MIN
    y = np.where(small, xf * 0.5, y)
    y = np.where(~small & ~neg & (e > SILU_FP32_POS_EXP_MAX), xf, y)          # x ≥ 32, +Inf
    y = np.where(~small & neg & (e > SILU_FP32_NEG_EXP_MAX), -0.0, y)        # x ≤ −128, −Inf
    y = np.where(np.abs(y) < 2.0 ** -126, np.copysign(0.0, y), y)           # FTZ (x/2 of ±2**−126)
    with np.errstate(all="ignore"):
        out = as_fp32_bits(y.astype(np.float32))
    nan = np.isnan(xf)
    return fp32_from_bits(np.where(nan, np.uint32(0x7FC00000), out).astype(np.uint32))


def swiglu_fp32_in(gate, up):
    """The SwiGLU gate with fp32 inputs (the unrounded gate/up matmul outputs) and one final
    rounding of the product: ``fp32_to_bf16(fp32_mul(silu_fp32_out(fp32_to_bf16(gate)), up))``.

    The gate is rounded to bf16 (RNE) to index the SiLU table, whose entries are fp32
    (:func:`silu_fp32_out`); that fp32 SiLU multiplies the fp32 ``up`` (:func:`fp32_mul`: DAZ,
    one RNE rounding, FTZ, canonical NaN), and the product is rounded to bf16
    (:func:`golden.fp32_to_bf16`). ``up`` is never rounded to bf16, the SiLU only to fp32.

    Parameters
    ----------
    gate, up : ndarray of float32, the same shape

    Returns
    -------
    ndarray of ml_dtypes.bfloat16, that shape
    """
    gb, ub = _fp32_bits_in(gate, "gate"), _fp32_bits_in(up, "up")
    if gb.shape != ub.shape:
        raise ValueError(f"gate and up must have the same shape, got {gb.shape} and {ub.shape}")
    sg = as_fp32_bits(silu_fp32_out(bf16_from_bits(fp32_to_bf16(gb))))
    return bf16_from_bits(fp32_to_bf16(fp32_mul(sg, ub)))


# ---------------------------------------------------------------- RoPE


@dataclass(frozen=True, eq=False)
class RopeTable:
    """cos/sin tables for positions 0 … max_pos−1 and frequencies i = 0 … head_dim/2 − 1.

    ``angle[p, i] = p · base**(−2i/head_dim)`` in float64 (libm cos/sin).

    Attributes
    ----------
    cos_q, sin_q : ndarray of int16, shape [max_pos, head_dim/2]
        Q1.14: ``round(cos·2**14)`` half away from zero (|values| ≤ 2**14).
    cos_bf16, sin_bf16 : ndarray of ml_dtypes.bfloat16, shape [max_pos, head_dim/2]
        The float64 value rounded once to bf16 (RNE).
    cos_fp32, sin_fp32 : ndarray of float32, shape [max_pos, head_dim/2], or None
        The float64 value rounded once to fp32 (RNE; never subnormal for these angles), for
        :func:`rope_fp32_in`. :func:`rope_table` fills them; a table built from the bf16 or Q1.14
        entries alone (e.g. read back from a chip's memory) may leave them None.
    """

    head_dim: int
    base: float
    cos_q: np.ndarray
    sin_q: np.ndarray
    cos_bf16: np.ndarray
    sin_bf16: np.ndarray
    cos_fp32: np.ndarray = None
    sin_fp32: np.ndarray = None

    @property
    def max_pos(self):
        return self.cos_q.shape[0]


def _rope_angles(head_dim, max_pos, base):
    inv = [base ** (-(2 * i) / head_dim) for i in range(head_dim // 2)]
    return [[p * f for f in inv] for p in range(max_pos)]


def rope_table(*, head_dim, max_pos, base):
    """Build the :class:`RopeTable` (deterministic: Python floats and libm cos/sin)."""
    for name, v, lo, hi in (("head_dim", head_dim, 2, 1024), ("max_pos", max_pos, 1, 1 << 20)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
        if not lo <= v <= hi:
            raise ValueError(f"{name} must be in [{lo}, {hi}], got {v}")
    if head_dim % 2:
        raise ValueError(f"head_dim must be even, got {head_dim}")
    if isinstance(base, bool) or not isinstance(base, (int, float, np.floating, np.integer)):
        raise TypeError(f"base must be a real number, got {type(base).__name__}")
    if not (math.isfinite(base) and base > 1):
        raise ValueError(f"base must be finite and > 1, got {base}")
    ang = _rope_angles(int(head_dim), int(max_pos), float(base))
    c = np.array([[math.cos(a) for a in row] for row in ang], dtype=np.float64)
    s = np.array([[math.sin(a) for a in row] for row in ang], dtype=np.float64)
    q = lambda v: (np.sign(v) * np.floor(np.abs(v) * 2.0 ** ROPE_FRAC + 0.5)).astype(np.int16)
    f32 = lambda v: fp32_from_bits(fp32_daz(as_fp32_bits(v.astype(np.float32))))
    return RopeTable(head_dim=int(head_dim), base=float(base), cos_q=q(c), sin_q=q(s),
                     cos_bf16=bf16_from_bits(_round_f64_to_bf16_bits(c)),
                     sin_bf16=bf16_from_bits(_round_f64_to_bf16_bits(s)),
                     cos_fp32=f32(c), sin_fp32=f32(s))


def _rope_pairs(x, pairing):
    h = x.shape[-1] // 2
    if pairing == "half":
        return x[..., :h], x[..., h:]
    if pairing == "interleaved":
        return x[..., 0::2], x[..., 1::2]
    raise ValueError(f"pairing must be 'half' or 'interleaved', got {pairing!r}")


def _rope_join(a, b, pairing):
    if pairing == "half":
        return np.concatenate([a, b], axis=-1)
    out = np.empty(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
    out[..., 0::2], out[..., 1::2] = a, b
    return out


def _rope_positions(pos, x_shape, table):
    p = int_array(pos, "pos", 0, table.max_pos - 1)
    try:
        return np.broadcast_to(p, x_shape[:-1])
    except ValueError:
        raise ValueError(f"pos of shape {p.shape} does not broadcast to x's leading shape {x_shape[:-1]}") \
            from None


def _check_rope_x(x, table):
    if not isinstance(table, RopeTable):
        raise TypeError(f"table must be a RopeTable, got {type(table).__name__}")
    if x.ndim == 0 or x.shape[-1] != table.head_dim:
        raise ValueError(f"x's last axis must be head_dim = {table.head_dim}, got shape {x.shape}")


def rope_int8(x, pos, table, *, multiplier=1 << 30, shift=30 + ROPE_FRAC, pairing="half"):
    """Rotary position embedding, int8 in and out.

    For each pair (a, b) (``pairing="half"``: ``a = x[i], b = x[i + hd/2]``, the Hugging Face /
    GPT-NeoX rotate-half order; ``"interleaved"``: ``a = x[2i], b = x[2i+1]``, GPT-J /
    llama.cpp order) with C = cos_q[p, i], S = sin_q[p, i] (Q1.14):
    ``a' = requantize(a·C − b·S)``, ``b' = requantize(a·S + b·C)``, exact int32 sums
    (|·| ≤ 2**22), then :func:`golden.requantize` with ``multiplier``/``shift`` (scalars). The
    defaults (2**30, 44) are the scale 2**−14: output scale = input scale.

    Parameters
    ----------
    x : ndarray of int8, shape [..., head_dim]
    pos : int or integer array broadcastable to ``x.shape[:-1]``, values in [0, table.max_pos)
    table : RopeTable
    """
    x = array_of(x, "x", [np.int8])
    _check_rope_x(x, table)
    p = _rope_positions(pos, x.shape, table)
    int_array(multiplier, "multiplier", 0, MULTIPLIER_MAX)
    int_array(shift, "shift", SHIFT_MIN, SHIFT_MAX)
    if np.ndim(multiplier) or np.ndim(shift):
        raise ValueError("multiplier and shift of rope_int8 must be scalars")
    a, b = (v.astype(np.int32) for v in _rope_pairs(x, pairing))
    c, s = table.cos_q[p].astype(np.int32), table.sin_q[p].astype(np.int32)
    ra = requantize(a * c - b * s, multiplier, shift)
    rb = requantize(a * s + b * c, multiplier, shift)
    return _rope_join(ra, rb, pairing)


def rope_bf16(x, pos, table, *, pairing="half"):
    """Rotary position embedding in bf16.

    ``a' = fp32_to_bf16(fp32_add(bf16_mul(a, C), bf16_mul(b, −S)))``,
    ``b' = fp32_to_bf16(fp32_add(bf16_mul(a, S), bf16_mul(b, C)))`` with C, S the bf16 tables
    (pairs as in :func:`rope_int8`).
    """
    xb = _bf16_bits(x, "x")
    _check_rope_x(xb, table)
    p = _rope_positions(pos, xb.shape, table)
    a, b = _rope_pairs(xb, pairing)
    c = as_bf16_bits(table.cos_bf16)[p]
    s = as_bf16_bits(table.sin_bf16)[p]
    neg_s = s ^ np.uint16(0x8000)
    ra = fp32_to_bf16(fp32_add(bf16_mul(a, c), bf16_mul(b, neg_s)))
    rb = fp32_to_bf16(fp32_add(bf16_mul(a, s), bf16_mul(b, c)))
    return bf16_from_bits(_rope_join(ra, rb, pairing))


def rope_fp32_in(x, pos, table, *, pairing="half"):
    """Rotary position embedding of an fp32 input (the unrounded q/k matmul outputs) with fp32
    cos/sin and one final rounding to bf16.

    ``a' = fp32_to_bf16(fp32_add(fp32_mul(a, C), fp32_mul(b, −S)))``,
    ``b' = fp32_to_bf16(fp32_add(fp32_mul(a, S), fp32_mul(b, C)))`` with C, S the fp32 tables
    (``table.cos_fp32``, ``table.sin_fp32``; pairs as in :func:`rope_int8`). DAZ on x; the
    rules of :func:`fp32_mul` and :func:`golden.fp32_add` for every special value.

    Parameters
    ----------
    x : ndarray of float32, shape [..., head_dim]
    pos : int or integer array broadcastable to ``x.shape[:-1]``, values in [0, table.max_pos)
    table : RopeTable with its fp32 entries

    Returns
    -------
    ndarray of ml_dtypes.bfloat16, the shape of ``x``
    """
    xb = _fp32_bits_in(x, "x")
    _check_rope_x(xb, table)
    if table.cos_fp32 is None or table.sin_fp32 is None:
        raise ValueError("rope_fp32_in needs the table's fp32 entries (cos_fp32, sin_fp32; see rope_table)")
    p = _rope_positions(pos, xb.shape, table)
    a, b = _rope_pairs(xb, pairing)
    c = as_fp32_bits(table.cos_fp32)[p]
    s = as_fp32_bits(table.sin_fp32)[p]
    ra = fp32_to_bf16(fp32_add(fp32_mul(a, c), fp32_mul(b, _fp32_neg(s))))
    rb = fp32_to_bf16(fp32_add(fp32_mul(a, s), fp32_mul(b, c)))
    return bf16_from_bits(_rope_join(ra, rb, pairing))


def rope_reference(x, pos, *, base, pairing="half"):
    """float64 RoPE (same pairing conventions)."""
    x = np.asarray(x, dtype=np.float64)
    hd = x.shape[-1]
    inv = base ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = np.asarray(pos, dtype=np.float64)[..., None] * inv
    c, s = np.cos(ang), np.sin(ang)
    a, b = _rope_pairs(x, pairing)
    return _rope_join(a * c - b * s, a * s + b * c, pairing)


# ---------------------------------------------------------------- residual add


def residual_add_params(a_scale, b_scale, out_scale):
    """(a_multiplier, b_multiplier, shift) for :func:`residual_add_int` so that
    ``out ≈ (a·a_scale + b·b_scale) / out_scale``: the larger ratio is normalised by
    :func:`golden.quantize_multiplier`, the other uses the same shift (round half up)."""
    ra = real_array(a_scale, "a_scale") / real_array(out_scale, "out_scale")
    rb = real_array(b_scale, "b_scale") / real_array(out_scale, "out_scale")
    for name, r in (("a_scale/out_scale", ra), ("b_scale/out_scale", rb)):
        if np.ndim(r) or not (np.isfinite(r) and r > 0):
            raise ValueError(f"{name} must be a finite positive scalar, got {r}")
    m_big, s = quantize_multiplier(float(max(ra, rb)))
    m_small = math.floor(float(min(ra, rb)) * 2.0 ** s + 0.5)
    return (m_big, m_small, s) if ra >= rb else (m_small, m_big, s)


def residual_add_int(a, b, *, a_multiplier=1, b_multiplier=1, shift=0, out_dtype=np.int8):
    """Saturating residual add of two integer tensors.

    ``y = clamp((a·ma + b·mb + round) >> shift, out_min, out_max)`` with ``round = 2**(shift−1)``
    (0 when shift = 0), exact in 64 bits (|a|, |b| ≤ 2**15, m < 2**31). The defaults are the
    plain saturating add ``clamp(a + b)``.

    Parameters
    ----------
    a, b : ndarray of int8 or int16, the same shape
    a_multiplier, b_multiplier : int in [0, 2**31)
    shift : int in [0, 62]
    out_dtype : np.int8 or np.int16
    """
    a = array_of(a, "a", [np.int8, np.int16])
    b = array_of(b, "b", [np.int8, np.int16])
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {a.shape} and {b.shape}")
    ma = int(int_array(a_multiplier, "a_multiplier", 0, MULTIPLIER_MAX))
    mb = int(int_array(b_multiplier, "b_multiplier", 0, MULTIPLIER_MAX))
    s = int(int_array(shift, "shift", 0, SHIFT_MAX))
    if np.dtype(out_dtype) not in (np.dtype(np.int8), np.dtype(np.int16)):
        raise TypeError(f"out_dtype must be int8 or int16, got {out_dtype}")
    info = np.iinfo(out_dtype)
    v = a.astype(np.int64) * ma + b.astype(np.int64) * mb + ((1 << (s - 1)) if s else 0)
    return np.clip(v >> s, info.min, info.max).astype(out_dtype)


def residual_add_bf16(a, b):
    """bf16 residual add: ``fp32_to_bf16(fp32_add(a, b))`` (DAZ, RNE, FTZ, canonical NaN)."""
    ab, bb = _bf16_bits(a, "a"), _bf16_bits(b, "b")
    if ab.shape != bb.shape:
        raise ValueError(f"a and b must have the same shape, got {ab.shape} and {bb.shape}")
    return bf16_from_bits(fp32_to_bf16(fp32_add(bf16_to_fp32_bits(ab), bf16_to_fp32_bits(bb))))


# ---------------------------------------------------------------- Hadamard transform


def hadamard_matrix(n):
    """The n×n Sylvester Hadamard matrix (float64, entries ±1): ``H[i, j] = (−1)**popcount(i & j)``;
    ``H @ H = n·I``. n a power of two, 1..4096."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= 4096 or n & (n - 1):
        raise ValueError(f"n must be a power of two in [1, 4096], got {n!r}")
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


def _hadamard_input_bits(x):
    import ml_dtypes
    arr = np.asarray(x)
    if arr.dtype == ml_dtypes.bfloat16:
        return bf16_to_fp32_bits(bf16_daz(as_bf16_bits(arr)))
    if arr.dtype == np.float32:
        return fp32_daz(np.ascontiguousarray(arr).view(np.uint32).reshape(arr.shape))
    raise TypeError(f"x must have dtype bfloat16 or float32, got {arr.dtype}")


def hadamard_fp32(x, *, block=HADAMARD_BLOCK):
    """Unnormalized Walsh–Hadamard transform of each block of ``block`` consecutive elements of
    the last axis, in fp32: ``y = x_b · H`` per block (H the Sylvester matrix, H·H = block·I).

    The fast transform, every butterfly one :func:`golden.fp32_add`: for h = 1, 2, 4, …,
    block/2 (in this order), for every index i of a block with ``i & h == 0``:
    ``(v[i], v[i+h]) ← (fp32_add(v[i], v[i+h]), fp32_add(v[i], −v[i+h]))``. DAZ on the input;
    results as :func:`golden.fp32_add` gives them (RNE, FTZ, canonical NaN).

    Parameters
    ----------
    x : ndarray of ml_dtypes.bfloat16 or float32, shape [..., D], D a multiple of ``block``
    block : int
        A power of two, 1..4096 (default :data:`HADAMARD_BLOCK` = 64).

    Returns
    -------
    ndarray of float32, the shape of ``x``
    """
    hadamard_matrix(block)  # validates block
    v = _hadamard_input_bits(x)
    if v.ndim == 0 or v.shape[-1] % block:
        raise ValueError(f"x's last axis must be a multiple of block = {block}, got shape {v.shape}")
    shape = v.shape
    v = v.reshape(-1, shape[-1] // block, block)
    h = 1
    while h < block:
        w = v.reshape(v.shape[0], v.shape[1], block // (2 * h), 2, h)
        a, b = w[:, :, :, 0, :], w[:, :, :, 1, :]
        top, bot = fp32_add(a, b), fp32_add(a, _fp32_neg(b))
        v = np.stack([top, bot], axis=3).reshape(v.shape)
        h *= 2
    return fp32_from_bits(v.reshape(shape))


def hadamard_reference(x, *, block=HADAMARD_BLOCK):
    """float64 ``x_b · H`` per block of the last axis (the reference of :func:`hadamard_fp32`)."""
    x = np.asarray(x, dtype=np.float64)
    h = hadamard_matrix(block)
    return (x.reshape(x.shape[:-1] + (x.shape[-1] // block, block)) @ h).reshape(x.shape)
