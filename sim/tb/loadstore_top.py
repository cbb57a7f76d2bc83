"""Test top of the LOAD and STORE units with the DMA engines: an :class:`AxiReadEngine` with
two clients (LOAD, and a plain client ``rd`` whose traffic interleaves with it), an
:class:`AxiWriteEngine` with one (STORE), both on the AXI4 port ``m_axi``, and a small
scratchpad stand-in (:class:`SpadStandIn`: one write port for LOAD, one read port for STORE)
until the real scratchpad (hdl/scratchpad.py) is there.
"""

from amaranth.hdl import Module, Mux
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hdl.axi import AxiSignature, connect_halves
from hdl.counters import EventCounters
from hdl.dma import AxiReadEngine, AxiWriteEngine, ReadClientSignature, read_events_layout, write_events_layout
from hdl.loadstore import (
    LoadUnit,
    SpadReadSignature,
    SpadWriteSignature,
    StoreUnit,
    load_events_layout,
    resp_layout,
    store_events_layout,
)

from .dma_top import build_top

__all__ = ["SpadStandIn", "LoadStoreTestTop", "loadstore_design", "counter_layout"]


def counter_layout(data_width):
    """The events of LOAD, STORE, the read and the write engine side by side, each field named
    ``<part>_<event>`` (the order of :attr:`LoadStoreTestTop.counts`)."""
    parts = {"load": load_events_layout(), "store": store_events_layout(),
             "reader": read_events_layout(data_width), "writer": write_events_layout(data_width)}
    return data.StructLayout({f"{part}_{name}": f.shape for part, layout in parts.items() for name, f in layout})


class SpadStandIn(wiring.Component):
    """``words`` words of ``lanes`` 32-bit lanes with the scratchpad's port protocols: ``w.req``
    writes the lanes its ``mask`` enables, ``w.done`` pulses in the next cycle (the word is
    then visible); ``r`` takes a request only when it can hold the response (1 cycle later),
    responses in order, one per cycle. ``addr_width`` bits of address, the bits above the
    memory's ignored."""

    def __init__(self, *, words, lanes, addr_width):
        self._words, self._lanes = words, lanes
        super().__init__({"w": In(SpadWriteSignature(addr_width, lanes)),
                          "r": In(SpadReadSignature(addr_width, lanes))})

    def elaborate(self, platform):
        m = Module()
        mem = m.submodules.mem = Memory(shape=data.ArrayLayout(32, self._lanes), depth=self._words, init=[])
        wp = mem.write_port(granularity=1)   # one enable per lane (ArrayLayout elements)
        rp = mem.read_port(transparent_for=())
        w = self.w.req
        m.d.comb += [w.ready.eq(1), wp.addr.eq(w.payload.addr), wp.data.eq(w.payload.data),
                     wp.en.eq(Mux(w.valid, w.payload.mask, 0))]
        m.d.sync += self.w.done.eq(w.valid)
        req, resp = self.r.req, self.r.resp
        m.d.comb += [req.ready.eq(~resp.valid | resp.ready), rp.addr.eq(req.payload.addr),
                     rp.en.eq(req.valid & req.ready), resp.payload.data.eq(rp.data)]
        with m.If(resp.ready):
            m.d.sync += resp.valid.eq(0)
        with m.If(rp.en):
            m.d.sync += resp.valid.eq(1)
        return m


class LoadStoreTestTop(wiring.Component):
    """LOAD, STORE, the engines and the scratchpad stand-in.

    Members
    -------
    load_cmd, store_cmd : In(stream of the units' descriptors)
    load_resp, store_resp : Out(stream.Signature(resp_layout()))
    rd : In(ReadClientSignature)
        The read engine's client 1 (client 0 is LOAD).
    m_axi : Out(AxiSignature)
    counts : Out
        The event counts of LOAD, STORE, the read and the write engine, in that order
        (:class:`EventCounters` of the four ``events`` side by side).
    """

    def __init__(self, *, data_width, lanes, spad_words, addr_width=32, max_burst=16,
                 max_outstanding=4, fifo_depth=32):
        unit = dict(data_width=data_width, addr_width=addr_width, lanes=lanes, spad_words=spad_words)
        eng = dict(addr_width=addr_width, data_width=data_width, id_width=1, max_burst=max_burst,
                   max_outstanding=max_outstanding, fifo_depth=fifo_depth)
        self.load = LoadUnit(**unit)
        self.store = StoreUnit(**unit)
        self.reader = AxiReadEngine(clients=2, **eng)
        self.writer = AxiWriteEngine(clients=1, **eng)
        self.spad = SpadStandIn(words=spad_words, lanes=lanes, addr_width=self.load.spad_addr_width)
        self._parts = {"load": self.load, "store": self.store, "reader": self.reader, "writer": self.writer}
        self.counters = EventCounters(counter_layout(data_width))
        super().__init__({
            "load_cmd": In(stream.Signature(self.load.desc_layout)),
            "load_resp": Out(stream.Signature(resp_layout())),
            "store_cmd": In(stream.Signature(self.store.desc_layout)),
            "store_resp": Out(stream.Signature(resp_layout())),
            "rd": In(ReadClientSignature(addr_width=addr_width, data_width=data_width,
                                         beats_width=self.reader.beats_width)),
            "m_axi": Out(AxiSignature(addr_width=addr_width, data_width=data_width, id_width=1)),
            "counts": Out(self.counters.signature.members["counts"].shape),
        })

    def elaborate(self, platform):
        m = Module()
        for name, part in self._parts.items():
            m.submodules[name] = part
        m.submodules.spad = self.spad
        m.submodules.counters = self.counters
        wiring.connect(m, wiring.flipped(self.load_cmd), self.load.cmd)
        wiring.connect(m, self.load.resp, wiring.flipped(self.load_resp))
        wiring.connect(m, wiring.flipped(self.store_cmd), self.store.cmd)
        wiring.connect(m, self.store.resp, wiring.flipped(self.store_resp))
        wiring.connect(m, self.load.dma, self.reader.clients[0])
        wiring.connect(m, wiring.flipped(self.rd), self.reader.clients[1])
        wiring.connect(m, self.store.dma, self.writer.clients[0])
        wiring.connect(m, self.load.spad, self.spad.w)
        wiring.connect(m, self.store.spad, self.spad.r)
        connect_halves(m, self.m_axi, read=self.reader.m_axi, write=self.writer.m_axi)
        for name, part in self._parts.items():
            for f, _ in part.signature.members["events"].shape:
                m.d.comb += getattr(self.counters.events, f"{name}_{f}").eq(getattr(part.events, f))
        m.d.comb += self.counts.eq(self.counters.counts)
        return m


def loadstore_design(memory="axiram", mem_bytes=1 << 18, **params):
    """The Verilated :class:`LoadStoreTestTop` with ``params`` (cached); ``memory="hdl"``: with
    the Verilog memory model of ``mem_bytes`` bytes on its AXI port."""
    return build_top(lambda: LoadStoreTestTop(**params), "loadstore_top", params, [__file__], memory, mem_bytes)
