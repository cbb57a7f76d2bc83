"""A decoder layer on the chip (compiler.layer, sim.layer_api.run_layer) against
golden.DecoderLayer run sequence by sequence: a small synthetic layer (d_model 64, 4 query
heads, 2 KV heads of 16, FFN 128: the shapes the `tiny` chip's KV cache and vector unit hold, so
the tests reuse the chip builds the other tiny-chip tests make) in both modes, with AXI stalls;
the requests the compiler refuses before anything runs; the same steps one at a time through a
persistent session (sim.layer_api.LayerSession); a two-layer model greedy-decoding through one
session per layer, its prompt prefilled in chunks; and the chip running out of KV pages in the
middle of a batch."""

import functools
import pickle

import numpy as np
import pytest

from compiler.layer import LayerImage, compile_step
from golden.layer import DecoderLayer, LayerConfig, LayerWeights, calibrate
from hdl.config import get_config
from sim.chip_api import ChipSim
from sim.layer_api import _IMAGE_BASE, CompileError, LayerSession, Request, plan_layer, prefill_chunks, run_layer
from sim.model_demo import ModelOnChip, golden_greedy
from spec.codes import ChipError, KVStatus

LC = LayerConfig(d_model=64, n_heads=4, n_kv_heads=2, head_dim=16, d_ff=128)
SEED = 7
TINY = get_config("tiny")
TINY_BF16 = TINY.replace(name="tiny_bf16", kvcache={"dtype": "bf16"})


def chip_config(mode):
    return TINY if mode == "int8" else TINY_BF16


def chip_sim(mode):
    """The builds the other tiny-chip tests use: the plain chip (int8 KV cache) and the traced
    one with a bf16 KV cache (tests/test_chip_kv_cocotb.py)."""
    return ChipSim(TINY) if mode == "int8" else ChipSim(TINY_BF16, kv_trace=True)


def layer(mode, seed=3):
    w = LayerWeights.random(LC, seed=seed)
    kw = {}
    if mode == "int8":
        kw["calibration"] = calibrate(w, np.random.default_rng(seed + 1).standard_normal((16, LC.d_model)))
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


@functools.lru_cache(maxsize=2)
def one_shot(mode):
    """:func:`run_layer` of :func:`server_steps` under AXI stalls (run once per process: the
    session test compares with it too)."""
    lay = layer(mode)
    return run_layer(lay, server_steps(lay), config=chip_config(mode), stall=0.2, backpressure=0.2, seed=SEED,
                     sim=chip_sim(mode))


@pytest.mark.parametrize("mode", [pytest.param("int8", marks=pytest.mark.xdist_group("chip_tiny")),
                                  pytest.param("bf16", marks=pytest.mark.xdist_group("chip_kvtrace_tiny_bf16"))])
def test_layer_prefill_batched_decode_and_page_reuse_match_golden_row_for_row_under_axi_stalls(mode):
    steps = server_steps(layer(mode))
    print(f"seed {SEED}")
    res = one_shot(mode)
    for i in range(len(steps)):
        assert res.outputs[f"error{i}"][0] == 0, f"step {i}: chip error {res.outputs[f'error{i}']}"
        assert res.outputs[f"match{i}"].all(), f"step {i}: rows {np.flatnonzero(~res.outputs[f'match{i}'])} differ"
    # the batched decode step ran each of the 4 projections once for both sequences (M = 2) and
    # Q·Kᵀ and P·V per sequence and head: 4 + 2·4·2 MATMULs, not 2·4 + 2·4·2
    names = chip_sim(mode).chip().counter_names
    decode = dict(zip(names, (int(v) for v in res.outputs["run1_counters"]), strict=True))
    assert decode["matmul_exec_instrs"] == 4 + 2 * LC.n_heads * 2


