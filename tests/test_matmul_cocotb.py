"""The matmul engine in Verilator (through sim.run_matmul / sim.matmul_api.run_jobs, the same path
engineers use), bit-exact against golden.matmul_int8, golden.matmul_bf16 and golden.requantize.

Builds: ``tiny`` (2×2) for most tests, a 4×4 configuration and ``default`` (8×8) for the
array-size independence of bf16 results and the integration test. Every random test prints its
seed; the stream tests run with and without random valid gaps and ready backpressure."""

import ml_dtypes
import numpy as np
import pytest

import golden
from hdl.config import get_config
from sim import run_matmul
from sim.matmul_api import empty_job, prepare_job, run_jobs
from spec.codes import MatmulStatus as Status
from spec.codes import OutFormat

BF16 = ml_dtypes.bfloat16
TINY = get_config("tiny")
MM4X4 = TINY.replace(name="mm4x4", array={"rows": 4, "cols": 4})
STREAM_MODES = [(0.0, 0.0), (0.3, 0.4)]
STREAM_IDS = ["no_stalls", "stalls_and_backpressure"]

# shapes with 1, primes and non-multiples of R and C (2×2 and 4×4 arrays); the last one has a
# single activation word (M = 1, one K tile), read again for each of its N tiles
SHAPES = [(1, 1, 1), (1, 7, 5), (3, 1, 2), (5, 3, 7), (2, 13, 11), (17, 4, 3), (7, 9, 1), (4, 6, 8),
          (1, 2, 5)]


def _bf16_values(rng, shape, special_rate=0.0):
    v = rng.standard_normal(shape).astype(BF16).view(np.uint16)
    if special_rate:
        special = np.array([0x7FC0, 0xFFC1, 0x7F80, 0xFF80, 0x0001, 0x807F, 0x0000, 0x8000, 0x7F7F,
                            0xFF7F, 0x0080, 0x8080], np.uint16)
        pick = rng.random(shape) < special_rate
        v[pick] = rng.choice(special, int(pick.sum()))
    return v.view(BF16)


