# amaranth: UnusedElaboratable=no
"""The simulation kit without Verilator: payload packing (sim.packing), the result object
(sim.SimResult), the standalone wrapper (hdl.standalone) in amaranth.sim, and the pause
generators."""

import itertools

import numpy as np
import pytest
from amaranth.hdl import Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from hdl.counters import events_layout
from hdl.memport import MemoryPortSignature
from hdl.standalone import Standalone
from sim import SimResult
from sim.packing import pack_fields, pack_lanes, rows_to_words, unpack_fields, unpack_lanes, words_to_rows


def test_fields_pack_by_layout_and_out_of_range_values_name_the_field():
    layout = data.StructLayout({"op": 3, "seq": 16, "wide": 70})
    word = pack_fields(layout, {"op": 5, "seq": 0xBEEF, "wide": 1 << 69})
    assert word == 5 | 0xBEEF << 3 | 1 << (69 + 19)
    assert unpack_fields(layout, word) == {"op": 5, "seq": 0xBEEF, "wide": 1 << 69}
    cols = unpack_fields({"op": 3, "seq": 16}, [5 | 7 << 3, 1])
    assert cols["op"].tolist() == [5, 1] and cols["seq"].tolist() == [7, 0]
    with pytest.raises(ValueError, match="command 2: field seq=65536 does not fit 16 bits"):
        pack_fields(layout, {"seq": 1 << 16}, what="command 2: field")
    with pytest.raises(ValueError, match="field 'nope' is not one of op, seq, wide"):
        pack_fields(layout, {"nope": 1})


def test_words_and_byte_rows_and_lanes_round_trip():
    words = [0, 1, (1 << 129) - 1, 0x1234]
    rows = words_to_rows(words)
    assert rows.shape == (4, 17) and rows_to_words(rows) == words
    assert words_to_rows([], 3).shape == (0, 3)
    rng = np.random.default_rng(1)
    for width in (8, 16, 32, 24, 1):
        lanes = rng.integers(0, 1 << width, (5, 3))
        back = unpack_lanes(pack_lanes(lanes, width), 3, width)
        assert np.array_equal(back, lanes), width
    # signed values are packed as their two's complement bit patterns
    assert pack_lanes(np.array([[-1, 2]], np.int8), 8) == [0x02FF]


def test_sim_result_gives_the_main_output_and_every_output_as_an_attribute():
    r = SimResult(outputs={"p": np.arange(3), "o_cycles": np.arange(2)}, counters={"busy": 4}, seed=7,
                  cycles=9, main="p")
    assert r.output is r.outputs["p"] and r.o_cycles is r.outputs["o_cycles"]
    with pytest.raises(AttributeError, match="no attribute or output 'nope'"):
        _ = r.nope
    assert "seed=7" in repr(r)


class _Counter(wiring.Component):
    """A test block: counts the beats of ``i`` into ``events`` and writes each beat to ``mem``."""
    i: In(8)
    go: In(1)
    events: Out(events_layout({"busy": 1, "amount": 8}))
    mem: Out(MemoryPortSignature(4, 8))

    def elaborate(self, platform):
        m = Module()
        addr = Signal(4)
        m.d.comb += [self.events.busy.eq(self.go), self.events.amount.eq(self.i & -self.go),
                     self.mem.waddr.eq(addr), self.mem.wdata.eq(self.i), self.mem.wen.eq(self.go),
                     self.mem.raddr.eq(addr - 1), self.mem.ren.eq(1)]
        with m.If(self.go):
            m.d.sync += addr.eq(addr + 1)
        return m


def test_standalone_counts_the_events_and_serves_the_memory_port():
    top = Standalone(_Counter(), memories={"mem": 16}, counter_width=16)
    assert top.counter_names == ["busy", "amount"]
    assert set(top.signature.members) == {"i", "go", "counts", "mem"}
    seen = {}

    async def bench(ctx):
        for v in (3, 5, 7):
            ctx.set(top.i, v)
            ctx.set(top.go, 1)
            await ctx.tick()
        ctx.set(top.go, 0)
        await ctx.tick()
        seen["counts"] = (ctx.get(top.counts.busy), ctx.get(top.counts.amount))
        seen["rdata"] = ctx.get(top.mem.rdata)   # the word written last, read back
        seen["waddr"] = ctx.get(top.mem.waddr)

    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert seen == {"counts": (3, 15), "rdata": 7, "waddr": 3}
    with pytest.raises(ValueError, match="'i' is not a memory port"):
        Standalone(_Counter(), memories={"i": 4})


class _Pipe(wiring.Component):
    """A one-register stream stage: ``i`` → ``o``."""
    i: In(stream.Signature(8))
    o: Out(stream.Signature(8))

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.i.ready.eq(~self.o.valid | self.o.ready)
        with m.If(self.i.ready):
            m.d.sync += [self.o.valid.eq(self.i.valid), self.o.payload.eq(self.i.payload)]
        return m


def test_standalone_taken_outputs_follow_each_handshake_by_one_cycle():
    top = Standalone(_Pipe(), taken=("i", "o"))
    assert {"i_taken", "o_taken"} <= set(top.signature.members)
    seen = []

    async def bench(ctx):
        ctx.set(top.o.ready, 1)
        for valid, ready in ((1, 1), (0, 1), (1, 0), (0, 0), (0, 1), (0, 1)):
            ctx.set(top.i.valid, valid)
            ctx.set(top.o.ready, ready)
            handshakes = (ctx.get(top.i.valid & top.i.ready), ctx.get(top.o.valid & top.o.ready))
            await ctx.tick()
            seen.append((handshakes, (ctx.get(top.i_taken), ctx.get(top.o_taken))))

    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert all(hs == taken for hs, taken in seen) and any(any(hs) for hs, _ in seen)
    with pytest.raises(ValueError, match="'go' is not a stream port"):
        Standalone(_Counter(), taken=("go",))


def test_random_pause_is_seeded_and_none_when_never_pausing():
    from sim.tb.common import random_pause
    a = list(itertools.islice(random_pause(0.3, 5), 200))
    assert a == list(itertools.islice(random_pause(0.3, 5), 200)) and 30 < sum(a) < 90
    assert random_pause(0.0) is None
    with pytest.raises(ValueError, match=r"pause probability must be in \[0, 1\)"):
        random_pause(1.0)
