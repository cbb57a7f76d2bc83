"""Test tops of the DMA engines (and, in :mod:`sim.tb.loadstore_top`, of the LOAD/STORE units):
the engines behind one AXI4 master port ``m_axi`` (for cocotbext-axi's ``AxiRam``), their
clients as top-level streams, their events counted by :class:`hdl.counters.EventCounters`.

Build with :func:`engines_design`; the build is keyed by this file's text too, so a change here
rebuilds.
"""

import hashlib
from pathlib import Path

from amaranth.hdl import ClockSignal, Instance, Module, ResetSignal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hdl.axi import AxiSignature, connect_halves
from hdl.counters import EventCounters
from hdl.dma import AxiReadEngine, AxiWriteEngine, ReadClientSignature, WriteClientSignature

__all__ = ["EngineTestTop", "engines_design", "source_digest", "WithHdlMemory", "build_top"]

#: The Verilog external-memory model (sim/models/tfa_axi_mem.v).
HDL_MEMORY = Path(__file__).resolve().parent.parent / "models" / "tfa_axi_mem.v"


def source_digest(*paths):
    """A hash of test-top sources (part of a build's cache key)."""
    h = hashlib.sha256()
    for path in paths:
        h.update(Path(path).read_bytes())
    return h.hexdigest()[:16]