def _job_set(rng, R, C, special_rate=0.0):
    """(jobs, expected lanes) covering both data types, every output format, bias, unsigned
    activations, every weight format and interleaves of 1 to 5 N tiles, on the shapes above."""
    jobs, expect = [], []
    from hdl.matmul import MatmulEngine
    acc_depth = MatmulEngine.buffer_sizes(TINY)[0]
    for i, (M, K, N) in enumerate(SHAPES):
        # G − 1 of the int8 and the bf16 job, with G·M ≤ acc_depth
        il8, il16 = (min(x, acc_depth // M - 1) for x in ((3 * i) % 5, (2 * i + 1) % 4))
        transposed = bool(i % 2)
        wide = i % 4 == 2             # int8 weights two rows per beat (two int8 per lane)
        # int8: signed or unsigned activations, int32 or requantized int8 output, bias or not
        unsigned = i % 3 == 1
        a = (rng.integers(0, 256, (M, K)).astype(np.uint8) if unsigned
             else rng.integers(-128, 128, (M, K)).astype(np.int8))
        w = rng.integers(-128, 128, (K, N)).astype(np.int8)
        bias = rng.integers(-2**24, 2**24, N).astype(np.int32) if i % 2 == 0 else None
        acc = golden.matmul_int8(a, w, bias)
        if i % 4 in (0, 3):
            mult = rng.integers(0, 2**31, N).astype(np.int64)
            shift = rng.integers(1, 63, N).astype(np.int64)
            shift[: N // 2] = rng.integers(20, 40, N // 2)   # some that do not all saturate
            jobs.append(prepare_job(a, w, rows=R, cols=C, bias=None if bias is None else bias.view(np.uint32),
                                    multiplier=mult.astype(np.uint32), shift=shift.astype(np.uint8),
                                    out_fmt=OutFormat.INT8, a_unsigned=unsigned, w_transposed=transposed,
                                    w_wide=wide, interleave=il8))
            expect.append(golden.requantize(acc, mult, shift).astype(np.int32).view(np.uint32))
        else:
            jobs.append(prepare_job(a, w, rows=R, cols=C, bias=None if bias is None else bias.view(np.uint32),
                                    out_fmt=OutFormat.INT32, a_unsigned=unsigned, w_transposed=transposed,
                                    w_wide=wide, interleave=il8))
            expect.append(acc.view(np.uint32))
        # bf16: fp32 or bf16 output, bias or not
        a = _bf16_values(rng, (M, K), special_rate)
        w = _bf16_values(rng, (K, N), special_rate)
        bias = None
        if i % 3 != 2:
            bias = rng.standard_normal(N).astype(np.float32)
            if special_rate:
                bias[0] = [np.nan, -0.0, 1e-40, np.inf][i % 4]
        acc = golden.matmul_bf16(a, w, bias)
        to_bf16 = i % 2 == 1
        jobs.append(prepare_job(a, w, rows=R, cols=C, bias=None if bias is None else bias.view(np.uint32),
                                out_fmt=OutFormat.BF16 if to_bf16 else OutFormat.FP32, bf16=True,
                                w_transposed=not transposed, interleave=il16))
        expect.append(golden.fp32_to_bf16(acc.view(np.uint32)).astype(np.uint32) if to_bf16
                      else acc.view(np.uint32))
    return jobs, expect


def _check(res, expect):
    """Result lanes (int32, sign-extended int8, fp32 bits, zero-extended bf16 bits) vs golden."""
    for i, exp in enumerate(expect):
        assert res.codes[i] == Status.OK, f"job {i}: status {res.codes[i]}"
        np.testing.assert_array_equal(res.lanes[i], exp, err_msg=f"job {i}")


@pytest.mark.xdist_group("matmul_tiny")
@pytest.mark.parametrize("stall, backpressure", STREAM_MODES, ids=STREAM_IDS)
def test_random_shapes_both_dtypes_all_formats_bit_exact_vs_golden(stall, backpressure):
    seed = 4101
    print(f"seed {seed}, stall {stall}, backpressure {backpressure}")
    rng = np.random.default_rng(seed)
    jobs, expect = _job_set(rng, TINY.array.rows, TINY.array.cols)
    res = run_jobs(jobs, config=TINY, stall=stall, backpressure=backpressure, seed=seed)
    _check(res, expect)
    for job, c in zip(jobs, res.command_counters, strict=True):
        M, K, N = job.cmd["m"], job.cmd["k"], job.cmd["n"]
        kt, nt = -(-K // TINY.array.rows), -(-N // TINY.array.cols)
        assert c["macs"] == M * K * N
        assert c["macs_bf16" if job.cmd["dtype"] else "macs_int8"] == M * K * N
        assert c["rows"] == M * kt * nt
        stalls = sum(c[k] for k in c.dtype.names if k.startswith("stall"))
        assert c["rows"] + stalls <= c["cycles"]
        # the events of one command: busy from the cycle after its accept until its response has
        # been taken (``cycles`` counts one response cycle, busy every one of them)
        assert c["cycles"] <= c["busy"] <= c["cycles"] + 40
        assert c["abuf_writes"] == c["a_beats"] == M * kt
        assert c["o_beats"] == M * nt and c["weight_loads"] == kt * nt
        assert c["acc_writes"] == M * kt * nt
        assert c["acc_reads"] == M * (kt - 1) * nt + M * nt
    # the run's counters are the sums of the commands'
    for name in res.counters:
        assert res.counters[name] == res.command_counters[name].sum(), name


@pytest.mark.xdist_group("matmul_tiny")
def test_bf16_special_values_nan_inf_subnormal_negzero_cancellation_bit_exact():
    seed = 4102
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    jobs, expect = _job_set(rng, TINY.array.rows, TINY.array.cols, special_rate=0.2)
    jobs, expect = [j for j in jobs if j.cmd["dtype"]], [e for j, e in zip(jobs, expect, strict=True)
                                                          if j.cmd["dtype"]]
    # cancellation: x·1 + (−x)·1 = +0; −0 sums: (−0)·1 + (−0)·1 = −0; rows that overflow to Inf
    a = np.array([[3.0, -3.0, 1.0], [-0.0, -0.0, -0.0], [3e38, 3e38, -1.0], [1e-39, 1e-39, 0]], BF16)
    w = np.array([[1.0, 1.0], [1.0, 1.0], [0.0, -0.0]], BF16)
    for bias in (None, np.array([-0.0, 1.5], np.float32)):
        jobs.append(prepare_job(a, w, rows=2, cols=2, bias=None if bias is None else bias.view(np.uint32),
                                out_fmt=OutFormat.FP32, bf16=True))
        expect.append(golden.matmul_bf16(a, w, bias).view(np.uint32))
    res = run_jobs(jobs, config=TINY, stall=0.2, backpressure=0.2, seed=seed)
    _check(res, expect)
    assert res.lanes[-2][0, 0] == 0            # 3 − 3 + 0 = +0
    assert res.lanes[-1][1, 0] == 0x80000000   # −0 bias + (−0) + (−0) + (−0) = −0


@pytest.mark.xdist_group("matmul_tiny")
def test_int8_extremes_wrap_and_requant_saturation_bit_exact():
    seed = 4103
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    jobs, expect = [], []
    K = 64
    for a_val, w_val, bias_val, unsigned in ((-128, -128, 2**31 - 2**20, False), (127, -128, -2**31, False),
                                             (255, 127, 2**31 - 1, True), (255, -128, 0, True)):
        a = np.full((3, K), a_val, np.uint8 if unsigned else np.int8)
        w = np.full((K, 5), w_val, np.int8)
        w[:, 1] = rng.integers(-128, 128, K)
        bias = np.full(5, bias_val, np.int32)
        jobs.append(prepare_job(a, w, rows=2, cols=2, bias=bias.view(np.uint32), out_fmt=OutFormat.INT32,
                                a_unsigned=unsigned))
        expect.append(golden.matmul_int8(a, w, bias).view(np.uint32))   # wraps mod 2**32
        mult = np.array([2**31 - 1, 0, 1, 2**30, 12345], np.int64)
        shift = np.array([1, 62, 1, 31, 16], np.int64)
        jobs.append(prepare_job(a, w, rows=2, cols=2, bias=bias.view(np.uint32), out_fmt=OutFormat.INT8,
                                multiplier=mult.astype(np.uint32), shift=shift.astype(np.uint8),
                                a_unsigned=unsigned, w_transposed=True))
        expect.append(golden.requantize(golden.matmul_int8(a, w, bias), mult, shift)
                      .astype(np.int32).view(np.uint32))
    _check(run_jobs(jobs, config=TINY, seed=seed), expect)


@pytest.mark.xdist_group("matmul_tiny")
def test_command_sent_while_busy_waits_and_bad_commands_get_error_codes_without_disturbing_others():
    seed = 4104
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    good, expect = _job_set(rng, 2, 2)
    good, expect = good[4:11], expect[4:11]
    R, C = TINY.array.rows, TINY.array.cols
    from hdl.matmul import MatmulEngine
    acc_depth, a_depth = MatmulEngine.buffer_sizes(TINY)
    a1 = np.ones((1, 1), np.int8)
    bad = [
        (dict(m=0, k=3, n=3, dtype=0, out_fmt=0), Status.ZERO_DIM),
        (dict(m=acc_depth + 1, k=1, n=1, dtype=0, out_fmt=0), Status.M_TOO_LARGE),
        (dict(m=acc_depth, k=R * (a_depth // acc_depth + 1), n=1, dtype=0, out_fmt=0), Status.A_TOO_LARGE),
        (dict(m=1, k=1, n=1, dtype=1, out_fmt=OutFormat.INT8), Status.BAD_FORMAT),
        (dict(m=1, k=1, n=1, dtype=0, out_fmt=OutFormat.BF16), Status.BAD_FORMAT),
        (dict(m=1, k=3, n=3, dtype=1, out_fmt=OutFormat.FP32, w_wide=1), Status.BAD_W_FORMAT),
        (dict(m=1, k=3, n=3, dtype=0, out_fmt=OutFormat.INT32, w_transposed=1, w_wide=1), Status.BAD_W_FORMAT),
    ]
    jobs, want = [], []
    for i, job in enumerate(good):
        jobs.append(job)
        want.append((Status.OK, expect[i]))
        cmd, code = bad[i % len(bad)]
        jobs.append(empty_job(cmd, R, C))
        want.append((code, None))
    jobs.append(empty_job(bad[4][0], R, C))
    want.append((bad[4][1], None))
    # G·M > acc_depth with G = 2 (G·M = acc_depth runs: the last good job below)
    jobs.append(empty_job(dict(m=acc_depth // 2 + 1, k=3, n=5, dtype=0, out_fmt=0, interleave=1), R, C))
    want.append((Status.GROUP_TOO_LARGE, None))
    # a requant shift of 0 is answered BAD_REQUANT after the run (the stream is still consumed)
    bad_rq = prepare_job(a1, np.ones((1, 1), np.int8), rows=R, cols=C, out_fmt=OutFormat.INT8,
                         multiplier=np.array([1], np.uint32), shift=np.array([0], np.uint8))
    jobs.append(bad_rq)
    want.append((Status.BAD_REQUANT, None))
    # ... and so is a multiplier ≥ 2**31 in the last column of the second N tile
    n2 = C + 2
    bad_rq2 = prepare_job(a1, np.ones((1, n2), np.int8), rows=R, cols=C, out_fmt=OutFormat.INT8,
                          multiplier=np.array([1] * (n2 - 1) + [1 << 31], np.uint32),
                          shift=np.ones(n2, np.uint8))
    jobs.append(bad_rq2)
    want.append((Status.BAD_REQUANT, None))
    jobs.append(good[0])
    want.append((Status.OK, expect[0]))
    a_full = rng.integers(-128, 128, (acc_depth // 2, 3)).astype(np.int8)
    w_full = rng.integers(-128, 128, (3, 5)).astype(np.int8)
    jobs.append(prepare_job(a_full, w_full, rows=R, cols=C, out_fmt=OutFormat.INT32, interleave=1))
    want.append((Status.OK, golden.matmul_int8(a_full, w_full).view(np.uint32)))
    res = run_jobs(jobs, config=TINY, stall=0.2, backpressure=0.2, seed=seed)
    for i, (code, exp) in enumerate(want):
        assert res.codes[i] == code, f"command {i}: status {res.codes[i]}, expected {code}"
        if exp is not None:
            np.testing.assert_array_equal(res.lanes[i], exp, err_msg=f"command {i}")
    # busy rule: every command was accepted only after the one before had answered
    accepted, cycles = res.cmd_cycles, res.command_counters["cycles"]
    for i in range(1, len(jobs)):
        assert accepted[i] > accepted[i - 1] + cycles[i - 1], f"command {i}"


@pytest.mark.xdist_group("matmul_tiny_ecp5")
def test_ecp5_dsp_build_gives_the_generic_builds_results_and_cycle_counts():
    """dsp="ecp5" (every multiplier a MULT18X18D instance, simulated with
    sim/models/ecp5_mult18x18d.v) against golden, and cycle for cycle against the generic build
    on the same stimulus, stalls and backpressure included."""
    seed = 4108
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    jobs, expect = _job_set(rng, TINY.array.rows, TINY.array.cols, special_rate=0.1)
    ecp5 = TINY.replace(name="tiny_ecp5", array={"dsp": "ecp5"})
    got = run_jobs(jobs, config=ecp5, stall=0.3, backpressure=0.4, seed=seed)
    _check(got, expect)
    ref = run_jobs(jobs, config=TINY, stall=0.3, backpressure=0.4, seed=seed)
    np.testing.assert_array_equal(got.command_counters, ref.command_counters)
    for name in ("cmd", "a", "w", "p", "o", "resp"):
        np.testing.assert_array_equal(getattr(got, f"{name}_cycles"), getattr(ref, f"{name}_cycles"), err_msg=name)


@pytest.mark.xdist_group("matmul_default")
def test_bf16_results_identical_on_2x2_4x4_and_8x8_arrays():
    seed = 4105
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    M, K, N = 9, 37, 19
    a = _bf16_values(rng, (M, K), 0.05)
    w = _bf16_values(rng, (K, N), 0.05)
    # wide dynamic range so the summation order matters (large values may become ±Inf on purpose)
    with np.errstate(over="ignore"):
        a = (a.astype(np.float32) * np.exp2(rng.integers(-20, 20, (M, K)))).astype(BF16)
    bias = rng.standard_normal(N).astype(np.float32)
    expect = golden.matmul_bf16(a, w, bias).view(np.uint32)
    for config in (TINY, MM4X4, get_config("default")):
        got = run_matmul(a, w, bias=bias, config=config, seed=seed).output
        np.testing.assert_array_equal(got.view(np.uint32), expect, err_msg=config.name)


@pytest.mark.xdist_group("matmul_default")
@pytest.mark.parametrize("stall, backpressure", STREAM_MODES, ids=STREAM_IDS)
def test_default_8x8_integration_int8_requant_wide_weights_and_bf16_transposed_weights(stall, backpressure):
    seed = 4106
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    M, K, N = 24, 70, 45
    a = rng.integers(-128, 128, (M, K)).astype(np.int8)
    w = rng.integers(-128, 128, (K, N)).astype(np.int8)
    bias = rng.integers(-5000, 5000, N).astype(np.int32)
    mult = rng.integers(2**29, 2**30, N)
    shift = rng.integers(36, 42, N)
    res = run_matmul(a, w, bias=bias, requant=(mult, shift), config="default",
                     stall=stall, backpressure=backpressure, seed=seed, w_orientation="columns")
    np.testing.assert_array_equal(res.output, golden.requantize(golden.matmul_int8(a, w, bias), mult, shift))
    assert res.interleave[0] > 0            # M = 24 < the dependency latency: N tiles interleaved
    assert res.counters["macs_int8"] == M * K * N and res.counters["macs_bf16"] == 0
    assert res.seed == seed and list(res.codes) == [Status.OK]
    assert len(res.a_cycles) == M * -(-K // 8) and len(res.o_cycles) == M * -(-N // 8)
    # wide int8 weight beats: two W rows per beat, half the beats of the row format
    res = run_matmul(a, w, bias=bias, config="default", stall=stall, backpressure=backpressure,
                     seed=seed, w_orientation="wide_rows")
    np.testing.assert_array_equal(res.output, golden.matmul_int8(a, w, bias))
    kt, nt = -(-K // 8), -(-N // 8)
    assert res.counters["w_beats"] == len(res.w_cycles) == nt * sum(-(-min(8, K - 8 * i) // 2) for i in range(kt))
    ab = _bf16_values(rng, (M, K))
    wb = _bf16_values(rng, (K, N))
    res = run_matmul(ab, wb, out_dtype=BF16, config="default", stall=stall,
                     backpressure=backpressure, seed=seed, w_orientation="columns")
    np.testing.assert_array_equal(res.output.view(np.uint16),
                                  golden.fp32_to_bf16(golden.matmul_bf16(ab, wb).view(np.uint32)))
    assert res.counters["macs_bf16"] == M * K * N
    assert res.utilization == M * K * N / (64 * res.command_counters["cycles"].sum())


_I8 = np.zeros((2, 3), np.int8)
_W8 = np.zeros((3, 4), np.int8)
_B16 = np.zeros((2, 3), BF16)
_WB16 = np.zeros((3, 4), BF16)


@pytest.mark.parametrize("args, kwargs, message", [
    ((np.zeros((2, 3), np.float32), _W8), {}, "a must be int8, uint8 or bfloat16"),
    ((_I8, _WB16), {}, "w must be int8"),
    ((_B16, _W8), {}, "w must be bfloat16"),
    ((np.zeros(3, np.int8), _W8), {}, r"a must be 2-D \[M, K\]"),
    ((_I8, np.zeros((4, 4), np.int8)), {}, "K differs"),
    ((np.zeros((0, 3), np.int8), _W8), {}, "M must be in 1..65535"),
    ((_I8, _W8), dict(bias=np.zeros(4, np.int64)), "bias must be int32"),
    ((_B16, _WB16), dict(bias=np.zeros(4, np.int32)), "bias must be float32"),
    ((_I8, _W8), dict(bias=np.zeros(5, np.int32)), r"bias must have shape \[N\] = \[4\]"),
    ((_I8, _W8), dict(requant=(np.ones(4), np.ones(4, int))), "multiplier must be integers"),
    ((_I8, _W8), dict(requant=(np.ones(4, int), np.zeros(4, int))), "shift must be in 1..62"),
    ((_I8, _W8), dict(requant=(np.full(4, 2**31), np.ones(4, int))), r"multiplier must be in 0..2147483647"),
    ((_I8, _W8), dict(requant=(np.ones(4, int), np.ones(4, int)), out_dtype="int32"), "out_dtype is int32"),
    ((_I8, _W8), dict(out_dtype="int8"), "needs requant"),
    ((_B16, _WB16), dict(out_dtype="int32"), "out_dtype must be one of"),
    ((_B16, _WB16), dict(requant=(np.ones(4, int), np.ones(4, int))), "int8 mode only"),
    ((_I8, _W8), dict(stall=1.0), "stall must be a probability"),
    ((_I8, _W8), dict(backpressure=-0.1), "backpressure must be a probability"),
    ((_I8, _W8), dict(w_orientation="diagonal"), "w_orientation must be 'rows', 'columns' or 'wide_rows'"),
    ((_I8, _W8), dict(interleave=16), "interleave must be None or an int in 0..15, not 16"),
    ((_I8, _W8), dict(interleave=1.0), "interleave must be None or an int in 0..15"),
    ((_B16, _WB16), dict(w_orientation="wide_rows"), "two int8 weights per lane: int8 mode only"),
    ((_I8, _W8), dict(config="huge"), "unknown CONFIG 'huge'"),
    (([[1]], _W8), {}, "a must be a numpy array"),
])
def test_run_matmul_rejects_bad_input_naming_the_problem(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        run_matmul(*args, **kwargs)


def test_run_matmul_rejects_k_too_long_for_the_activation_buffer():
    from hdl.matmul import MatmulEngine
    _, a_depth = MatmulEngine.buffer_sizes(TINY)
    K = TINY.array.rows * (a_depth + 1)
    with pytest.raises(ValueError, match="activation words per row"):
        run_matmul(np.zeros((1, K), np.int8), np.zeros((K, 1), np.int8), config="tiny")


@pytest.mark.xdist_group("matmul_tiny")
def test_run_matmul_splits_m_into_commands_that_fit_the_buffers():
    from hdl.matmul import MatmulEngine
    seed = 4107
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    acc_depth, a_depth = MatmulEngine.buffer_sizes(TINY)
    M, K, N = acc_depth + 6, 70, 3           # M over acc_depth, and K limits the rows per command
    rows_per_cmd = min(acc_depth, a_depth // -(-K // TINY.array.rows))
    a = rng.integers(-128, 128, (M, K)).astype(np.int8)
    w = rng.integers(-128, 128, (K, N)).astype(np.int8)
    res = run_matmul(a, w, config=TINY, seed=seed, stall=0.1, backpressure=0.1)
    np.testing.assert_array_equal(res.output, golden.matmul_int8(a, w))
    assert len(res.codes) == len(res.command_counters) == -(-M // rows_per_cmd) == 2
    assert res.command_counters["macs"].sum() == res.counters["macs_int8"] == M * K * N
