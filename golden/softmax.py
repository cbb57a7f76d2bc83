"""Bit-exact model of the softmax unit (docs/numerics.md, "Softmax").

Both paths share one base-2, three-pass structure that the hardware streams with P lanes:

1. **log2 units.** Every score becomes a signed fixed-point number ``x`` in units of
   ``2**-FRAC_BITS`` log2 units, saturated to ``X_BITS`` bits:

   * int8 path: ``x = (s * m + 2**(sh-1)) >> sh`` (int32 score ``s``, 16-bit multiplier ``m``,
     shift ``sh``; no rounding term when ``sh == 0``);
   * bf16 path: ``x = floor(s * c * 2**FRAC_BITS + 1/2)`` of the *exact* product of the fp32
     score ``s`` and the fp32 constant ``c`` (DAZ on both; ±Inf saturates; NaN, or 0 × Inf,
     marks the row NaN).

   ``m``/``sh`` and ``c`` fold the 1/sqrt(d) factor, the quantization scales and log2(e).
2. **max.** ``R`` = the row maximum of the visible ``x`` rounded *up* to a whole log2 unit.
3. **exp and sum.** ``d = R - x >= 0`` splits into ``n = d >> FRAC_BITS`` (clamped to
   ``N_MAX``) and ``f = d mod 2**FRAC_BITS``; ``2**-(d/2**FRAC_BITS) = EXP2_TABLE[f] * 2**-(n +
   EXP_BITS)``. The sum ``S`` adds ``(EXP2_TABLE[f] << SUM_GUARD) >> n`` (floor) over the visible
   elements, exactly, in integers.
4. **reciprocal.** ``z = bit_length(S) - 1``; ``St = S >> (z + 1 - RCP_IN_BITS)`` (the top
   ``RCP_IN_BITS`` bits); ``Rcp = 2**(RCP_IN_BITS - 1 + RCP_BITS) // St``.
5. **output.** ``V = EXP2_TABLE[f] * Rcp`` and ``k = n + RCP_BITS + z - SUM_GUARD``, so that
   ``p ≈ V * 2**-k``. int8 path: ``q = min(255, (255 * V + 2**(k-1)) >> k)``, a uint8
   probability with scale 1/255 (255 is p = 1). bf16 path: ``V * 2**-k`` rounded to 8
   significant bits (RNE), flushed to +0 below 2**-126.

Masked positions (``j >= valid_len`` or ``j > causal_pos``) are never read and output exactly 0;
a row with no visible position outputs all zeros. Every step is either an order-free integer
max/sum or elementwise, so the result does not depend on the number of lanes P.
"""

import math

import numpy as np

# the widths and the exp table are shared with the hardware: one definition, in spec.softmax.
from spec.softmax import (
    BF16_NAN_ROW,
    EXP2_TABLE,
    EXP_BITS,
    FRAC_BITS,
    INT8_ONE,
    N_MAX,
    RCP_BITS,
    RCP_IN_BITS,
    SUM_GUARD,
    X_BITS,
    exp2_table,
)

from .fp import as_fp32_bits, bf16_from_bits, fp32_daz

__all__ = [
    "FRAC_BITS", "EXP_BITS", "SUM_GUARD", "RCP_BITS", "RCP_IN_BITS", "X_BITS", "N_MAX",
    "EXP2_TABLE", "INT8_ONE", "BF16_NAN_ROW",
    "softmax_scale_int8", "softmax_scale_bf16", "softmax_visible",
    "softmax_x_int8", "softmax_x_bf16", "softmax_core", "softmax_out_int8", "softmax_out_bf16",
    "softmax_int8", "softmax_bf16", "softmax_bf16_bits", "softmax_reference",
]

_X_MIN = -(1 << (X_BITS - 1))
_X_MAX = (1 << (X_BITS - 1)) - 1


# --------------------------------------------------------------------------------------------
# scale constants

