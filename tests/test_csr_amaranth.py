# amaranth: UnusedElaboratable=no
"""The CSR bank without Verilator: register-map checks, the generated docs/csr.md, and
amaranth.sim runs of every access kind through a small AXI4-Lite driver."""

from pathlib import Path

import pytest
from amaranth.hdl import Fragment
from amaranth.sim import Simulator

from hdl.csr import CsrBank, Register, RegisterMap, markdown

ROOT = Path(__file__).resolve().parent.parent

MAP = [
    ("ID", 0x0, 32, "ro", "identifier"),
    ("CTRL", 0x4, 20, "rw", "a read-write register", 0x12345),
    ("GO", 0x8, 3, "w1p", "pulses"),
    ("IRQ", 0xC, 4, "w1c", "status"),
    ("WIDE", 0x10, 64, "rw", "two words"),
    ("COUNT", 0x20, 48, "ro", "a counter"),
]


@pytest.mark.parametrize("registers, message", [
    ([("A", 0x2, 8, "rw")], "offset must be a non-negative multiple of 4"),
    ([("A", 0x0, 33, "w1p")], "width must be in 1..32 for w1p"),
    ([("A", 0x0, 65, "ro")], "width must be in 1..64 for ro"),
    ([("A", 0x0, 8, "wo")], "access must be one of ro, rw, w1p, w1c"),
    ([("A", 0x0, 8, "rw", "", 256)], "reset must fit 8 bits"),
    ([("A", 0x0, 8, "ro", "", 1)], "only rw registers have a reset value"),
    ([("A", 0x0, 64, "ro"), ("B", 0x4, 8, "rw")], "register B overlaps A at 0x4"),
    ([("A", 0x0, 8, "rw"), ("a", 0x8, 8, "rw")], "port name 'a' is taken"),
    ([("A", 0x0, 8, "w1c"), ("A_SET", 0x8, 8, "rw")], "port name 'a_set' is taken"),
    ([("A", 0x1000, 8, "rw")], "outside the 12-bit window"),
    ([("1A", 0x0, 8, "rw")], "register name must be an identifier"),
])
def test_bad_register_maps_raise_naming_the_register(registers, message):
    with pytest.raises(ValueError, match=message):
        RegisterMap(registers, addr_width=12)


def test_docs_csr_md_is_generated_from_spec_csr():
    """Regenerate with ``python -m hdl.csr --doc``."""
    assert (ROOT / "docs" / "csr.md").read_text() == markdown()


def test_chip_map_elaborates_with_one_port_per_register():
    from spec.csr import chip_registers
    bank = CsrBank(RegisterMap.from_spec(chip_registers(["cycles", "proc_retired"])))
    members = bank.signature.members["regs"].signature.members
    for r in bank.regmap:
        assert r.port in members
    assert "irq_status_set" in members
    assert isinstance(bank.regmap["CNT_CYCLES"], Register) and bank.regmap["CNT_CYCLES"].words == 2
    Fragment.get(bank, None)


class LiteDriver:
    """AXI4-Lite transactions in amaranth.sim, one at a time, AW before W (or W first)."""

    def __init__(self, bus):
        self.bus = bus

    async def write(self, ctx, addr, value, strb=0xF, w_first=False):
        b = self.bus
        channels = [((b.awaddr, addr), b.awvalid, b.awready), ((b.wdata, value), b.wvalid, b.wready)]
        ctx.set(b.wstrb, strb)
        for (sig, val), valid, ready in (channels[::-1] if w_first else channels):
            ctx.set(sig, val)
            ctx.set(valid, 1)
            await ctx.tick().until(ready)
            ctx.set(valid, 0)
        ctx.set(b.bready, 1)
        (resp,) = await ctx.tick().sample(b.bresp).until(b.bvalid)
        ctx.set(b.bready, 0)
        return resp

    async def read(self, ctx, addr):
        b = self.bus
        ctx.set(b.araddr, addr)
        ctx.set(b.arvalid, 1)
        await ctx.tick().until(b.arready)
        ctx.set(b.arvalid, 0)
        ctx.set(b.rready, 1)
        data, resp = await ctx.tick().sample(b.rdata, b.rresp).until(b.rvalid)
        ctx.set(b.rready, 0)
        return data, resp


