"""Input validation shared by the golden models.

Every public golden function validates its arguments before computing anything, and raises
``TypeError`` (wrong kind of value: dtype, not an array) or ``ValueError`` (right kind, wrong
shape or out of range), with a message that names the argument.
"""

import numbers

import numpy as np

__all__ = ["array_of", "int_array", "real_array", "check_ndim", "check_range", "bf16_array"]


def _dtype_names(dtypes):
    return " or ".join(np.dtype(d).name for d in dtypes)


def array_of(x, name, dtypes):
    """``x`` as a numpy array whose dtype is one of ``dtypes`` (exact match, no conversion)."""
    if isinstance(x, (str, bytes)) or x is None:
        raise TypeError(f"{name} must be a numpy array of {_dtype_names(dtypes)}, got {type(x).__name__}")
    arr = np.asarray(x)
    if arr.dtype not in [np.dtype(d) for d in dtypes]:
        raise TypeError(f"{name} must have dtype {_dtype_names(dtypes)}, got {arr.dtype}")
    return arr


def bf16_array(x, name):
    """``x`` as an ``ml_dtypes.bfloat16`` array (no conversion from other dtypes)."""
    import ml_dtypes
    return array_of(x, name, [ml_dtypes.bfloat16])


def int_array(x, name, lo=None, hi=None):
    """``x`` as an int64 array; any integer dtype (or Python int) is accepted, values in [lo, hi]."""
    if isinstance(x, bool) or isinstance(x, np.bool_):
        raise TypeError(f"{name} must be an integer or integer array, got bool")
    if isinstance(x, numbers.Integral):
        v = int(x)
        if (lo is not None and v < lo) or (hi is not None and v > hi) or not -(1 << 63) <= v < (1 << 63):
            raise ValueError(f"{name} must be in [{lo}, {hi}], got {v}")
        arr = np.asarray(v, dtype=np.int64)
    else:
        arr = np.asarray(x)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"{name} must be an integer or integer array, got dtype {arr.dtype}")
        if arr.dtype == np.uint64 and arr.size and int(arr.max()) >= (1 << 63):
            raise ValueError(f"{name} must be in [{lo}, {hi}], got {int(arr.max())}")
    arr = arr.astype(np.int64)
    check_range(arr, name, lo, hi)
    return arr


def real_array(x, name):
    """``x`` as a float64 array; real numbers (ints, floats) only."""
    if isinstance(x, (bool, np.bool_)):
        raise TypeError(f"{name} must be a real number or array of reals, got bool")
    arr = np.asarray(x)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a real number or array of reals, got dtype {arr.dtype}")
    return arr.astype(np.float64)


def check_ndim(arr, name, ndims, what=""):
    """Raise ValueError unless ``arr.ndim`` is in ``ndims``."""
    if arr.ndim not in ndims:
        allowed = " or ".join(str(n) for n in ndims)
        raise ValueError(f"{name} must be {allowed}-D{what}, got shape {arr.shape}")


def check_range(arr, name, lo=None, hi=None):
    """Raise ValueError if any element of ``arr`` is outside [lo, hi] (either bound may be None)."""
    if arr.size == 0:
        return
    if (lo is not None and arr.min() < lo) or (hi is not None and arr.max() > hi):
        bad = arr[(arr < lo) if lo is not None else np.zeros(arr.shape, bool)]
        if bad.size == 0:
            bad = arr[arr > hi]
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {bad.flat[0]}")
