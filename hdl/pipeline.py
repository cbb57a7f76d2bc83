"""Small helpers shared by the matmul engine's parts and the requantizer.

:func:`delay`
    A value through a chain of registers (data delays have no reset).
:func:`step`
    One step of a datapath: its values through a register or a wire, named after the step
    (the PE's inline bf16 multiply places its registers where :class:`hdl.arith.Bf16MulCore`
    does, from :meth:`~hdl.arith.Bf16MulCore.registered_steps`).
"""

from types import SimpleNamespace

from amaranth.hdl import Signal, Value

from .params import check_int

__all__ = ["delay", "step", "check_ints", "KEEP"]

#: Attribute of a register that synthesis must neither merge with an equal one nor retime
#: (``Signal(…, attrs=KEEP)``): the copies of a control register that each sit beside their own
#: loads (docs/timing.md). ``make fpga`` keeps every flip-flop that drives such a signal.
KEEP = {"keep": 1}


def delay(m, sig, cycles, name, *, reset_less=True):
    """``sig`` delayed by ``cycles`` registers (``cycles`` ≥ 0), named ``{name}_d1`` …;
    registers without reset unless ``reset_less`` is False (a valid bit)."""
    if cycles < 0:
        raise ValueError(f"cycles must be ≥ 0, not {cycles}")
    for i in range(cycles):
        nxt = Signal.like(sig, name=f"{name}_d{i + 1}", reset_less=reset_less, attrs={})
        m.d.sync += nxt.eq(sig)
        sig = nxt
    return sig


def step(m, name, registered, **values):
    """Close datapath step ``name``: returns a namespace whose attributes are ``values`` seen
    through a register (``registered``; named ``{name}_{key}_q``, no reset: the valid bits
    travel beside the data) or a wire (``{name}_{key}``)."""
    out = {}
    for key, value in values.items():
        value = Value.cast(value)
        sig = Signal(value.shape(), name=f"{name}_{key}" + ("_q" if registered else ""), reset_less=registered)
        if registered:
            m.d.sync += sig.eq(value)
        else:
            m.d.comb += sig.eq(value)
        out[key] = sig
    return SimpleNamespace(**out)


def check_ints(**params):
    """Validate constructor parameters given as ``name=(value, lo, hi)``: a ``TypeError`` for a
    value that is not an int, a ``ValueError`` naming the parameter and its range otherwise."""
    for name, (value, lo, hi) in params.items():
        check_int(name, value, lo, hi)
