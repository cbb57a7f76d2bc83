"""Parameter checks shared by the components' constructors: one message format everywhere."""

__all__ = ["check_int"]


def check_int(name, value, lo, hi=None, *, pow2=False):
    """Raise ``TypeError``/``ValueError`` naming ``name`` unless ``value`` is an int (not a bool)
    in ``lo..hi`` (``hi`` None: no upper bound), and a power of two with ``pow2``. Returns it."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {value!r}")
    if value < lo or (hi is not None and value > hi):
        raise ValueError(f"{name} must be in {lo}..{hi}, not {value}" if hi is not None
                         else f"{name} must be ≥ {lo}, not {value}")
    if pow2 and value & (value - 1):
        raise ValueError(f"{name} must be a power of two, not {value}")
    return value
