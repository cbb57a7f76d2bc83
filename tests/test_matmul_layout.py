# amaranth: UnusedElaboratable=no
"""spec.matmul_layout: the engine beats it defines are the ones sim.matmul_api.prepare_job gives
the engine (every format, partial tiles, R = C and R = 2·C, with and without interleave; the
tile order), packing and unpacking are inverse and weights_from_beats inverts the beats (any interleave),
the parameter records hold the engine's parameter beats; and the dispatcher's MATMUL range checks
(hdl/cmdproc.py) agree with its sizes to the bus word: weights or parameters that end exactly at
EXT_SIZE pass, one bus word further fails with EXT_RANGE and the check's detail."""

import ml_dtypes
import numpy as np
import pytest
from amaranth.sim import Simulator

from hdl.cmdproc import CHECKS, Dispatcher
from sim.matmul_api import prepare_job
from spec import isa
from spec import matmul_layout as ml
from spec.codes import ChipError, Dtype, OutFormat

BF16 = ml_dtypes.bfloat16
FORMATS = [("int8", "rows"), ("int8", "transposed"), ("int8", "wide"), ("bf16", "rows"), ("bf16", "transposed")]


def weights(rng, K, N, dtype):
    if dtype == "bf16":
        return rng.standard_normal((K, N)).astype(BF16)
    return rng.integers(-128, 128, (K, N)).astype(np.int8)


@pytest.mark.parametrize("rows,cols", [(2, 2), (8, 8), (16, 8)])
def test_engine_beats_are_prepare_jobs_and_pack_unpack_are_inverse(rows, cols):
    seed = rows * 100 + cols
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    for _ in range(20):
        K, N = (int(x) for x in rng.integers(1, 3 * max(rows, cols) + 3, 2))
        for dtype, fmt in FORMATS:
            w = weights(rng, K, N, dtype)
            t, wide = fmt == "transposed", fmt == "wide"
            beats = ml.engine_weight_beats(w, rows=rows, cols=cols, transposed=t, wide=wide)
            a = np.zeros((1, K), w.dtype)
            job = prepare_job(a, w, rows=rows, cols=cols, bf16=dtype == "bf16", w_transposed=t, w_wide=wide)
            np.testing.assert_array_equal(beats, job.w_beats, err_msg=f"{K}×{N} {dtype} {fmt}")
            il = int(rng.integers(1, 5))
            job = prepare_job(a, w, rows=rows, cols=cols, bf16=dtype == "bf16", w_transposed=t, w_wide=wide,
                              interleave=il)
            np.testing.assert_array_equal(
                ml.engine_weight_beats(w, rows=rows, cols=cols, transposed=t, wide=wide, interleave=il), job.w_beats,
                err_msg=f"{K}×{N} {dtype} {fmt}, interleave {il}")
            assert len(beats) == ml.weight_beats(K, N, rows=rows, cols=cols, transposed=t, wide=wide)
            lanes = w.astype(np.int16).view(np.uint16) if dtype == "int8" else w.view(np.uint16)
            np.testing.assert_array_equal(ml.weights_from_beats(beats, K, N, rows=rows, cols=cols, transposed=t,
                                                                wide=wide), lanes, err_msg=f"{K}×{N} {dtype} {fmt}")
            data = ml.pack_weights(w, rows=rows, cols=cols, bus_bytes=16, transposed=t, wide=wide, interleave=il)
            back = ml.unpack_weight_beats(data, cols=cols, beats=len(beats), bf16=dtype == "bf16", wide=wide)
            np.testing.assert_array_equal(back, job.w_beats)
            np.testing.assert_array_equal(ml.weights_from_beats(back, K, N, rows=rows, cols=cols, transposed=t,
                                                                wide=wide, interleave=il), lanes,
                                          err_msg=f"{K}×{N} {dtype} {fmt}, interleave {il}")
            for bus in (4, 16, 64):
                data = ml.pack_weights(w, rows=rows, cols=cols, bus_bytes=bus, transposed=t, wide=wide)
                assert len(data) % bus == 0 and len(data) == ml.weight_bytes(
                    K, N, rows=rows, cols=cols, bus_bytes=bus, bf16=dtype == "bf16", transposed=t, wide=wide)
                assert len(data) - len(beats) * ml.weight_beat_bytes(cols, bf16=dtype == "bf16", wide=wide) < bus
                back = ml.unpack_weight_beats(data, cols=cols, beats=len(beats), bf16=dtype == "bf16", wide=wide)
                np.testing.assert_array_equal(back, beats)


def test_tile_order_groups_n_tiles_k_tile_by_k_tile_and_checks_the_interleave():
    assert ml.tile_order(2, 3) == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert ml.tile_order(2, 5, 1) == [(0, 0), (1, 0), (0, 1), (1, 1), (2, 0), (3, 0), (2, 1), (3, 1),
                                      (4, 0), (4, 1)]
    assert ml.tile_order(3, 2, 15) == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]
    for bad in (16, -1, 1.0, True):
        with pytest.raises(ValueError, match="interleave must be an int in 0..15"):
            ml.tile_order(2, 2, bad)


