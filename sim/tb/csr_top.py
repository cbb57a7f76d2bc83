"""Test top of the CSR bank: the chip's register map (spec/csr.py) behind the AXI4-Lite port
``s_axil``, with a little hardware around it so that a testbench sees every access kind work:

- ``ID`` reads :data:`ID_VALUE`;
- three counters (:data:`COUNTERS`, so the map is :data:`REGISTERS`, ``spec.csr.chip_registers``):
  ``CNT_CYCLES`` is a 48-bit cycle counter that starts at :data:`CYCLES_START` (so it carries into
  its high half early in a test) and restarts at 0 on a ``COUNTERS_CLEAR`` pulse;
  ``CNT_DMA_READ_BYTES`` counts the ``START`` pulses;
- ``STATUS``, ``ERROR_CODE``, ``ERROR_DETAIL``, ``ERROR_INDEX``, ``CNT_DMA_WRITE_BYTES`` and
  ``IRQ_STATUS``'s set bits are top-level inputs; ``PROG_ADDR``, ``PROG_LEN``, ``EXT_SIZE``,
  ``WATCHDOG``, ``IRQ_ENABLE`` and ``irq`` outputs.
"""

from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hdl.axi import AxiLiteSignature
from hdl.csr import CsrBank, RegisterMap
from spec.csr import chip_registers

from .dma_top import source_digest

__all__ = ["CsrTestTop", "csr_design", "ID_VALUE", "CYCLES_START", "COUNTERS", "REGISTERS"]

ID_VALUE = 0x7FA00001
CYCLES_START = (1 << 32) - 200
#: The counters of the test map (``CNT_<NAME>`` from spec.csr.COUNTER_BASE).
COUNTERS = ("cycles", "dma_read_bytes", "dma_write_bytes")
#: The test top's register map: the chip's registers and :data:`COUNTERS`.
REGISTERS = chip_registers(COUNTERS)


class CsrTestTop(wiring.Component):
    s_axil: In(AxiLiteSignature(addr_width=12, data_width=32))
    status: In(2)
    error_code: In(8)
    error_detail: In(8)
    error_index: In(32)
    write_bytes: In(48)
    irq_set: In(2)
    prog_addr: Out(64)
    prog_len: Out(32)
    ext_size: Out(64)
    watchdog: Out(32)
    irq_enable: Out(2)
    irq: Out(1)

    def elaborate(self, platform):
        m = Module()
        m.submodules.bank = bank = CsrBank(RegisterMap.from_spec(REGISTERS))
        wiring.connect(m, wiring.flipped(self.s_axil), bank.bus)
        r = bank.regs
        cycles = Signal(48, init=CYCLES_START)
        starts = Signal(48)
        m.d.sync += cycles.eq(cycles + 1)
        with m.If(r.counters_clear):
            m.d.sync += cycles.eq(0)
        with m.If(r.start):
            m.d.sync += starts.eq(starts + 1)
        m.d.comb += [
            r.id.eq(ID_VALUE), r.cnt_cycles.eq(cycles), r.cnt_dma_read_bytes.eq(starts),
            r.status.eq(self.status), r.error_code.eq(self.error_code), r.error_detail.eq(self.error_detail),
            r.error_index.eq(self.error_index), r.cnt_dma_write_bytes.eq(self.write_bytes),
            r.irq_status_set.eq(self.irq_set),
            self.prog_addr.eq(r.prog_addr), self.prog_len.eq(r.prog_len), self.ext_size.eq(r.ext_size),
            self.watchdog.eq(r.watchdog),
            self.irq_enable.eq(r.irq_enable), self.irq.eq((r.irq_status & r.irq_enable).any()),
        ]
        return m


def csr_design():
    from sim.runner import build
    return build(CsrTestTop, "csr_bank_top", params={"top": source_digest(__file__)})
