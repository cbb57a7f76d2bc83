# amaranth: UnusedElaboratable=no
"""amaranth.sim tests of the MATMUL unit alone (hdl/exec_matmul.py, its real engine on a 2×2
array) with models of its neighbours: the processor's unit port, the read clients, the
scratchpad ports and the KV cache (golden.PagedKVCache streaming READ beats in block/group
order). Q·Kᵀ from READ_K (KV_K) and P·V from READ_V (KV_V) match golden.matmul_int8; a READ the
KV cache refuses answers ChipError.KV with its status and the next instruction is right; a
command the engine refuses (possible only past the dispatcher) answers ChipError.MATMUL with its
code, its operands are sunk and the next instruction is right."""

import random
from collections import deque

import numpy as np
from amaranth.sim import Simulator
from exec_models import ReadClient

import golden
from golden.kvcache import KVCacheError, KVCommand, PagedKVCache
from hdl.cmdproc import N_UNITS
from hdl.config import get_config
from hdl.exec_matmul import MatmulExec, kv_feed_possible
from spec import isa
from spec import matmul_layout as ml
from spec.codes import ChipError, Dtype, KVOp, KVStatus, MatmulStatus, OutFormat

CFG = get_config("tiny").replace(name="tiny_kv2", kvcache={"beat_elems": 2})   # KV beats of C elements
L = CFG.memory.spad_lanes
BUS = CFG.memory.axi_data_bits // 8


def lanes16(x):
    return x.astype(np.int16).view(np.uint16) if x.dtype == np.int8 else x.view(np.uint16)


