"""A KV-cache READ in block/group order feeds the matmul engine's weight loader directly.

With ``kvcache.beat_elems = array.cols`` (C) on an R×C array, C | R:

* Q·Kᵀ — W = Kᵀ [head_dim, positions], transposed weights (``w_transposed = 1``): READ_K with
  ``block = C``, ``group = R / C``;
* P·V — W = V [positions, head_dim], rows orientation: READ_V with ``block = 0`` (all
  positions), ``group = 1``.

The beats the Verilated KV cache streams for one READ must equal, beat by beat and lane by lane
(int8 sign-extended, bf16 bit patterns), the weight beats ``sim.matmul_api.prepare_job`` builds
for the same W, with ``head_dim`` larger than the array (several K or N tiles), positions over
several pages of a sequence whose pages are not contiguous, and a partial last block. Then the
streamed beats go, unchanged, into the Verilated matmul engine as its ``w`` stream, and Q·Kᵀ and
P·V come out bit-exact against golden.matmul_int8 / golden.matmul_bf16.
"""

import ml_dtypes
import numpy as np
import pytest

import golden
from golden.kvcache import KVCommand, KVOp, KVStatus, PagedKVCache
from hdl.config import get_config
from hdl.kvcache import KVCacheParams
from sim.kvcache_api import run_kvcache
from sim.matmul_api import prepare_job, run_jobs
from spec.codes import MatmulStatus as Status
from spec.codes import OutFormat

BF16 = ml_dtypes.bfloat16
# small KV pools (quick builds) whose beat is the array's column count, head_dim > the array
KV_SMALL = dict(page_size=4, pages=16, heads=2, max_seqs=4)
DEFAULT_KV8 = get_config("default").replace(name="default_kv8", kvcache=dict(head_dim=32, **KV_SMALL))
TINY_KV2 = get_config("tiny").replace(name="tiny_kv2", kvcache={"beat_elems": 2})
# (kv config, array rows, array cols): square arrays (group 1) and R = 2·C (group 2)
CASES = {
    "8x8": (DEFAULT_KV8, 8, 8),
    "16x8": (DEFAULT_KV8, 16, 8),
    "2x2": (TINY_KV2, 2, 2),
    "4x2": (TINY_KV2, 4, 2),
}
ENGINE = {"8x8": "default", "2x2": "tiny"}   # the Verilated matmul engines of the end-to-end test
SEQ, OTHER, HEAD = 9, 10, 1
N_TOKENS = 15           # positions appended (several pages)
START, COUNT = 1, 13    # the READ: 13 positions, a partial last block of C positions


def lanes16(x):
    """int8 sign-extended / bf16 bits as 16-bit lanes (what the KV cache streams)."""
    return x.astype(np.int16).view(np.uint16) if x.dtype == np.int8 else x.view(np.uint16)


def rows(rng, shape, dtype):
    if dtype == "int8":
        return rng.integers(-128, 128, shape).astype(np.int8)
    return rng.standard_normal(shape).astype(BF16)