def test_every_access_kind_through_axi_lite():
    dut = CsrBank(RegisterMap([Register(*r) for r in MAP], addr_width=8))
    drv = LiteDriver(dut.bus)
    regs = dut.regs
    pulses = []

    async def pulse_monitor(ctx):
        async for _clk, _rst, go in ctx.tick().sample(regs.go):
            if go:
                pulses.append(go)

    async def bench(ctx):
        ctx.set(regs.id, 0xCAFE0001)
        assert await drv.read(ctx, 0x0) == (0xCAFE0001, 0)
        assert await drv.read(ctx, 0x3) == (0xCAFE0001, 0)            # low address bits ignored
        assert await drv.write(ctx, 0x0, 5) == 2                     # ro: SLVERR, unchanged
        assert await drv.read(ctx, 0x4) == (0x12345, 0)              # reset value
        assert await drv.write(ctx, 0x4, 0xFFFFFFFF, strb=0b0010) == 0
        assert ctx.get(regs.ctrl) == 0x1FF45
        assert await drv.write(ctx, 0x4, 0xABCDE, w_first=True) == 0
        assert await drv.read(ctx, 0x4) == (0xABCDE, 0)
        assert await drv.write(ctx, 0x8, 0b101) == 0
        assert await drv.write(ctx, 0x8, 0b010, strb=0) == 0         # no strobe: no pulse
        assert await drv.read(ctx, 0x8) == (0, 0)
        ctx.set(regs.irq_set, 0b1010)
        await ctx.tick()
        ctx.set(regs.irq_set, 0)
        assert await drv.read(ctx, 0xC) == (0b1010, 0)
        assert await drv.write(ctx, 0xC, 0b0011) == 0
        assert await drv.read(ctx, 0xC) == (0b1000, 0)
        assert await drv.write(ctx, 0x14, 0x89ABCDEF) == 0
        assert await drv.write(ctx, 0x10, 0x01234567) == 0
        assert ctx.get(regs.wide) == 0x89ABCDEF_01234567
        assert await drv.read(ctx, 0x14) == (0x89ABCDEF, 0)
        ctx.set(regs.count, 0x7777_1111_2222)
        assert await drv.read(ctx, 0x20) == (0x1111_2222, 0)
        ctx.set(regs.count, 0x8888_3333_4444)
        assert await drv.read(ctx, 0x24) == (0x7777, 0)              # the snapshot
        assert await drv.read(ctx, 0x28) == (0, 2)                   # unmapped
        assert await drv.write(ctx, 0x28, 1) == 2
        assert await drv.write(ctx, 0x24, 1) == 2                    # ro high half
        assert ctx.get(regs.wide) == 0x89ABCDEF_01234567

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_process(pulse_monitor)
    sim.add_testbench(bench)
    sim.run()
    assert pulses == [0b101]


def test_w1c_bit_set_by_hardware_in_the_cycle_software_clears_it_stays_set():
    dut = CsrBank(RegisterMap([Register(*r) for r in MAP], addr_width=8))
    drv = LiteDriver(dut.bus)

    async def bench(ctx):
        ctx.set(dut.regs.irq_set, 0b0001)
        await ctx.tick()
        b = dut.bus
        ctx.set(b.awaddr, 0xC)
        ctx.set(b.wdata, 0b0001)
        ctx.set(b.wstrb, 0xF)
        ctx.set(b.awvalid, 1)
        ctx.set(b.wvalid, 1)
        await ctx.tick()                      # both taken
        ctx.set(b.awvalid, 0)
        ctx.set(b.wvalid, 0)
        await ctx.tick()                      # the write is done in this cycle, set still 1
        ctx.set(dut.regs.irq_set, 0)
        ctx.set(b.bready, 1)
        await ctx.tick().until(b.bvalid)
        ctx.set(b.bready, 0)
        assert await drv.read(ctx, 0xC) == (0b0001, 0)
        assert await drv.write(ctx, 0xC, 0b0001) == 0
        assert await drv.read(ctx, 0xC) == (0, 0)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