class Harness:
    """The unit with its neighbours modelled; ``instrs`` are encoded MATMULs, run in order
    (every wait satisfied)."""

    def __init__(self, instrs, *, spad, mem, cache, seed):
        self.dut = MatmulExec.from_config(CFG, beats_width=8)
        self.instrs, self.spad, self.cache = instrs, spad, cache
        self.rng = random.Random(seed)
        self.done = []
        self.wclient = ReadClient(self.dut.wdma, mem, BUS, self.rng, gap=0.2)
        self.pclient = ReadClient(self.dut.pdma, mem, BUS, self.rng, gap=0.2)
        self.kv_reads = []

    async def port(self, ctx):
        p = self.dut.port
        for i, bits in enumerate(self.instrs):
            ctx.set(p.instr.payload.bits, bits)
            ctx.set(p.instr.payload.index, i)
            ctx.set(p.instr.valid, 1)
            while not (await ctx.tick().sample(p.instr.ready))[2]:
                pass
        ctx.set(p.instr.valid, 0)

    async def answers(self, ctx):
        p = self.dut.port
        ctx.set(p.done.ready, 1)
        for u in range(N_UNITS):
            ctx.set(p.retired[u], 0 if u == isa.Unit.MATMUL else 1000)
        for _ in range(self.cycles):
            if len(self.done) == len(self.instrs):
                break
            _, _, valid, status, detail, index = await ctx.tick().sample(
                p.done.valid, p.done.payload.status, p.done.payload.detail, p.done.payload.index)
            if valid:
                self.done.append((ChipError(status), detail, index))
                ctx.set(p.retired[isa.Unit.MATMUL], sum(s == ChipError.OK for s, _, _ in self.done))
        await ctx.tick().repeat(20)
        assert ctx.get(p.idle), "the unit is not idle after its last answer"

    async def spad_read(self, ctx):
        r = self.dut.spad_r
        pend, cycle = deque(), 0
        ctx.set(r.req.ready, 1)
        while True:
            show = bool(pend) and pend[0][0] <= cycle
            if show:
                ctx.set(r.resp.payload.data.as_value(), pend[0][1])
            ctx.set(r.resp.valid, show)
            _, _, req, addr, took = await ctx.tick().sample(r.req.valid & r.req.ready, r.req.payload.addr,
                                                            r.resp.valid & r.resp.ready)
            cycle += 1
            if took:
                pend.popleft()
            if req:
                pend.append((cycle + 2, self.spad.get(addr, 0)))

    async def spad_write(self, ctx):
        w = self.dut.spad_w
        pulses, cycle = deque(), 0
        ctx.set(w.req.ready, 1)
        while True:
            ctx.set(w.done, bool(pulses) and pulses[0] == cycle)
            _, _, took, addr, word, mask = await ctx.tick().sample(
                w.req.valid & w.req.ready, w.req.payload.addr, w.req.payload.data.as_value(), w.req.payload.mask)
            if pulses and pulses[0] == cycle:
                pulses.popleft()
            cycle += 1
            if took:
                old = self.spad.get(addr, 0)
                for c in range(L):
                    if mask >> c & 1:
                        old = (old & ~(0xFFFFFFFF << 32 * c)) | (word & (0xFFFFFFFF << 32 * c))
                self.spad[addr] = old
                pulses.append(cycle + 1)

    async def kv(self, ctx):
        k = self.dut.kv
        ctx.set(k.cmd.ready, 1)
        beats = deque()
        resp = deque()
        while True:
            if resp:
                ctx.set(k.resp.payload.status, resp[0])
            ctx.set(k.resp.valid, bool(resp))
            show = bool(beats) and self.rng.random() > 0.2
            if show:
                ctx.set(k.rdata.payload.data, int.from_bytes(beats[0].astype("<u2").tobytes(), "little"))
            ctx.set(k.rdata.valid, show)
            _, _, cmd, op, seq, head, start, count, block, group, took_r, took_d = await ctx.tick().sample(
                k.cmd.valid & k.cmd.ready, k.cmd.payload.op, k.cmd.payload.seq, k.cmd.payload.head,
                k.cmd.payload.start, k.cmd.payload.count, k.cmd.payload.block, k.cmd.payload.group,
                k.resp.valid & k.resp.ready, k.rdata.valid & k.rdata.ready)
            if took_r:
                resp.popleft()
            if took_d:
                beats.popleft()
            if cmd:
                self.kv_reads.append((op, seq, head, start, count, block, group))
                read = self.cache.read_k_beats if op == KVOp.READ_K else self.cache.read_v_beats
                try:
                    got = read(seq, head, start, count, block, group)
                    resp.append(KVStatus.OK)
                    beats.extend(lanes16(got))
                except KVCacheError as exc:
                    resp.append(exc.code)

    def run(self, cycles=20000):
        self.cycles = cycles
        sim = Simulator(self.dut)
        sim.add_clock(1e-8)
        for proc in (self.port, self.spad_read, self.spad_write, self.kv, self.wclient.run, self.pclient.run):
            sim.add_testbench(proc, background=True)
        sim.add_testbench(self.answers)
        sim.run()
        assert len(self.done) == len(self.instrs), f"{len(self.done)} of {len(self.instrs)} answered"
        return self.done


