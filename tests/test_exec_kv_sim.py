# amaranth: UnusedElaboratable=no
"""amaranth.sim tests of the KV unit (hdl/exec_kv.py) with a model scratchpad read port, a model
command processor and a model matmul unit: KV instructions answer as golden.kvunit says, the
cache they leave (read back through the matmul port) is golden.PagedKVCache's; an APPEND refused
in the middle keeps the tokens before it; the arbiter interleaves the matmul unit's READs with
APPENDs and routes every response to its issuer; an abort lets the started instruction finish
and takes no other; the arbiter alone keeps a presented command and refuses the matmul port
anything but reads."""

import numpy as np
import pytest
from amaranth.hdl import Value
from amaranth.sim import Simulator

from golden.kvcache import PagedKVCache
from golden.kvunit import execute, words_from_rows
from hdl.exec_kv import BAD_OP, KVCmdArbiter, KVExec
from hdl.kvcache import KVCacheParams
from sim.amaranth_streams import random_pause, stream_sink, stream_source
from sim.packing import pack_fields, unpack_fields
from spec import isa
from spec.codes import ChipError, KVOp, KVStatus

LANES = 2
KV = dict(page_size=4, num_pages=6, kv_heads=2, head_dim=4, max_seqs=3, beat_elems=LANES)
AW = 12
SPAD_WORDS = 1 << 11


def make_cache(dtype):
    return PagedKVCache(**{k: v for k, v in KV.items()}, dtype=dtype)


def kv_instr(op, seq, **f):
    return isa.encode(isa.Opcode.KV, op=op, seq=seq, **f)


class Bench:
    """KVExec with a model scratchpad (``spad``: [words, lanes] uint32, latency 3..5, random
    request backpressure), a model command processor (instructions in order, ``deps_ok`` 1,
    ``abort`` from ``abort_at``), and a model matmul unit that sends ``reads`` (command dicts)
    once ``after`` instructions are answered, and collects responses and READ beats."""

    def __init__(self, dtype, spad, instrs, *, reads=(), read_after=0, seed=1, stall=0.3, abort_at=None):
        self.params = KVCacheParams(**KV, dtype=dtype)
        self.dut = KVExec(params=self.params, lanes=LANES, spad_addr_width=AW)
        self.spad, self.instrs, self.reads = spad, instrs, list(reads)
        self.read_after, self.seed, self.stall, self.abort_at = read_after, seed, stall, abort_at
        self.done, self.done_cycles, self.read_resps, self.read_beats = [], [], [], []
        self.cycle = 0

    async def scratchpad(self, ctx):
        port = self.dut.spad
        rng = np.random.default_rng(self.seed)
        queue, ready_at = [], 0
        resp = Value.cast(port.resp.payload)
        while True:
            take = len(queue) < 4 and rng.random() >= self.stall
            ctx.set(port.req.ready, take)
            show = bool(queue) and queue[0][0] <= self.cycle
            ctx.set(port.resp.valid, show)
            if show:
                ctx.set(resp, queue[0][1])
            _, _, rv, addr, ready = await ctx.tick().sample(port.req.valid, port.req.payload.addr, port.resp.ready)
            if show and ready:
                queue.pop(0)
            if rv and take:
                word = self.spad[addr] if addr < len(self.spad) else np.zeros(LANES, np.uint32)
                ready_at = max(ready_at, self.cycle + 3 + int(rng.integers(0, 3)))
                queue.append((ready_at, sum(int(x) << (32 * i) for i, x in enumerate(word))))

    async def clock(self, ctx):
        async for _ in ctx.tick():
            self.cycle += 1

    async def processor(self, ctx):
        port = self.dut.port
        ctx.set(port.deps_ok, 1)
        ctx.set(port.done.ready, 1)
        pending = list(enumerate(self.instrs))
        while True:
            abort = self.abort_at is not None and self.cycle >= self.abort_at
            ctx.set(port.abort, abort)
            ctx.set(port.instr.valid, bool(pending) and not abort)
            if pending:
                ctx.set(port.instr.payload.bits, pending[0][1])
                ctx.set(port.instr.payload.index, pending[0][0])
            _, _, ready, dv, st, det, idx, idle = await ctx.tick().sample(
                port.instr.ready, port.done.valid, port.done.payload.status, port.done.payload.detail,
                port.done.payload.index, port.idle)
            if pending and ready and not abort:
                pending.pop(0)
            if dv:
                self.done.append((ChipError(st), int(det), int(idx)))
                self.done_cycles.append(self.cycle)
            if not pending and len(self.done) == len(self.instrs):
                break
            if abort and idle and self.cycle > self.abort_at + 50:
                break
            assert self.cycle < 200_000

    def run(self):
        sim = Simulator(self.dut)
        sim.add_clock(1e-8)
        sim.add_process(self.clock)
        sim.add_process(self.scratchpad)
        rd = self.dut.read
        n_beats = sum(r["count"] * self.params.beats_per_row for r in self.reads
                      if r["op"] in (KVOp.READ_K, KVOp.READ_V))
        resp_words, beat_words = [], []
        if self.reads:
            async def matmul_cmds(ctx):
                while len(self.done) < self.read_after:
                    await ctx.tick()
                words = [pack_fields(self.params.cmd_layout, r) for r in self.reads]
                await stream_source(rd.cmd, words, pause=random_pause(self.stall, self.seed + 5))(ctx)
            sim.add_testbench(matmul_cmds, background=True)
            sim.add_testbench(stream_sink(rd.resp, len(self.reads), resp_words,
                                          pause=random_pause(self.stall, self.seed + 7), timeout_cycles=50_000))
            if n_beats:
                sim.add_testbench(stream_sink(rd.rdata, n_beats, beat_words,
                                              pause=random_pause(self.stall, self.seed + 9), timeout_cycles=50_000))
        sim.add_testbench(self.processor)
        sim.run()
        self.read_resps = unpack_fields(self.params.resp_layout, resp_words) if resp_words else None
        lanes = [[(w >> (16 * i)) & 0xFFFF for i in range(LANES)] for w in beat_words]
        self.read_beats = np.array(lanes, np.uint16).reshape(-1, LANES)
        return self