def test_read_latency_and_write_timing_are_as_documented():
    """R valid read_latency (2) cycles after the AR handshake; a write's B, its new rw value and
    its w1p pulse in the cycle after the first cycle both AW and W are held."""
    dut = CsrBank(RegisterMap([Register(*r) for r in MAP], addr_width=8))
    b = dut.bus

    async def bench(ctx):
        ctx.set(b.araddr, 0x4)
        ctx.set(b.arvalid, 1)
        await ctx.tick().until(b.arready)           # the AR handshake's edge
        ctx.set(b.arvalid, 0)
        waited = 0
        while not ctx.get(b.rvalid):
            await ctx.tick()
            waited += 1
        assert waited + 1 == dut.read_latency
        ctx.set(b.rready, 1)
        await ctx.tick()
        ctx.set(b.rready, 0)
        ctx.set(b.awaddr, 0x8)
        ctx.set(b.awvalid, 1)
        ctx.set(b.wdata, 1)
        ctx.set(b.wstrb, 0xF)
        ctx.set(b.wvalid, 1)
        await ctx.tick()                            # both handshakes
        ctx.set(b.awvalid, 0)
        ctx.set(b.wvalid, 0)
        assert not ctx.get(b.bvalid)
        await ctx.tick()                            # both held: the write is done
        assert ctx.get(b.bvalid) and ctx.get(dut.regs.go) == 1
        await ctx.tick()
        assert ctx.get(dut.regs.go) == 0

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


WINDOW_MAP = [("ID", 0x0, 32, "ro", "identifier"), ("CTRL", 0x4, 8, "rw", "read-write"),
              ("C0", 0x40, 48, "ro", "counter 0"), ("C1", 0x48, 48, "ro", "counter 1"),
              ("C2", 0x50, 48, "ro", "counter 2")]


def test_window_registers_are_read_through_the_index_port_with_a_snapshot_per_register():
    dut = CsrBank(RegisterMap([Register(*r) for r in WINDOW_MAP], addr_width=8), window=(0x40, 3))
    assert set(dut.signature.members["regs"].signature.members) == {"id", "ctrl"}
    drv = LiteDriver(dut.bus)
    table = [0x0001_AAAA_0000, 0x0002_BBBB_1111, 0x0003_CCCC_2222]

    async def window_model(ctx):            # the value of the index given one cycle before
        async for _clk, _rst, index in ctx.tick().sample(dut.win_index):
            ctx.set(dut.win_value, table[index] if index < len(table) else 0xDEAD)

    async def bench(ctx):
        ctx.set(dut.regs.id, 0x1D)
        assert await drv.read(ctx, 0x48) == (0xBBBB_1111, 0)
        assert await drv.read(ctx, 0x40) == (0xAAAA_0000, 0)
        table[:] = [0x0009_0000_0000, 0x0008_0000_0000, 0x0007_0000_0007]
        assert await drv.read(ctx, 0x4C) == (0x0002, 0)              # C1's snapshot, not C0's
        assert await drv.read(ctx, 0x44) == (0x0001, 0)
        assert await drv.read(ctx, 0x50) == (0x0000_0007, 0)
        assert await drv.read(ctx, 0x54) == (0x0007, 0)
        assert await drv.read(ctx, 0x0) == (0x1D, 0)                 # outside the window as before
        assert await drv.read(ctx, 0x58) == (0, 2)                   # past the window: unmapped
        assert await drv.read(ctx, 0x3C) == (0, 2)
        assert await drv.write(ctx, 0x48, 1) == 2                    # ro: SLVERR
        assert await drv.write(ctx, 0x4, 0x5A) == 0
        assert await drv.read(ctx, 0x4) == (0x5A, 0)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_process(window_model)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("window, message", [
    ((0x44, 2), "multiple of 8"),
    ((0x40, 0), "positive int"),
    ((0x40, 4), "window register 3 at 0x58 must be a two-word ro register"),
    ((0x0, 1), "window register 0 at 0x0 must be a two-word ro register"),
])
def test_bad_windows_raise_naming_the_problem(window, message):
    with pytest.raises(ValueError, match=message):
        CsrBank(RegisterMap([Register(*r) for r in WINDOW_MAP], addr_width=8), window=window)
