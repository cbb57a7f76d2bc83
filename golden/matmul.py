"""Bit-exact models of the matmul engine (docs/numerics.md, "Matrix multiply and requantization").

:func:`matmul_int8`
    int8 (or uint8) activations × int8 weights → int32, exact products, sum wrapped to 32 bits.
:func:`matmul_bf16`
    bf16 × bf16 → fp32, every product and every addition done by the fp32 units of
    ``golden/fp.py`` (DAZ, RNE, FTZ, canonical NaN), accumulated strictly in k order.
:func:`int8_matmul_max_k`
    The largest reduction length K for which an int8 matmul can never overflow int32.

Both matmuls are ``a[M, K] @ w[K, N] (+ bias[N])``. The result of every output element depends
only on its row of ``a``, its column of ``w`` and its bias, combined in the order k = 0, 1, …,
K−1, so it does not depend on how the hardware tiles M, K and N onto its array.
"""

import numpy as np

from ._check import array_of, bf16_array, check_ndim
from .fp import as_bf16_bits, as_fp32_bits, bf16_daz, bf16_mul, fp32_add, fp32_daz, fp32_from_bits

__all__ = ["matmul_int8", "matmul_bf16", "int8_matmul_max_k"]

_INT32_MIN = -(1 << 31)
_INT32_MAX = (1 << 31) - 1


def _check_operands(a, w, bias, a_name_dtypes, w_check, bias_dtypes):
    a = a_name_dtypes(a)
    w = w_check(w)
    check_ndim(a, "a", (2,), " [M, K]")
    check_ndim(w, "w", (2,), " [K, N]")
    if a.shape[1] != w.shape[0]:
        raise ValueError(f"a is [M, K] = {list(a.shape)} and w is [K, N] = {list(w.shape)}: "
                         f"their K differ ({a.shape[1]} != {w.shape[0]})")
    if bias is not None:
        bias = array_of(bias, "bias", bias_dtypes)
        if bias.shape != (w.shape[1],):
            raise ValueError(f"bias must have shape [N] = [{w.shape[1]}], got {list(bias.shape)}")
    return a, w, bias


def matmul_int8(a, w, bias=None):
    """int8 matrix multiply with an int32 accumulator.

    ``out[m, n] = wrap32(bias[n] + sum_k a[m, k] * w[k, n])``: every product is exact (at most
    16 bits plus sign), the sum is exact, and the result is wrapped to int32 (two's complement),
    which is what a 32-bit accumulator computes in any order. Within
    :func:`int8_matmul_max_k` no wrap can occur.

    Parameters
    ----------
    a : ndarray of int8 or uint8, shape [M, K]
        Activations: signed int8, or unsigned 8-bit (e.g. a post-softmax probability).
    w : ndarray of int8, shape [K, N]
        Weights.
    bias : ndarray of int32, shape [N], optional
        Accumulator start value per output column (0 if omitted).

    Returns
    -------
    ndarray of int32, shape [M, N]

    Raises
    ------
    TypeError
        A dtype other than the ones above.
    ValueError
        Shapes that are not [M, K], [K, N], [N].
    """
    a, w, bias = _check_operands(
        a, w, bias, lambda x: array_of(x, "a", [np.int8, np.uint8]),
        lambda x: array_of(x, "w", [np.int8]), [np.int32])
    k = a.shape[1]
    if k < (1 << 37):
        # Every partial sum is an integer below 2**53 in magnitude, so a float64 BLAS product is
        # exact in any summation order (and much faster than numpy's integer matmul).
        acc = (a.astype(np.float64) @ w.astype(np.float64)).astype(np.int64)
    else:  # pragma: no cover - far beyond any memory
        acc = a.astype(np.int64) @ w.astype(np.int64)
    if bias is not None:
        acc = acc + bias.astype(np.int64)
    return (((acc - _INT32_MIN) & 0xFFFFFFFF) + _INT32_MIN).astype(np.int32)