def kv_reads(cfg, R, C, dtype, seed, stalls):
    """Append N_TOKENS tokens to SEQ (interleaved with OTHER, so its pages are not contiguous),
    then READ_K in the Q·Kᵀ shape and READ_V in the P·V shape. Returns (K rows, V rows, the raw
    16-bit lanes of the READ_K beats, of the READ_V beats)."""
    cfg = cfg.replace(kvcache={"dtype": dtype})
    p = KVCacheParams.from_config(cfg)
    assert p.beat_elems == C and p.head_dim > max(R, C) and R % C == 0
    rng = np.random.default_rng(seed)
    cmds = [KVCommand(KVOp.ALLOC, SEQ), KVCommand(KVOp.ALLOC, OTHER)]
    for _ in range(N_TOKENS):
        for s in (SEQ, OTHER):
            cmds.append(KVCommand(KVOp.APPEND, s, k=rows(rng, (p.kv_heads, p.head_dim), dtype),
                                  v=rows(rng, (p.kv_heads, p.head_dim), dtype)))
    qk = KVCommand(KVOp.READ_K, SEQ, HEAD, START, COUNT, block=C, group=R // C)
    pv = KVCommand(KVOp.READ_V, SEQ, HEAD, START, COUNT, block=0, group=1)
    res = run_kvcache(cmds + [qk, pv], config=cfg, seed=seed,
                      **(dict(stall=0.2, backpressure=0.4) if stalls else {}))
    assert all(res.responses["status"] == KVStatus.OK)
    cache = PagedKVCache.from_config(get_config(cfg).kvcache)
    for c in cmds:
        cache.execute(*c)
    k = cache.read_k(SEQ, HEAD, START, COUNT)
    v = cache.read_v(SEQ, HEAD, START, COUNT)
    nb = COUNT * p.beats_per_row
    assert len(res.rdata) == 2 * nb
    # the hardware's reads equal golden's read_*_beats (the reference order)
    np.testing.assert_array_equal(res.read_beats[-2].view(np.uint8 if dtype == "int8" else np.uint16),
                                  cache.read_k_beats(SEQ, HEAD, START, COUNT, qk.block, qk.group)
                                  .view(np.uint8 if dtype == "int8" else np.uint16))
    return k, v, res.rdata[:nb], res.rdata[nb:]


def weight_jobs(k, v, R, C, dtype, seed):
    """prepare_job for Q·Kᵀ (transposed weights) and P·V (rows), with random Q and P."""
    rng = np.random.default_rng(seed + 1)
    bf16 = dtype == "bf16"
    if bf16:
        q = rng.standard_normal((5, k.shape[1])).astype(BF16)
        pm = rng.random((3, k.shape[0])).astype(BF16)
    else:
        q = rng.integers(-128, 128, (5, k.shape[1])).astype(np.int8)
        pm = rng.integers(0, 256, (3, k.shape[0])).astype(np.uint8)   # probabilities, unsigned
    fmt = OutFormat.FP32 if bf16 else OutFormat.INT32
    kt = np.ascontiguousarray(k.T)
    qk = prepare_job(q, kt, rows=R, cols=C, out_fmt=fmt, bf16=bf16, w_transposed=True)
    pv = prepare_job(pm, v, rows=R, cols=C, out_fmt=fmt, bf16=bf16,
                     a_unsigned=pm.dtype == np.uint8)
    return (q, kt, qk), (pm, v, pv)


@pytest.mark.xdist_group("kvcache_loader")
@pytest.mark.parametrize("dtype", ["int8", "bf16"])
@pytest.mark.parametrize("case", CASES)
def test_tiled_read_beats_equal_the_weight_beats_prepare_job_builds(case, dtype):
    cfg, R, C = CASES[case]
    seed = 777 + len(case) + (dtype == "bf16")
    print(f"seed {seed}")
    k, v, k_lanes, v_lanes = kv_reads(cfg, R, C, dtype, seed, stalls=True)
    (_, _, qk), (_, _, pv) = weight_jobs(k, v, R, C, dtype, seed)
    assert k.shape[1] // R >= 2 or k.shape[1] // C >= 2, "not several tiles"
    assert qk.w_beats.shape == k_lanes.shape and pv.w_beats.shape == v_lanes.shape
    np.testing.assert_array_equal(k_lanes, qk.w_beats, err_msg="READ_K (Q·Kᵀ) beats ≠ loader's")
    np.testing.assert_array_equal(v_lanes, pv.w_beats, err_msg="READ_V (P·V) beats ≠ loader's")
    # the check can fail: the row-order stream (block = group = 0) is not the loader's order
    for name, x, job in (("K", k, qk), ("V", v, pv)):
        row_order = lanes16(x.reshape(-1, C))
        assert row_order.shape == job.w_beats.shape
        assert not np.array_equal(row_order, job.w_beats), f"{name}: row order already fits"


@pytest.mark.xdist_group("kvcache_loader")
@pytest.mark.parametrize("dtype", ["int8", "bf16"])
@pytest.mark.parametrize("case", ["2x2", "8x8"])
def test_kv_read_streams_drive_the_matmul_engine_for_qk_and_pv_bit_exact(case, dtype):
    cfg, R, C = CASES[case]
    seed = 901 + len(case) + (dtype == "bf16")
    print(f"seed {seed}")
    k, v, k_lanes, v_lanes = kv_reads(cfg, R, C, dtype, seed, stalls=False)
    (q, kt, qk), (pm, vm, pv) = weight_jobs(k, v, R, C, dtype, seed)
    qk.w_beats, pv.w_beats = k_lanes, v_lanes        # the KV cache's stream, as it came out
    res = run_jobs([qk, pv], config=get_config(ENGINE[case]), stall=0.2, backpressure=0.2, seed=seed)
    assert list(res.codes) == [Status.OK, Status.OK]
    if dtype == "int8":
        want = [golden.matmul_int8(q, kt), golden.matmul_int8(pm, vm)]
        got = [lanes.view(np.int32) for lanes in res.lanes]
    else:
        want = [golden.matmul_bf16(q, kt).view(np.uint32), golden.matmul_bf16(pm, vm).view(np.uint32)]
        got = list(res.lanes)
    np.testing.assert_array_equal(got[0], want[0], err_msg="Q·Kᵀ")
    np.testing.assert_array_equal(got[1], want[1], err_msg="P·V")
