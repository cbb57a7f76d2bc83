# amaranth: UnusedElaboratable=no
"""amaranth.sim tests of the MATMUL unit's feeders (hdl/exec_matmul_feed.py) against a model read
client: the weight feeder turns the bytes spec.matmul_layout packs into exactly the engine beats
(int8 rows and transposed, bf16, wide int8; beats narrower and wider than the bus), KV READ beats
pass unchanged and a refused READ gives zero beats with its status; AXI errors are reported with
their job; a flush drops a job mid-way, reads every requested word and leaves the next job
correct; the parameter feeder turns records into the engine's parameter beats. Random valid gaps
and backpressure give the same beats."""

import random

import ml_dtypes
import numpy as np
import pytest
from amaranth.sim import Simulator
from exec_models import ReadClient, process

from hdl.exec_matmul_feed import ParamFeeder, WeightFeeder
from sim.amaranth_streams import random_pause, stream_source
from spec import matmul_layout as ml
from spec.codes import KVStatus

ADDR = 32


def beat_int(lanes16):
    return int.from_bytes(np.asarray(lanes16, np.uint16).astype("<u2").tobytes(), "little")


async def drive_jobs(ctx, stream, jobs, sample=(), out=None, timeout=5000):
    """Present each job (a dict of payload fields) until the handshake that ends it; append the
    values of ``sample`` at that handshake to ``out``. Fails after ``timeout`` cycles on a job."""
    for job in jobs:
        for k, v in job.items():
            ctx.set(getattr(stream.payload, k), v)
        ctx.set(stream.valid, 1)
        for _ in range(timeout):
            _, _, ready, *values = await ctx.tick().sample(stream.ready, *sample)
            if ready:
                if out is not None:
                    out.append(tuple(values))
                break
        else:
            raise TimeoutError(f"a job did not finish in {timeout} cycles")
    ctx.set(stream.valid, 0)


async def sink(ctx, stream, out, rng, backpressure, gate=None):
    """Take beats with random backpressure (none while ``gate["open"]`` is False)."""
    while True:
        r = rng.random() >= backpressure and (gate is None or gate["open"])
        ctx.set(stream.ready, r)
        _, _, valid, word = await ctx.tick().sample(stream.valid, stream.payload.as_value())
        if r and valid:
            out.append(word)


def weight_case(rng, rows, cols, bus, fmt):
    K, N = int(rng.integers(1, 3 * rows + 2)), int(rng.integers(1, 3 * cols + 2))
    if fmt == "bf16":
        w = rng.standard_normal((K, N)).astype(ml_dtypes.bfloat16)
    else:
        w = rng.integers(-128, 128, (K, N)).astype(np.int8)
    transposed, wide = fmt == "int8_t", fmt == "wide"
    data = ml.pack_weights(w, rows=rows, cols=cols, bus_bytes=bus, transposed=transposed, wide=wide)
    beats = ml.engine_weight_beats(w, rows=rows, cols=cols, transposed=transposed, wide=wide)
    assert len(data) == ml.weight_bytes(K, N, rows=rows, cols=cols, bus_bytes=bus, bf16=fmt == "bf16",
                                        transposed=transposed, wide=wide)
    assert len(beats) == ml.weight_beats(K, N, rows=rows, cols=cols, transposed=transposed, wide=wide)
    return data, beats, fmt in ("bf16", "wide")


def weight_feeder(cols, bus_bits, kv_depth=4):
    return WeightFeeder(cols=cols, bus_bits=bus_bits, addr_width=ADDR, beats_width=6, words_width=24,
                        job_beats_width=16, kv_data_bits=16 * cols, kv_depth=kv_depth)


# (cols, bus bits): beats narrower than the bus (two or eight int8 beats per word), as wide as
# it, and wider (two and four words per beat)
GEOMETRIES = [(2, 32), (8, 128), (2, 128), (8, 32)]