def int8_matmul_max_k(*, unsigned_activations=False, bias_bound=0):
    """Largest K for which :func:`matmul_int8` can never overflow int32.

    With signed int8 operands a product lies in [−128·127, (−128)·(−128)] = [−16256, 16384];
    with uint8 activations in [255·(−128), 255·127] = [−32640, 32385]. The sum of K products
    plus a bias with ``|bias| <= bias_bound`` stays in [−2**31, 2**31 − 1] for every input iff
    ``K * max_product + bias_bound <= 2**31 − 1`` and ``K * |min_product| + bias_bound <= 2**31``.

    Parameters
    ----------
    unsigned_activations : bool
        ``a`` is uint8 instead of int8.
    bias_bound : int
        Bound on ``|bias|``, in [0, 2**31 − 1].
    """
    if not isinstance(unsigned_activations, (bool, np.bool_)):
        raise TypeError(f"unsigned_activations must be a bool, got {type(unsigned_activations).__name__}")
    if isinstance(bias_bound, bool) or not isinstance(bias_bound, (int, np.integer)):
        raise TypeError(f"bias_bound must be an int, got {type(bias_bound).__name__}")
    if not 0 <= bias_bound <= _INT32_MAX:
        raise ValueError(f"bias_bound must be in [0, 2**31 - 1], got {bias_bound}")
    lo, hi = (-255 * 128, 255 * 127) if unsigned_activations else (-128 * 127, 128 * 128)
    return min((_INT32_MAX - int(bias_bound)) // hi, (-_INT32_MIN - int(bias_bound)) // -lo)


def _bf16_exponent_fields(bits):
    return ((bits >> np.uint16(7)) & np.uint16(0xFF)).astype(np.int32)


def _matmul_bf16_bitwise(a_bits, w_bits, acc):
    """The definition: acc = fp32_add(acc, bf16_mul(a[:, k], w[k, :])) for k = 0 … K−1, on bits."""
    for k in range(a_bits.shape[1]):
        acc = fp32_add(acc, bf16_mul(a_bits[:, k, None], w_bits[None, k, :]))
    return acc


def _fast_path_applies(a_bits, w_bits, acc):
    """True if no product and no partial sum can be subnormal (see _matmul_bf16_fast)."""
    ea = _bf16_exponent_fields(a_bits)
    ew = _bf16_exponent_fields(w_bits)
    ea = ea[ea != 0]
    ew = ew[ew != 0]
    if ea.size and ew.size and int(ea.min()) + int(ew.min()) < 142:
        return False
    eb = ((acc >> np.uint32(23)) & np.uint32(0xFF)).astype(np.int32)
    return not np.any((eb != 0) & (eb < 24))


def _matmul_bf16_fast(a_bits, w_bits, acc):
    """Same result as :func:`_matmul_bf16_bitwise` when :func:`_fast_path_applies`.

    Proof. After DAZ, a nonzero finite bf16 is an 8-bit integer times 2**(e − 134) (e the
    exponent field), so a product of two is a multiple of 2**(ea + ew − 268) ≥ 2**−126, exact in
    fp32 and either zero or ≥ 2**−112 in magnitude: no product underflows. The bias is a multiple
    of 2**−126 too (exponent field ≥ 24). A sum of two multiples of 2**−126 is one, and rounding
    it to fp32 keeps it one (values below 2**−103 need no rounding; above, the fp32 grid is
    coarser than 2**−126). So every partial sum is zero or ≥ 2**−126: FTZ never fires, and IEEE
    float32 arithmetic (numpy, RNE) gives the same bits, except NaN payloads, which are
    canonicalized at the end (a NaN stays NaN through every later addition).
    """
    m, k_len = a_bits.shape
    n = w_bits.shape[1]
    a_t = np.ascontiguousarray((a_bits.astype(np.uint32) << np.uint32(16)).T).view(np.float32)
    w_f = (w_bits.astype(np.uint32) << np.uint32(16)).view(np.float32)
    acc_f = np.array(fp32_from_bits(acc), dtype=np.float32, copy=True)
    tmp = np.empty((m, n), dtype=np.float32)
    with np.errstate(all="ignore"):
        for k in range(k_len):
            np.multiply(a_t[k][:, None], w_f[k][None, :], out=tmp)
            np.add(acc_f, tmp, out=acc_f)
    out = as_fp32_bits(acc_f)
    nan = np.isnan(acc_f)
    out[nan] = np.uint32(0x7FC00000)
    return out


def matmul_bf16(a, w, bias=None):
    """bf16 matrix multiply with an fp32 accumulator, strictly sequential in k.

    For every output element: ``acc = bias[n]`` (DAZ; +0.0 if no bias), then for k = 0 … K−1
    ``acc = fp32_add(acc, bf16_mul(a[m, k], w[k, n]))``. See docs/numerics.md for the rules of
    the two units (DAZ inputs, exact product or ±Inf/±0, RNE sum, FTZ, canonical NaN).
    Vectorized over M and N; a Python loop runs over k only. Never uses a BLAS product, whose
    summation order is not the hardware's.

    Parameters
    ----------
    a : ndarray of ml_dtypes.bfloat16, shape [M, K]
    w : ndarray of ml_dtypes.bfloat16, shape [K, N]
    bias : ndarray of float32 (or ml_dtypes.bfloat16, widened exactly), shape [N], optional

    Returns
    -------
    ndarray of float32, shape [M, N]
        Never subnormal; every NaN is the canonical ``0x7FC00000``.

    Raises
    ------
    TypeError
        A dtype other than the ones above (a float32 ``a`` must be rounded to bf16 by the caller,
        e.g. with :func:`golden.fp32_to_bf16`).
    ValueError
        Shapes that are not [M, K], [K, N], [N].
    """
    import ml_dtypes
    a, w, bias = _check_operands(a, w, bias, lambda x: bf16_array(x, "a"), lambda x: bf16_array(x, "w"),
                                 [np.float32, ml_dtypes.bfloat16])
    a_bits = bf16_daz(as_bf16_bits(a))
    w_bits = bf16_daz(as_bf16_bits(w))
    m, n = a.shape[0], w.shape[1]
    if bias is None:
        acc = np.zeros((m, n), dtype=np.uint32)
    else:
        if bias.dtype == ml_dtypes.bfloat16:
            bias = bias.astype(np.float32)
        acc = np.broadcast_to(fp32_daz(as_fp32_bits(bias)), (m, n)).copy()
    if _fast_path_applies(a_bits, w_bits, acc):
        out = _matmul_bf16_fast(a_bits, w_bits, acc)
    else:
        out = _matmul_bf16_bitwise(a_bits, w_bits, acc)
    return fp32_from_bits(out)
