"""Performance counters: one convention for every block.

A block reports what it does in each cycle on an output port ``events``, a
``data.StructLayout`` with one field per event (docs/conventions.md, "Counters"):

- a 1-bit field is a flag: 1 in every cycle the event happens (``busy``, ``stall_input``, …);
- a wider field is an amount added in that cycle (``macs_int8``: the MACs done this cycle).

The block never counts: :class:`EventCounters` does, for any number of blocks, so that the chip
reads every counter the same way (the CSR map) and a standalone testbench reads a block's counts
from the same hardware. Counters are ``width`` bits (48 by default: 2**48 cycles is 32 days at
100 MHz) and wrap.
"""

from amaranth.hdl import Module
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["EventCounters", "events_layout", "COUNTER_WIDTH"]

#: Width of every counter.
COUNTER_WIDTH = 48


def events_layout(fields):
    """``data.StructLayout`` of an ``events`` port from ``{name: width}`` (or an iterable of
    names, all flags)."""
    if not isinstance(fields, dict):
        fields = {name: 1 for name in fields}
    for name, width in fields.items():
        if not isinstance(width, int) or isinstance(width, bool) or not 1 <= width <= 32:
            raise ValueError(f"event {name!r}: width must be an int in 1..32, not {width!r}")
    return data.StructLayout(fields)


class EventCounters(wiring.Component):
    """Counts the events of one ``events`` struct.

    Parameters
    ----------
    layout : data.StructLayout
        The ``events`` layout (from :func:`events_layout` or a block's ``events`` port).
    width : int
        Bits per counter, 8..64.

    Members
    -------
    events : In(layout)
        Connect the block's ``events`` port.
    clear : In(1)
        Every counter becomes 0 in the next cycle; the events of the cycle in which ``clear`` is
        1 are not counted.
    counts : Out(StructLayout({name: width}))
        The counts, registered: the events of cycle t are in ``counts`` from cycle t + 1.

    Latency 1 cycle; one update per cycle.
    """

    def __init__(self, layout, *, width=COUNTER_WIDTH):
        if not isinstance(layout, data.StructLayout):
            raise TypeError(f"layout must be a data.StructLayout, not {type(layout).__name__}")
        if not isinstance(width, int) or isinstance(width, bool) or not 8 <= width <= 64:
            raise ValueError(f"width must be an int in 8..64, not {width!r}")
        self._names = [name for name, _ in layout]
        self._width = width
        super().__init__({
            "events": In(layout),
            "clear": In(1),
            "counts": Out(data.StructLayout({name: width for name in self._names})),
        })

    @property
    def names(self):
        """The counter names, in layout order."""
        return list(self._names)

    @property
    def latency(self):
        return 1

    def elaborate(self, platform):
        m = Module()
        for name in self._names:
            count = getattr(self.counts, name)
            with m.If(self.clear):
                m.d.sync += count.eq(0)
            with m.Else():
                m.d.sync += count.eq(count + getattr(self.events, name))
        return m
