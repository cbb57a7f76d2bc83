# amaranth: UnusedElaboratable=no
"""amaranth.sim tests of the KV-cache controller's parts alone (hdl/kvcache_slots.py,
hdl/kvcache_data.py), each against a Python model of its neighbours: the free list's
initialization order and LIFO; the slot table's lookup, allocation, growth and release; the read
engine's beats in every block/group order with their page lookups, sign extension, ``last`` and
latency, under backpressure; the append writer's addresses, its dropped (failed) APPENDs and its
``last``. Random stimulus is seeded (the seed is printed)."""

import random

import pytest
from amaranth.sim import Simulator

from golden.kvcache import read_order
from hdl.kvcache_data import AppendWriter, ReadEngine
from hdl.kvcache_slots import FreeList, SlotTable


def _sim(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


def test_free_list_initializes_pages_in_order_then_pops_and_pushes_lifo():
    N = 5
    dut = FreeList(num_pages=N)
    seen = {}

    async def bench(ctx):
        cycles = 0
        while not ctx.get(dut.ready):
            assert ctx.get(dut.write)
            await ctx.tick()
            cycles += 1
        seen["init"] = cycles
        assert ctx.get(dut.count) == N
        pops = []
        for _ in range(3):              # the top shows one cycle after a pop
            await ctx.tick()
            pops.append(ctx.get(dut.top))
            ctx.set(dut.pop, 1)
            await ctx.tick()
            ctx.set(dut.pop, 0)
        seen["pops"] = pops
        assert ctx.get(dut.count) == N - 3
        for page in (4, 2):
            ctx.set(dut.push, 1)
            ctx.set(dut.page, page)
            assert ctx.get(dut.write)
            await ctx.tick()
        ctx.set(dut.push, 0)
        assert not ctx.get(dut.write)
        assert ctx.get(dut.count) == N - 1
        await ctx.tick()
        seen["top"] = ctx.get(dut.top)

    _sim(dut, bench)
    assert seen["init"] == dut.init_cycles == N
    assert seen["pops"] == [0, 1, 2]
    assert seen["top"] == 2


def test_slot_table_lookup_follows_a_model_of_alloc_grow_and_release():
    seed = 7311
    print(f"seed {seed}")
    rng = random.Random(seed)
    S, L = 3, 40
    dut = SlotTable(max_seqs=S, max_len=L, page_bits=3)
    model = [None] * S              # per slot: [id, length] or None
    tails = [0] * S                 # the tail page registers (ALLOC leaves them)
    ops = {"alloc": 0, "grow": 0, "release": 0, "hit": 0}

    async def bench(ctx):
        for _ in range(400):
            seq = rng.choice([3, 9, 65535, 17])
            ctx.set(dut.seq, seq)
            hits = [i for i, s in enumerate(model) if s and s[0] == seq]
            free = [i for i, s in enumerate(model) if s is None]
            assert ctx.get(dut.hit) == bool(hits)
            assert ctx.get(dut.any_free) == bool(free)
            if free:
                assert ctx.get(dut.free_slot) == free[0]
            if hits:
                ops["hit"] += 1
                slot = hits[0]
                assert (ctx.get(dut.slot), ctx.get(dut.length), ctx.get(dut.tail)) == \
                    (slot, model[slot][1], tails[slot])
            else:
                assert (ctx.get(dut.length), ctx.get(dut.tail)) == (0, 0)
            for name in ("alloc", "grow", "release", "new_tail"):
                ctx.set(getattr(dut, name), 0)
            x = rng.random()
            if x < 0.3 and free and not hits:
                ctx.set(dut.alloc, 1)
                ctx.set(dut.alloc_slot, free[0])
                ctx.set(dut.alloc_id, seq)
                model[free[0]] = [seq, 0]
                ops["alloc"] += 1
            elif x < 0.8 and hits:
                slot = hits[0]
                new_tail = rng.random() < 0.5
                page = rng.randrange(8)
                ctx.set(dut.grow, 1)
                ctx.set(dut.grow_slot, slot)
                ctx.set(dut.grow_length, model[slot][1] + 1)
                ctx.set(dut.new_tail, new_tail)
                ctx.set(dut.tail_page, page)
                model[slot][1] += 1
                tails[slot] = page if new_tail else tails[slot]
                ops["grow"] += 1
            elif hits:
                ctx.set(dut.release, 1)
                ctx.set(dut.release_slot, hits[0])
                model[hits[0]] = None
                ops["release"] += 1
            await ctx.tick()

    _sim(dut, bench)
    assert min(ops.values()) > 10, ops


def _read_jobs(rng, bpr, count_max):
    jobs = []
    for _ in range(12):
        start, count = rng.randrange(0, 6), rng.randint(1, count_max)
        block = rng.choice([0, 1, 2, 3, count])
        group = rng.choice([0] + [d for d in range(1, bpr + 1) if bpr % d == 0])
        jobs.append(dict(slot=rng.randrange(2), head=rng.randrange(2), kv=rng.randrange(2), start=start,
                         count=count, block=block, group=group))
    return jobs


@pytest.mark.parametrize("elem_bits", [8, 16])
def test_read_engine_streams_every_block_group_order_with_page_lookups_and_latency(elem_bits):
    """READs of random shapes back to back through the engine, its block tables and K/V memory
    modelled as synchronous reads, the output with random backpressure: every beat is the word of
    read_order's (position, beat) at the position's page (int8 lanes sign-extended), ``last`` on
    each READ's final beat; an isolated READ's first beat comes ``latency`` cycles after its
    load."""
    seed = 5150 + elem_bits
    print(f"seed {seed}")
    rng = random.Random(seed)
    ps, N, H, S, bpr, be = 2, 8, 2, 2, 4, 2
    dut = ReadEngine(page_size=ps, num_pages=N, kv_heads=H, max_seqs=S, beats_per_row=bpr, beat_elems=be,
                     elem_bits=elem_bits)
    tables = {(s, i): rng.randrange(N) for s in range(S) for i in range(8)}
    words = 2 * N * ps * H * bpr
    mem = [rng.getrandbits(be * elem_bits) for _ in range(words)]
    jobs = _read_jobs(rng, bpr, 9)

    def lanes(word):
        if elem_bits == 16:
            return word
        out = 0
        for i in range(be):
            e = (word >> (8 * i)) & 0xFF
            out |= ((e | (0xFF00 if e & 0x80 else 0)) << (16 * i))
        return out

    want = []
    for j in jobs:
        order = read_order(j["start"], j["count"], j["block"], j["group"], bpr)
        for n, (pos, beat) in enumerate(order):
            page = tables[(j["slot"], int(pos) // ps)]
            row = (j["kv"] * N + page) * ps + int(pos) % ps
            want.append((lanes(mem[row * H * bpr + j["head"] * bpr + int(beat)]), n == len(order) - 1))
    got, cycles = [], {}

    async def memories(ctx):     # block tables and K/V memory: synchronous reads
        async for _clk, _rst, bt_addr, raddr, ren in ctx.tick().sample(dut.bt_addr, dut.raddr, dut.ren):
            lg_n = (N - 1).bit_length()
            ctx.set(dut.bt_data, tables.get((bt_addr >> lg_n, bt_addr & (N - 1)), 0))
            if ren:
                ctx.set(dut.rdata, mem[raddr])

    async def bench(ctx):
        now = 0                 # cycles since the start, as the sink counts them
        for n, j in enumerate(jobs):
            blk = j["block"] or j["count"]
            one = j["count"] <= blk
            payload = dict(slot=j["slot"], head=j["head"], kv=j["kv"], start=j["start"],
                           gm1=(j["group"] or bpr) - 1, first_m1=(j["count"] if one else blk) - 1,
                           left=0 if one else j["count"] - blk, block_m1=blk - 1)
            ctx.set(dut.load.payload, payload)
            ctx.set(dut.load.valid, 1)
            while True:
                taken = ctx.get(dut.load.ready)
                await ctx.tick()
                now += 1
                if taken:
                    break
            ctx.set(dut.load.valid, 0)
            if n == 0:          # an isolated READ first: its latency
                cycles["load"] = now - 1
                while not got:
                    await ctx.tick()
                    now += 1
        while len(got) < len(want):
            await ctx.tick()
        await ctx.tick()
        assert ctx.get(dut.idle) and not ctx.get(dut.rdata_out.valid)

    async def sink(ctx):
        now = 0
        while True:
            ready = len(got) < 3 or rng.random() < 0.7
            ctx.set(dut.rdata_out.ready, ready)
            if ready and ctx.get(dut.rdata_out.valid):
                p = ctx.get(dut.rdata_out.payload)
                got.append((int(p.data), bool(p.last)))
                cycles.setdefault("first", now)
            await ctx.tick()
            now += 1

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_process(memories)
    sim.add_testbench(sink, background=True)
    sim.add_testbench(bench)
    sim.run()
    assert got == want
    assert cycles["first"] - cycles["load"] == dut.latency


@pytest.mark.parametrize("write", [1, 0])
def test_append_writer_writes_k_then_v_rows_of_the_token_row_or_drops_them(write):
    ps, N, H, bpr = 2, 4, 2, 3
    HB = H * bpr
    dut = AppendWriter(page_size=ps, num_pages=N, kv_heads=H, beats_per_row=bpr, data_bits=16)
    row = 5
    seen = []

    async def bench(ctx):
        ctx.set(dut.start, 1)
        ctx.set(dut.write, write)
        ctx.set(dut.row, row)
        await ctx.tick()
        ctx.set(dut.start, 0)
        ctx.set(dut.row, 0)
        for n in range(2 * HB):
            if n % 3 == 1:              # a cycle without a beat
                assert not ctx.get(dut.wen) and ctx.get(dut.waddr) == 0
                await ctx.tick()
            ctx.set(dut.beat, 1)
            ctx.set(dut.data, 100 + n)
            seen.append((ctx.get(dut.last), ctx.get(dut.wen), ctx.get(dut.waddr), ctx.get(dut.wdata)))
            if n == 2 * HB - 1:         # the next APPEND starts with the last beat
                ctx.set(dut.start, 1)
                ctx.set(dut.write, 1)
                ctx.set(dut.row, 2)
            await ctx.tick()
            ctx.set(dut.beat, 0)
            ctx.set(dut.start, 0)
        ctx.set(dut.beat, 1)
        seen.append((ctx.get(dut.last), ctx.get(dut.wen), ctx.get(dut.waddr), ctx.get(dut.wdata)))

    _sim(dut, bench)
    kv_words = N * ps * HB
    want = [(n == 2 * HB - 1, write, row * HB + n % HB + (kv_words if n >= HB else 0), 100 + n)
            for n in range(2 * HB)]
    if write:
        assert [(bool(a), b, c, d) for a, b, c, d in seen[:-1]] == want
    else:                               # consumed, never written (the row was not taken)
        assert [(bool(a), b) for a, b, _, _ in seen[:-1]] == [(a, b) for a, b, _, _ in want]
    assert seen[-1][:3] == (0, 1, 2 * HB)   # the next APPEND's first beat: K of its row 2
