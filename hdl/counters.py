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

from amaranth.hdl import Array, Module, Mux, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

__all__ = ["EventCounters", "CounterBank", "events_layout", "COUNTER_WIDTH"]

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


class CounterBank(wiring.Component):
    """The counts of :class:`EventCounters`, held in a memory and read one at a time.

    For many counters read by software, one ``width``-bit register and adder per counter is the
    costly part (on the ECP5 the chip's 124 48-bit counters took about 3,000 carry cells and
    6,000 flip-flops, and a 124-way 48-bit read multiplexer). Here each counter has a narrow
    *local* counter; a sweep visits one counter per cycle, in turn, and adds its local count into
    the ``width``-bit total held in a memory, so a local counter holds at most the events of n
    cycles (n counters: ``ceil_log2(n·(2**w − 1) + 1)`` bits for an event of w bits). A counter's
    value is its total plus its local count plus the amount the sweep has taken from it and not
    yet written back.

    Both the sweep and the read pick one local counter of n through two levels: the counters
    in groups of ``group`` (layout order, so a group is mostly one block's events), a
    ``group``-way multiplexer and a register per group, then a multiplexer over the groups'
    registers. No net gathers all n local counters into one place: on the ECP5 the flat
    124-way multiplexers of the sweep and the read drew the whole bank, and the routing, into
    one congested spot of the die (docs/chip.md "FPGA").

    Parameters
    ----------
    layout : data.StructLayout
        The ``events`` layout, as for :class:`EventCounters`.
    width : int
        Bits per counter, 8..64.
    group : int
        Counters per first-level group, 2..64 (the last group may be smaller).

    Members
    -------
    events : In(layout)
    clear : In(1)
        As :class:`EventCounters`: every counter reads 0 from the next cycle on, and the events of
        the cycle in which ``clear`` is 1 are not counted. (The totals are not written at once: a
        flag per counter says its total is stale, and the sweep's next write-back of that counter
        starts it again from 0.)
    rd_index : In(range(n))
        A counter to read (by layout order), every cycle.
    rd_value : Out(width)
        The value :class:`EventCounters`' ``counts`` would show, in the cycle ``rd_index`` is given,
        for counter ``rd_index`` of that cycle: the events of every cycle before it since the last
        clear. It is valid one cycle later (combinational from registers and the memory's read
        data, through a multiplexer over the groups and ``width``-bit adders).

    Latency: ``rd_value`` one cycle after ``rd_index`` (:attr:`read_latency`). The sweep takes a
    counter's local count in cycle t, holds it in its group's register in t + 1 (while the
    total is read) and writes the new total in t + 2.
    """

    def __init__(self, layout, *, width=COUNTER_WIDTH, group=8):
        if not isinstance(layout, data.StructLayout):
            raise TypeError(f"layout must be a data.StructLayout, not {type(layout).__name__}")
        if not isinstance(width, int) or isinstance(width, bool) or not 8 <= width <= 64:
            raise ValueError(f"width must be an int in 8..64, not {width!r}")
        if not isinstance(group, int) or isinstance(group, bool) or not 2 <= group <= 64:
            raise ValueError(f"group must be an int in 2..64, not {group!r}")
        self._fields = [(name, field.width) for name, field in layout]
        if len(self._fields) < 2:
            raise ValueError(f"a counter bank needs at least 2 counters, not {len(self._fields)}")
        self._width = width
        self._group = group
        super().__init__({
            "events": In(layout),
            "clear": In(1),
            "rd_index": In(range(len(self._fields))),
            "rd_value": Out(width),
        })

    @property
    def names(self):
        """The counter names, in layout order."""
        return [name for name, _ in self._fields]

    @property
    def read_latency(self):
        return 1

    def local_width(self, event_width):
        """Bits of the local counter of an event of ``event_width`` bits."""
        return (len(self._fields) * ((1 << event_width) - 1)).bit_length()

    def _pick(self, m, local, index, name):
        """One register per group: the group's local counter ``index mod group`` of this cycle,
        in the next; and the multiplexer over those registers, by the group of ``index`` one
        cycle later. Returns (the group registers' pick, the delayed index)."""
        g = self._group
        groups = [local[i:i + g] for i in range(0, len(local), g)]
        lo = Signal(range(g), name=f"{name}_lo")
        later = Signal.like(index, name=f"{name}_index")
        m.d.comb += lo.eq(index % g if g & (g - 1) else index[:g.bit_length() - 1])
        regs = []
        for k, members in enumerate(groups):
            reg = Signal(max(len(x) for x in members), name=f"{name}_g{k}")
            m.d.sync += reg.eq(Array(members)[lo] if len(members) > 1 else members[0])
            regs.append(reg)
        m.d.sync += later.eq(index)
        pick = Signal(max(len(r) for r in regs), name=f"{name}_pick")
        m.d.comb += pick.eq(Array(regs)[later // g] if len(regs) > 1 else regs[0])
        return pick, later

    def elaborate(self, platform):
        m = Module()
        n, w = len(self._fields), self._width
        local = [Signal(self.local_width(ew), name=f"local_{name}") for name, ew in self._fields]
        # one bit per counter: its total in the memory is from before the last clear (all after
        # reset, which does not reach the memory)
        stale = Signal(n, init=(1 << n) - 1)
        m.submodules.totals = totals = Memory(shape=unsigned(w), depth=n, init=[])
        sweep_rd = totals.read_port(domain="sync")
        sweep_wr = totals.write_port()
        user_rd = totals.read_port(domain="sync")    # not transparent: the total before this cycle's write
        # the sweep: counter p's local count is taken in cycle t, is `take` (its total read) in
        # t + 1 and is added to the total in t + 2
        p = Signal(range(n))
        m.d.sync += p.eq(Mux(p == n - 1, 0, p + 1))
        for i, (name, _) in enumerate(self._fields):
            event = getattr(self.events, name)
            with m.If(self.clear):
                m.d.sync += local[i].eq(0)
            with m.Elif(p == i):
                m.d.sync += local[i].eq(event)
            with m.Else():
                m.d.sync += local[i].eq(local[i] + event)
        take, take_index = self._pick(m, local, p, "sweep")
        take_valid = Signal()
        m.d.sync += take_valid.eq(~self.clear)
        m.d.comb += [sweep_rd.addr.eq(take_index), sweep_rd.en.eq(1)]
        wb_valid = Signal()
        wb_index = Signal(range(n))
        wb_take = Signal(len(take))
        wb_stale = Signal()
        m.d.sync += [wb_valid.eq(take_valid & ~self.clear), wb_index.eq(take_index), wb_take.eq(take),
                     wb_stale.eq(stale.bit_select(take_index, 1))]
        m.d.comb += [sweep_wr.addr.eq(wb_index), sweep_wr.en.eq(wb_valid & ~self.clear),
                     sweep_wr.data.eq(Mux(wb_stale, 0, sweep_rd.data) + wb_take)]
        with m.If(self.clear):
            m.d.sync += stale.eq((1 << n) - 1)
        with m.Elif(wb_valid):
            m.d.sync += stale.bit_select(wb_index, 1).eq(0)
        # a read: the total (0 if stale), the local count and the amounts taken and not yet in
        # the total (at most one of `take` and `wb_take` is this counter's), all as of the cycle
        # rd_index is given
        r_local, _ = self._pick(m, local, self.rd_index, "read")
        r_take = Signal(len(take) + 1)
        r_stale = Signal()
        m.d.comb += [user_rd.addr.eq(self.rd_index), user_rd.en.eq(1)]
        m.d.sync += [r_take.eq(Mux(wb_valid & (wb_index == self.rd_index), wb_take, 0)
                               + Mux(take_valid & (take_index == self.rd_index), take, 0)),
                     r_stale.eq(stale.bit_select(self.rd_index, 1))]
        m.d.comb += self.rd_value.eq(Mux(r_stale, 0, user_rd.data) + r_local + r_take)
        return m