def softmax_scale_int8(real_scale, *, frac_bits=FRAC_BITS):
    """(m, sh) such that ``(s * m) >> sh`` ≈ ``s * real_scale * log2(e) * 2**frac_bits``.

    ``real_scale`` multiplies an int32 score into natural-log units (for attention:
    ``scale_q * scale_k / sqrt(head_dim)``). m is in 2**15..2**16-1 (16 significant bits).
    Raises ValueError unless 2**-40 ≤ real_scale ≤ 2**5.
    """
    if isinstance(real_scale, bool) or not isinstance(real_scale, (int, float, np.integer, np.floating)):
        raise TypeError(f"real_scale must be a real number, not {type(real_scale).__name__}")
    real_scale = float(real_scale)
    if not (math.isfinite(real_scale) and 2.0 ** -40 <= real_scale <= 2.0 ** 5):
        raise ValueError(f"real_scale must be in 2**-40..2**5, not {real_scale!r}")
    target = real_scale * math.log2(math.e) * (1 << frac_bits)
    sh = 15 - math.frexp(target)[1] + 1  # target * 2**sh in [2**15, 2**16)
    m = int(math.floor(target * 2.0 ** sh + 0.5))
    if m == 1 << 16:
        m, sh = 1 << 15, sh - 1
    if not 0 <= sh <= 63:
        raise ValueError(f"real_scale {real_scale!r} needs a shift outside 0..63")
    return m, sh


def softmax_scale_bf16(real_scale):
    """The fp32 constant c = fp32(real_scale * log2(e)) of the bf16 path, as a numpy float32.

    Raises ValueError unless real_scale is finite and > 0 and c is a normal fp32.
    """
    if isinstance(real_scale, bool) or not isinstance(real_scale, (int, float, np.integer, np.floating)):
        raise TypeError(f"real_scale must be a real number, not {type(real_scale).__name__}")
    c = np.float32(float(real_scale) * math.log2(math.e))
    if not (np.isfinite(c) and c >= np.float32(2.0 ** -126)):
        raise ValueError(f"real_scale must be finite and > 0 (a normal fp32 after × log2 e), "
                         f"not {real_scale!r}")
    return c


# --------------------------------------------------------------------------------------------
# input checking

def _rows(a, name):
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2:
        raise ValueError(f"{name} must be 1-D (one row) or 2-D (rows, length), not {a.ndim}-D")
    if a.shape[1] < 1:
        raise ValueError(f"{name} rows must have length ≥ 1")
    return a


def _per_row(value, rows, name, lo, hi, default):
    if value is None:
        return np.full(rows, default, dtype=np.int64)
    v = np.asarray(value)
    if v.dtype.kind not in "iu" or v.dtype == np.bool_:
        raise TypeError(f"{name} must be an integer or an integer array, not {v.dtype}")
    if v.ndim > 1 or (v.ndim == 1 and v.shape[0] != rows):
        raise ValueError(f"{name} must be a scalar or one value per row ({rows}), not shape {v.shape}")
    v = np.broadcast_to(v.astype(np.int64), (rows,)).copy()
    if v.size and (v.min() < lo or (hi is not None and v.max() > hi)):
        bad = v[(v < lo) | (v > (hi if hi is not None else v.max()))][0]
        rng = f"{lo}..{hi}" if hi is not None else f"≥ {lo}"
        raise ValueError(f"{name} must be in {rng}, not {bad}")
    return v


def softmax_visible(rows, length, valid_len=None, causal_pos=None):
    """Boolean mask (rows, length): key j is visible iff j < valid_len and j ≤ causal_pos.

    ``valid_len`` (0..length, default length) and ``causal_pos`` (≥ 0, default: no causal
    mask) are scalars or one value per row.
    """
    vl = _per_row(valid_len, rows, "valid_len", 0, length, length)
    if causal_pos is None:
        cp = np.full(rows, length, dtype=np.int64)
    else:
        cp = _per_row(causal_pos, rows, "causal_pos", 0, None, 0)
    limit = np.minimum(vl, cp + 1)
    return np.arange(length)[None, :] < limit[:, None]


