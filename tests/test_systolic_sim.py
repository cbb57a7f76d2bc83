# amaranth: UnusedElaboratable=no
"""amaranth.sim tests of the systolic array alone (no engine): the required sizes elaborate and
compute small int8 and bf16 matmuls bit-exactly (special values included), rows choose their
weight slot, a slot may be rewritten exactly ``weight_hold`` cycles after its last row entered,
and the parameters are validated.

Cost: building the Python simulation grows with R·C (about 75 s for 16×16), so 16×16 runs one
small matmul per data type; 8×8 is the default configuration, tested through the whole engine in
Verilator (tests/test_matmul_cocotb.py)."""

import ml_dtypes
import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.sim import Simulator

import golden
from hdl.systolic import ProcessingElement, SystolicArray

SIZES = [(2, 2), (4, 4), (4, 8), (8, 8), (16, 16)]
SIM_SIZES = [(2, 2, "full"), (4, 4, "full"), (4, 8, "full"), (16, 16, "small")]


def _bf16_specials(rng, shape):
    """bf16 values with ordinary numbers plus NaN, ±Inf, subnormals, ±0 and huge/tiny ones."""
    vals = rng.standard_normal(shape).astype(ml_dtypes.bfloat16).view(np.uint16)
    special = np.array([0x7FC0, 0x7F80, 0xFF80, 0x0001, 0x8003, 0x0000, 0x8000, 0x7F7F, 0x0080],
                       np.uint16)
    pick = rng.random(shape) < 0.15
    vals[pick] = rng.choice(special, pick.sum())
    return vals


