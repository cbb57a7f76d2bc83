"""The chip top: command processor, DMA, scratchpad, units and blocks behind two AXI ports
(docs/chip.md).

Ports (Verilog names flatten with ``__``): ``s_axil`` (AXI4-Lite slave, the CSRs of
:mod:`spec.csr` and the counters), ``m_axi`` (AXI4 master to external memory) and ``irq``.

Units present: LOAD, STORE, MATMUL, KV, VECTOR and SOFTMAX (:data:`PRESENT_UNITS`; an
instruction for a unit left out of it is refused at decode with BAD_OPCODE).
"""

from amaranth.hdl import Cat, Module, Shape, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from spec import csr as spec_csr
from spec import isa, matmul_layout

from .axi import AxiLiteSignature, AxiSignature
from .cmdproc import CommandProcessor, ProcState
from .config import ChipConfig, get_config
from .counters import CounterBank, events_layout
from .csr import CsrBank, RegisterMap
from .dma import AxiReadEngine, AxiWriteEngine
from .exec_kv import KVExec
from .exec_matmul import MatmulExec, kv_feed_possible
from .exec_softmax import SoftmaxExec
from .exec_vector import VECTOR_READERS, VECTOR_WRITERS, VectorExec
from .loadstore import InstrAdapter, LoadUnit, StoreUnit
from .scratchpad import Scratchpad

__all__ = ["Chip", "CHIP_ID", "READ_CLIENTS"]

#: ``ID`` register: "TFA" and the version of the register map.
CHIP_ID = 0x54464101
#: The read engine's clients, in client (AXI ID) order.
READ_CLIENTS = ("fetch", "load", "matmul_w", "matmul_p")
#: Bits of the DMA requests' ``beats`` field.
BEATS_WIDTH = 20
#: AXI ID bits of the master port.
ID_WIDTH = 4
#: Scratchpad read ports and write ports, by user.
SPAD_READERS = ("store", "matmul", "kv", *(f"vector_{s}" for s in VECTOR_READERS), "softmax")
SPAD_WRITERS = ("load", "matmul", *(f"vector_{s}" for s in VECTOR_WRITERS), "softmax")
#: Units whose execution unit is present (the others answer BAD_OPCODE at decode).
PRESENT_UNITS = (isa.Unit.LOAD, isa.Unit.STORE, isa.Unit.MATMUL, isa.Unit.KV, isa.Unit.VECTOR, isa.Unit.SOFTMAX)