def spad_put(spad, addr, x, stride):
    """Rows of ``x`` (int8 sign-extended / uint8 zero-extended into 32-bit lanes)."""
    lanes = x.astype(np.int64) & 0xFFFFFFFF
    for r, row in enumerate(lanes):
        for i in range(0, len(row), L):
            chunk = list(row[i:i + L]) + [0] * (L - len(row[i:i + L]))
            spad[addr + r * stride + i // L] = sum(int(v) << (32 * c) for c, v in enumerate(chunk))


def spad_get(spad, addr, rows, cols, stride):
    out = np.zeros((rows, cols), np.int64)
    for r in range(rows):
        for j in range(cols):
            word = spad.get(addr + r * stride + j // L, 0)
            out[r, j] = (word >> (32 * (j % L))) & 0xFFFFFFFF
    return out.astype(np.uint32).view(np.int32)


def matmul(**f):
    base = dict(dtype=Dtype.INT8, out_fmt=OutFormat.INT32, w_src=isa.WSource.EXT)
    return isa.encode(isa.Opcode.MATMUL, **{**base, **f})


def test_kv_sourced_qk_and_pv_match_golden_and_a_refused_read_or_command_leaves_the_next_one_right():
    assert kv_feed_possible(CFG)
    seed = 61
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    kv = CFG.kvcache
    cache = PagedKVCache.from_config(kv)
    SEQ, HEAD, T = 3, 1, 10
    cache.execute(*KVCommand(KVOp.ALLOC, SEQ))
    for _ in range(T):
        k, v = (rng.integers(-128, 128, (kv.heads, kv.head_dim)).astype(np.int8) for _ in range(2))
        cache.execute(*KVCommand(KVOp.APPEND, SEQ, k=k, v=v))
    spad, mem = {}, bytearray(1 << 14)
    q = rng.integers(-128, 128, (3, kv.head_dim)).astype(np.int8)
    p = rng.integers(0, 256, (2, 7)).astype(np.uint8)
    a = rng.integers(-128, 128, (3, 5)).astype(np.int8)
    w = rng.integers(-128, 128, (5, 3)).astype(np.int8)
    hw = -(-kv.head_dim // L)                      # scratchpad words of a head_dim row
    spad_put(spad, 0, q, hw)                       # words 0 .. 3·hw − 1 (below 40)
    spad_put(spad, 3 * hw, p, 4)
    spad_put(spad, 40, a, 3)
    wb = ml.pack_weights(w, rows=L, cols=L, bus_bytes=BUS)
    mem[0x100:0x100 + len(wb)] = wb
    kvf = dict(kv_seq=SEQ, kv_head=HEAD)
    instrs = [
        matmul(m=3, k=kv.head_dim, n=7, w_src=isa.WSource.KV_K, kv_start=1, a_addr=0, a_stride=hw, o_addr=100,
               o_stride=4, **kvf),                                                        # Q·Kᵀ, 7 keys
        matmul(m=2, k=7, n=kv.head_dim, w_src=isa.WSource.KV_V, kv_start=2, a_unsigned=1, a_addr=3 * hw,
               a_stride=4, o_addr=112, o_stride=hw, **kvf),                               # P·V, 7 positions
        matmul(m=3, k=kv.head_dim, n=5, w_src=isa.WSource.KV_K, kv_start=8, a_addr=0, a_stride=hw, o_addr=140,
               o_stride=4, **kvf),                                                        # past the length
        matmul(m=3, k=5, n=3, a_addr=40, a_stride=3, o_addr=160, o_stride=2, w_addr=0x100),
        matmul(m=3, k=5, n=3, out_fmt=OutFormat.FP32, a_addr=40, a_stride=3, o_addr=170, o_stride=2,
               w_addr=0x100),                                                             # refused: BAD_FORMAT
        matmul(m=3, k=5, n=3, a_addr=40, a_stride=3, o_addr=180, o_stride=2, w_addr=0x100),
    ]
    h = Harness(instrs, spad=spad, mem=mem, cache=cache, seed=seed)
    done = h.run()
    assert done == [(ChipError.OK, 0, 0), (ChipError.OK, 0, 1), (ChipError.KV, KVStatus.READ_PAST_LENGTH, 2),
                    (ChipError.OK, 0, 3), (ChipError.MATMUL, MatmulStatus.BAD_FORMAT, 4), (ChipError.OK, 0, 5)]
    assert h.kv_reads[:2] == [(KVOp.READ_K, SEQ, HEAD, 1, 7, L, 1), (KVOp.READ_V, SEQ, HEAD, 2, 7, 0, 1)]
    keys, values = cache.read_k(SEQ, HEAD, 1, 7), cache.read_v(SEQ, HEAD, 2, 7)
    np.testing.assert_array_equal(spad_get(spad, 100, 3, 7, 4), golden.matmul_int8(q, keys.T.copy()))
    np.testing.assert_array_equal(spad_get(spad, 112, 2, kv.head_dim, hw), golden.matmul_int8(p, values))
    assert all(spad.get(140 + i, 0) == 0 for i in range(12)), "the refused READ's results were written"
    for addr in (160, 180):
        np.testing.assert_array_equal(spad_get(spad, addr, 3, 3, 2), golden.matmul_int8(a, w))
    assert all(spad.get(170 + i, 0) == 0 for i in range(6)), "the refused command wrote results"