@pytest.mark.parametrize("stalls", [0.0, 0.4], ids=["no_stalls", "stalls"])
@pytest.mark.parametrize("cols,bus_bits", GEOMETRIES)
def test_weight_feeder_turns_every_format_into_the_engine_beats_and_passes_kv_reads(cols, bus_bits, stalls):
    seed = cols * 1000 + bus_bits + int(stalls * 10)
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    D = bus_bits // 8
    mem = bytearray(1 << 16)
    req_jobs, jobs, want, kv_resp, kv_beats, errs = [], [], [], [], [], []
    addr = 0x100
    fmts = ["int8", "int8_t", "bf16", "wide", "kv", "int8", "kv_err", "bf16", "wide", "int8_t"]
    for fmt in fmts:
        if fmt.startswith("kv"):
            n = int(rng.integers(1, 9))
            lanes = rng.integers(0, 1 << 16, (n, cols)).astype(np.uint16)
            ok = fmt == "kv"
            kv_resp.append(KVStatus.OK if ok else KVStatus.READ_PAST_LENGTH)
            if ok:
                kv_beats.extend(lanes)
            want.extend(lanes if ok else np.zeros_like(lanes))
            req_jobs.append(dict(addr=0, words=0))
            jobs.append(dict(beats=n, w16=0, kv=1))
            errs.append((0, int(not ok), 0 if ok else KVStatus.READ_PAST_LENGTH))
            continue
        data, beats, w16 = weight_case(rng, cols, cols, D, fmt)
        mem[addr:addr + len(data)] = data
        np.testing.assert_array_equal(ml.unpack_weight_beats(data, cols=cols, beats=len(beats), bf16=fmt == "bf16",
                                                             wide=fmt == "wide"), beats)
        req_jobs.append(dict(addr=addr, words=len(data) // D))
        jobs.append(dict(beats=len(beats), w16=int(w16), kv=0))
        want.extend(beats)
        errs.append((0, 0, 0))
        addr += len(data) + D * int(rng.integers(0, 3))
    dut = weight_feeder(cols, bus_bits)
    prng = random.Random(seed)
    client = ReadClient(dut.dma, mem, D, prng, gap=stalls)
    got, seen_errs = [], []
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(client.run, background=True)
    sim.add_testbench(process(drive_jobs, dut.req_job, req_jobs), background=True)
    sim.add_testbench(stream_source(dut.kv_resp, [int(x) for x in kv_resp]), background=True)
    sim.add_testbench(stream_source(dut.kv_rdata, [beat_int(b) for b in kv_beats],
                                    pause=random_pause(stalls, seed)), background=True)
    sim.add_testbench(process(sink, dut.w, got, prng, stalls), background=True)
    sim.add_testbench(process(drive_jobs, dut.job, jobs, (dut.err.axi, dut.err.kv, dut.err.kv_status), seen_errs))
    sim.run()
    assert len(seen_errs) == len(jobs), "the jobs did not all finish"
    assert got == [beat_int(b) for b in want]
    assert [tuple(int(v) for v in e) for e in seen_errs] == errs
    # every request is a chunk of at most 2**(beats_width − 1) words, in address order per job
    assert all(b <= dut.chunk_words for _, b in client.requests)


def test_weight_feeder_reports_an_axi_error_with_its_job_and_flush_leaves_the_next_job_correct():
    rng = np.random.default_rng(7)
    print("seed 7")
    cols, bus_bits, D = 2, 32, 4
    mem = bytearray(1 << 16)
    cases = [weight_case(rng, cols, cols, D, "int8") for _ in range(4)]
    addrs = [0x100, 0x800, 0x1000, 0x2000]
    for (data, _, _), a in zip(cases, addrs, strict=True):
        mem[a:a + len(data)] = data
    big = np.zeros((200, 64), np.int8)      # the dropped job: many words, several chunks
    big_data = ml.pack_weights(big, rows=cols, cols=cols, bus_bytes=D)
    mem[0x3000:0x3000 + len(big_data)] = big_data
    dut = weight_feeder(cols, bus_bits)
    prng = random.Random(7)
    client = ReadClient(dut.dma, mem, D, prng, gap=0.2, errors=[(addrs[1], addrs[1] + 4)])
    got, errs = [], []
    gate = {"open": True}

    def jobs_of(idx):
        return ([dict(addr=addrs[i], words=len(cases[i][0]) // D) for i in idx],
                [dict(beats=len(cases[i][1]), w16=0, kv=0) for i in idx])

    async def main(ctx):
        rj, j = jobs_of([0, 1])
        ctx.set(dut.req_job.payload.addr, 0)
        await drive_jobs(ctx, dut.req_job, rj)
        await drive_jobs(ctx, dut.job, j, (dut.err.axi,), errs)
        # a job that never starts (the engine takes none of its beats): its requests go out, a
        # few words come back, then the flush
        gate["open"] = False
        ctx.set(dut.req_job.payload.addr, 0x3000)
        ctx.set(dut.req_job.payload.words, len(big_data) // D)
        ctx.set(dut.req_job.valid, 1)
        ctx.set(dut.job.payload.beats, ml.weight_beats(200, 64, rows=cols, cols=cols))
        ctx.set(dut.job.payload.w16, 0)
        ctx.set(dut.job.payload.kv, 0)
        ctx.set(dut.job.valid, 1)
        await ctx.tick().repeat(40)
        assert not ctx.get(dut.quiet)
        ctx.set(dut.flush, 1)
        ctx.set(dut.req_flush, 1)
        for _ in range(5000):
            if (await ctx.tick().sample(dut.quiet))[2]:
                break
        else:
            raise TimeoutError("the flushed feeder never became quiet")
        assert len(client.requests) >= 4 and sum(b for a, b in client.requests if a >= 0x3000) < len(big_data) // D
        ctx.set(dut.req_job.valid, 0)
        ctx.set(dut.job.valid, 0)
        ctx.set(dut.flush, 0)
        ctx.set(dut.req_flush, 0)
        gate["open"] = True
        await ctx.tick()
        rj, j = jobs_of([2, 3])
        await drive_jobs(ctx, dut.req_job, rj)
        await drive_jobs(ctx, dut.job, j, (dut.err.axi,), errs)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(client.run, background=True)
    sim.add_testbench(process(sink, dut.w, got, prng, 0.3, gate), background=True)
    sim.add_testbench(main)
    sim.run()
    assert [e for e, in errs] == [0, 1, 0, 0]
    want = [beat_int(b) for i in (0, 1, 2, 3) for b in cases[i][1]]
    # job 1's words answered SLVERR: the model returns the memory anyway, so its beats are still given
    assert got[:len(want)] == want and len(got) == len(want)


@pytest.mark.parametrize("cols,bus_bits", [(2, 32), (8, 128), (2, 256)])
def test_param_feeder_turns_records_into_parameter_beats_and_skips_instructions_without_them(cols, bus_bits):
    seed = 31 + cols + bus_bits
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    D = bus_bits // 8
    rec = ml.param_beat_bytes(cols, D)
    mem = bytearray(1 << 15)
    req_jobs, jobs, want = [], [], []
    addr = 0x40
    for i in range(6):
        if i % 3 == 2:      # an instruction without parameters
            req_jobs.append(dict(addr=0, words=0))
            jobs.append(dict(beats=0))
            continue
        n = int(rng.integers(1, 4 * cols))
        bias = rng.integers(-(1 << 31), 1 << 31, n).astype(np.int32)
        mult = rng.integers(0, 1 << 31, n)
        shift = rng.integers(1, 63, n)
        data = ml.pack_params(n, cols=cols, bus_bytes=D, bias=bias, multiplier=mult, shift=shift)
        assert len(data) == ml.param_bytes(n, cols=cols, bus_bytes=D)
        mem[addr:addr + len(data)] = data
        req_jobs.append(dict(addr=addr, words=len(data) // D))
        jobs.append(dict(beats=len(data) // rec))
        for t in range(len(data) // rec):
            r = data[t * rec:t * rec + 9 * cols]
            b = np.frombuffer(r[:4 * cols], "<i4")
            assert np.array_equal(b[:max(0, min(cols, n - t * cols))], bias[t * cols:(t + 1) * cols])
            want.append(int.from_bytes(r, "little"))
        addr += len(data) + D
    dut = ParamFeeder(cols=cols, bus_bits=bus_bits, addr_width=ADDR, beats_width=8, words_width=16,
                      job_beats_width=8, record_bytes=rec)
    prng = random.Random(seed)
    client = ReadClient(dut.dma, mem, D, prng, gap=0.3)
    got, done = [], []
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(client.run, background=True)
    sim.add_testbench(process(drive_jobs, dut.req_job, req_jobs), background=True)
    sim.add_testbench(process(sink, dut.p, got, prng, 0.3), background=True)
    sim.add_testbench(process(drive_jobs, dut.job, jobs, (dut.err.axi,), done))
    sim.run()
    assert len(done) == len(jobs) and got == want