# --------------------------------------------------------------------------------------------
# step 1: scores → x

def softmax_x_int8(scores, m, sh):
    """x of the int8 path (int64, saturated to X_BITS bits); m, sh broadcast per row."""
    s = scores.astype(np.int64)
    m = np.asarray(m, dtype=np.int64).reshape(-1, 1)
    sh = np.asarray(sh, dtype=np.int64).reshape(-1, 1)
    half = np.where(sh > 0, np.left_shift(np.int64(1), np.maximum(sh - 1, 0)), 0)
    x = (s * m + half) >> sh
    return np.clip(x, _X_MIN, _X_MAX)


def softmax_x_bf16(score_bits, scale_bits, *, frac_bits=FRAC_BITS):
    """(x, nan) of the bf16 path from fp32 bit patterns; scale_bits broadcast per row.

    x = floor(s·c·2**frac_bits + 1/2) of the exact product, saturated to X_BITS bits; ±Inf
    operands saturate; nan marks NaN operands and 0 × Inf.
    """
    a = fp32_daz(score_bits).astype(np.int64)
    b = fp32_daz(np.asarray(scale_bits, dtype=np.uint32)).astype(np.int64).reshape(-1, 1)
    ea, eb = (a >> 23) & 0xFF, (b >> 23) & 0xFF
    ma = np.where(ea == 0, 0, (a & 0x7FFFFF) | 0x800000)
    mb = np.where(eb == 0, 0, (b & 0x7FFFFF) | 0x800000)
    neg = ((a >> 31) ^ (b >> 31)) & 1
    a_nan = (ea == 255) & ((a & 0x7FFFFF) != 0)
    b_nan = (eb == 255) & ((b & 0x7FFFFF) != 0)
    a_inf = (ea == 255) & ~a_nan
    b_inf = (eb == 255) & ~b_nan
    a_zero, b_zero = ea == 0, eb == 0
    nan = a_nan | b_nan | (a_inf & b_zero) | (b_inf & a_zero)
    inf = (a_inf | b_inf) & ~nan
    prod = ma * mb  # < 2**48, exact
    sv = np.where(neg == 1, -prod, prod)
    e = ea + eb - 2 * (127 + 23) + frac_bits  # value = sv * 2**e
    k = np.clip(-e, 0, 62)
    shifted = (sv + np.left_shift(np.int64(1), np.maximum(k - 1, 0))) >> k
    big = (e >= -22) & (prod != 0)  # |value| ≥ 2**24: saturates
    x = np.where(big | inf, np.where(neg == 1, _X_MIN, _X_MAX), np.clip(shifted, _X_MIN, _X_MAX))
    x = np.where(nan, 0, x)
    return x.astype(np.int64), nan


# --------------------------------------------------------------------------------------------
# steps 2..5

