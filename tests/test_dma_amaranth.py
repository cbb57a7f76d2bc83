# amaranth: UnusedElaboratable=no
"""The DMA's parts without Verilator: parameter checks, port layouts, and amaranth.sim runs of
the burst splitter (random requests against a Python model of the AXI burst rules) and of the
round-robin arbiter."""

import os
import random

import pytest
from amaranth.hdl import Fragment, Module, Signal
from amaranth.sim import Simulator

from hdl.config import get_config
from hdl.dma import AxiReadEngine, AxiWriteEngine, BurstSplitter, round_robin


def new_seed():
    """A random seed, or ``TFA_DMA_SEED`` to repeat a run; printed."""
    seed = int(os.environ.get("TFA_DMA_SEED") or random.randrange(1 << 30))
    print("seed", seed, "(repeat with TFA_DMA_SEED)")
    return seed


GOOD = dict(clients=3, addr_width=32, data_width=128)


@pytest.mark.parametrize("engine", [AxiReadEngine, AxiWriteEngine])
@pytest.mark.parametrize("change, message", [
    (dict(clients=0), "clients must be in 1..16"),
    (dict(addr_width=8), "addr_width must be in 12..64"),
    (dict(data_width=48), "data_width must be one of"),
    (dict(id_width=1), "id_width must be in 2..16"),
    (dict(max_burst=257), "max_burst must be in 1..256"),
    (dict(max_outstanding=0), "max_outstanding must be in 1..64"),
    (dict(max_burst=32, fifo_depth=16), "fifo_depth must be in 32..65536"),
    (dict(max_burst=2, fifo_depth=3), "fifo_depth must be in 4..65536"),
    (dict(beats_width=True), "beats_width must be an int"),
])
def test_bad_engine_parameters_raise_naming_the_parameter(engine, change, message):
    with pytest.raises((TypeError, ValueError), match=message):
        engine(**{**GOOD, **change})


def test_from_config_takes_the_bus_of_the_memory_config_and_elaborates():
    cfg = get_config("default")
    r = AxiReadEngine.from_config(cfg)
    w = AxiWriteEngine.from_config(cfg)
    assert (r.num_clients, r.data_width, r.addr_width, r.id_width, r.beats_width) == (3, 128, 32, 2, 28)
    assert (w.num_clients, w.id_width) == (1, 1)
    assert r.request_layout.size == 32 + 28 and r.data_layout.size == 130
    assert w.data_layout.size == 128 + 16
    assert r.signature.members["m_axi"].signature.has_write is False
    assert w.signature.members["m_axi"].signature.has_read is False
    for d in (r, w):
        Fragment.get(d, None)
    with pytest.raises(TypeError, match="config must be a ChipConfig"):
        AxiReadEngine.from_config("default")


def burst_model(addr, beats, data_bytes, max_burst):
    """The bursts (addr, beats, last) a request must become."""
    out = []
    while beats:
        to_page = (4096 - addr % 4096) // data_bytes
        n = min(beats, max_burst, to_page)
        beats -= n
        out.append((addr, n, beats == 0))
        addr += n * data_bytes
    return out


@pytest.mark.parametrize("data_bytes, max_burst", [(16, 64), (4, 256), (64, 16), (16, 1)])
def test_splitter_gives_the_axi_bursts_of_random_requests_with_stalls(data_bytes, max_burst):
    seed = new_seed()
    rand = random.Random(seed)
    dut = BurstSplitter(addr_width=16, beats_width=12, data_bytes=data_bytes, max_burst=max_burst)
    reqs = []
    for _ in range(40):
        beats = rand.choice([1, 2, max_burst, max_burst + 1, rand.randrange(1, 600)]) % 4096 or 1
        near_page = 4096 - data_bytes * rand.randrange(0, 4)
        addr = rand.choice([rand.randrange(0, 1 << 16, data_bytes), near_page % (1 << 16)])
        reqs.append((addr, beats))
    want = [b for a, n in reqs for b in burst_model(a, n, data_bytes, max_burst)]
    want = [((a % (1 << 16)), n, last) for a, n, last in want]
    got = []

    async def driver(ctx):
        for addr, beats in reqs:
            while rand.random() < 0.3:
                await ctx.tick()
            ctx.set(dut.req.payload.addr, addr)
            ctx.set(dut.req.payload.beats, beats)
            ctx.set(dut.req.valid, 1)
            await ctx.tick().until(dut.req.ready)
            ctx.set(dut.req.valid, 0)

    async def monitor(ctx):
        while len(got) < len(want):
            ready = rand.random() < 0.7
            ctx.set(dut.burst.ready, ready)
            _, _, valid, addr, length, last = await ctx.tick().sample(
                dut.burst.valid, dut.burst.payload.addr, dut.burst.payload.len, dut.burst.payload.last)
            if valid and ready:
                got.append((addr, length + 1, bool(last)))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(driver)
    sim.add_testbench(monitor)
    sim.run_until(1e-8 * 20000)
    assert got == want


def test_splitter_takes_one_burst_requests_back_to_back_one_per_cycle():
    dut = BurstSplitter(addr_width=16, beats_width=8, data_bytes=16, max_burst=16)
    accepted, seen = [], []

    async def driver(ctx):
        ctx.set(dut.burst.ready, 1)
        ctx.set(dut.req.valid, 1)
        ctx.set(dut.req.payload.beats, 1)
        for i in range(20):
            ctx.set(dut.req.payload.addr, 16 * i)
            _, _, ready, valid = await ctx.tick().sample(dut.req.ready, dut.burst.valid)
            accepted.append(ready)
            seen.append(valid)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(driver)
    sim.run()
    assert all(accepted[1:]) and all(seen[3:])


def test_round_robin_serves_every_eligible_client_in_turn():
    m = Module()
    elig = [Signal(name=f"e{i}") for i in range(4)]
    any_, grant, index, take = round_robin(m, elig, "rr")
    m.d.comb += take.eq(1)
    order = []

    async def bench(ctx):
        for pattern in [0b1111] * 8 + [0b0101] * 4 + [0b1000, 0b0001, 0b1001, 0b1001]:
            for i in range(4):
                ctx.set(elig[i], (pattern >> i) & 1)
            await ctx.delay(1e-9)
            order.append(ctx.get(index) if ctx.get(any_) else None)
            assert ctx.get(grant) == (1 << order[-1])
            await ctx.tick()

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert order == [0, 1, 2, 3, 0, 1, 2, 3, 0, 2, 0, 2, 3, 0, 3, 0]
