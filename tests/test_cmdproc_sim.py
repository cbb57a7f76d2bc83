# amaranth: UnusedElaboratable=no
"""amaranth.sim tests of the command processor (hdl/cmdproc.py) with model units: instructions
reach their units in program order and start only when their waits are satisfied; a program
ends DONE when every unit has retired its instructions; every decode check stops the program at
the failing instruction with its code, detail and index, before anything of it runs and before
anything after it is dispatched; unit errors, fetch errors, a missing END and the watchdog stop
it too; CLEAR and a rerun give identical results."""

import random

import pytest
from amaranth.sim import Simulator

from hdl.cmdproc import CHECKS, N_UNITS, CommandProcessor, Dispatcher, InstrFetcher, ProcState
from hdl.cmdproc_range import RangeChecker
from spec import isa
from spec.codes import ChipError, Dtype, KVOp, OutFormat
from spec.vector import CHIP_OPS, VectorOp

BUS = 32
PARAMS = dict(bus_bits=BUS, addr_bits=32, inflight=3, lanes=2, spad_words=4096, acc_depth=64, a_depth=2048,
              param_beat_bytes=20, softmax_max_len=64, vector_max_len=64, kv_row_words=8, queue_depth=2,
              kv_head_dim=8, kv_bf16=False, kv_max_tokens=64)
EXT_SIZE = 1 << 20
U = isa.Unit


def program_bytes(words):
    return b"".join(w.to_bytes(isa.INSTR_BYTES, "little") for w in words)


