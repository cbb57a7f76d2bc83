# amaranth: UnusedElaboratable=no
"""The LOAD and STORE units without Verilator: parameter checks, the descriptor checks, and
amaranth.sim runs of random descriptors (every element size, signed and unsigned, rows that end
inside a word, bad descriptors, AXI errors) against golden.loadstore, with Python models of the
DMA client and of the scratchpad ports that stall at random."""

import os
import random
from collections import deque

import numpy as np
import pytest
from amaranth.hdl import Fragment
from amaranth.sim import Simulator

from golden.loadstore import Descriptor, check, elem_code, load, store
from hdl.config import get_config
from hdl.loadstore import LoadUnit, StoreUnit
from spec.codes import LoadStoreStatus


def new_seed():
    """A random seed, or ``TFA_DMA_SEED`` to repeat a run; printed."""
    seed = int(os.environ.get("TFA_DMA_SEED") or random.randrange(1 << 30))
    print("seed", seed, "(repeat with TFA_DMA_SEED)")
    return seed


AW = 16
MAX_CYCLES = 40000
GEOMETRIES = [  # (data_width, lanes): 32/2 (tiny), 128/8 (default), 64/1, 32/8, 128/2
    (32, 2), (128, 8), (64, 1), (32, 8), (128, 2)]


@pytest.mark.parametrize("unit", [LoadUnit, StoreUnit])
@pytest.mark.parametrize("change, message", [
    (dict(data_width=48), "data_width must be one of"),
    (dict(lanes=3), "lanes must be a power of two"),
    (dict(addr_width=8), "addr_width must be in 12..64"),
    (dict(spad_words=1), "spad_words must be in 2..16777216"),
    (dict(beats_width=4), "beats_width must be in 14..64"),
])
def test_bad_unit_parameters_raise_naming_the_parameter(unit, change, message):
    good = dict(data_width=128, addr_width=32, lanes=8, spad_words=4096)
    with pytest.raises((TypeError, ValueError), match=message):
        unit(**{**good, **change})


def test_from_config_rates_and_elaboration():
    cfg = get_config("default")
    load_unit, store_unit = LoadUnit.from_config(cfg), StoreUnit.from_config(cfg)
    assert (load_unit.lanes, load_unit.spad_words, load_unit.spad_addr_width) == (8, 4 * 8192, 16)  # a guard bit
    assert [load_unit.elements_per_cycle(e) for e in (1, 2, 4)] == [8, 8, 4]
    assert [store_unit.elements_per_cycle(e) for e in (1, 2, 4)] == [8, 8, 4]
    for u in (load_unit, store_unit):
        Fragment.get(u, None)
    with pytest.raises(TypeError, match="config must be a ChipConfig"):
        StoreUnit.from_config("default")


def pack(layout, **fields):
    return sum(int(v) << layout[k].offset for k, v in fields.items())


def field(layout, word, name):
    f = layout[name]
    return (word >> f.offset) & ((1 << f.width) - 1)