def softmax_core(x, visible, *, frac_bits=FRAC_BITS, exp_bits=EXP_BITS, sum_guard=SUM_GUARD,
                 rcp_bits=RCP_BITS, rcp_in_bits=RCP_IN_BITS, table=None):
    """Steps 2..5 on x (rows, L) int64 with a visibility mask.

    Returns a dict of int64 arrays: ``V``, ``k`` (p ≈ V·2**-k, V = 0 where masked), and the
    per-row ``R`` (in x units), ``S``, ``z``, ``rcp`` (0 for a fully masked row) — the
    intermediate values the hardware tests compare too.
    """
    if table is None:
        table = EXP2_TABLE if (frac_bits, exp_bits) == (FRAC_BITS, EXP_BITS) else exp2_table(frac_bits, exp_bits)
    one = np.int64(1) << frac_bits
    lowest = np.int64(-(1 << 62))
    has = visible.any(axis=1)
    mx = np.where(visible, x, lowest).max(axis=1)
    mx = np.where(has, mx, 0)
    R = ((mx + one - 1) >> frac_bits) << frac_bits
    d = np.where(visible, R[:, None] - x, 0)
    n = np.minimum(d >> frac_bits, N_MAX)
    f = d & (one - 1)
    te = np.where(visible, table[f], 0)
    big_n = n > exp_bits + sum_guard + 1
    efix = np.where(big_n, 0, (te << sum_guard) >> np.where(big_n, 0, n))
    S = efix.sum(axis=1)
    Sf = np.maximum(S, 1)
    z = np.frexp(Sf.astype(np.float64))[1].astype(np.int64) - 1  # exact: S < 2**53
    St = Sf >> np.maximum(z + 1 - rcp_in_bits, 0)
    rcp = np.where(has, (np.int64(1) << (rcp_in_bits - 1 + rcp_bits)) // St, 0)
    V = te * rcp[:, None]
    k = n + rcp_bits + z[:, None] - sum_guard
    return {"V": V, "k": k, "R": R, "S": S, "z": z, "rcp": rcp, "n": n, "te": te}


def softmax_out_int8(V, k):
    """Step 5 of the contract, int8 path: ``min(255, (255·V + 2**(k-1)) >> k)`` as uint8, from
    :func:`softmax_core`'s ``V`` and ``k``."""
    kk = np.minimum(k, 62)
    q = (INT8_ONE * V + (np.int64(1) << (kk - 1))) >> kk
    return np.minimum(q, INT8_ONE).astype(np.uint8)


def softmax_out_bf16(V, k):
    """Step 5 of the contract, bf16 path: ``V · 2**-k`` rounded to bf16 (RNE, flushed to +0
    below 2**-126) as bit patterns, from :func:`softmax_core`'s ``V`` and ``k``."""
    Vs = np.maximum(V, 1)
    b = np.frexp(Vs.astype(np.float64))[1].astype(np.int64) - 1  # V < 2**53: exact
    # every visible V ≥ 2**(EXP_BITS-1) · 2**(RCP_BITS-1) > 2**8, so shift ≥ 1
    shift = np.maximum(b - 7, 1)
    m = Vs >> shift
    rem = Vs & ((np.int64(1) << shift) - 1)
    half = np.int64(1) << (shift - 1)
    up = (rem > half) | ((rem == half) & ((m & 1) == 1))
    m = m + up
    carry = m == 256
    m = np.where(carry, 128, m)
    ev = b - k + carry
    bits = ((ev + 127) << 7) | (m & 0x7F)
    bits = np.where((V == 0) | (ev < -126), 0, bits)
    return bits.astype(np.uint16)


# --------------------------------------------------------------------------------------------
# public API

def _check_int_scores(scores):
    s = np.asarray(scores)
    if s.dtype.kind not in "iu" or s.dtype == np.bool_:
        raise TypeError(f"scores must be an int32 array, not dtype {s.dtype}")
    s = _rows(s, "scores")
    if s.size and (s.min() < -(1 << 31) or s.max() > (1 << 31) - 1):
        raise ValueError("scores must fit in int32")
    return s.astype(np.int64)


def softmax_int8(scores, scale_q, valid_len=None, causal_pos=None):
    """int8-path softmax: int32 scores → uint8 probabilities (scale 1/255; 255 is p = 1).

    Parameters
    ----------
    scores : int array (L,) or (rows, L)
        Q·Kᵀ scores from the int8 matmul (int32 range).
    scale_q : (m, sh)
        The fixed-point constant from :func:`softmax_scale_int8`: m in 0..65535, sh in 0..63,
        each a scalar or one value per row.
    valid_len : int or int array, optional
        Visible prefix of each row, 0..L (padding); default L.
    causal_pos : int or int array, optional
        Query position: key j is visible only if j ≤ causal_pos; default: no causal mask.

    Returns
    -------
    uint8 array of the shape of ``scores``.
    """
    one_d = np.asarray(scores).ndim == 1
    s = _check_int_scores(scores)
    if not (isinstance(scale_q, (tuple, list)) and len(scale_q) == 2):
        raise TypeError(f"scale_q must be a pair (m, sh), not {scale_q!r}")
    rows, length = s.shape
    m = _per_row(scale_q[0], rows, "scale_q multiplier m", 0, (1 << 16) - 1, 0)
    sh = _per_row(scale_q[1], rows, "scale_q shift sh", 0, 63, 0)
    vis = softmax_visible(rows, length, valid_len, causal_pos)
    c = softmax_core(softmax_x_int8(s, m, sh), vis)
    q = np.where(vis, softmax_out_int8(c["V"], c["k"]), 0).astype(np.uint8)
    return q[0] if one_d else q


def softmax_bf16_bits(score_bits, scale_bits, valid_len=None, causal_pos=None):
    """bf16-path softmax on bit patterns: fp32 scores (uint32) and the fp32 constant c (uint32,
    scalar or per row) → bf16 probabilities (uint16). Any bit pattern is accepted."""
    b = np.asarray(score_bits)
    one_d = b.ndim == 1
    if b.dtype != np.uint32:
        raise TypeError(f"score_bits must be uint32 fp32 bit patterns, not dtype {b.dtype}")
    b = _rows(b, "score_bits")
    rows, length = b.shape
    c = np.asarray(scale_bits)
    if c.dtype != np.uint32:
        raise TypeError(f"scale_bits must be uint32 fp32 bit patterns, not dtype {c.dtype}")
    if c.ndim > 1 or (c.ndim == 1 and c.shape[0] != rows):
        raise ValueError(f"scale_bits must be a scalar or one value per row ({rows}), not shape {c.shape}")
    c = np.broadcast_to(c, (rows,))
    vis = softmax_visible(rows, length, valid_len, causal_pos)
    x, nan = softmax_x_bf16(b, c)
    row_nan = (nan & vis).any(axis=1)
    core = softmax_core(x, vis & ~row_nan[:, None])
    out = softmax_out_bf16(core["V"], core["k"])
    out = np.where(row_nan[:, None], np.uint16(BF16_NAN_ROW), out)
    out = np.where(vis, out, 0).astype(np.uint16)
    return out[0] if one_d else out


def softmax_bf16(scores, scale_q, valid_len=None, causal_pos=None):
    """bf16-path softmax: fp32 scores → ``ml_dtypes.bfloat16`` probabilities.

    ``scale_q`` is the fp32 constant from :func:`softmax_scale_bf16` (scalar or one per row).
    Masks as in :func:`softmax_int8`. A visible NaN score (or 0 × Inf) makes every visible
    output of its row NaN.
    """
    s = np.asarray(scores)
    if s.dtype != np.float32:
        raise TypeError(f"scores must be a float32 array, not dtype {s.dtype}")
    c = np.asarray(scale_q)
    if c.dtype.kind != "f":
        raise TypeError(f"scale_q must be float32 (see softmax_scale_bf16), not dtype {c.dtype}")
    cbits = as_fp32_bits(c.astype(np.float32)).reshape(c.shape)
    bits = softmax_bf16_bits(as_fp32_bits(s).reshape(s.shape), cbits, valid_len, causal_pos)
    return bf16_from_bits(bits)


def softmax_reference(scores, real_scale, valid_len=None, causal_pos=None):
    """Float64 softmax of ``scores * real_scale`` over the visible positions (0 elsewhere;
    a fully masked row is all zeros)."""
    s = _rows(np.asarray(scores, dtype=np.float64), "scores")
    rows, length = s.shape
    vis = softmax_visible(rows, length, valid_len, causal_pos)
    z = np.where(vis, s * np.asarray(real_scale, dtype=np.float64).reshape(-1, 1), -np.inf)
    mx = z.max(axis=1, keepdims=True)
    mx = np.where(np.isfinite(mx), mx, 0.0)
    e = np.where(vis, np.exp(z - mx), 0.0)
    tot = e.sum(axis=1, keepdims=True)
    p = np.where(tot > 0, e / np.where(tot > 0, tot, 1.0), 0.0)
    return p[0] if np.asarray(scores).ndim == 1 else p