def random_rows(rng, n, cache):
    shape = (n, cache.kv_heads, cache.head_dim)
    if cache.dtype == "int8":
        return rng.integers(-128, 128, shape).astype(np.int8)
    bits = rng.integers(0, 1 << 16, shape).astype(np.uint16)
    return bits.view(cache.np_dtype)


def place_rows(spad, cache, rows, addr, stride):
    words = words_from_rows(cache, rows, LANES)
    for t in range(len(rows)):
        spad[addr + t * stride: addr + t * stride + words.shape[1]] = words[t]


def expected_done(cache, spad, instrs, appended=None):
    """The answers of ``instrs`` (golden.kvunit on ``cache``); ``appended`` (a list) receives
    the tokens each appended."""
    out = []
    for i, word in enumerate(instrs):
        _, f = isa.decode(word)
        res = execute(cache, spad, op=f["op"], seq=f["seq"], rows=f["rows"], k_addr=f["k_addr"],
                      k_stride=f["k_stride"], v_addr=f["v_addr"], v_stride=f["v_stride"])
        out.append((ChipError.OK, 0, i) if res.status == KVStatus.OK else (ChipError.KV, int(res.status), i))
        if appended is not None:
            appended.append(res.appended)
    return out


def beats_of(cache, reads):
    """The READ beats the matmul port must receive (16-bit lanes: int8 sign-extended)."""
    out = []
    for r in reads:
        fn = cache.read_k_beats if r["op"] == KVOp.READ_K else cache.read_v_beats
        b = fn(r["seq"], r["head"], r["start"], r["count"], r["block"], r["group"])
        out.append(b.astype(np.int16).view(np.uint16) if cache.dtype == "int8" else b.view(np.uint16))
    return np.concatenate(out) if out else np.zeros((0, LANES), np.uint16)


def read(op, seq, head, start, count, block=0, group=0):
    return dict(op=op, seq=seq, head=head, start=start, count=count, block=block, group=group)


