"""Requantization int32 → int8 (docs/numerics.md, "Matrix multiply and requantization").

:func:`requantize`
    ``y = clamp((acc * m + 2**(s-1)) >> s, -128, 127)`` with an exact 64-bit product: one
    rounding, round half up (towards +Inf), then saturation. Per output channel: ``m`` and ``s``
    are scalars or arrays along the last axis of ``acc``.
:func:`quantize_multiplier`
    A real scale → ``(m, s)`` with ``m`` normalised into [2**30, 2**31) and ``m * 2**-s`` the
    scale rounded to 31 significant bits (round half up).
"""

import numpy as np

from ._check import check_ndim, int_array, real_array

__all__ = ["requantize", "quantize_multiplier", "MULTIPLIER_MAX", "SHIFT_MIN", "SHIFT_MAX",
           "SCALE_MIN", "SCALE_MAX"]

#: ``multiplier`` is an unsigned 31-bit number: 0 ≤ m ≤ MULTIPLIER_MAX.
MULTIPLIER_MAX = (1 << 31) - 1
#: ``shift`` range (a 6-bit field in hardware).
SHIFT_MIN, SHIFT_MAX = 1, 62
#: Smallest scale :func:`quantize_multiplier` accepts, (2**31 − 1/2)·2**−63 = 2**−32 − 2**−64:
#: anything smaller would need s > 62 (and every |acc| < 2**31 would requantize to 0 anyway).
SCALE_MIN = 2.0 ** -32 - 2.0 ** -64
#: Scales must be below (2**31 − 1/2)·2**−1 = 2**30 − 2**−2, which would round to s = 0.
SCALE_MAX = 2.0 ** 30 - 2.0 ** -2


def _per_channel(x, name, acc, lo, hi):
    arr = int_array(x, name, lo, hi)
    check_ndim(arr, name, (0, 1), " (a scalar or one value per output channel)")
    if arr.ndim == 1 and (acc.ndim == 0 or arr.shape[0] != acc.shape[-1]):
        channels = acc.shape[-1] if acc.ndim else "none: acc is a scalar"
        raise ValueError(f"{name} has {arr.shape[0]} values but acc's last axis has {channels} channels")
    return arr


def requantize(acc, multiplier, shift):
    """int32 accumulators → int8, per output channel (the last axis of ``acc``).

    ``y = clamp((acc * multiplier + 2**(shift - 1)) >> shift, -128, 127)``, computed exactly in
    64 bits (``|acc * m| < 2**62``), ``>>`` an arithmetic shift: the value ``acc * m / 2**s``
    rounded once, half up, then saturated.

    Parameters
    ----------
    acc : array of integers, values in int32 range
        Accumulators, any shape (e.g. [M, N] from :func:`golden.matmul_int8`).
    multiplier : int or 1-D integer array, values in [0, 2**31)
        Scalar, or one per channel (length ``acc.shape[-1]``).
    shift : int or 1-D integer array, values in [1, 62]
        Scalar, or one per channel.

    Returns
    -------
    ndarray of int8, the shape of ``acc``

    Raises
    ------
    TypeError
        Non-integer arguments.
    ValueError
        Values out of range, or per-channel arrays whose length is not ``acc.shape[-1]``.
    """
    acc = int_array(acc, "acc", -(1 << 31), (1 << 31) - 1)
    m = _per_channel(multiplier, "multiplier", acc, 0, MULTIPLIER_MAX)
    s = _per_channel(shift, "shift", acc, SHIFT_MIN, SHIFT_MAX)
    y = (acc * m + (np.int64(1) << (s - 1))) >> s
    return np.clip(y, -128, 127).astype(np.int8)


def quantize_multiplier(scale):
    """A real scale → ``(multiplier, shift)`` for :func:`requantize`.

    ``scale = f * 2**e`` with f in [1/2, 1) (``frexp``); ``m = floor(f * 2**31 + 1/2)``,
    ``s = 31 - e``; if the rounding reaches 2**31, ``m = 2**30`` and ``s`` decreases by one. So
    ``m`` is in [2**30, 2**31) and ``|m * 2**-s - scale| <= 2**-(s+1)`` (relative error ≤ 2**−31).

    Parameters
    ----------
    scale : float or array of floats
        Finite, in [SCALE_MIN, SCALE_MAX) = [2**−32 − 2**−64, 2**30 − 2**−2), the range where the
        normalised shift lands in [1, 62].

    Returns
    -------
    (multiplier, shift)
        Python ints for a scalar ``scale``; int64 arrays of its shape otherwise.

    Raises
    ------
    TypeError
        ``scale`` not real.
    ValueError
        ``scale`` not finite, or outside [SCALE_MIN, SCALE_MAX).
    """
    scalar = np.ndim(scale) == 0
    x = real_array(scale, "scale")
    if x.size:
        bad = ~np.isfinite(x) | (x < SCALE_MIN) | (x >= SCALE_MAX)
        if np.any(bad):
            raise ValueError(f"scale must be finite and in [2**-32 - 2**-64, 2**30 - 2**-2) "
                             f"(shift in [1, 62]), got {x[bad].flat[0]!r}")
    f, e = np.frexp(x)
    m = np.floor(f * 2.0 ** 31 + 0.5).astype(np.int64)  # f * 2**31 < 2**31: exact, as is + 1/2
    s = (31 - e).astype(np.int64)
    carry = m == (1 << 31)
    m = np.where(carry, np.int64(1 << 30), m)
    s = np.where(carry, s - 1, s)
    if scalar:
        return int(m), int(s)
    return m, s
