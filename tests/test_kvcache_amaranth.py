# amaranth: UnusedElaboratable=no
"""KVCacheController without Verilator: parameter checks, derived constants, run_kvcache's
argument checks, and short amaranth.sim runs (ALLOC / APPEND / READ / FREE, a reset in the
middle) against golden.PagedKVCache."""

import numpy as np
import pytest
from amaranth.hdl import Fragment
from amaranth.sim import Simulator

from golden.kvcache import KVCommand, KVOp, KVResponse, KVStatus, PagedKVCache
from hdl.config import get_config
from hdl.kvcache import KVCacheController, KVCacheParams
from hdl.memport import MemoryPortSignature
from hdl.standalone import Standalone
from sim.amaranth_streams import random_pause, stream_sink, stream_source
from sim.kvcache_api import decode_results, encode_commands

GOOD = dict(page_size=2, num_pages=4, kv_heads=2, head_dim=4, max_seqs=2, beat_elems=2,
            dtype="int8")


@pytest.mark.parametrize("change, message", [
    (dict(page_size=3), "page_size must be a power of two"),
    (dict(page_size=0), "page_size must be in 1..256"),
    (dict(num_pages=1), "num_pages must be in 2..65536"),
    (dict(kv_heads=65), "kv_heads must be in 1..64"),
    (dict(head_dim=True), "head_dim must be an int"),
    (dict(max_seqs=0), "max_seqs must be in 1..1024"),
    (dict(beat_elems=3), r"beat_elems \(3\) must divide head_dim \(4\)"),
    (dict(beat_elems=8), "beat_elems must be in 1..4"),
    (dict(dtype="fp8"), "dtype must be 'int8' or 'bf16'"),
])
def test_bad_parameters_raise_naming_the_parameter(change, message):
    with pytest.raises((TypeError, ValueError), match=message):
        KVCacheParams(**{**GOOD, **change})
    with pytest.raises((TypeError, ValueError), match=message):
        KVCacheController(**{**GOOD, **change})


def test_parameters_are_keyword_only_and_read_only():
    with pytest.raises(TypeError):
        KVCacheParams(2, 4, 2, 4, 2, 2, "int8")
    p = KVCacheParams(**GOOD)
    with pytest.raises(AttributeError):
        p.page_size = 4


def test_from_config_and_derived_constants_of_the_default_configuration():
    cfg = get_config("default")
    p = KVCacheParams.from_config(cfg)
    assert (p.page_size, p.num_pages, p.kv_heads, p.head_dim, p.max_seqs, p.beat_elems, p.dtype) == (
        16, 256, 3, 64, 16, 8, "int8")
    assert p.beats_per_row == 8 and p.append_beats == 48
    assert p.mem_words == 2 * 256 * 16 * 3 * 8 and p.mem_addr_bits == 18
    assert p.rdata_layout.size == 8 * 16 + 1  # array_cols 16-bit lanes + last
    assert p.length_bits == 13 and p.group_bits == 4
    assert p.cmd_layout.size == 3 + 16 + 8 + 3 * 13 + 4  # op seq head start count block group
    ctrl = KVCacheController.from_config(cfg)
    assert ctrl.signature.members["rdata"].signature.members["payload"].shape == p.rdata_layout
    assert ctrl.signature.members["mem"].signature == MemoryPortSignature(18, 64)
    assert ctrl.signature.members["events"].shape == p.events_layout
    Fragment.get(ctrl, None)  # elaborates (and so uses) the component


def test_amaranth_sim_alloc_append_read_free_matches_golden():
    """Also READs in block/group order (rows of two beats) and a bad group (BAD_SHAPE); with
    valid gaps and backpressure, the K/V memory a SyncMemory behind the port (hdl.standalone)."""
    dut = KVCacheController(**GOOD)
    golden = PagedKVCache(page_size=2, num_pages=4, kv_heads=2, head_dim=4, max_seqs=2, dtype="int8",
                          beat_elems=2)
    rng = np.random.default_rng(5)
    cmds = [KVCommand(KVOp.ALLOC, 300)]
    for _ in range(3):
        cmds.append(KVCommand(KVOp.APPEND, 300, k=rng.integers(-128, 128, (2, 4)).astype(np.int8),
                              v=rng.integers(-128, 128, (2, 4)).astype(np.int8)))
    cmds += [KVCommand(KVOp.READ_V, 300, 1, 0, 3), KVCommand(KVOp.READ_K, 300, 0, 1, 3),
             KVCommand(KVOp.READ_K, 300, 1, 0, 3, block=2, group=1),
             KVCommand(KVOp.READ_V, 300, 0, 0, 3, block=0, group=1),
             KVCommand(KVOp.READ_V, 300, 0, 0, 3, block=1, group=3),
             KVCommand(KVOp.FREE, 300), KVCommand(KVOp.STATUS, 300)]
    want, beats = [], []
    for c in cmds:
        if c.op in (KVOp.READ_K, KVOp.READ_V) and golden.execute(*c)[0].status == 0:
            fn = golden.read_k_beats if c.op == KVOp.READ_K else golden.read_v_beats
            beats.append(fn(c.seq, c.head, c.start, c.count, c.block, c.group))
        want.append(golden.execute(*c))
    assert [r.status for r, _ in want][-3] == KVStatus.BAD_SHAPE
    cmd_words, wdata_words = encode_commands(cmds, dut)
    top = Standalone(dut, memories={"mem": dut.mem_words})
    resp, rdata = [], []
    n_beats = sum(len(b) for b in beats)
    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(stream_source(top.cmd, cmd_words, pause=random_pause(0.3, 1)), background=True)
    sim.add_testbench(stream_source(top.wdata, wdata_words, pause=random_pause(0.3, 2)), background=True)
    sim.add_testbench(stream_sink(top.rdata, n_beats, rdata, pause=random_pause(0.3, 3)), background=True)
    sim.add_testbench(stream_sink(top.resp, len(cmds), resp, pause=random_pause(0.3, 4), extra_cycles=20))
    sim.run()
    out = decode_results(cmds, dut, resp, rdata)
    assert [KVResponse(*r.tolist()) for r in out["responses"]] == [r for r, _ in want]
    stream = np.concatenate(beats).reshape(-1)
    assert np.array_equal(out["rdata"].reshape(-1).view(np.int16), stream.astype(np.int16))