class Harness:
    """The processor with a model memory for the fetcher and one model unit per unit port.

    ``latency(index)`` is the cycles a unit spends on an instruction; ``fail`` maps an
    instruction index to the (status, detail) its unit answers; ``hang`` an index whose unit
    shows no progress while it runs (indices in the running program); ``bad_fetch`` is a set of
    instruction slots of the memory (address / 64) whose read answers an error.
    """

    def __init__(self, words, *, seed=0, latency=None, fail=None, bad_fetch=(), hang=None, watchdog=0,
                 runs=1, programs=None, params=None):
        self.dut = CommandProcessor(**{**PARAMS, **(params or {})})
        # each run's program at its own address (``programs``: one word list per run)
        self.programs = programs or [words] * runs
        self.mem, self.addrs = b"", []
        for p in self.programs:
            self.addrs.append(len(self.mem))
            self.mem += program_bytes(p)
        runs = len(self.programs)
        self.rng = random.Random(seed)
        self.latency = latency or (lambda i: self.rng.randint(1, 6))
        self.fail = fail or {}
        self.bad_fetch = set(bad_fetch)
        self.hang = hang
        self.watchdog = watchdog
        self.runs = runs
        self.started = []       # (unit, index, cycle, retired snapshot), index counted over all runs
        self.base = 0           # index of the running program's first instruction over all runs
        self.results = []       # per run: (state, code, detail, index, cycles)
        self.now = 0

    async def clock(self, ctx):
        async for _ in ctx.tick():
            self.now += 1

    async def fetch(self, ctx):
        d = self.dut
        pending = []    # [addr, beats, beats sent]
        ctx.set(d.fetch_req.ready, 1)
        while True:
            if pending:
                addr, beats, i = pending[0]
                a = addr + i * (BUS // 8)
                ctx.set(d.fetch_data.valid, 1)
                word = int.from_bytes(self.mem[a:a + BUS // 8].ljust(BUS // 8, b"\0"), "little")
                ctx.set(d.fetch_data.payload.data, word)
                ctx.set(d.fetch_data.payload.last, i == beats - 1)
                ctx.set(d.fetch_data.payload.error, (addr // isa.INSTR_BYTES) in self.bad_fetch and i == beats - 1)
            else:
                ctx.set(d.fetch_data.valid, 0)
            took = pending and ctx.get(d.fetch_data.ready)
            req = ctx.get(d.fetch_req.valid)
            addr, beats = ctx.get(d.fetch_req.payload.addr), ctx.get(d.fetch_req.payload.beats)
            await ctx.tick()
            if took:
                pending[0][2] += 1
                if pending[0][2] == pending[0][1]:
                    pending.pop(0)
            if req:
                pending.append([addr, beats, 0])

    def unit(self, u):
        async def process(ctx):
            port = self.dut.units[u]
            ctx.set(port.idle, 1)
            while True:
                await ctx.tick().until(port.instr.valid & port.deps_ok & ~port.abort)
                local = ctx.get(port.instr.payload.index)
                index = local + self.base
                retired = [ctx.get(port.retired[k]) for k in range(N_UNITS)]
                ctx.set(port.instr.ready, 1)
                ctx.set(port.idle, 0)
                await ctx.tick()
                ctx.set(port.instr.ready, 0)
                self.started.append((u, index, self.now, retired))
                for _ in range(self.latency(local)):
                    ctx.set(port.progress, local != self.hang)   # a hung unit shows no sign of life
                    await ctx.tick()
                ctx.set(port.progress, 0)
                status, detail = self.fail.get(local, (ChipError.OK, 0))
                ctx.set(port.done.valid, 1)
                ctx.set(port.done.payload.status, status)
                ctx.set(port.done.payload.detail, detail)
                ctx.set(port.done.payload.index, local)
                await ctx.tick()
                ctx.set(port.done.valid, 0)
                ctx.set(port.idle, 1)
        return process

    async def main(self, ctx):
        d = self.dut
        ctx.set(d.ext_size, EXT_SIZE)
        ctx.set(d.watchdog, self.watchdog)
        for run, program in enumerate(self.programs):
            ctx.set(d.prog_addr, self.addrs[run])
            ctx.set(d.prog_len, len(program))
            self.base = self.addrs[run] // isa.INSTR_BYTES
            t0 = self.now
            ctx.set(d.start, 1)
            await ctx.tick()
            ctx.set(d.start, 0)
            await ctx.tick().until(d.finished)
            await ctx.tick()
            self.results.append((ProcState(ctx.get(d.state)), ChipError(ctx.get(d.err_code)), ctx.get(d.err_detail),
                                 ctx.get(d.err_index), self.now - t0))
            ctx.set(d.clear, 1)
            await ctx.tick()
            ctx.set(d.clear, 0)
            await ctx.tick()
            assert ProcState(ctx.get(d.state)) == ProcState.IDLE

    def run(self, cycles=20_000):
        sim = Simulator(self.dut)
        sim.add_clock(1e-8)
        sim.add_process(self.clock)
        sim.add_testbench(self.fetch, background=True)
        for u in range(N_UNITS):
            sim.add_testbench(self.unit(u), background=True)
        sim.add_testbench(self.main)
        while sim.advance() and self.now <= cycles:   # until main is done, or the cycle budget
            pass
        assert len(self.results) == len(self.programs), f"the programs did not finish in {cycles} cycles"
        return self.results


def ins(opcode, wait=None, **f):
    return isa.encode(opcode, wait=wait, **f)


def load(wait=None, **f):
    base = dict(ext_addr=0, ext_stride=4, spad_addr=0, spad_stride=1, rows=1, elems=2, elem_bytes=0)
    return ins(isa.Opcode.LOAD, wait, **{**base, **f})


def store(wait=None, **f):
    base = dict(ext_addr=0, ext_stride=4, spad_addr=0, spad_stride=1, rows=1, elems=2, elem_bytes=0)
    return ins(isa.Opcode.STORE, wait, **{**base, **f})


def matmul(wait=None, **f):
    base = dict(m=2, k=4, n=4, dtype=Dtype.INT8, out_fmt=OutFormat.INT32, a_addr=0, a_stride=2, o_addr=100,
                o_stride=2, w_src=isa.WSource.EXT, w_addr=0)
    return ins(isa.Opcode.MATMUL, wait, **{**base, **f})


def vector(wait=None, **f):
    return ins(isa.Opcode.VECTOR, wait, **{**dict(op=0, length=4, rows=2, a_stride=2, o_addr=50, o_stride=2), **f})


def softmax(wait=None, **f):
    return ins(isa.Opcode.SOFTMAX, wait, **{**dict(rows=2, length=4, a_stride=2, o_addr=50, o_stride=2), **f})


def kv(wait=None, **f):
    return ins(isa.Opcode.KV, wait, **{**dict(op=KVOp.ALLOC, seq=1), **f})


END = isa.encode(isa.Opcode.END)


def _program(seed):
    """A random program of 40 instructions over all units, each waiting on random earlier ones."""
    rng = random.Random(seed)
    makers = [(U.LOAD, load), (U.STORE, store), (U.MATMUL, matmul), (U.VECTOR, vector), (U.SOFTMAX, softmax),
              (U.KV, kv)]
    counts = [0] * N_UNITS
    words, meta = [], []
    for _ in range(40):
        u, make = rng.choice(makers)
        wait = {}
        for other in range(N_UNITS):
            if counts[other] and rng.random() < 0.4:
                wait[U(other)] = rng.randint(1, counts[other])
        words.append(make(wait))
        meta.append((u, wait))
        counts[u] += 1
    return words + [END], meta


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_programs_start_each_instruction_in_unit_order_after_its_waits_and_end_done(seed):
    print(f"seed {seed}")
    words, meta = _program(seed)
    h = Harness(words, seed=seed)
    (state, code, _, _, _), = h.run()
    assert (state, code) == (ProcState.DONE, ChipError.OK)
    assert sorted(i for _, i, _, _ in h.started) == list(range(len(meta)))
    for u in range(N_UNITS):
        mine = [i for uu, i, _, _ in h.started if uu == u]
        assert mine == sorted(mine), f"unit {u} started out of program order"
    for unit, index, _, retired in h.started:
        assert unit == meta[index][0]
        for other, count in meta[index][1].items():
            assert retired[other] >= count, f"instruction {index} started before its wait on {other.name}"


def test_independent_instructions_of_different_units_overlap():
    words = [matmul(), vector(), softmax(), END]
    h = Harness(words, latency=lambda i: 60)
    h.run()
    starts = sorted(t for _, _, t, _ in h.started)
    assert starts[-1] - starts[0] < 60, "the three units did not run at the same time"


def test_a_wait_holds_an_instruction_until_the_instruction_it_names_retires():
    words = [matmul(), vector(wait={U.MATMUL: 1}), END]
    h = Harness(words, latency=lambda i: 30)
    h.run()
    t = {i: c for _, i, c, _ in h.started}
    assert t[1] - t[0] >= 30


@pytest.mark.parametrize("op", list(CHECKS))
def test_every_decode_check_stops_the_program_at_the_instruction_with_its_code_and_detail(op):
    bad = {   # one instruction per check, in the order of CHECKS[op]
        isa.Opcode.LOAD: [load(rows=0), load(elems=0), load(elem_bytes=3), load(ext_addr=2), load(ext_stride=6),
                          load(spad_addr=4095, elems=4), load(ext_addr=EXT_SIZE - 4, elems=5)],
        isa.Opcode.MATMUL: [matmul(m=0), matmul(k=0), matmul(n=0), matmul(out_fmt=OutFormat.BF16),
                            matmul(w_wide=1, dtype=Dtype.BF16, out_fmt=OutFormat.FP32),
                            matmul(m=65),
                            None,     # KV weights on a chip without them: below, with kv_head_dim = 0
                            matmul(w_src=isa.WSource.KV_K, k=4, n=4),                       # 2 K tiles, not 4
                            matmul(w_src=isa.WSource.KV_V, k=4, n=8, dtype=Dtype.BF16, out_fmt=OutFormat.FP32),
                            matmul(w_src=isa.WSource.KV_K, k=8, n=4, kv_start=61),          # 65 > 64 positions
                            matmul(w_src=isa.WSource.KV_V, k=4, n=8, interleave=1),
                            matmul(m=64, k=128, a_stride=64), matmul(a_addr=4090, m=4),
                            matmul(o_addr=4095), matmul(w_addr=EXT_SIZE - 8),
                            matmul(w_src=isa.WSource.EXT_T, w_addr=EXT_SIZE - 8),
                            matmul(has_bias=1, p_addr=EXT_SIZE - 20)],
        isa.Opcode.VECTOR: [vector(rows=0), vector(length=0), vector(length=65), vector(op=8),
                            vector(op=VectorOp.QUANT_TOKEN, dtype=Dtype.INT8), vector(flags=2),
                            vector(op=VectorOp.ROPE, length=12, head_dim=6),
                            vector(op=VectorOp.ROPE, length=12, head_dim=8), vector(a_addr=4095),
                            vector(b_addr=4094, b_stride=1),
                            vector(op=VectorOp.ROPE, length=16, head_dim=8, p_addr=4094, p_stride=1),
                            vector(op=VectorOp.REQUANT, s_in_addr=4095), vector(o_addr=4095),
                            vector(op=VectorOp.QUANT_TOKEN, dtype=Dtype.BF16, s_out_addr=4095)],
        isa.Opcode.SOFTMAX: [softmax(rows=0), softmax(length=0), softmax(length=65), softmax(a_addr=4095),
                             softmax(o_addr=4095)],
        isa.Opcode.KV: [kv(op=KVOp.STATUS), kv(op=KVOp.APPEND, rows=0), kv(op=KVOp.APPEND, rows=1, k_addr=4090),
                        kv(op=KVOp.APPEND, rows=1, k_addr=0, v_addr=4090), kv(op=KVOp.APPEND, rows=65)],
    }
    bad[isa.Opcode.STORE] = [w | 0x01 for w in bad[isa.Opcode.LOAD]]    # opcode 0x10 → 0x11
    cases = bad[op]
    assert len(cases) == len(CHECKS[op])
    from hdl.cmdproc import _CODE_OF_KIND
    # per case: two good instructions, the bad one, one that must never be dispatched
    programs = [[load(), vector(), word, load(), END] for word in cases if word is not None]
    h = Harness(None, programs=programs)
    results = h.run(cycles=2000 * len(programs))
    details = [d for d, word in enumerate(cases) if word is not None]
    for i, (detail, (state, code, got_detail, index, _)) in enumerate(zip(details, results, strict=True)):
        want = _CODE_OF_KIND[CHECKS[op][detail][0]]
        assert (state, code, got_detail, index) == (ProcState.ERROR, want, detail, 2), CHECKS[op][detail][1]
        base = 5 * i
        assert sorted(j - base for _, j, _, _ in h.started if base <= j < base + 5) == [0, 1]


def test_the_interleave_groups_rows_must_fit_the_accumulator():
    detail = [d for d, (_, text) in enumerate(CHECKS[isa.Opcode.MATMUL]) if "accumulator" in text][0]
    # acc_depth 64: G·m ≤ 64 runs (m = 32 with G = 2, m = 4 with G = 16), one row more is refused
    programs = [[load(), matmul(m=m, k=8, n=8, a_stride=4, o_stride=4, interleave=g - 1), END]
                for m, g in ((32, 2), (33, 2), (4, 16), (5, 16), (64, 1))]
    results = Harness(None, programs=programs).run()
    refused = (ProcState.ERROR, ChipError.BAD_FIELD, detail, 1)
    ran = (ProcState.DONE, ChipError.OK, 0, 0)
    assert [r[:4] for r in results] == [ran, refused, ran, refused, ran]
    kv_detail = [d for d, (_, text) in enumerate(CHECKS[isa.Opcode.MATMUL]) if "interleave other than 0" in text][0]
    programs = [[load(), matmul(w_src=src, k=8, n=8, interleave=g - 1), END]
                for src in (isa.WSource.KV_K, isa.WSource.KV_V) for g in (1, 2)]
    results = Harness(None, programs=programs).run()
    assert [r[:4] for r in results] == [ran, (ProcState.ERROR, ChipError.BAD_FIELD, kv_detail, 1)] * 2


def test_kv_sourced_matmuls_are_refused_on_a_chip_whose_kv_cache_does_not_feed_the_engine():
    detail = [d for d, (_, text) in enumerate(CHECKS[isa.Opcode.MATMUL]) if "does not feed" in text][0]
    programs = [[load(), matmul(w_src=src, k=8, n=8), END] for src in (isa.WSource.KV_K, isa.WSource.KV_V)]
    programs.append([load(), matmul(w_src=isa.WSource.EXT, k=8, n=8), END])
    results = Harness(None, programs=programs, params=dict(kv_head_dim=0, kv_max_tokens=0)).run()
    assert [r[:4] for r in results] == [(ProcState.ERROR, ChipError.BAD_FIELD, detail, 1)] * 2 + \
        [(ProcState.DONE, ChipError.OK, 0, 0)]


def test_bad_opcode_bad_wait_and_missing_end_stop_with_their_codes():
    cases = [
        ([load(), 0, load(), END], ChipError.BAD_OPCODE, 1),
        ([load(), 0x7F, END], ChipError.BAD_OPCODE, 1),
        ([load(), vector(wait={U.LOAD: 2}), load(), END], ChipError.BAD_WAIT, 1),
        ([load(), load() | (1 << 14), END], ChipError.BAD_WAIT, 1),
        ([load(), vector()], ChipError.NO_END, 2),
    ]
    results = Harness(None, programs=[words for words, _, _ in cases]).run()
    for (state, got, _, got_index, _), (_, code, index) in zip(results, cases, strict=True):
        assert (state, got, got_index) == (ProcState.ERROR, code, index)


def test_unit_and_fetch_errors_stop_the_program_and_later_instructions_never_start():
    words = [load(), matmul(wait={U.LOAD: 1}), vector(wait={U.MATMUL: 1}), load(wait={U.VECTOR: 1}), END]
    h = Harness(words, fail={1: (ChipError.MATMUL, 3)})
    (state, code, detail, index, _), = h.run()
    assert (state, code, detail, index) == (ProcState.ERROR, ChipError.MATMUL, 3, 1)
    assert sorted(i for _, i, _, _ in h.started) == [0, 1]
    h = Harness(words, bad_fetch={2})
    (state, code, _, index, _), = h.run()   # the program is at address 0: index 2 is its third
    assert (state, code, index) == (ProcState.ERROR, ChipError.AXI_READ, 2)
    assert 2 not in [i for _, i, _, _ in h.started]


def test_watchdog_stops_a_program_whose_unit_hangs():
    words = [load(), matmul(), END]
    # the model unit of instruction 1 shows no progress for 5000 cycles (the processor reports
    # TIMEOUT once that unit is idle again: a unit that never ends keeps the chip RUNNING)
    h = Harness(words, hang=1, watchdog=200, latency=lambda i: 5000 if i == 1 else 2)
    (state, code, _, _, cycles), = h.run(cycles=20_000)
    assert (state, code) == (ProcState.ERROR, ChipError.TIMEOUT)
    assert cycles >= 5000


def test_clear_then_rerun_gives_identical_results():
    words, _ = _program(9)
    h = Harness(words, seed=9, latency=lambda i: 1 + i % 5, runs=2)
    first, second = h.run()
    assert first[:4] == second[:4] == (ProcState.DONE, ChipError.OK, 0, 0)
    assert first[4] == second[4]


def test_parameters_are_checked():
    with pytest.raises(ValueError, match="bus_bits must be a power of two"):
        InstrFetcher(bus_bits=48, addr_bits=32)
    with pytest.raises(ValueError, match="param_beat_bytes .* must be a multiple of bus_bytes"):
        Dispatcher(**{**{k: v for k, v in PARAMS.items() if k not in ("bus_bits", "addr_bits", "inflight")},
                      "bus_bytes": 4, "ext_bits": 32, "param_beat_bytes": 18})


@pytest.mark.parametrize("bus_bytes", [1, 4])
def test_range_checker_answers_end_past_limit_after_its_latency(bus_bytes):
    """The dispatcher's range checker alone: random operands (and ends exactly at the limit, one
    past it, counts of 1, external rounding), each loaded once and held; ``over`` after
    ``latency`` cycles is ``en`` and ``base + (count − 1)·stride + words`` (external: rounded up
    to a bus word) > limit."""
    seed = 4242 + bus_bytes
    print(f"seed {seed}")
    rng = random.Random(seed)
    width = 34
    dut = RangeChecker(width=width, bus_bytes=bus_bytes)
    cases = []
    for _ in range(150):
        count, stride, words = rng.randint(1, 40), rng.randint(0, 300), rng.randint(1, 70)
        base = rng.randint(0, 5000)
        end = base + (count - 1) * stride + words
        ext = rng.random() < 0.5
        rounded = -(-end // bus_bytes) * bus_bytes if ext else end
        limit = rng.choice([rounded, rounded - 1, rounded + 1, end, rng.randint(0, 20000)])
        en = rng.random() < 0.9
        cases.append((dict(en=en, base=base, count=count, stride=stride, words=words, limit=limit, ext=ext),
                       en and rounded > limit))
    assert {want for _, want in cases} == {False, True}
    got = []

    async def bench(ctx):
        for ops, _ in cases:
            ctx.set(dut.load, 1)
            for name, value in ops.items():
                ctx.set(getattr(dut, name), int(value))
            await ctx.tick()
            ctx.set(dut.load, 0)
            for name in ops:   # the loaded operands are registered: the inputs may change
                ctx.set(getattr(dut, name), rng.getrandbits(8))
            for _ in range(dut.latency - 1):
                await ctx.tick()
            got.append(bool(ctx.get(dut.over)))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert got == [want for _, want in cases]


def test_range_checker_parameters_are_checked():
    with pytest.raises(ValueError, match="bus_bytes must be a power of two"):
        RangeChecker(width=34, bus_bytes=6)
    with pytest.raises(ValueError, match="width"):
        RangeChecker(width=1, bus_bytes=4)


def test_the_vector_units_rmsnorm_fp32_is_refused_by_the_chip_with_bad_field():
    """RMSNORM_FP32 (op 10) is the vector unit's, not yet the chip's (spec.vector.CHIP_OPS): the
    VECTOR instruction carrying it stops the program with BAD_FIELD and the op check's detail."""
    assert VectorOp.RMSNORM_FP32 not in CHIP_OPS
    detail = [d for d, (_, text) in enumerate(CHECKS[isa.Opcode.VECTOR]) if "CHIP_OPS" in text][0]
    results = Harness(None, programs=[[load(), vector(op=VectorOp.RMSNORM_FP32), END]]).run()
    assert [r[:4] for r in results] == [(ProcState.ERROR, ChipError.BAD_FIELD, detail, 1)]