def _run_array(R, C, jobs, seed, overwrite_after=None):
    """Feed each job's rows through one R×C array; job = dict(bf16, a_unsigned, w[R, C] lanes,
    a[M, R] lanes, psum[M, C] bits, slot). Each group of jobs (consecutive ones of one data type)
    writes its tiles into their slots, one cycle each, and its rows enter interleaved from the
    cycle after the last write; the array is drained before the data type changes. With
    ``overwrite_after`` = "hold" (or "hold-1"), every slot of a group is overwritten with other
    weights ``weight_hold`` (int8: ``int8_weight_hold``) cycles (one fewer) after the last row
    using it entered.
    Returns the result rows per job; checks that every result comes out exactly ``latency``
    (bf16) or ``int8_latency`` (int8) cycles after its row entered, and that the copies of
    ``o_valid`` and ``o_tag`` equal them in every cycle."""
    dut = SystolicArray(rows=R, cols=C, tag_width=16, out_copies=3)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    outputs = {}
    entered = {}
    now = [0]
    overwrites = {}     # cycle → slot

    async def tick(ctx):
        await ctx.tick()
        now[0] += 1
        await _collect(ctx)

    async def write(ctx, slot, tile):
        ctx.set(dut.w_data, [int(x) for x in tile.reshape(-1)])
        ctx.set(dut.w_slot, [slot] * R)
        ctx.set(dut.w_en, (1 << (R * C)) - 1)

    async def bench(ctx):
        for group in _groups(jobs):
            for i in group:
                await write(ctx, jobs[i]["slot"], jobs[i]["w"])
                await tick(ctx)
            ctx.set(dut.w_en, 0)
            ctx.set(dut.bf16, jobs[group[0]]["bf16"])
            ctx.set(dut.a_unsigned, jobs[group[0]]["a_unsigned"])
            hold = dut.weight_hold if jobs[group[0]]["bf16"] else dut.int8_weight_hold
            # interleave the rows of the jobs of this group, so consecutive rows use other slots
            order = [(i, r) for r in range(max(len(jobs[i]["a"]) for i in group)) for i in group
                     if r < len(jobs[i]["a"])]
            last_use = {}
            for i, r in order:
                ctx.set(dut.valid, 1)
                ctx.set(dut.a, [int(x) for x in jobs[i]["a"][r]])
                ctx.set(dut.psum, [int(x) for x in jobs[i]["psum"][r]])
                ctx.set(dut.slot, jobs[i]["slot"])
                ctx.set(dut.tag, i * 256 + r)
                entered[i * 256 + r] = now[0]
                last_use[jobs[i]["slot"]] = now[0]
                await tick(ctx)
            ctx.set(dut.valid, 0)
            if overwrite_after is not None:
                d = hold - (overwrite_after == "hold-1")
                overwrites.update({t + d: slot for slot, t in last_use.items()})
            for _ in range(dut.latency + 1):
                slot = overwrites.get(now[0])
                if slot is not None:
                    await write(ctx, slot, np.full((R, C), 0x3F80 if jobs[group[0]]["bf16"] else 0x0077))
                await tick(ctx)
                ctx.set(dut.w_en, 0)

    async def _collect(ctx):
        for i in range(2):
            assert ctx.get(dut.o_valid_x[i]) == ctx.get(dut.o_valid), f"o_valid copy {i + 1}"
            assert ctx.get(dut.o_tag_x[i]) == ctx.get(dut.o_tag), f"o_tag copy {i + 1}"
        if ctx.get(dut.o_valid):
            tag = ctx.get(dut.o_tag)
            latency = dut.latency if jobs[tag // 256]["bf16"] else dut.int8_latency
            assert now[0] - entered[tag] == latency, f"row {tag % 256} of job {tag // 256}"
            res = ctx.get(dut.result)
            outputs.setdefault(tag // 256, {})[tag % 256] = [int(res[n]) for n in range(C)]

    sim.add_testbench(bench)
    sim.run()
    return [np.array([outputs[i][r] for r in range(len(job["a"]))], np.uint32)
            for i, job in enumerate(jobs)]


def _groups(jobs):
    """Consecutive jobs of the same data type."""
    groups, cur = [], []
    for i, job in enumerate(jobs):
        if cur and (jobs[cur[0]]["bf16"] != job["bf16"] or jobs[cur[0]]["a_unsigned"] != job["a_unsigned"]):
            groups.append(cur)
            cur = []
        cur.append(i)
    groups.append(cur)
    return groups


def _jobs(rng, R, C, full):
    """int8 (signed and unsigned activations) and bf16 jobs with special values, each in a slot of
    its own, and their expected results."""
    M = 3 if full else 2
    jobs, expect = [], []
    # int8, signed and unsigned activations
    for slot, unsigned in ((0, False), (5, False), (15, True)) if full else ((0, False),):
        a = (rng.integers(0, 256, (M, R)).astype(np.uint8) if unsigned
             else rng.integers(-128, 128, (M, R)).astype(np.int8))
        w = rng.integers(-128, 128, (R, C)).astype(np.int8)
        acc = rng.integers(-2**31, 2**31, (M, C)).astype(np.int32)
        lanes = a.astype(np.uint16) if unsigned else a.astype(np.int16).view(np.uint16)
        jobs.append(dict(bf16=0, a_unsigned=int(unsigned), slot=slot, a=lanes,
                         w=w.astype(np.int16).view(np.uint16), psum=acc.view(np.uint32)))
        exp = np.stack([golden.matmul_int8(a[i:i + 1], w, acc[i]) for i in range(M)])[:, 0, :]
        expect.append(exp.view(np.uint32))
    # bf16 with special values, starting from fp32 partial sums (some special too)
    for slot in (1, 2) if full else (1,):
        a = _bf16_specials(rng, (M, R))
        w = _bf16_specials(rng, (R, C))
        acc = golden.bf16_to_fp32_bits(_bf16_specials(rng, (M, C)))
        jobs.append(dict(bf16=1, a_unsigned=0, slot=slot, a=a, w=w, psum=acc))
        exp = np.stack([golden.matmul_bf16(a[i:i + 1].view(ml_dtypes.bfloat16), w.view(ml_dtypes.bfloat16),
                                           acc[i].view(np.float32)) for i in range(M)])[:, 0, :]
        expect.append(exp.view(np.uint32))
    return jobs, expect


@pytest.mark.parametrize("R, C, extent", SIM_SIZES, ids=[f"{r}x{c}" for r, c, _ in SIM_SIZES])
def test_array_computes_int8_and_bf16_matmuls_bit_exact(R, C, extent):
    seed = 1000 * R + C
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    jobs, expect = _jobs(rng, R, C, extent == "full")
    got = _run_array(R, C, jobs, seed)
    for i, (g, e) in enumerate(zip(got, expect, strict=True)):
        np.testing.assert_array_equal(g, e, err_msg=f"job {i} ({'bf16' if jobs[i]['bf16'] else 'int8'})")


def test_a_slot_may_be_overwritten_weight_hold_cycles_after_its_last_row_entered_and_not_earlier():
    """Slots written again exactly ``weight_hold`` (int8: ``int8_weight_hold``) cycles after the
    last row using them entered leave every result intact; one cycle earlier the last PE,
    PE(R − 1, C − 1), reads the new weight: the hold is the least that works."""
    R, C = 3, 2
    seed = 1302
    print(f"seed {seed}")
    jobs, expect = _jobs(np.random.default_rng(seed), R, C, True)
    got = _run_array(R, C, jobs, seed, overwrite_after=None)
    for i, (g, e) in enumerate(zip(got, expect, strict=True)):
        np.testing.assert_array_equal(g, e, err_msg=f"job {i} without overwrites")
    arr = SystolicArray(rows=R, cols=C)
    assert arr.weight_hold > arr.int8_weight_hold
    got = _run_array(R, C, jobs, seed, overwrite_after="hold")
    for i, (g, e) in enumerate(zip(got, expect, strict=True)):
        np.testing.assert_array_equal(g, e, err_msg=f"job {i}, slots overwritten at the hold")
    got = _run_array(R, C, jobs, seed, overwrite_after="hold-1")
    for i, (g, e) in enumerate(zip(got, expect, strict=True)):
        last = len(jobs[i]["a"]) - 1
        # only the last row of each job, and only in the last column, can have read the new weight
        np.testing.assert_array_equal(g[:last], e[:last], err_msg=f"job {i}")
        np.testing.assert_array_equal(g[last, :C - 1], e[last, :C - 1], err_msg=f"job {i}")
    assert any(g[-1, C - 1] != e[-1, C - 1] for g, e in zip(got, expect, strict=True))


def test_array_4x8_converts_to_verilog():
    text = verilog.convert(SystolicArray(rows=4, cols=8, tag_width=4), name="systolic_4x8", emit_src=False)
    assert "module systolic_4x8" in text


@pytest.mark.parametrize("R, C", SIZES, ids=[f"{r}x{c}" for r, c in SIZES])
def test_array_latency_and_weight_hold_follow_the_pe_pipeline(R, C):
    arr = SystolicArray(rows=R, cols=C, tag_width=4)
    pe = ProcessingElement()
    assert arr.latency == pe.mul_latency + R * pe.latency + C
    assert arr.weight_hold == (R - 1) * pe.latency + C
    # int8 partial sums skip the fp32 adder's depth
    assert pe.int8_latency == arr.pe_int8_latency == 2 < pe.latency
    assert arr.int8_latency == pe.mul_latency + R * pe.int8_latency + C
    assert arr.int8_weight_hold == (R - 1) * pe.int8_latency + C


@pytest.mark.parametrize("kwargs, message", [
    (dict(rows=1, cols=4), "rows must be in 2..64"),
    (dict(rows=4, cols=65), "cols must be in 2..64"),
    (dict(rows=4.0, cols=4), "rows must be an int"),
    (dict(rows=4, cols=4, tag_width=-1), "tag_width must be an int in 0..64"),
    (dict(rows=4, cols=4, add_stages=0), "add_stages must be in 1..6"),
    (dict(rows=4, cols=4, add_stages=7), "add_stages must be in 1..6"),
    (dict(rows=4, cols=4, mul_stages=3), "mul_stages must be in 1..2"),
    (dict(rows=4, cols=4, dsp="xilinx"), "dsp must be one of 'generic', 'ecp5', not 'xilinx'"),
    (dict(rows=4, cols=4, out_copies=0), "out_copies must be an int in 1..8"),
    (dict(rows=4, cols=4, out_copies=9), "out_copies must be an int in 1..8"),
    (dict(rows=4, cols=4, slots=12), "slots must be a power of two in 2..64, not 12"),
    (dict(rows=4, cols=4, slots=1), "slots must be a power of two in 2..64, not 1"),
])
def test_array_rejects_bad_parameters_naming_them(kwargs, message):
    with pytest.raises((TypeError, ValueError), match=message):
        SystolicArray(**kwargs)


def test_engine_4x2_more_rows_than_columns_loads_transposed_tiles_in_chunks():
    """The engine in amaranth.sim with R > C: a transposed weight column takes ceil(R/C) = 2
    beats. int8 (requantized) and bf16 (bias) results bit-exact, both orientations."""
    from hdl.matmul import MatmulEngine, command_layout, response_layout
    from sim.amaranth_streams import random_pause, stream_sink, stream_source
    from sim.matmul_api import prepare_job
    from sim.packing import pack_fields, pack_lanes, rows_to_words, unpack_fields, unpack_lanes
    from spec.codes import MatmulStatus as Status
    from spec.codes import OutFormat

    seed = 4201
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    R, C = 4, 2
    M, K, N = 3, 7, 3
    jobs, expect = [], []
    a = rng.integers(-128, 128, (M, K)).astype(np.int8)
    w = rng.integers(-128, 128, (K, N)).astype(np.int8)
    mult, shift = rng.integers(2**29, 2**30, N), rng.integers(14, 18, N)
    for transposed in (True, False):
        jobs.append(prepare_job(a, w, rows=R, cols=C, multiplier=mult.astype(np.uint32),
                                shift=shift.astype(np.uint8), out_fmt=OutFormat.INT8, w_transposed=transposed))
        expect.append(golden.requantize(golden.matmul_int8(a, w), mult, shift).astype(np.int32).view(np.uint32))
    ab = _bf16_specials(rng, (M, K)).view(ml_dtypes.bfloat16)
    wb = _bf16_specials(rng, (K, N)).view(ml_dtypes.bfloat16)
    bias = rng.standard_normal(N).astype(np.float32)
    jobs.append(prepare_job(ab, wb, rows=R, cols=C, bias=bias.view(np.uint32), out_fmt=OutFormat.FP32,
                            bf16=True, w_transposed=True))
    expect.append(golden.matmul_bf16(ab, wb, bias).view(np.uint32))

    dut = MatmulEngine(rows=R, cols=C, acc_depth=4, a_depth=16)
    streams = {
        "cmd": [pack_fields(command_layout(), j.cmd) for j in jobs],
        "a": pack_lanes(np.concatenate([j.a_beats for j in jobs]), 16),
        "w": pack_lanes(np.concatenate([j.w_beats for j in jobs]), 16),
        "p": rows_to_words(np.concatenate([j.p_beats for j in jobs])),
    }
    n_out = sum(j.o_beats for j in jobs)
    got, resp, macs = [], [], [0]

    async def count_macs(ctx):
        async for _, _, m8, m16 in ctx.tick().sample(dut.events.macs_int8, dut.events.macs_bf16):
            macs[0] += m8 + m16

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for i, name in enumerate(streams):
        sim.add_testbench(stream_source(getattr(dut, name), streams[name], pause=random_pause(0.2, seed + i)),
                          background=True)
    sim.add_testbench(count_macs, background=True)
    sim.add_testbench(stream_sink(dut.o, n_out, got, pause=random_pause(0.3, seed + 10)), background=True)
    sim.add_testbench(stream_sink(dut.resp, len(jobs), resp, timeout_cycles=5000))
    sim.run()
    pos = 0
    lanes_all = unpack_lanes(got, C, 32)
    assert [(w >> (32 * C)) & 1 for w in got] == [int(i == j.o_beats - 1) for j in jobs for i in range(j.o_beats)]
    for i, (job, exp) in enumerate(zip(jobs, expect, strict=True)):
        fields = unpack_fields(response_layout(), resp[i])
        assert fields["code"] == Status.OK, fields
        lanes = lanes_all[pos:pos + job.o_beats]
        pos += job.o_beats
        nt = job.o_beats // M
        lanes = lanes.reshape(nt, M, C).transpose(1, 0, 2).reshape(M, nt * C)[:, :N]
        np.testing.assert_array_equal(lanes, exp, err_msg=f"job {i}")
    assert macs[0] == len(jobs) * M * K * N     # the events port's MACs
