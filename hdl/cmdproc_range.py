"""The dispatcher's address-range checker: does ``base + (count − 1)·stride + words`` reach past a
limit? (hdl/cmdproc.py, :class:`~hdl.cmdproc.Dispatcher`; docs/isa.md lists the checks.)"""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from .params import check_int as _check_int

__all__ = ["RangeChecker"]


class RangeChecker(wiring.Component):
    """One range check: ``end = base + (count − 1)·stride + words`` (an external range: ``end``
    rounded up to a whole bus word), compared with ``limit``.

    Parameters
    ----------
    width : int
        Bits of the operands (the dispatcher's external address width + 2), 2..64.
    bus_bytes : int
        Bytes of an AXI data beat (the rounding of external ranges), a power of two 1..1024.

    Members
    -------
    load : In(1)
        Registers the operands below.
    en, base, count, stride, words, limit, ext : In
        The check (``en`` 0: never over), its operands, and whether it is an external range.
    over : Out(1)
        ``en`` and ``end > limit`` for the operands of the last ``load``.

    Latency: ``over`` holds the answer :attr:`latency` (3) cycles after the ``load`` cycle (the
    operands, the product, the sum are registered in turn). The operands must stay loaded
    that long: one check per :attr:`latency` cycles. ``count`` must be at least 1 (the product
    of ``count − 1`` keeps its low ``width + 16`` bits).
    """

    def __init__(self, *, width, bus_bytes):
        _check_int("width", width, 2, 64)
        _check_int("bus_bytes", bus_bytes, 1, 1024)
        if bus_bytes & (bus_bytes - 1):
            raise ValueError(f"bus_bytes must be a power of two, not {bus_bytes}")
        self._width = width
        self._lgbus = exact_log2(bus_bytes)
        super().__init__({
            "load": In(1), "en": In(1), "ext": In(1),
            **{name: In(width) for name in ("base", "count", "stride", "words", "limit")},
            "over": Out(1),
        })

    @property
    def latency(self):
        """Cycles from ``load`` to the answer on ``over``."""
        return 3

    def elaborate(self, platform):
        m = Module()
        w = self._width
        c_base, c_count, c_stride, c_words = (Signal(w, name=f"chk_{n}") for n in ("base", "count", "stride", "words"))
        c_limit = Signal(w)
        c_en, c_ext = Signal(), Signal()
        with m.If(self.load):
            m.d.sync += [c_en.eq(self.en), c_base.eq(self.base), c_count.eq(self.count), c_stride.eq(self.stride),
                         c_words.eq(self.words), c_limit.eq(self.limit), c_ext.eq(self.ext)]
        prod = Signal(w + 16)
        end = Signal(w + 17)
        m.d.sync += prod.eq((c_count - 1) * c_stride)
        total = c_base + prod + c_words
        if self._lgbus:
            rounded = ((total + ((1 << self._lgbus) - 1)) >> self._lgbus) << self._lgbus
            m.d.sync += end.eq(Mux(c_ext, rounded, total))
        else:
            m.d.sync += end.eq(total)
        m.d.comb += self.over.eq(c_en & (end > c_limit))
        return m