def test_parameter_records_hold_the_engine_parameter_beats():
    rng = np.random.default_rng(5)
    print("seed 5")
    for cols, bus in ((2, 4), (8, 16), (16, 32), (8, 64)):
        N = int(rng.integers(1, 5 * cols))
        bias = rng.integers(-(1 << 31), 1 << 31, N).astype(np.int32)
        mult, shift = rng.integers(0, 1 << 31, N).astype(np.uint32), rng.integers(1, 63, N).astype(np.uint8)
        data = ml.pack_params(N, cols=cols, bus_bytes=bus, bias=bias, multiplier=mult, shift=shift)
        rec = ml.param_beat_bytes(cols, bus)
        assert rec % bus == 0 and rec >= 9 * cols and len(data) == ml.param_bytes(N, cols=cols, bus_bytes=bus)
        job = prepare_job(np.zeros((1, 1), np.int8), np.zeros((1, N), np.int8), rows=cols, cols=cols,
                          bias=bias.view(np.uint32), multiplier=mult, shift=shift, out_fmt=OutFormat.INT8)
        recs = np.frombuffer(data, np.uint8).reshape(-1, rec)
        np.testing.assert_array_equal(recs[:, :9 * cols], job.p_beats)
        assert not recs[:, 9 * cols:].any()
        fbias = rng.standard_normal(N).astype(np.float32)
        fdata = ml.pack_params(N, cols=cols, bus_bytes=bus, bias=fbias)
        got = np.frombuffer(fdata, np.uint8).reshape(-1, rec)[:, :4 * cols].copy().view("<f4").reshape(-1)[:N]
        np.testing.assert_array_equal(got, fbias)
    assert ml.needs_params(has_bias=False, out_fmt=OutFormat.INT8)
    assert not ml.needs_params(has_bias=False, out_fmt=OutFormat.BF16)


# the dispatcher of a chip with L lanes and a bus of B bytes
EXT_SIZE = 1 << 20


def dispatcher(lanes, bus):
    return Dispatcher(lanes=lanes, spad_words=1 << 16, bus_bytes=bus, ext_bits=32, acc_depth=256, a_depth=1 << 16,
                      param_beat_bytes=ml.param_beat_bytes(lanes, bus), softmax_max_len=64, vector_max_len=64,
                      kv_row_words=8, queue_depth=2)


def run_dispatcher(dut, instrs):
    """(code, detail) of each instruction, each after a fresh start (OK: it was queued)."""
    out = []

    async def bench(ctx):
        ctx.set(dut.ext_size, EXT_SIZE)
        q = dut.queues[isa.Unit.MATMUL]
        for word in instrs:
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            ctx.set(dut.instr.payload.bits, word)
            ctx.set(dut.instr.valid, 1)
            ctx.set(q.ready, 1)
            for _ in range(200):
                _, _, took, queued, err, code, detail = await ctx.tick().sample(
                    dut.instr.valid & dut.instr.ready, q.valid, dut.err_valid, dut.err_code, dut.err_detail)
                if took:
                    ctx.set(dut.instr.valid, 0)
                if queued or err:
                    out.append((ChipError.OK, 0) if queued else (ChipError(code), detail))
                    break
            else:
                raise TimeoutError("the dispatcher neither queued nor refused the instruction")
            ctx.set(q.ready, 0)
            await ctx.tick().repeat(3)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return out


@pytest.mark.parametrize("lanes,bus", [(2, 4), (8, 16)])
def test_dispatcher_range_checks_agree_with_the_layout_sizes(lanes, bus):
    seed = 17 + lanes
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    checks = [text for _, text in CHECKS[isa.Opcode.MATMUL]]
    d_w = {"rows": checks.index("the weights (EXT) reach past EXT_SIZE"),
           "wide": checks.index("the weights (EXT) reach past EXT_SIZE"),
           "transposed": checks.index("the weights (EXT_T) reach past EXT_SIZE")}
    d_p = checks.index("the parameters reach past EXT_SIZE")
    instrs, want = [], []
    for i in range(16):
        dtype, fmt = FORMATS[i % len(FORMATS)]
        K, N = (int(x) for x in rng.integers(1, 4 * lanes + 3, 2))
        bf16 = dtype == "bf16"
        size = ml.weight_bytes(K, N, rows=lanes, cols=lanes, bus_bytes=bus, bf16=bf16, transposed=fmt == "transposed",
                               wide=fmt == "wide")
        psize = ml.param_bytes(N, cols=lanes, bus_bytes=bus)
        base = dict(m=1, k=K, n=N, dtype=Dtype.BF16 if bf16 else Dtype.INT8,
                    out_fmt=OutFormat.FP32 if bf16 else OutFormat.INT32, has_bias=1, a_stride=1, o_addr=100,
                    o_stride=1, w_src=isa.WSource.EXT_T if fmt == "transposed" else isa.WSource.EXT,
                    w_wide=int(fmt == "wide"), w_addr=0, p_addr=0)
        for w_end, p_end in ((0, 0), (bus, 0), (0, bus)):
            f = dict(base, w_addr=EXT_SIZE - size + w_end, p_addr=EXT_SIZE - psize + p_end)
            instrs.append(isa.encode(isa.Opcode.MATMUL, **f))
            want.append((ChipError.OK, 0) if not (w_end or p_end) else
                        (ChipError.EXT_RANGE, d_w[fmt] if w_end else d_p))
    assert run_dispatcher(dispatcher(lanes, bus), instrs) == want
