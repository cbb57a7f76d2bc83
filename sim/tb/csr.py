"""cocotb side of the CSR test (sim.tb.csr_top.CsrTestTop), through cocotbext-axi's
AxiLiteMaster with random valid gaps and backpressure on its five channels. Four tasks run at
once and share the read and write channels:

- read-write registers: random partial writes (1, 2 or 4 bytes, so every strobe pattern) and
  reads checked against a model, and against the register outputs;
- the 48-bit cycle counter read low half then high half while it carries into the high half:
  each value within the cycles the read took, values increasing;
- START pulses (with and without bit 0) counted by the top's pulse counter;
- unmapped addresses and read-only registers answering SLVERR (reads 0);

then interrupt status bits set by the hardware and cleared by writing 1, the interrupt output,
and COUNTERS_CLEAR.
"""

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge

from spec import csr as spec_csr

from .axi import lite_master
from .common import load_inputs, rng
from .csr_top import CYCLES_START, ID_VALUE, REGISTERS

OKAY, SLVERR = 0, 2


def offset_of(name):
    """The byte offset of register ``name`` of the test top's map."""
    return spec_csr.offset_of(name, REGISTERS)


class Cycles:
    def __init__(self, clk):
        self.now = 0
        cocotb.start_soon(self._run(clk))

    async def _run(self, clk):
        while True:
            await RisingEdge(clk)
            self.now += 1


async def read32(master, addr):
    r = await master.read(addr, 4)
    return int.from_bytes(r.data, "little"), int(r.resp)