class Chip(wiring.Component):
    """The whole chip for a :class:`~hdl.config.ChipConfig`.

    Members
    -------
    s_axil : In(AxiLiteSignature(addr_width=spec.csr.ADDR_WIDTH))
        The register map of :meth:`register_map`: control, status, errors, interrupt, counters.
    m_axi : Out(AxiSignature)
        External memory: ``memory.axi_addr_bits`` address bits, ``memory.axi_data_bits`` data
        bits, :data:`ID_WIDTH` ID bits (ID = read client index, or 0 for writes).
    irq : Out(1)
        ``IRQ_STATUS & IRQ_ENABLE`` is not 0 (level).
    """

    def __init__(self, config):
        if not isinstance(config, ChipConfig):
            raise TypeError(f"config must be a ChipConfig, not {type(config).__name__}")
        mem = config.memory
        if not (config.array.rows == config.array.cols == mem.spad_lanes):
            raise ValueError(f"the chip needs array.rows == array.cols == memory.spad_lanes, not "
                             f"{config.array.rows}, {config.array.cols}, {mem.spad_lanes}")
        if config.kvcache.beat_elems != mem.spad_lanes:
            raise ValueError(f"the chip needs kvcache.beat_elems == memory.spad_lanes (one scratchpad word is one "
                             f"KV-cache beat), not {config.kvcache.beat_elems} and {mem.spad_lanes}")
        if mem.spad_words * mem.spad_banks > 1 << isa.SPAD_ADDR_BITS:
            raise ValueError(f"memory.spad_words · memory.spad_banks must be ≤ 2**{isa.SPAD_ADDR_BITS}")
        self._config = config
        self._build_blocks()
        super().__init__({
            "s_axil": In(AxiLiteSignature(addr_width=spec_csr.ADDR_WIDTH, data_width=32)),
            "m_axi": Out(AxiSignature(addr_width=mem.axi_addr_bits, data_width=mem.axi_data_bits,
                                      id_width=ID_WIDTH)),
            "irq": Out(1),
        })

    @classmethod
    def from_config(cls, config):
        return cls(get_config(config))

    @property
    def config(self):
        return self._config

    # -- the blocks ---------------------------------------------------------------------------
    def _build_blocks(self):
        c = self._config
        mem = c.memory
        self._spad = Scratchpad(lanes=mem.spad_lanes, words=mem.spad_words, banks=mem.spad_banks,
                                read_ports=len(SPAD_READERS), write_ports=len(SPAD_WRITERS))
        sa = self._spad.addr_width
        from .matmul import MatmulEngine
        acc_depth, a_depth = MatmulEngine.buffer_sizes(c)
        self._proc = CommandProcessor(
            bus_bits=mem.axi_data_bits, addr_bits=mem.axi_addr_bits, lanes=mem.spad_lanes,
            spad_words=mem.spad_words * mem.spad_banks, acc_depth=acc_depth, a_depth=a_depth,
            param_beat_bytes=self.param_beat_bytes(c), softmax_max_len=c.softmax.max_len,
            vector_max_len=c.vector.max_len,
            kv_row_words=max(1, c.kvcache.heads * c.kvcache.head_dim // mem.spad_lanes),
            **self._matmul_kv_checks(c), units=PRESENT_UNITS)
        self._rd = AxiReadEngine(clients=len(READ_CLIENTS), addr_width=mem.axi_addr_bits,
                                 data_width=mem.axi_data_bits, id_width=ID_WIDTH, beats_width=BEATS_WIDTH,
                                 max_burst=AxiReadEngine.CHIP_MAX_BURST,
                                 max_outstanding=AxiReadEngine.CHIP_MAX_OUTSTANDING,
                                 fifo_depth=AxiReadEngine.CHIP_FIFO_DEPTH)
        self._wr = AxiWriteEngine(clients=1, addr_width=mem.axi_addr_bits, data_width=mem.axi_data_bits,
                                  id_width=ID_WIDTH, beats_width=BEATS_WIDTH,
                                  max_burst=AxiWriteEngine.CHIP_MAX_BURST,
                                  max_outstanding=AxiWriteEngine.CHIP_MAX_OUTSTANDING,
                                  fifo_depth=AxiWriteEngine.CHIP_FIFO_DEPTH)
        ls = dict(data_width=mem.axi_data_bits, addr_width=mem.axi_addr_bits, lanes=mem.spad_lanes,
                  spad_words=mem.spad_words * mem.spad_banks, beats_width=BEATS_WIDTH, spad_addr_width=sa)
        self._load, self._store = LoadUnit(**ls), StoreUnit(**ls)
        self._load_exec = InstrAdapter(self._load)
        self._store_exec = InstrAdapter(self._store)
        self._mm_exec = MatmulExec.from_config(c, beats_width=BEATS_WIDTH)
        self._kv_exec = KVExec.from_config(c)
        self._vector_exec = VectorExec.from_config(c)
        self._softmax_exec = SoftmaxExec.from_config(c)
        self._events = {
            "proc": self._proc.events, "dma_rd": self._rd.events, "dma_wr": self._wr.events,
            "load": self._load.events, "load_exec": self._load_exec.events,
            "store": self._store.events, "store_exec": self._store_exec.events,
            "matmul_exec": self._mm_exec.events, "matmul": self._mm_exec.engine_events,
            "kv_exec": self._kv_exec.events, "kvcache": self._kv_exec.cache_events,
            "vector_exec": self._vector_exec.events, "vector": self._vector_exec.unit_events,
            "softmax_exec": self._softmax_exec.events, "softmax": self._softmax_exec.unit_events,
        }
        self._counter_fields = self._counter_layout()
        self._regmap = RegisterMap.from_spec(spec_csr.chip_registers(list(self._counter_fields)))
        # the counters are read from a CounterBank's memory (hdl/counters.py), not one register each
        self._csr = CsrBank(self._regmap, window=(spec_csr.COUNTER_BASE, len(self._counter_fields)))

    @staticmethod
    def param_beat_bytes(config):
        """External-memory bytes of one per-N-tile matmul parameter beat: C int32 biases, C
        uint32 multipliers, C shift bytes, padded to a multiple of the bus width
        (``spec.matmul_layout.param_beat_bytes``)."""
        return matmul_layout.param_beat_bytes(config.array.cols, config.memory.axi_data_bits // 8)

    @staticmethod
    def _matmul_kv_checks(config):
        """The dispatcher's view of the KV cache: its capacity in positions (APPEND rows, KV_K/KV_V
        positions), and what KV-sourced MATMUL weights need (none when its READ beats are not the
        engine's weight beats)."""
        if isa.Unit.KV not in PRESENT_UNITS:
            return {}
        kv = config.kvcache
        checks = dict(kv_max_tokens=min(kv.max_tokens, 1 << 16))
        if kv_feed_possible(config):
            checks.update(kv_head_dim=kv.head_dim, kv_bf16=kv.dtype == "bf16")
        return checks

    def _counter_layout(self):
        """{counter name: event width}: ``cycles``, then every block's events as
        ``<block>_<event>``, the scratchpad's summed over banks and ports."""
        fields = {"cycles": 1}
        for block, ev in self._events.items():
            for name, fld in ev.shape():
                fields[f"{block}_{name}"] = Shape.cast(fld.shape).width
        banks = self._config.memory.spad_banks
        fields.update({"spad_reads": banks.bit_length(), "spad_writes": banks.bit_length(),
                       "spad_conflicts": (len(SPAD_READERS) + len(SPAD_WRITERS)).bit_length(),
                       "spad_bad_addr": 4})
        return fields

    @property
    def counter_names(self):
        """The counters, in register order (``CNT_<NAME>`` at spec.csr.COUNTER_BASE + 8·i)."""
        return list(self._counter_fields)

    @property
    def register_map(self):
        """The :class:`hdl.csr.RegisterMap` of ``s_axil``."""
        return self._regmap

    @property
    def csr_read_latency(self):
        """Cycles from an ``s_axil`` read address accepted to its data valid
        (:attr:`hdl.csr.CsrBank.read_latency`)."""
        return self._csr.read_latency

    # -- wiring ---------------------------------------------------------------------------------
    def elaborate(self, platform):
        m = Module()
        m.submodules.proc = proc = self._proc
        m.submodules.dma_rd = rd = self._rd
        m.submodules.dma_wr = wr = self._wr
        m.submodules.spad = spad = self._spad
        m.submodules.load = load = self._load
        m.submodules.store = store = self._store
        m.submodules.load_exec = lx = self._load_exec
        m.submodules.store_exec = sx = self._store_exec
        m.submodules.csr = csr = self._csr

        # the AXI ports
        wiring.connect(m, wiring.flipped(self.s_axil), csr.bus)
        for name in self.m_axi.signature.members:
            src = rd.m_axi if name.startswith(("ar", "r")) else wr.m_axi
            port = getattr(self.m_axi, name)
            if self.m_axi.signature.members[name].flow == Out:
                m.d.comb += port.eq(getattr(src, name))
            else:
                m.d.comb += getattr(src, name).eq(port)

        # instruction fetch: read client 0
        fetch = rd.clients[READ_CLIENTS.index("fetch")]
        m.d.comb += [fetch.req.valid.eq(proc.fetch_req.valid), fetch.req.payload.addr.eq(proc.fetch_req.payload.addr),
                     fetch.req.payload.beats.eq(proc.fetch_req.payload.beats), proc.fetch_req.ready.eq(fetch.req.ready)]
        m.d.comb += [proc.fetch_data.valid.eq(fetch.data.valid), proc.fetch_data.payload.eq(fetch.data.payload),
                     fetch.data.ready.eq(proc.fetch_data.ready)]

        # LOAD and STORE
        wiring.connect(m, proc.units[isa.Unit.LOAD], lx.proc)
        wiring.connect(m, lx.cmd, load.cmd)
        wiring.connect(m, load.resp, lx.resp)
        wiring.connect(m, load.dma, rd.clients[READ_CLIENTS.index("load")])
        wiring.connect(m, load.spad, spad.w[SPAD_WRITERS.index("load")])
        wiring.connect(m, proc.units[isa.Unit.STORE], sx.proc)
        wiring.connect(m, sx.cmd, store.cmd)
        wiring.connect(m, store.resp, sx.resp)
        wiring.connect(m, store.dma, wr.clients[0])
        wiring.connect(m, store.spad, spad.r[SPAD_READERS.index("store")])

        self._wire_matmul(m, proc, rd, spad)
        self._wire_kv(m, proc, spad)

        # the units not present take nothing and are idle (their instructions are refused)
        for u in isa.Unit:
            if u not in PRESENT_UNITS:
                port = proc.units[u]
                m.d.comb += [port.instr.ready.eq(0), port.idle.eq(1), port.progress.eq(0), port.done.valid.eq(0)]
        m.d.comb += [lx.moved.eq(load.events.beats_in | load.events.spad_writes),
                     sx.moved.eq(store.events.beats_out | store.events.spad_reads)]
        self._wire_vector(m, proc, spad)
        self._wire_softmax(m, proc, spad)

        self._wire_csrs(m, csr, proc)
        self._wire_counters(m, csr, spad)
        return m

    def _wire_vector(self, m, proc, spad):
        """The VECTOR unit: its queue, four scratchpad read ports and two write ports (it drives
        its own ``progress``)."""
        m.submodules.vector_exec = vx = self._vector_exec
        wiring.connect(m, proc.units[isa.Unit.VECTOR], vx.port)
        for i, s in enumerate(VECTOR_READERS):
            wiring.connect(m, vx.spad_r[i], spad.r[SPAD_READERS.index(f"vector_{s}")])
        for j, s in enumerate(VECTOR_WRITERS):
            wiring.connect(m, vx.spad_w[j], spad.w[SPAD_WRITERS.index(f"vector_{s}")])

    def _wire_softmax(self, m, proc, spad):
        """The SOFTMAX unit: its queue, one scratchpad read port and one write port."""
        m.submodules.softmax_exec = sx = self._softmax_exec
        wiring.connect(m, proc.units[isa.Unit.SOFTMAX], sx.port)
        wiring.connect(m, sx.spad_r, spad.r[SPAD_READERS.index("softmax")])
        wiring.connect(m, sx.spad_w, spad.w[SPAD_WRITERS.index("softmax")])

    def _wire_matmul(self, m, proc, rd, spad):
        """The MATMUL unit: its unit port, two read clients (weights, parameters), a scratchpad
        read port (activations) and write port (results), the KV cache's READs."""
        m.submodules.matmul_exec = mx = self._mm_exec
        wiring.connect(m, proc.units[isa.Unit.MATMUL], mx.port)
        wiring.connect(m, mx.wdma, rd.clients[READ_CLIENTS.index("matmul_w")])
        wiring.connect(m, mx.pdma, rd.clients[READ_CLIENTS.index("matmul_p")])
        wiring.connect(m, mx.spad_r, spad.r[SPAD_READERS.index("matmul")])
        wiring.connect(m, mx.spad_w, spad.w[SPAD_WRITERS.index("matmul")])

    def _wire_kv(self, m, proc, spad):
        """The KV unit: its instructions, its scratchpad read port (APPEND rows) and the MATMUL
        unit's READ_K / READ_V port."""
        m.submodules.kv_exec = kx = self._kv_exec
        wiring.connect(m, proc.units[isa.Unit.KV], kx.port)
        wiring.connect(m, kx.spad, spad.r[SPAD_READERS.index("kv")])
        wiring.connect(m, self._mm_exec.kv, kx.read)

    @property
    def kv_exec(self):
        """The KV unit (:class:`hdl.exec_kv.KVExec`)."""
        return self._kv_exec

    def _wire_csrs(self, m, csr, proc):
        r = csr.regs
        mem = self._config.memory
        ext_size = Signal(mem.axi_addr_bits + 1)
        m.d.comb += ext_size.eq(r.ext_size)
        with m.If(r.ext_size == 0):
            m.d.comb += ext_size.eq(1 << mem.axi_addr_bits)
        m.d.comb += [r.id.eq(CHIP_ID), proc.start.eq(r.start), proc.clear.eq(r.clear),
                     proc.prog_addr.eq(r.prog_addr), proc.prog_len.eq(r.prog_len), proc.ext_size.eq(ext_size),
                     proc.watchdog.eq(r.watchdog), r.status.eq(proc.state), r.error_code.eq(proc.err_code),
                     r.error_detail.eq(proc.err_detail), r.error_index.eq(proc.err_index)]
        # the interrupt: bit 0 done, bit 1 error, set on the cycle the program finishes
        done_now, err_now = Signal(), Signal()
        was = Signal(ProcState)
        m.d.sync += was.eq(proc.state)
        m.d.comb += [done_now.eq((proc.state == ProcState.DONE) & (was != ProcState.DONE)),
                     err_now.eq((proc.state == ProcState.ERROR) & (was != ProcState.ERROR)),
                     r.irq_status_set.eq(Cat(done_now, err_now)),
                     self.irq.eq((r.irq_status & r.irq_enable) != 0)]

    def _wire_counters(self, m, csr, spad):
        layout = events_layout(self._counter_fields)
        m.submodules.counters = counters = CounterBank(layout)
        ev = counters.events
        m.d.comb += ev.cycles.eq(1)
        for block, events in self._events.items():
            for name, _ in events.shape():
                m.d.comb += getattr(ev, f"{block}_{name}").eq(getattr(events, name))
        se = spad.events
        banks = self._config.memory.spad_banks
        m.d.comb += [ev.spad_reads.eq(sum(getattr(se, f"bank{b}_reads") for b in range(banks))),
                     ev.spad_writes.eq(sum(getattr(se, f"bank{b}_writes") for b in range(banks))),
                     ev.spad_conflicts.eq(sum([getattr(se, f"r{i}_wait") for i in range(len(SPAD_READERS))]
                                              + [getattr(se, f"w{j}_wait") for j in range(len(SPAD_WRITERS))])),
                     ev.spad_bad_addr.eq(se.bad_addr),
                     counters.clear.eq(csr.regs.counters_clear)]
        m.d.comb += [counters.rd_index.eq(csr.win_index), csr.win_value.eq(counters.rd_value)]