class EngineTestTop(wiring.Component):
    """An :class:`AxiReadEngine` with ``read_clients`` clients and an :class:`AxiWriteEngine`
    with ``write_clients`` clients on one AXI4 port.

    Members
    -------
    rd : In(ReadClientSignature).array(read_clients)
    wr : In(WriteClientSignature).array(write_clients)
    m_axi : Out(AxiSignature(read and write))
    rd_counts, wr_counts : Out
        The engines' event counts (:class:`EventCounters`, registered).
    """

    def __init__(self, *, addr_width, data_width, read_clients, write_clients, max_burst,
                 max_outstanding, fifo_depth):
        id_width = max(1, (max(read_clients, write_clients) - 1).bit_length())
        kw = dict(addr_width=addr_width, data_width=data_width, id_width=id_width,
                  max_burst=max_burst, max_outstanding=max_outstanding, fifo_depth=fifo_depth)
        self.reader = AxiReadEngine(clients=read_clients, **kw)
        self.writer = AxiWriteEngine(clients=write_clients, **kw)
        self.rd_counters = EventCounters(self.reader.signature.members["events"].shape)
        self.wr_counters = EventCounters(self.writer.signature.members["events"].shape)
        bw = self.reader.beats_width
        super().__init__({
            "rd": In(ReadClientSignature(addr_width=addr_width, data_width=data_width,
                                         beats_width=bw)).array(read_clients),
            "wr": In(WriteClientSignature(addr_width=addr_width, data_width=data_width,
                                          beats_width=bw)).array(write_clients),
            "m_axi": Out(AxiSignature(addr_width=addr_width, data_width=data_width, id_width=id_width)),
            "rd_counts": Out(self.rd_counters.signature.members["counts"].shape),
            "wr_counts": Out(self.wr_counters.signature.members["counts"].shape),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.reader = self.reader
        m.submodules.writer = self.writer
        m.submodules.rd_counters = self.rd_counters
        m.submodules.wr_counters = self.wr_counters
        for i, port in enumerate(self.rd):
            wiring.connect(m, wiring.flipped(port), self.reader.clients[i])
        for i, port in enumerate(self.wr):
            wiring.connect(m, wiring.flipped(port), self.writer.clients[i])
        connect_halves(m, self.m_axi, read=self.reader.m_axi, write=self.writer.m_axi)
        m.d.comb += [self.rd_counters.events.eq(self.reader.events),
                     self.wr_counters.events.eq(self.writer.events),
                     self.rd_counts.eq(self.rd_counters.counts),
                     self.wr_counts.eq(self.wr_counters.counts)]
        return m


class WithHdlMemory(wiring.Component):
    """``inner`` (a component with an AXI4 master port ``m_axi``) with the Verilog memory model
    ``tfa_axi_mem`` (sim/models/tfa_axi_mem.v) on that port. Every other member of ``inner``
    is a member of this top; the model's controls are ``mem_seed``, ``mem_stall``,
    ``mem_backpressure``, ``mem_max_latency``, ``mem_err_lo``/``mem_err_hi``/``mem_err_resp``
    (four windows), ``mem_load``, ``mem_dump`` (of the words ``mem_dump_lo`` .. ``mem_dump_hi`` − 1,
    or every word when ``mem_dump_hi`` is 0) and ``mem_protocol_error``."""

    def __init__(self, inner, *, depth_log2):
        self._inner, self._depth_log2 = inner, depth_log2
        axi = inner.signature.members["m_axi"].signature
        self._axi = axi
        members = {n: mb for n, mb in inner.signature.members.items() if n != "m_axi"}
        aw = axi.addr_width
        members.update(mem_seed=In(32), mem_stall=In(16), mem_backpressure=In(16), mem_max_latency=In(8),
                       mem_err_lo=In(4 * aw), mem_err_hi=In(4 * aw), mem_err_resp=In(8),
                       mem_load=In(1), mem_dump=In(1), mem_dump_lo=In(32), mem_dump_hi=In(32),
                       mem_protocol_error=Out(1))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        m.submodules.inner = inner = self._inner
        for name, member in inner.signature.members.items():
            if name == "m_axi":
                continue
            ours, theirs = getattr(self, name), getattr(inner, name)
            pairs = list(zip(ours, theirs, strict=True)) if member.dimensions else [(ours, theirs)]
            for a, b in pairs:
                if member.is_signature:
                    wiring.connect(m, wiring.flipped(a), b)
                elif member.flow == Out:
                    m.d.comb += a.eq(b)
                else:
                    m.d.comb += b.eq(a)
        ports = {}
        for name, member in self._axi.members.items():
            ports[("i_" if member.flow == Out else "o_") + name] = getattr(inner.m_axi, name)
        m.submodules.mem = Instance(
            "tfa_axi_mem", p_AW=self._axi.addr_width, p_DW=self._axi.data_width, p_IDW=self._axi.id_width,
            p_DEPTH_LOG2=self._depth_log2, i_clk=ClockSignal(), i_rst=ResetSignal(),
            i_seed=self.mem_seed, i_stall=self.mem_stall, i_backpressure=self.mem_backpressure,
            i_max_latency=self.mem_max_latency, i_err_lo=self.mem_err_lo, i_err_hi=self.mem_err_hi,
            i_err_resp=self.mem_err_resp, i_load=self.mem_load, i_dump=self.mem_dump,
            i_dump_lo=self.mem_dump_lo, i_dump_hi=self.mem_dump_hi,
            o_protocol_error=self.mem_protocol_error, **ports)
        return m


def build_top(make, name, params, sources, memory="axiram", mem_bytes=1 << 16):
    """Build the test top ``make()`` (cached by ``params`` and the ``sources`` files); with
    ``memory="hdl"`` wrapped in :class:`WithHdlMemory` of ``mem_bytes`` bytes."""
    from amaranth.back import verilog

    from sim.runner import build
    key = {**params, "top": source_digest(__file__, *sources), "memory": memory, "mem_bytes": mem_bytes}
    if memory == "axiram":
        return build(make, name, params=key)
    if memory != "hdl":
        raise ValueError(f"memory must be 'axiram' or 'hdl', not {memory!r}")

    def elaborate():
        inner = make()
        depth_log2 = max(1, (mem_bytes // (inner.signature.members["m_axi"].signature.data_width // 8) - 1)
                         .bit_length())
        text = verilog.convert(WithHdlMemory(inner, depth_log2=depth_log2), name=f"{name}_hdlmem",
                               emit_src=False)
        return text + "\n" + HDL_MEMORY.read_text()
    return build(elaborate, f"{name}_hdlmem", params=key)


def engines_design(memory="axiram", mem_bytes=1 << 16, **params):
    """The Verilated :class:`EngineTestTop` with ``params`` (cached)."""
    return build_top(lambda: EngineTestTop(**params), "dma_engines", params, [], memory, mem_bytes)