@pytest.mark.parametrize("dtype", ["int8", "bf16"])
def test_instructions_answer_as_golden_and_leave_the_cache_golden_has(dtype):
    """Many sequences, pages freed and reused, UNKNOWN_SEQ, DUPLICATE_SEQ, TOO_MANY_SEQS, and an
    APPEND refused OUT_OF_PAGES in the middle (the tokens before it stay); then every row of
    every live sequence read back through the matmul port in the Q·Kᵀ and P·V orders."""
    seed = 11
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    cache = make_cache(dtype)
    spad = np.zeros((SPAD_WORDS, LANES), np.uint32)
    k, v = random_rows(rng, 40, cache), random_rows(rng, 40, cache)
    place_rows(spad, cache, k, 0, 8)       # K rows every 8 words
    place_rows(spad, cache, v, 400, 10)    # V rows every 10 words

    def append(seq, t0, n):
        return kv_instr(KVOp.APPEND, seq, rows=n, k_addr=8 * t0, k_stride=8, v_addr=400 + 10 * t0, v_stride=10)
    instrs = [
        kv_instr(KVOp.ALLOC, 7), append(7, 0, 5), kv_instr(KVOp.ALLOC, 300), append(300, 5, 3),
        kv_instr(KVOp.ALLOC, 7),                                   # DUPLICATE_SEQ
        append(9, 0, 2),                                           # UNKNOWN_SEQ
        kv_instr(KVOp.ALLOC, 9), kv_instr(KVOp.ALLOC, 10),         # TOO_MANY_SEQS (3 slots)
        append(9, 8, 6), append(7, 14, 9),                         # 1 page left: 7 of the 9 tokens fit
        kv_instr(KVOp.FREE, 300), kv_instr(KVOp.FREE, 300),        # UNKNOWN_SEQ the second time
        append(7, 23, 4),                                          # takes the freed page
        kv_instr(KVOp.ALLOC, 300), append(300, 27, 2),             # OUT_OF_PAGES at its first token
    ]
    appended = []
    want = expected_done(cache, spad, instrs, appended)
    assert [d[1] for d in want][4:8] == [KVStatus.DUPLICATE_SEQ, KVStatus.UNKNOWN_SEQ, 0, KVStatus.TOO_MANY_SEQS]
    assert (want[9][1], appended[9]) == (KVStatus.OUT_OF_PAGES, 7)
    assert (want[11][1], want[14][1], appended[14]) == (KVStatus.UNKNOWN_SEQ, KVStatus.OUT_OF_PAGES, 0)
    assert cache.status(7).length == 16 and cache.free_pages == 0
    reads = []
    for seq in cache.sequences:
        n = cache.status(seq).length
        for head in range(cache.kv_heads):
            reads += [read(KVOp.READ_K, seq, head, 0, n, block=LANES, group=1),
                      read(KVOp.READ_V, seq, head, 0, n, 0, 1), read(KVOp.READ_K, seq, head, min(1, n), max(n - 1, 0))]
    reads.append(read(KVOp.STATUS, 7, 0, 0, 0))
    b = Bench(dtype, spad, instrs, reads=reads, read_after=len(instrs), seed=seed).run()
    assert b.done == want
    assert np.array_equal(b.read_beats, beats_of(cache, reads))
    assert all(s == KVStatus.OK for s in b.read_resps["status"])
    assert (b.read_resps["length"][-1], b.read_resps["free_pages"][-1]) == (cache.status(7).length, cache.free_pages)


def test_reads_of_the_matmul_unit_interleave_with_appends_and_each_issuer_gets_its_responses():
    """The matmul port reads a finished sequence (and sends an ALLOC, which the arbiter turns
    into BAD_OPCODE) while the unit appends 20 tokens to another: every READ returns the rows
    golden holds, every instruction answers OK, and the appended rows read back right (the pool
    full: 6 pages)."""
    seed = 3
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    cache = make_cache("int8")
    spad = np.zeros((SPAD_WORDS, LANES), np.uint32)
    k, v = random_rows(rng, 32, cache), random_rows(rng, 32, cache)
    place_rows(spad, cache, k, 0, 8)
    place_rows(spad, cache, v, 512, 8)
    instrs = [kv_instr(KVOp.ALLOC, 1),
              kv_instr(KVOp.APPEND, 1, rows=2, k_addr=0, k_stride=8, v_addr=512, v_stride=8),
              kv_instr(KVOp.ALLOC, 2)] + [
              kv_instr(KVOp.APPEND, 2, rows=5, k_addr=16 + 40 * i, k_stride=8, v_addr=528 + 40 * i, v_stride=8)
              for i in range(4)]
    want = expected_done(cache, spad, instrs)
    reads = [read(KVOp.READ_K if i % 2 else KVOp.READ_V, 1, i % 2, 0, 2, block=i % 3, group=1) for i in range(24)]
    reads.insert(5, read(KVOp.ALLOC, 5, 0, 0, 0))
    b = Bench("int8", spad, instrs, reads=reads, read_after=2, seed=seed, stall=0.2).run()
    assert b.done == want and all(d[0] == ChipError.OK for d in b.done)
    real_reads = [r for r in reads if r["op"] != KVOp.ALLOC]
    assert np.array_equal(b.read_beats, beats_of(cache, real_reads))
    st = list(b.read_resps["status"])
    assert st[5] == KVStatus.BAD_OPCODE and st.count(KVStatus.OK) == len(reads) - 1
    # the 20 tokens of sequence 2, read back
    back = [read(KVOp.READ_K, 2, 1, 0, 20, block=LANES, group=1), read(KVOp.READ_V, 2, 0, 0, 20, 0, 1)]
    b2 = Bench("int8", spad, instrs, reads=back, read_after=len(instrs), seed=seed + 1, stall=0.0).run()
    assert np.array_equal(b2.read_beats, beats_of(cache, back))
    assert cache.status(2).length == 20 and cache.free_pages == 0


