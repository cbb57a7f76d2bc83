# amaranth: UnusedElaboratable=no
"""amaranth.sim tests of the shared plumbing: hdl.memport.SyncMemory (synchronous, not
transparent, lane write enables, the Verilog-instance choice) and hdl.counters.EventCounters
(flags and amounts, clear, one-cycle latency), and their parameter checks."""

import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.sim import Simulator

from hdl.counters import EventCounters, events_layout
from hdl.memport import MemoryPortSignature, SyncMemory, with_verilog_sources


def _run(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


def test_sync_memory_reads_one_cycle_later_old_word_on_collision_and_writes_only_enabled_lanes():
    dut = SyncMemory(depth=16, data_width=32, granularity=8)
    p = dut.port
    seen = {}

    async def bench(ctx):
        ctx.set(p.waddr, 3)
        ctx.set(p.wdata, 0x11223344)
        ctx.set(p.wen, 0b1111)
        await ctx.tick()
        ctx.set(p.wdata, 0xAABBCCDD)
        ctx.set(p.wen, 0b0101)          # lanes 0 and 2 only
        ctx.set(p.raddr, 3)
        ctx.set(p.ren, 1)               # read and write of one address: the old word
        await ctx.tick()
        ctx.set(p.wen, 0)
        seen["collision"] = ctx.get(p.rdata)
        await ctx.tick()
        seen["after"] = ctx.get(p.rdata)
        ctx.set(p.ren, 0)
        ctx.set(p.raddr, 5)
        await ctx.tick()
        seen["held"] = ctx.get(p.rdata)  # ren low: rdata keeps its word

    _run(dut, bench)
    assert seen == {"collision": 0x11223344, "after": 0x11BB33DD, "held": 0x11BB33DD}


def test_sync_memory_builds_large_memories_as_the_verilog_ram_and_appends_its_source():
    small = verilog.convert(SyncMemory(depth=64, data_width=32), name="small", emit_src=False)
    assert "tfa_sync_ram" not in small
    big = SyncMemory(depth=1 << 16, data_width=64)
    text = with_verilog_sources(verilog.convert(big, name="big", emit_src=False))
    assert "tfa_sync_ram #(" in text and "module tfa_sync_ram" in text
    assert len(text) < 20_000   # no per-word initial values


def test_memory_port_signature_checks_its_widths():
    assert MemoryPortSignature(4, 32, 8).members["wen"].shape == 4
    with pytest.raises(ValueError, match="granularity must divide data_width"):
        MemoryPortSignature(4, 32, 12)
    with pytest.raises(TypeError, match="addr_width must be a positive int"):
        MemoryPortSignature(0, 32)
    with pytest.raises(ValueError, match="depth must be an int"):
        SyncMemory(depth=1, data_width=8)


def test_event_counters_add_flags_and_amounts_and_clear_one_cycle_later():
    layout = events_layout({"busy": 1, "macs_int8": 8})
    dut = EventCounters(layout, width=16)
    rng = np.random.default_rng(7)
    busy = rng.integers(0, 2, 40)
    macs = rng.integers(0, 256, 40)
    seen = []

    async def bench(ctx):
        for t in range(40):
            ctx.set(dut.events.busy, int(busy[t]))
            ctx.set(dut.events.macs_int8, int(macs[t]))
            ctx.set(dut.clear, int(t == 20))
            await ctx.tick()
            seen.append((ctx.get(dut.counts.busy), ctx.get(dut.counts.macs_int8)))

    _run(dut, bench)
    assert seen[19] == (int(busy[:20].sum()), int(macs[:20].sum()))
    assert seen[20] == (0, 0)                       # cleared; cycle 20's events not counted
    assert seen[39] == (int(busy[21:].sum()), int(macs[21:].sum()) % (1 << 16))
    assert dut.names == ["busy", "macs_int8"]


def test_event_layouts_and_counters_reject_bad_parameters():
    with pytest.raises(ValueError, match="event 'x': width must be an int in 1..32"):
        events_layout({"x": 0})
    with pytest.raises(ValueError, match="width must be an int in 8..64"):
        EventCounters(events_layout(["busy"]), width=4)
    with pytest.raises(TypeError, match="layout must be a data.StructLayout"):
        EventCounters({"busy": 1})
