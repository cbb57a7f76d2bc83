"""A decoder layer on the chip (compiler.layer, sim.layer_api.run_layer) against
golden.DecoderLayer run sequence by sequence: a small synthetic layer (d_model 32, 4 query
heads, 2 KV heads of 8, FFN 64: the shapes the `tiny` chip's KV cache and vector unit hold, so
the tests reuse the chip builds the other tiny-chip tests make) in both modes, with AXI stalls;
and the requests the compiler refuses before anything runs."""

import numpy as np
import pytest

from golden.layer import DecoderLayer, LayerConfig, LayerWeights, calibrate
from hdl.config import get_config
from sim.chip_api import ChipSim
from sim.layer_api import CompileError, Request, plan_layer, run_layer

LC = LayerConfig(d_model=32, n_heads=4, n_kv_heads=2, head_dim=8, d_ff=64)
SEED = 7
TINY = get_config("tiny")
TINY_BF16 = TINY.replace(name="tiny_bf16", kvcache={"dtype": "bf16"})


def chip_config(mode):
    return TINY if mode == "int8" else TINY_BF16


def chip_sim(mode):
    """The builds the other tiny-chip tests use: the plain chip (int8 KV cache) and the traced
    one with a bf16 KV cache (tests/test_chip_kv_cocotb.py)."""
    return ChipSim(TINY) if mode == "int8" else ChipSim(TINY_BF16, kv_trace=True)


def layer(mode):
    w = LayerWeights.random(LC, seed=3)
    kw = {}
    if mode == "int8":
        kw["calibration"] = calibrate(w, np.random.default_rng(4).standard_normal((16, LC.d_model)))
    cfg = chip_config(mode)
    return DecoderLayer(w, mode=mode, max_tokens=cfg.kvcache.max_tokens, max_seqs=cfg.kvcache.max_seqs,
                        page_size=cfg.kvcache.page_size, **kw)


def server_steps(lay):
    """Prefill of two sequences together; a batched decode step of both; sequence 1's last
    decode step (then freed) together with sequence 2's prefill; sequence 0's decode together
    with sequence 3's prefill, which takes the pages sequence 1 returned."""
    rng = np.random.default_rng(SEED)

    def x(n):
        return rng.standard_normal((n, LC.d_model)).astype(lay.io_dtype)
    return [
        [Request(seq=0, x=x(6), alloc=True), Request(seq=1, x=x(3), alloc=True)],
        [Request(seq=0, x=x(1), pos0=6), Request(seq=1, x=x(1), pos0=3)],
        [Request(seq=1, x=x(1), pos0=4, free=True), Request(seq=2, x=x(5), alloc=True)],
        [Request(seq=0, x=x(1), pos0=7), Request(seq=3, x=x(4), alloc=True)],
    ]


@pytest.mark.parametrize("mode", [pytest.param("int8", marks=pytest.mark.xdist_group("chip_tiny")),
                                  pytest.param("bf16", marks=pytest.mark.xdist_group("chip_kvtrace_tiny_bf16"))])
def test_layer_prefill_batched_decode_and_page_reuse_match_golden_row_for_row_under_axi_stalls(mode):
    lay = layer(mode)
    steps = server_steps(lay)
    print(f"seed {SEED}")
    res = run_layer(lay, steps, config=chip_config(mode), stall=0.2, backpressure=0.2, seed=SEED, sim=chip_sim(mode))
    for i in range(len(steps)):
        assert res.outputs[f"error{i}"][0] == 0, f"step {i}: chip error {res.outputs[f'error{i}']}"
        assert res.outputs[f"match{i}"].all(), f"step {i}: rows {np.flatnonzero(~res.outputs[f'match{i}'])} differ"
    # the batched decode step ran each of the 4 projections once for both sequences (M = 2) and
    # Q·Kᵀ and P·V per sequence and head: 4 + 2·4·2 MATMULs, not 2·4 + 2·4·2
    names = chip_sim(mode).chip().counter_names
    decode = dict(zip(names, (int(v) for v in res.outputs["run1_counters"]), strict=True))
    assert decode["matmul_exec_instrs"] == 4 + 2 * LC.n_heads * 2


def test_compiler_refuses_bad_requests_before_anything_runs():
    lay = layer("bf16")
    cfg = chip_config("bf16")
    x = np.zeros((2, LC.d_model), lay.io_dtype)
    cases = {
        "does not exist": [[Request(seq=5, x=x, pos0=0)]],
        "allocated again": [[Request(seq=0, x=x, alloc=True)], [Request(seq=0, x=x, alloc=True)]],
        "holds 2 tokens": [[Request(seq=0, x=x, alloc=True)], [Request(seq=0, x=x[:1], pos0=3)]],
        "kvcache.max_seqs": [[Request(seq=s, x=x, alloc=True) for s in range(cfg.kvcache.max_seqs + 1)]],
        "pages": [[Request(seq=0, x=np.zeros((40, LC.d_model), lay.io_dtype), alloc=True),
                   Request(seq=1, x=np.zeros((30, LC.d_model), lay.io_dtype), alloc=True)]],
        "twice in one step": [[Request(seq=0, x=x, alloc=True), Request(seq=0, x=x, alloc=True)]],
    }
    for words, steps in cases.items():
        with pytest.raises(CompileError, match=words):
            plan_layer(lay, steps, config=cfg)
    with pytest.raises(CompileError, match="KV cache holds"):
        plan_layer(lay, [[Request(seq=0, x=x, alloc=True)]], config=cfg.replace(name="kv16", kvcache={"head_dim": 16}))
    with pytest.raises(CompileError, match="does not match the layer"):
        plan_layer(lay, [[Request(seq=0, x=x, alloc=True)]], config="tiny")
    with pytest.raises(CompileError, match="vector.max_len"):
        plan_layer(lay, [[Request(seq=0, x=x, alloc=True)]],
                   config=cfg.replace(name="short_vector", vector={"max_len": 32}))