def test_reset_mid_run_restores_the_free_list_and_forgets_every_sequence():
    """After a reset in the middle of a run the controller re-initializes its free list (pages
    are taken from 0 again, all free) and knows no sequence: exactly a fresh golden model."""
    from amaranth.hdl import ClockDomain, Elaboratable, Module, Signal

    top = Standalone(KVCacheController(**GOOD), memories={"mem": KVCacheParams(**GOOD).mem_words})
    rst_in = Signal()

    class WithReset(Elaboratable):  # a sync domain whose reset the testbench drives
        def elaborate(self, platform):
            m = Module()
            m.domains.sync = cd = ClockDomain("sync")
            m.d.comb += cd.rst.eq(rst_in)
            m.submodules.top = top
            return m
    resps, waddrs = [], []
    k = np.arange(8, dtype=np.int8).reshape(2, 4)
    p = KVCacheParams(**GOOD)

    async def writes(ctx):  # the K/V memory's write addresses
        async for _clk, _rst, wen, waddr in ctx.tick().sample(top.mem.wen, top.mem.waddr):
            if wen:
                waddrs.append(waddr)

    async def command(ctx, op, seq, *, data=False):
        cmd = KVCommand(op, seq, k=k, v=k) if data else KVCommand(op, seq)
        cmd_words, wdata_words = encode_commands([cmd], p)
        await stream_source(top.cmd, cmd_words)(ctx)
        await stream_source(top.wdata, wdata_words)(ctx)
        words = []
        await stream_sink(top.resp, 1, words)(ctx)
        resps.append(KVResponse(*decode_results([cmd], p, words, [])["responses"][0].tolist()))

    async def driver(ctx):
        await command(ctx, KVOp.ALLOC, 1)
        for _ in range(5):  # pages 0, 1, 2
            await command(ctx, KVOp.APPEND, 1, data=True)
        # FREE pushes 0, 1, 2 back (stack memory now 3, 0, 1, 2): only the reset-time
        # initialization walk makes page 0 the next page again
        await command(ctx, KVOp.FREE, 1)
        await command(ctx, KVOp.ALLOC, 3)
        await command(ctx, KVOp.APPEND, 3, data=True)
        ctx.set(rst_in, 1)
        await ctx.tick()
        ctx.set(rst_in, 0)
        waddrs.clear()
        await command(ctx, KVOp.STATUS, 1)
        await command(ctx, KVOp.ALLOC, 2)
        await command(ctx, KVOp.APPEND, 2, data=True)

    sim = Simulator(WithReset())
    sim.add_clock(1e-8, domain="sync")
    sim.add_process(writes)
    sim.add_testbench(driver)
    sim.run()
    golden = PagedKVCache(page_size=2, num_pages=4, kv_heads=2, head_dim=4, max_seqs=2, dtype="int8")
    want = [golden.execute(KVOp.STATUS, 1)[0], golden.execute(KVOp.ALLOC, 2)[0],
            golden.execute(KVOp.APPEND, 2, k=k, v=k)[0]]
    assert resps[-3:] == want
    assert resps[5] == KVResponse(0, KVOp.APPEND, 5, 3, 1)  # before the reset: 3 pages taken
    hb = p.kv_heads * p.beats_per_row
    # the first append after the reset writes row 0 of physical page 0 (K, then V)
    assert waddrs == list(range(hb)) + [p.mem_words // 2 + j for j in range(hb)]


@pytest.mark.parametrize("commands, kwargs, exc, message", [
    ([KVCommand(KVOp.ALLOC, 1 << 16)], {}, ValueError, "command 0: seq must be in 0..65535, not 65536"),
    ([KVCommand(KVOp.ALLOC, 1), KVCommand(KVOp.READ_K, 1, head=256)], {}, ValueError,
     "command 1: head must be in 0..255"),
    ([KVCommand(KVOp.ALLOC, 1.5)], {}, TypeError, "command 0: seq must be an int"),
    ([KVCommand(KVOp.APPEND, 1, k=np.zeros((2, 16), np.int16), v=np.zeros((2, 16), np.int8))], {}, TypeError,
     "command 0: APPEND k must be a numpy array of int8"),
    ([KVCommand(KVOp.APPEND, 1, k=np.zeros((2, 4), np.int8), v=np.zeros((2, 4), np.int8))], {}, ValueError,
     r"command 0: APPEND k must have shape \(2, 16\)"),
    (["alloc"], {}, TypeError, "command 0 must be a KVCommand, tuple or dict"),
    ([], {"stall": 1.0}, ValueError, r"stall must be a probability in \[0, 1\)"),
    ([], {"backpressure": "0.1"}, ValueError, r"backpressure must be a probability in \[0, 1\)"),
])
def test_run_kvcache_rejects_bad_commands_before_simulating(commands, kwargs, exc, message):
    from sim import run_kvcache
    with pytest.raises(exc, match=message):
        run_kvcache(commands, config="tiny", **kwargs)
