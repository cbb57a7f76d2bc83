"""Test tops of the DMA engines (and, in :mod:`sim.tb.loadstore_top`, of the LOAD/STORE units):
the engines behind one AXI4 master port ``m_axi`` (for cocotbext-axi's ``AxiRam``), their
clients as top-level streams, their events counted by :class:`hdl.counters.EventCounters`.

Build with :func:`engines_design`; the build is keyed by this file's text too, so a change here
rebuilds.
"""

import hashlib
from pathlib import Path

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hdl.axi import AxiSignature, connect_halves
from hdl.counters import EventCounters
from hdl.dma import AxiReadEngine, AxiWriteEngine, ReadClientSignature, WriteClientSignature

__all__ = ["EngineTestTop", "engines_design", "source_digest"]


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


def engines_design(**params):
    """The Verilated :class:`EngineTestTop` with ``params`` (cached)."""
    from sim.runner import build
    key = {**params, "top": source_digest(__file__)}
    return build(lambda: EngineTestTop(**params), "dma_engines", params=key)
