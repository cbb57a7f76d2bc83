"""The one memory-port signature of the chip (docs/conventions.md, "Memory ports").

A block that keeps its storage outside itself (the KV-cache data, the scratchpad banks) talks to
it through :class:`MemoryPortSignature`; :class:`SyncMemory` is the on-chip memory behind such a
port.
"""

from pathlib import Path

from amaranth.hdl import ClockSignal, Instance, Module
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

__all__ = ["MemoryPortSignature", "SyncMemory", "VERILOG_SOURCES", "with_verilog_sources"]

#: Verilog modules the design instantiates, by module name: appended to every generated file
#: that instantiates them (``make verilog``, the simulation builds, ``make fpga``).
VERILOG_SOURCES = {"tfa_sync_ram": Path(__file__).resolve().parent / "verilog" / "tfa_sync_ram.v"}


def with_verilog_sources(text):
    """``text`` followed by every module of :data:`VERILOG_SOURCES` it instantiates."""
    import re
    for module, path in VERILOG_SOURCES.items():
        if re.search(rf"^\s*{module}\s+(#|\\|\w)", text, re.M) and not re.search(rf"^module\s+{module}\b", text, re.M):
            text += "\n" + path.read_text()
    return text


class MemoryPortSignature(wiring.Signature):
    """A synchronous read port and a write port, seen from the block that uses the memory.

    Parameters
    ----------
    addr_width, data_width : int
    granularity : int or None
        Bits per write-enable bit (``data_width`` must be a multiple); ``None``: one enable.

    Members
    -------
    raddr : Out(addr_width)
    ren : Out(1)
    rdata : In(data_width)
        The word at the ``raddr`` of the previous cycle in which ``ren`` was 1 (held otherwise).
    waddr : Out(addr_width)
    wdata : Out(data_width)
    wen : Out(data_width // granularity)
        Bit i writes bits ``[i·granularity, (i+1)·granularity)`` of the word.
    """

    def __init__(self, addr_width, data_width, granularity=None):
        for name, value in (("addr_width", addr_width), ("data_width", data_width)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise TypeError(f"{name} must be a positive int, not {value!r}")
        if granularity is None:
            granularity = data_width
        if not isinstance(granularity, int) or granularity < 1 or data_width % granularity:
            raise ValueError(f"granularity must divide data_width ({data_width}), not {granularity!r}")
        self._addr_width, self._data_width, self._granularity = addr_width, data_width, granularity
        super().__init__({
            "raddr": Out(addr_width), "ren": Out(1), "rdata": In(data_width),
            "waddr": Out(addr_width), "wdata": Out(data_width), "wen": Out(data_width // granularity),
        })

    @property
    def addr_width(self):
        return self._addr_width

    @property
    def data_width(self):
        return self._data_width

    @property
    def granularity(self):
        return self._granularity

    def __eq__(self, other):
        return (isinstance(other, MemoryPortSignature) and other.addr_width == self.addr_width
                and other.data_width == self.data_width and other.granularity == self.granularity)

    def __repr__(self):
        return f"MemoryPortSignature({self._addr_width}, {self._data_width}, {self._granularity})"


class SyncMemory(wiring.Component):
    """``depth`` words of ``data_width`` bits behind a :class:`MemoryPortSignature` (flipped).

    Reads are synchronous and not transparent: a read and a write of one address in the same
    cycle reads the old word. Nothing relies on the contents after reset.

    Parameters
    ----------
    depth : int
        Words, ≥ 2.
    data_width : int
    granularity : int or None
        Bits per write enable (see :class:`MemoryPortSignature`).
    verilog : bool or None
        Build the memory as an instance of the Verilog module ``tfa_sync_ram``
        (:data:`VERILOG_SOURCES`) instead of an ``amaranth.lib.memory.Memory``. ``None`` (the
        default) does so above :attr:`VERILOG_THRESHOLD_BITS`: Amaranth writes an initial value
        for every word of a ``Memory``, which for megabit memories takes minutes and tens of
        megabytes of Verilog. The instance cannot run in ``amaranth.sim``; small memories (all of
        the ``tiny`` configuration) stay ``Memory``.
    """

    #: Memories of more bits than this are built as ``tfa_sync_ram`` instances by default.
    VERILOG_THRESHOLD_BITS = 1 << 20

    def __init__(self, *, depth, data_width, granularity=None, verilog=None):
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 2:
            raise ValueError(f"depth must be an int ≥ 2, not {depth!r}")
        self._depth, self._data_width = depth, data_width
        sig = MemoryPortSignature((depth - 1).bit_length(), data_width, granularity)
        self._granularity = sig.granularity
        self._verilog = depth * data_width > self.VERILOG_THRESHOLD_BITS if verilog is None else bool(verilog)
        super().__init__({"port": In(sig)})

    @property
    def depth(self):
        return self._depth

    @property
    def latency(self):
        """Cycles from ``raddr``/``ren`` to ``rdata``."""
        return 1

    def elaborate(self, platform):
        m = Module()
        p = self.port
        if self._verilog:
            m.submodules.ram = Instance(
                "tfa_sync_ram", p_AW=len(p.raddr), p_DW=self._data_width, p_DEPTH=self._depth,
                p_GRAN=self._granularity, i_clk=ClockSignal(), i_raddr=p.raddr, i_ren=p.ren,
                o_rdata=p.rdata, i_waddr=p.waddr, i_wdata=p.wdata, i_wen=p.wen)
            return m
        m.submodules.mem = mem = Memory(shape=self._data_width, depth=self._depth, init=[])
        gran = None if self._granularity == self._data_width else self._granularity
        wp = mem.write_port(granularity=gran)
        rp = mem.read_port(transparent_for=())
        m.d.comb += [wp.addr.eq(p.waddr), wp.data.eq(p.wdata), wp.en.eq(p.wen),
                     rp.addr.eq(p.raddr), rp.en.eq(p.ren), p.rdata.eq(rp.data)]
        return m