@pytest.mark.parametrize("mode", ["int8", "bf16"])
def test_projection_weights_are_interleaved_and_long_matmuls_split_to_fit_the_accumulator(mode):
    """Each projection's MATMULs carry the image's interleave (G > 1: several K and N tiles on the
    2×2 array) and int8 the wide format; a 9-row prefill (more than acc_depth // G rows) is split
    into MATMULs of at most acc_depth // G rows that together cover every row once, each reading
    the whole weights; the decode step's M = 2 stays one MATMUL per projection."""
    from hdl.matmul import MatmulEngine
    from spec import isa
    from spec import matmul_layout as ml
    lay = layer(mode)
    cfg = chip_config(mode)
    plan = plan_layer(lay, server_steps(lay)[:2], config=cfg)
    im = plan.image
    acc = MatmulEngine.buffer_sizes(cfg)[0]
    assert im.acc_depth == acc and min(im.interleave.values()) >= 1
    by_addr = {addr: name for name, addr in im.w.items()}
    for step, M in zip(plan.steps, (9, 2), strict=True):
        rows = {}
        for word in step.program_words:
            op, f = isa.decode(word)
            if op != isa.Opcode.MATMUL or f["w_src"] != isa.WSource.EXT:
                continue
            name = by_addr[f["w_addr"]]
            assert f["interleave"] == im.interleave[name] and (f["interleave"] + 1) * f["m"] <= acc
            assert f["w_wide"] == (mode == "int8")
            rows.setdefault(name, []).append(f["m"])
            assert ml.tile_order(-(-f["k"] // cfg.array.rows), -(-f["n"] // cfg.array.cols), f["interleave"]) \
                != ml.tile_order(-(-f["k"] // cfg.array.rows), -(-f["n"] // cfg.array.cols), 0)
        assert set(rows) == set(im.w)
        for name, ms in rows.items():
            assert sum(ms) == M and max(ms) <= acc // (im.interleave[name] + 1), (name, ms)
            assert len(ms) == (1 if M == 2 else -(-M // (acc // (im.interleave[name] + 1))))


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
        plan_layer(lay, [[Request(seq=0, x=x, alloc=True)]], config=cfg.replace(name="kv32", kvcache={"head_dim": 32}))
    with pytest.raises(CompileError, match="does not match the layer"):
        plan_layer(lay, [[Request(seq=0, x=x, alloc=True)]], config="tiny")
    with pytest.raises(CompileError, match="vector.max_len"):
        plan_layer(lay, [[Request(seq=0, x=x, alloc=True)]],
                   config=cfg.replace(name="short_vector", vector={"max_len": 64}))


@pytest.mark.xdist_group("chip_tiny")
def test_layer_session_runs_the_steps_one_at_a_time_bit_exact_with_golden_and_the_one_shot_run():
    """The server steps through one persistent simulation, one step per call (the KV cache
    stays in the chip between calls): every row equals golden's and the one-shot run_layer's."""
    lay = layer("int8")
    steps = server_steps(lay)
    print(f"seed {SEED}")
    # picklable until it starts (a Ray actor can be given one), then bound to its process
    with pickle.loads(pickle.dumps(LayerSession(lay, config=TINY, sim=chip_sim("int8"), seed=SEED))) as s:
        for i, step in enumerate(steps):
            r = s.step(step)
            assert r.ok, f"step {i}: chip error {r.error}"
            assert r.match.all(), f"step {i}: rows {np.flatnonzero(~r.match)} differ from golden"
            want = one_shot("int8").outputs[f"y{i}"]
            assert np.array_equal(r.y.view(np.uint32), want.view(np.uint32)), f"step {i}: differs from run_layer"
            assert r.counters["matmul_exec_instrs"] > 0 and r.cycles == r.counters["cycles"] > 0
        assert s.live == {0: 8, 2: 5, 3: 4}
        assert [h["rows"] for h in s.history] == [9, 2, 6, 5]
        with pytest.raises(TypeError, match="started"):
            pickle.dumps(s)


def test_prefill_chunks_are_the_longest_steps_the_scratchpad_holds():
    """Each chunk compiles at its positions and one row more does not (the scratchpad refuses);
    the chunks cover the prefill in order; the first is shorter than the whole prompt."""
    lay = layer("int8")
    image = LayerImage(lay, TINY, base=_IMAGE_BASE, max_pos=TINY.kvcache.max_tokens)
    chunks = prefill_chunks(image, 60, 2)
    assert chunks[0][0] == 2 and sum(n for _, n in chunks) == 60 and len(chunks) > 1
    for (p0, n), (p1, _) in zip(chunks, chunks[1:], strict=False):
        assert p1 == p0 + n

    def step(p0, n):
        x = np.zeros((n, LC.d_model), np.float32)
        return compile_step(image, [Request(seq=0, x=x, pos0=p0)], x_addr=0, y_addr=0, prog_addr=0)
    for p0, n in chunks[:-1]:
        step(p0, n)
        with pytest.raises(CompileError, match="scratchpad"):
            step(p0, n + 1)
    with pytest.raises(CompileError, match="RoPE table"):
        prefill_chunks(image, 70)
    assert prefill_chunks(image, 10, max_rows=4) == [(0, 4), (4, 4), (8, 2)]


@pytest.mark.xdist_group("chip_tiny")
def test_two_layer_model_greedy_decodes_golden_tokens_with_a_chunked_prefill_through_persistent_sessions():
    """Two synthetic layers, one persistent session each, a random embedding as the host's
    embedding and tied head: a prompt prefilled in two chunks (steps of at most 6 rows, the
    second at pos0 6), then greedy decoding; every layer's rows bit-exact and the tokens those
    of golden's stack (which prefills the prompt in one go)."""
    rng = np.random.default_rng(SEED)
    print(f"seed {SEED}")
    emb = rng.standard_normal((40, LC.d_model))
    layers = [layer("int8", seed=3), layer("int8", seed=11)]
    prompt = rng.integers(0, 40, 10)
    want = golden_greedy(layers, lambda ids: emb[ids], lambda h: h @ emb.T, prompt, 2)
    run = ModelOnChip(layers, lambda ids: emb[ids], config=TINY, sim=chip_sim("int8"), seed=SEED)
    try:
        chunks = prefill_chunks(run.sessions[0].image, len(prompt), max_rows=6)
        assert chunks == [(0, 6), (6, 4)]
        got = [int(np.argmax(run.prefill(prompt, chunks)[-1] @ emb.T))]
        got.append(int(np.argmax(run.decode(got[-1], "decode 1")[-1] @ emb.T)))
    finally:
        run.close()
    assert not run.mismatches, f"rows differ from golden: {run.mismatches}"
    assert got == want
    assert [s["rows"] for s in run.cycles] == [n for _, n in chunks] + [1]


@pytest.mark.xdist_group("chip_tiny")
def test_chip_out_of_kv_pages_mid_batch_stops_with_the_error_and_the_other_sequences_continue_bit_exact():
    """With the driver's page check off (the test hook), a batch whose middle sequence needs
    more pages than are free: the chip stops with KV / OUT_OF_PAGES at that sequence's APPEND;
    the sequence before it holds its token, the failing one the tokens that fit, the one after
    none — the session's state, golden's page pool and golden's layer agree with the chip. After
    the failing sequence is freed, the others continue bit-exact, and a new sequence fills
    exactly the pages golden's pool says are free (the chip's pool is the same)."""
    lay = layer("int8")
    kv = TINY.kvcache                       # 16 pages of 4 tokens
    rng = np.random.default_rng(SEED)
    print(f"seed {SEED}")

    def x(n):
        return rng.standard_normal((n, LC.d_model)).astype(np.float32)
    with LayerSession(lay, config=TINY, sim=chip_sim("int8"), seed=SEED) as s:
        for step in ([Request(seq=0, x=x(20), alloc=True), Request(seq=1, x=x(4), alloc=True)],
                     [Request(seq=2, x=x(20), alloc=True), Request(seq=1, x=x(1), pos0=4)]):
            r = s.step(step)
            assert r.ok and r.match.all()
        assert s.kv.free_pages == kv.pages - 5 - 2 - 5     # 4 pages = 16 tokens left
        bad = [Request(seq=0, x=x(1), pos0=20),             # takes a page: 3 left
               Request(seq=3, x=x(20), alloc=True),         # needs 5: 12 tokens fit
               Request(seq=1, x=x(1), pos0=5)]
        with pytest.raises(CompileError, match="pages"):    # the driver refuses it by default
            s.step(bad)
        assert len(s.history) == 2
        r = s.step(bad, check_pages=False)
        assert r.error[:2] == (ChipError.KV, KVStatus.OUT_OF_PAGES) and r.y is None
        assert r.appended == {0: 1, 3: 12, 1: 0}
        assert s.live == {0: 21, 1: 5, 2: 20, 3: 12} and s.kv.free_pages == 0
        assert {q: s.golden.length(q) for q in s.live} == s.live
        s.free(3)
        assert s.kv.free_pages == 3 and 3 not in s.live
        r = s.step([Request(seq=0, x=x(1), pos0=21), Request(seq=1, x=x(1), pos0=5), Request(seq=2, x=x(1), pos0=20)])
        assert r.ok and r.match.all(), f"rows {np.flatnonzero(~r.match)} differ from golden"
        assert s.kv.free_pages == 2                         # sequence 2 took a page
        r = s.step([Request(seq=3, x=x(8), alloc=True)])    # exactly the 2 free pages
        assert r.ok and r.match.all() and s.kv.free_pages == 0