def random_descriptors(rand, nb, lanes, spad_words, n, *, bad=True):
    """``n`` descriptors: mostly good (rows ending at every lane and byte position, strides that
    leave gaps), some of every bad kind."""
    out = []
    for _ in range(n):
        eb = rand.choice([1, 2, 4])
        elems = rand.choice([1, lanes, lanes + 1, nb // eb, nb // eb + 1, rand.randrange(1, 4 * lanes + 2 * nb)])
        rows = rand.randrange(1, 4)
        beats = -(-elems * eb // nb)
        words = -(-elems // lanes)
        ext_stride = nb * (beats + rand.randrange(0, 2))
        spad_stride = words + rand.randrange(0, 2)
        ext_addr = nb * rand.randrange(0, (1 << AW) // nb - rows * (beats + 2))
        spad_addr = rand.randrange(0, spad_words - rows * (words + 1))
        d = Descriptor(ext_addr, ext_stride, rows, elems, eb, spad_addr, spad_stride, rand.random() < 0.5)
        if bad and rand.random() < 0.25:
            kind = rand.randrange(6)
            d = [Descriptor(d.ext_addr, d.ext_stride, d.rows, d.elems, rand.choice([0, 3, 5, 7]), d.spad_addr,
                            d.spad_stride),
                 Descriptor(d.ext_addr, d.ext_stride, 0, d.elems, eb, d.spad_addr, d.spad_stride),
                 Descriptor(d.ext_addr, d.ext_stride, d.rows, 0, eb, d.spad_addr, d.spad_stride),
                 Descriptor(d.ext_addr + 4, d.ext_stride, d.rows, d.elems, eb, d.spad_addr, d.spad_stride),
                 Descriptor((1 << AW) - nb, d.ext_stride, 2, d.elems, eb, d.spad_addr, d.spad_stride),
                 Descriptor(d.ext_addr, d.ext_stride, d.rows, d.elems, eb, spad_words - 1, d.spad_stride + 1),
                 ][kind]
        out.append(d)
    return out


def desc_fields(d):
    return dict(ext_addr=d.ext_addr, ext_stride=d.ext_stride, rows=d.rows, elems=d.elems,
                elem_bytes=elem_code(d.elem_bytes), spad_addr=d.spad_addr, spad_stride=d.spad_stride)


async def send(ctx, stream, values, rand, stall):
    for v in values:
        while rand.random() < stall:
            await ctx.tick()
        ctx.set(stream.payload.as_value(), v)
        ctx.set(stream.valid, 1)
        await ctx.tick().until(stream.ready)
        ctx.set(stream.valid, 0)


def error_rows(descs, nb, seed):
    """External addresses (row starts) whose beats answer an error: some rows of some good
    descriptors."""
    rand = random.Random(seed)
    return {d.ext_addr + r * d.ext_stride for d in descs for r in range(d.rows) if rand.random() < 0.1}


@pytest.mark.parametrize("data_width, lanes", GEOMETRIES)
def test_load_unit_writes_the_golden_scratchpad_with_stalls_and_errors(data_width, lanes):
    seed = new_seed()
    rand = random.Random(seed)
    nb, spad_words = data_width // 8, 256
    dut = LoadUnit(data_width=data_width, addr_width=AW, lanes=lanes, spad_words=spad_words)
    mem = np.frombuffer(rand.randbytes(1 << AW), np.uint8)
    descs = random_descriptors(rand, nb, lanes, spad_words, 14)
    bad_rows = error_rows(descs, nb, seed)
    sentinel = np.uint32(0xDEADBEEF)
    want_spad = np.full((spad_words, lanes), sentinel, np.uint32)
    want = []
    for d in descs:
        st = check(d, data_bytes=nb, lanes=lanes, spad_words=spad_words, addr_width=AW)
        if st == LoadStoreStatus.OK:
            load(mem, want_spad, d)
            if any(d.ext_addr + r * d.ext_stride in bad_rows for r in range(d.rows)):
                st = LoadStoreStatus.AXI_ERROR
        want.append(int(st))
    got_spad = np.full((spad_words, lanes), sentinel, np.uint32)
    got, requests, unsettled = [], deque(), deque()    # unsettled: cycles left until each done
    cmd_layout, spad_layout = dut.desc_layout, dut.spad.req.payload.shape()

    async def driver(ctx):
        await send(ctx, dut.cmd, [pack(cmd_layout, **desc_fields(d), signed=d.signed) for d in descs], rand, 0.3)

    async def dma_requests(ctx):
        while True:
            ready = rand.random() < 0.7
            ctx.set(dut.dma.req.ready, ready)
            _, _, valid, addr, beats = await ctx.tick().sample(dut.dma.req.valid, dut.dma.req.payload.addr,
                                                                dut.dma.req.payload.beats)
            if valid and ready:
                requests.append((addr, beats))

    async def dma_data(ctx):
        while True:
            if not requests:
                await ctx.tick()
                continue
            addr, beats = requests.popleft()
            for i in range(beats):
                a = addr + i * nb
                last = i == beats - 1
                value = int.from_bytes(mem[a:a + nb].tobytes(), "little")
                await send(ctx, dut.dma.data, [value | last << data_width |
                                               (last and addr in bad_rows) << (data_width + 1)], rand, 0.3)

    async def spad_sink(ctx):
        """Takes writes with random backpressure; each write's ``done`` 1..4 cycles later, in
        order."""
        while True:
            ready = rand.random() < 0.6
            ctx.set(dut.spad.req.ready, ready)
            ctx.set(dut.spad.done, bool(unsettled) and unsettled[0] <= 0)
            _, _, valid, word, done = await ctx.tick().sample(dut.spad.req.valid, dut.spad.req.payload.as_value(),
                                                              dut.spad.done)
            if done:
                unsettled.popleft()
            for i in range(len(unsettled)):
                unsettled[i] -= 1
            if valid and ready:
                unsettled.append(rand.randrange(1, 5))
                assert field(spad_layout, word, "mask") == (1 << lanes) - 1
                lanes_word = field(spad_layout, word, "data")
                got_spad[field(spad_layout, word, "addr")] = [(lanes_word >> (32 * j)) & 0xFFFFFFFF
                                                              for j in range(lanes)]

    async def resp_monitor(ctx):
        for _ in range(MAX_CYCLES):
            if len(got) == len(descs):
                break
            ready = rand.random() < 0.7
            ctx.set(dut.resp.ready, ready)
            _, _, valid, status = await ctx.tick().sample(dut.resp.valid, dut.resp.payload.status)
            if valid and ready:
                assert not unsettled, "a response before the writes of its LOAD are done"
                got.append(int(status))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for proc in (dma_requests, dma_data, spad_sink):
        sim.add_process(proc)
    sim.add_testbench(driver)
    sim.add_testbench(resp_monitor)
    sim.run()   # until every response is in (or the monitor gives up)
    assert got == want
    bad = np.flatnonzero((got_spad != want_spad).any(axis=1))
    assert bad.size == 0, f"scratchpad words {bad[:8]} differ"


@pytest.mark.parametrize("data_width, lanes", GEOMETRIES)
def test_store_unit_writes_the_golden_memory_with_strobes_stalls_and_errors(data_width, lanes):
    seed = new_seed()
    rand = random.Random(seed)
    nb, spad_words = data_width // 8, 256
    dut = StoreUnit(data_width=data_width, addr_width=AW, lanes=lanes, spad_words=spad_words)
    spad = np.frombuffer(rand.randbytes(spad_words * lanes * 4), np.uint32).reshape(spad_words, lanes)
    mem0 = np.frombuffer(rand.randbytes(1 << AW), np.uint8)
    descs = random_descriptors(rand, nb, lanes, spad_words, 14)
    bad_rows = error_rows(descs, nb, seed)
    want_mem = mem0.copy()
    want = []
    for d in descs:
        st = check(d, data_bytes=nb, lanes=lanes, spad_words=spad_words, addr_width=AW)
        if st == LoadStoreStatus.OK:
            store(spad, want_mem, d)
            if any(d.ext_addr + r * d.ext_stride in bad_rows for r in range(d.rows)):
                st = LoadStoreStatus.AXI_ERROR
        want.append(int(st))
    got_mem = mem0.copy()
    got, wreqs, dones = [], deque(), deque()
    cmd_layout = dut.desc_layout
    data_layout = dut.dma.data.payload.shape()

    async def driver(ctx):
        await send(ctx, dut.cmd, [pack(cmd_layout, **desc_fields(d)) for d in descs], rand, 0.3)

    async def write_requests(ctx):
        while True:
            ready = rand.random() < 0.7
            ctx.set(dut.dma.req.ready, ready)
            _, _, valid, addr, beats = await ctx.tick().sample(dut.dma.req.valid, dut.dma.req.payload.addr,
                                                                dut.dma.req.payload.beats)
            if valid and ready:
                wreqs.append((addr, beats))

    async def write_data(ctx):
        beat = 0
        while True:
            ready = bool(wreqs) and rand.random() < 0.7
            ctx.set(dut.dma.data.ready, ready)
            _, _, valid, word = await ctx.tick().sample(dut.dma.data.valid, dut.dma.data.payload.as_value())
            if valid and ready:
                addr, beats = wreqs[0]
                data = field(data_layout, word, "data").to_bytes(nb, "little")
                strb = field(data_layout, word, "strb")
                for k in range(nb):
                    if strb >> k & 1:
                        got_mem[addr + beat * nb + k] = data[k]
                beat += 1
                if beat == beats:
                    wreqs.popleft()
                    dones.append(addr in bad_rows)
                    beat = 0

    async def write_done(ctx):
        while True:
            if not dones:
                await ctx.tick()
                continue
            await send(ctx, dut.dma.done, [int(dones.popleft())], rand, 0.3)

    async def spad_port(ctx):
        pending = deque()
        while True:
            ready = rand.random() < 0.7
            ctx.set(dut.spad.req.ready, ready)
            if pending and rand.random() < 0.7:
                ctx.set(dut.spad.resp.valid, 1)
                ctx.set(dut.spad.resp.payload.as_value(),
                        sum(int(v) << (32 * j) for j, v in enumerate(spad[pending[0]])))
            else:
                ctx.set(dut.spad.resp.valid, 0)
            _, _, rvalid, raddr, svalid, sready = await ctx.tick().sample(
                dut.spad.req.valid, dut.spad.req.payload.addr, dut.spad.resp.valid, dut.spad.resp.ready)
            if svalid and sready:
                pending.popleft()
            if rvalid and ready:
                pending.append(raddr)

    async def resp_monitor(ctx):
        for _ in range(MAX_CYCLES):
            if len(got) == len(descs):
                break
            ready = rand.random() < 0.7
            ctx.set(dut.resp.ready, ready)
            _, _, valid, status = await ctx.tick().sample(dut.resp.valid, dut.resp.payload.status)
            if valid and ready:
                got.append(int(status))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for proc in (write_requests, write_data, write_done, spad_port):
        sim.add_process(proc)
    sim.add_testbench(driver)
    sim.add_testbench(resp_monitor)
    sim.run()   # until every response is in (or the monitor gives up)
    assert got == want
    bad = np.flatnonzero(got_mem != want_mem)
    assert bad.size == 0, f"memory bytes {bad[:8]} differ"


@pytest.mark.parametrize("unit_cls", [LoadUnit, StoreUnit])
def test_instr_adapter_turns_instructions_into_descriptors_and_answers_in_order(unit_cls):
    """Instructions are taken only when their waits are satisfied; each descriptor carries the
    instruction's fields; each response becomes a ``done`` beat with the instruction's index and
    the chip's error code; ``idle`` while nothing is unanswered."""
    from hdl.loadstore import InstrAdapter
    from spec import isa
    from spec.codes import ChipError
    unit = unit_cls(data_width=128, addr_width=32, lanes=8, spad_words=4096)
    dut = InstrAdapter(unit, depth=2)
    Fragment.get(unit, None)
    rand = random.Random(4)
    op = isa.Opcode.LOAD if unit_cls is LoadUnit else isa.Opcode.STORE
    instrs = []
    for i in range(6):
        fields = dict(ext_addr=16 * rand.randrange(1 << 20), ext_stride=16 * rand.randrange(64),
                      spad_addr=rand.randrange(4096), spad_stride=rand.randrange(64), rows=rand.randrange(1, 9),
                      elems=rand.randrange(1, 300), elem_bytes=rand.randrange(3), signed=rand.randrange(2))
        instrs.append((isa.encode(op, **fields), 100 + i, fields))
    statuses = [LoadStoreStatus.OK, LoadStoreStatus.AXI_ERROR, LoadStoreStatus.OK, LoadStoreStatus.SPAD_RANGE,
                LoadStoreStatus.ZERO_SIZE, LoadStoreStatus.OK]
    want_code = {LoadStoreStatus.OK: (ChipError.OK, 0),
                 LoadStoreStatus.AXI_ERROR: (ChipError.AXI_READ if op == isa.Opcode.LOAD else ChipError.AXI_WRITE, 0),
                 LoadStoreStatus.SPAD_RANGE: (ChipError.SPAD_RANGE, 6),
                 LoadStoreStatus.ZERO_SIZE: (ChipError.BAD_FIELD, 3)}
    taken, dones, pending = [], [], deque()
    layout = unit.desc_layout

    async def processor(ctx):
        for bits, index, _ in instrs:
            ctx.set(dut.proc.instr.payload.bits, bits)
            ctx.set(dut.proc.instr.payload.index, index)
            ctx.set(dut.proc.instr.valid, 1)
            while True:
                deps = rand.random() < 0.5
                ctx.set(dut.proc.deps_ok, deps)
                _, _, ready = await ctx.tick().sample(dut.proc.instr.ready)
                assert deps or not ready, "taken while its waits were not satisfied"
                if ready:
                    break
        ctx.set(dut.proc.instr.valid, 0)

    async def unit_model(ctx):
        k = 0
        while len(dones) < len(instrs):
            ready = rand.random() < 0.6
            ctx.set(dut.cmd.ready, ready)
            if pending and rand.random() < 0.5:
                ctx.set(dut.resp.valid, 1)
                ctx.set(dut.resp.payload.status, statuses[pending[0]])
            else:
                ctx.set(dut.resp.valid, 0)
            ctx.set(dut.proc.done.ready, rand.random() < 0.7)
            _, _, cvalid, desc, rvalid, rready, dvalid, dready, status, detail, index, idle = await ctx.tick().sample(
                dut.cmd.valid, dut.cmd.payload.as_value(), dut.resp.valid, dut.resp.ready, dut.proc.done.valid,
                dut.proc.done.ready, dut.proc.done.payload.status, dut.proc.done.payload.detail,
                dut.proc.done.payload.index, dut.proc.idle)
            assert idle == (not pending), "idle while an instruction is unanswered (or the reverse)"
            if cvalid and ready:
                taken.append({name: field(layout, desc, name) for name, _ in layout})
                pending.append(k)
                k += 1
            if rvalid and rready:
                assert dvalid and dready
                dones.append((status, detail, index))
                pending.popleft()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(processor)
    sim.add_testbench(unit_model)
    sim.run()
    for got, (_, _, fields) in zip(taken, instrs, strict=True):
        assert got == {k: v for k, v in fields.items() if k in got}
    assert dones == [(*want_code[s], 100 + i) for i, s in enumerate(statuses)]
