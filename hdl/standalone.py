"""A block on its own, as a simulation or benchmark top (docs/conventions.md, "Counters").

:class:`Standalone` keeps every port of a block under its own name, except two kinds:

* ``events`` goes through an :class:`hdl.counters.EventCounters`; the top has ``counts``
  instead (the registered counts, cleared by reset), which a testbench reads at the end;
* a memory port (:class:`hdl.memport.MemoryPortSignature`) named in ``memories`` is served by an
  :class:`hdl.memport.SyncMemory` of the given depth inside the top; the top shows the port's
  signals as outputs under the same name (``mem__waddr``, ``mem__wen``, …), for a testbench to
  watch.

A stream named in ``taken`` also gets an output ``<name>_taken``: 1 in the cycle after each
handshake on it, the first cycle whose ``counts`` include the events of the handshake's cycle (a
testbench taps ``counts`` with it to read the counts after each response of a block).
"""

from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import Out

from .counters import COUNTER_WIDTH, EventCounters
from .memport import MemoryPortSignature, SyncMemory

__all__ = ["Standalone"]


class Standalone(wiring.Component):
    """``block`` with its event counters and memories (see the module docstring).

    Parameters
    ----------
    block : wiring.Component
    memories : dict of str → int, optional
        Memory port name → depth in words.
    taken : sequence of str, optional
        Stream ports (of either direction) that get a ``<name>_taken`` output.
    counter_width : int
        Bits per counter.

    Members
    -------
    every port of ``block`` but ``events`` and the memory ports, unchanged;
    counts : Out(StructLayout({event: counter_width}))
        If the block has ``events``: the counts since reset.
    <memory> : Out(every signal of the port)
        Per memory port: a copy of its signals, all outputs.
    <stream>_taken : Out(1)
        Per stream in ``taken``: a handshake on it in the cycle before (a register).
    """

    def __init__(self, block, *, memories=None, taken=(), counter_width=COUNTER_WIDTH):
        if not isinstance(block, wiring.Component):
            raise TypeError(f"block must be a wiring.Component, not {type(block).__name__}")
        memories = dict(memories or {})
        members = block.signature.members
        for name in memories:
            if name not in members or not isinstance(getattr(members[name], "signature", None),
                                                     MemoryPortSignature):
                raise ValueError(f"{name!r} is not a memory port (MemoryPortSignature) of the block")
        taken = list(taken)
        for name in taken:
            if name not in members or not isinstance(getattr(members[name], "signature", None), stream.Signature):
                raise ValueError(f"{name!r} is not a stream port of the block")
        self._block = block
        self._memories = memories
        self._taken = taken
        self._forwarded = [name for name in members if name != "events" and name not in memories]
        ports = {name: members[name] for name in self._forwarded}
        self._counters = None
        if "events" in members:
            self._counters = EventCounters(members["events"].shape, width=counter_width)
            ports["counts"] = Out(self._counters.counts.shape())
        for name in memories:
            sig = members[name].signature
            ports[name] = Out(wiring.Signature({k: Out(m.shape) for k, m in sig.members.items()}))
        for name in taken:
            ports[f"{name}_taken"] = Out(1)
        super().__init__(ports)

    @property
    def block(self):
        return self._block

    @property
    def counter_names(self):
        """The event names, in the order of the ``counts`` fields ([] without events)."""
        return [] if self._counters is None else self._counters.names

    def elaborate(self, platform):
        m = Module()
        m.submodules.block = block = self._block
        outer = {path: value for path, _, value in self.signature.flatten(self)}
        for path, member, value in block.signature.flatten(block):
            if path[0] in self._forwarded:
                if member.flow == wiring.In:
                    m.d.comb += value.eq(outer[path])
                else:
                    m.d.comb += outer[path].eq(value)
        if self._counters is not None:
            m.submodules.counters = self._counters
            m.d.comb += [self._counters.events.eq(block.events), self.counts.eq(self._counters.counts)]
        for name, depth in self._memories.items():
            port = getattr(block, name)
            sig = port.signature
            m.submodules[name] = mem = SyncMemory(depth=depth, data_width=sig.data_width,
                                                  granularity=sig.granularity)
            wiring.connect(m, port, mem.port)
            tap = getattr(self, name)
            for k in sig.members:
                m.d.comb += getattr(tap, k).eq(getattr(port, k))
        for name in self._taken:
            port = getattr(block, name)
            m.d.sync += getattr(self, f"{name}_taken").eq(port.valid & port.ready)
        return m