def test_an_abort_lets_the_started_append_finish_and_takes_no_further_instruction():
    cache = make_cache("int8")
    rng = np.random.default_rng(4)
    spad = np.zeros((SPAD_WORDS, LANES), np.uint32)
    place_rows(spad, cache, random_rows(rng, 12, cache), 0, 8)
    instrs = [kv_instr(KVOp.ALLOC, 1), kv_instr(KVOp.APPEND, 1, rows=12, k_addr=0, k_stride=8, v_addr=0, v_stride=8),
              kv_instr(KVOp.ALLOC, 2)]
    want = expected_done(cache, spad, instrs[:2])
    b = Bench("int8", spad, instrs, seed=4, stall=0.0, abort_at=60).run()
    assert b.done == want                       # the APPEND ran whole, ALLOC 2 never started
    assert b.done_cycles[0] < 60 < b.done_cycles[1]


def test_arbiter_keeps_a_presented_command_until_taken_and_alternates_between_issuers():
    """Both issuers always have a command: grants alternate; the controller side holds ready low
    at random and a presented command never changes until taken; responses go back in order to
    their issuers; a matmul-port FREE goes out as op 7."""
    p = KVCacheParams(**KV, dtype="int8")
    arb = KVCmdArbiter(params=p)
    n = 40
    unit = [pack_fields(p.cmd_layout, dict(op=KVOp.APPEND, seq=i, head=0, start=0, count=0, block=0, group=0))
            for i in range(n)]
    mm = [pack_fields(p.cmd_layout, dict(op=KVOp.FREE if i == 3 else KVOp.READ_K, seq=1000 + i, head=0, start=0,
                                         count=0, block=0, group=0)) for i in range(n)]
    seen = []
    unit_resp, mm_resp = [], []

    async def controller(ctx):
        rng = np.random.default_rng(2)
        pending = []
        presented = None
        out = Value.cast(arb.cmd.payload)
        rp = Value.cast(arb.resp.payload)
        while len(seen) < 2 * n or pending:
            ready = rng.random() < 0.5
            ctx.set(arb.cmd.ready, ready)
            ctx.set(arb.resp.valid, bool(pending))
            if pending:
                ctx.set(rp, pending[0])
            _, _, valid, word, rready = await ctx.tick().sample(arb.cmd.valid, out, arb.resp.ready)
            if pending and rready:
                pending.pop(0)
            if valid:
                assert presented is None or presented == word
                presented = word
                if ready:
                    seen.append(word)
                    f = unpack_fields(p.cmd_layout, [word])
                    # the response's length field carries the low bits of the command's seq
                    pending.append(pack_fields(p.resp_layout, dict(status=0, op=int(f["op"][0]),
                                                                     length=int(f["seq"][0]) % 32, pages=0,
                                                                     free_pages=0)))
                    presented = None

    sim = Simulator(arb)
    sim.add_clock(1e-8)
    sim.add_testbench(stream_source(arb.unit_cmd, unit), background=True)
    sim.add_testbench(stream_source(arb.read.cmd, mm), background=True)
    sim.add_testbench(stream_sink(arb.unit_resp, n, unit_resp, pause=random_pause(0.3, 5)), background=True)
    sim.add_testbench(stream_sink(arb.read.resp, n, mm_resp, pause=random_pause(0.3, 6)), background=True)
    sim.add_testbench(controller)
    sim.run()
    f = unpack_fields(p.cmd_layout, seen)
    from_mm = [s >= 1000 for s in f["seq"]]
    assert all(a != b for a, b in zip(from_mm, from_mm[1:], strict=False))       # strict alternation
    ops = [int(o) for o, m in zip(f["op"], from_mm, strict=True) if m]
    assert ops[3] == BAD_OP and set(ops[:3] + ops[4:]) == {KVOp.READ_K}
    assert list(unpack_fields(p.resp_layout, unit_resp)["length"]) == [i % 32 for i in range(n)]
    assert list(unpack_fields(p.resp_layout, mm_resp)["length"]) == [(1000 + i) % 32 for i in range(n)]


def test_parameters_are_checked():
    p = KVCacheParams(**KV, dtype="int8")
    with pytest.raises(ValueError, match=r"lanes \(4\) must equal the cache's beat_elems \(2\)"):
        KVExec(params=p, lanes=4, spad_addr_width=AW)
    with pytest.raises(TypeError, match="params must be a KVCacheParams"):
        KVExec(params=KV, lanes=2, spad_addr_width=AW)
    with pytest.raises(ValueError, match="spad_addr_width must be an int in 1..21"):
        KVExec(params=p, lanes=2, spad_addr_width=0)
    with pytest.raises(ValueError, match="depth must be an int in 2..64"):
        KVCmdArbiter(params=p, depth=1)