async def rw_registers(dut, master, rand, n):
    regs = {"PROG_ADDR": 64, "PROG_LEN": 32, "EXT_SIZE": 64, "WATCHDOG": 32, "IRQ_ENABLE": 2}
    reset = {entry[0]: entry[5] for entry in REGISTERS if len(entry) > 5}
    model = {name: reset.get(name, 0) for name in regs}   # the reset values of the map
    outputs = {"PROG_ADDR": dut.prog_addr, "PROG_LEN": dut.prog_len, "EXT_SIZE": dut.ext_size,
               "WATCHDOG": dut.watchdog, "IRQ_ENABLE": dut.irq_enable}
    for _ in range(n):
        name = rand.choice(list(regs))
        width = regs[name]
        base = offset_of(name)
        length = rand.choice([1, 2, 4])
        start = rand.randrange(0, max(width // 8, 4), length)   # within one word
        data = rand.randbytes(length)
        resp = await master.write(base + start, data)
        assert int(resp.resp) == OKAY
        value = model[name].to_bytes(8, "little")
        value = value[:start] + data + value[start + length:]
        model[name] = int.from_bytes(value[:8], "little") & ((1 << width) - 1)
        for half in range((width + 31) // 32):
            got, resp = await read32(master, base + 4 * half)
            assert resp == OKAY
            want = (model[name] >> (32 * half)) & 0xFFFFFFFF
            assert got == want, f"{name} word {half}: read {got:#x}, want {want:#x}"
        assert int(outputs[name].value) == model[name], f"{name} output"


async def counter_reads(master, cycles, n):
    lo_addr = offset_of("CNT_CYCLES")
    last = -1
    carried = False
    for _ in range(n):
        before = cycles.now
        lo, r1 = await read32(master, lo_addr)
        hi, r2 = await read32(master, lo_addr + 4)
        after = cycles.now
        assert r1 == r2 == OKAY
        value = hi << 32 | lo
        assert CYCLES_START + before - 3 <= value <= CYCLES_START + after + 3, \
            f"CNT_CYCLES read {value:#x} outside cycles {before}..{after}"
        assert value > last
        last = value
        carried |= hi > 0
    assert carried, "the counter never reached its high half"


async def start_pulses(master, rand, n):
    ones = 0
    for _ in range(n):
        value = rand.choice([0, 1, 2, 3, 0xFFFFFFFF])
        assert int((await master.write(offset_of("START"), value.to_bytes(4, "little"))).resp) == OKAY
        ones += value & 1
    return ones


async def errors(master, rand, n):
    ro = [offset_of(name) for name in ("ID", "STATUS", "CNT_CYCLES", "ERROR_CODE")]
    for _ in range(n):
        addr = rand.choice([0x004, 0x01C, 0x02C, 0x04C, 0x0FC, 0x118, 0xFFC])
        got, resp = await read32(master, addr)
        assert (got, resp) == (0, SLVERR), f"read {addr:#x}"
        assert int((await master.write(addr, b"\x01\x00\x00\x00")).resp) == SLVERR
        assert int((await master.write(rand.choice(ro), b"\x01\x00\x00\x00")).resp) == SLVERR
    assert await read32(master, offset_of("ID")) == (ID_VALUE, OKAY)


@cocotb.test()
async def csr_concurrent(dut):
    _, meta = load_inputs()
    rand = rng(meta)
    clk = dut.clk
    cocotb.start_soon(Clock(clk, 10, unit="ns").start())
    dut.rst.value = 1
    for sig in (dut.status, dut.error_code, dut.error_detail, dut.error_index, dut.write_bytes, dut.irq_set):
        sig.value = 0
    master = lite_master(dut, "s_axil_", clk, dut.rst, rand=rand, stall=float(meta["stall"]),
                         backpressure=float(meta["backpressure"]))
    await ClockCycles(clk, 3)
    dut.rst.value = 0
    cycles = Cycles(clk)
    n = int(meta["n"])
    tasks = [cocotb.start_soon(rw_registers(dut, master, rand, n)),
             cocotb.start_soon(counter_reads(master, cycles, n)),
             cocotb.start_soon(start_pulses(master, rand, n)),
             cocotb.start_soon(errors(master, rand, n // 4))]
    results = [await t for t in tasks]
    got, resp = await read32(master, offset_of("CNT_DMA_READ_BYTES"))
    assert (got, resp) == (results[2], OKAY), f"{got} START pulses counted, {results[2]} written with bit 0"

    # hardware inputs
    dut.status.value, dut.error_code.value, dut.error_index.value = 2, 0xA5, 0x12345678
    dut.error_detail.value = 0x5A
    dut.write_bytes.value = 0x1234_89ABCDEF
    await RisingEdge(clk)
    for name, want in (("STATUS", 2), ("ERROR_CODE", 0xA5), ("ERROR_DETAIL", 0x5A), ("ERROR_INDEX", 0x12345678)):
        assert await read32(master, offset_of(name)) == (want, OKAY), name
    assert await read32(master, offset_of("CNT_DMA_WRITE_BYTES")) == (0x89ABCDEF, OKAY)
    assert await read32(master, offset_of("CNT_DMA_WRITE_BYTES") + 4) == (0x1234, OKAY)

    # interrupt status: set by hardware, cleared by writing 1
    irq = offset_of("IRQ_STATUS")
    await master.write(offset_of("IRQ_ENABLE"), b"\x02\x00\x00\x00")
    dut.irq_set.value = 0b01
    await RisingEdge(clk)
    dut.irq_set.value = 0
    assert await read32(master, irq) == (0b01, OKAY)
    assert not dut.irq.value, "bit 0 is not enabled"
    dut.irq_set.value = 0b10
    await RisingEdge(clk)
    dut.irq_set.value = 0
    await RisingEdge(clk)
    assert dut.irq.value, "bit 1 is enabled"
    assert int((await master.write(irq, b"\x02\x00\x00\x00")).resp) == OKAY
    assert await read32(master, irq) == (0b01, OKAY)
    assert not dut.irq.value
    await master.write(irq, b"\x03\x00\x00\x00")
    assert await read32(master, irq) == (0, OKAY)

    # clearing the counters
    await master.write(offset_of("COUNTERS_CLEAR"), b"\x01\x00\x00\x00")
    lo, _ = await read32(master, offset_of("CNT_CYCLES"))
    hi, _ = await read32(master, offset_of("CNT_CYCLES") + 4)
    assert hi == 0 and lo < 200, f"CNT_CYCLES after a clear: {hi:#x}:{lo:#x}"
