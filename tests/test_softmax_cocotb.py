# amaranth: UnusedElaboratable=no
"""The softmax unit (hdl/softmax.py) in Verilator through cocotb, bit-exact against golden/softmax.py.

Unit tests use the ``tiny`` preset (P = 2, L_max = 64), one build shared through the xdist
group; one integration test runs the ``default`` preset (P = 4) with 4096-element rows. Every
stream test runs with and without random valid gaps and ready backpressure. Seeds are printed.
"""

import numpy as np
import pytest

import golden
from golden import softmax as gsm
from hdl.config import get_config
from hdl.softmax import SoftmaxUnit
from sim import run_softmax
from sim.softmax_api import softmax_golden
from spec.codes import SoftmaxStatus

TINY = get_config("tiny")
P = TINY.softmax.lanes
LMAX = TINY.softmax.max_len
STALLS = [pytest.param((0.0, 0.0), id="no_stalls"), pytest.param((0.3, 0.4), id="stalls")]


def _seed(request, base):
    seed = base + sum(map(ord, request.node.name)) % 1000
    print(f"seed {seed}")
    return seed


def _int8_row(rng, length, spread=4.0, **mask):
    q = rng.integers(-127, 128, 32)
    k = rng.integers(-127, 128, (length, 32))
    s = (k @ q).astype(np.int32)
    real = spread / max(float(np.std(s)), 1.0)
    return dict(scores=s, dtype="int8", scale=golden.softmax_scale_int8(real), **mask)


def _bf16_row(rng, length, spread=4.0, **mask):
    s = (rng.normal(0, 1, length) * spread * rng.uniform(0.2, 3)).astype(np.float32)
    return dict(scores=s, dtype="bf16", scale=golden.softmax_scale_bf16(rng.uniform(0.3, 2.0)), **mask)


def _args(rows):
    """run_softmax's arguments for a list of row dicts (one dtype, scale and mask per row)."""
    return ([r["scores"] for r in rows], [r["scale"] for r in rows], [r.get("valid_len") for r in rows],
            [r.get("causal_pos") for r in rows])


def run_rows(rows, **kwargs):
    return run_softmax(*_args(rows), dtype=[r["dtype"] for r in rows], **kwargs)


def bits(p):
    """uint8 probabilities or bf16 bit patterns, as uint16."""
    return p.view(np.uint16) if p.dtype != np.uint8 else p.astype(np.uint16)


def _random_mask(rng, length):
    r = rng.random()
    if r < 0.3:
        return {}
    if r < 0.6:
        return {"valid_len": int(rng.integers(0, length + 1))}
    if r < 0.85:
        return {"causal_pos": int(rng.integers(0, length))}
    return {"valid_len": int(rng.integers(0, length + 1)), "causal_pos": int(rng.integers(0, length))}


def _check(rows, res, max_len=LMAX):
    want = softmax_golden(*_args(rows), dtype=[r["dtype"] for r in rows], max_len=max_len)
    assert len(res.output) == len(want)
    for i, (got, exp) in enumerate(zip(res.output, want, strict=True)):
        if exp is None:
            assert got is None, f"row {i}: output for a rejected row"
        else:
            assert np.array_equal(bits(got), bits(exp)), f"row {i}: {got.tolist()} != {exp.tolist()}"


@pytest.mark.xdist_group("softmax_tiny")
@pytest.mark.parametrize("stalls", STALLS + [pytest.param((0.05, 0.85), id="heavy_backpressure")])
def test_back_to_back_rows_of_many_lengths_masks_and_dtypes_are_bit_exact(request, stalls):
    seed = _seed(request, 100)
    rng = np.random.default_rng(seed)
    lengths = [1, 2, P - 1, P, P + 1, 3, 7, 16, 31, 33, 63, LMAX] * 2
    rng.shuffle(lengths)
    rows = []
    for length in lengths:
        make = _int8_row if rng.random() < 0.5 else _bf16_row
        rows.append(make(rng, length, spread=float(rng.choice([0.5, 4.0, 20.0])), **_random_mask(rng, length)))
    res = run_rows(rows, config="tiny", stall=stalls[0], backpressure=stalls[1], seed=seed)
    _check(rows, res)
    c = res.counters
    beats = sum(-(-len(r["scores"]) // P) for r in rows)
    assert (c["cmds"], c["rows_out"], c["cmds_rejected"]) == (len(rows), len(rows), 0)
    assert c["beats_in"] == c["beats_out"] == beats
    assert c["xring_writes"] == c["xring_reads"] == c["ering_writes"] == c["ering_reads"] == beats
    assert c["exp_reads"] == P * beats and c["busy"] <= res.cycles
    assert res.last.sum() == len(rows)
    if stalls[1]:
        assert c["stall_output"] > 0
    if stalls[0]:
        assert c["stall_input"] > 0


@pytest.mark.xdist_group("softmax_tiny")
@pytest.mark.parametrize("stalls", STALLS)
def test_special_rows_huge_spread_all_equal_fully_masked_causal_and_nan(request, stalls):
    seed = _seed(request, 200)
    rng = np.random.default_rng(seed)
    i32 = np.iinfo(np.int32)
    f32 = lambda v: np.array(v, np.float32)
    c1 = golden.softmax_scale_bf16(1.0)
    rows = [
        dict(scores=np.array([i32.min, i32.max, 0, 5, i32.max - 10**4], np.int32), dtype="int8",
             scale=(65535, 0)),  # saturated x: a tie
        dict(scores=np.array([i32.min, i32.max, 0, 5, i32.max - 10**4], np.int32), dtype="int8",
             scale=golden.softmax_scale_int8(2e-6)),
        dict(scores=np.full(LMAX, 777, np.int32), dtype="int8", scale=(50000, 20)),
        dict(scores=np.full(37, -5, np.int32), dtype="int8", scale=(50000, 20)),
        dict(scores=np.arange(9, dtype=np.int32), dtype="int8", scale=(50000, 10), valid_len=0),
        dict(scores=f32([np.nan] * 5), dtype="bf16", scale=c1, valid_len=0),
        dict(scores=np.arange(9, dtype=np.int32), dtype="int8", scale=(50000, 10), causal_pos=0),
        dict(scores=f32([-3e38, 3e38, 0.0, np.inf, -np.inf]), dtype="bf16", scale=c1),
        dict(scores=f32([1.0, np.nan, 2.0]), dtype="bf16", scale=c1),
        dict(scores=f32([1.0, 2.0, np.nan]), dtype="bf16", scale=c1, valid_len=2),  # masked NaN ignored
        dict(scores=f32([0.0, np.inf, 1.0]), dtype="bf16", scale=np.float32(0)),  # Inf × 0 = NaN
        dict(scores=f32([1e-40, -1e-40, 0.0, -0.0]), dtype="bf16", scale=c1),  # DAZ
        dict(scores=f32(rng.normal(0, 300, 64)), dtype="bf16", scale=c1),  # tiny probabilities, FTZ
        dict(scores=f32([7.0] * 63), dtype="bf16", scale=c1),
    ]
    for pos in range(0, 12, 3):  # causal rows of one query block
        rows.append(_int8_row(rng, 12, causal_pos=pos))
        rows.append(_bf16_row(rng, 12, causal_pos=pos, valid_len=10))
    res = run_rows(rows, config="tiny", stall=stalls[0], backpressure=stalls[1], seed=seed)
    _check(rows, res)
    out = [bits(p) for p in res.output]
    assert out[0].tolist() == [0, 127, 0, 0, 127] and not out[4].any() and not out[5].any()
    assert out[8].tolist() == [0x7FC0] * 3 and out[10].tolist() == [0x7FC0] * 3
    assert len(set(out[2].tolist())) == 1 and out[6].tolist() == [255] + [0] * 8


@pytest.mark.xdist_group("softmax_tiny")
@pytest.mark.parametrize("stalls", STALLS)
def test_bad_length_commands_are_rejected_without_hanging_or_disturbing_other_rows(request, stalls):
    seed = _seed(request, 300)
    rng = np.random.default_rng(seed)
    rows = [_int8_row(rng, 5), dict(scores=np.zeros(0, np.int32), dtype="int8", scale=(0, 0)), _bf16_row(rng, 9),
            _bf16_row(rng, LMAX + 1), dict(scores=np.zeros(0, np.int32), dtype="int8", scale=(9, 1)),
            _int8_row(rng, LMAX)]
    res = run_rows(rows, config="tiny", stall=stalls[0], backpressure=stalls[1], seed=seed)
    _check(rows, res)
    assert [p is None for p in res.output] == [False, True, False, True, True, False]
    c = res.counters
    assert (c["cmds_rejected"], c["cmds"], c["rows_out"]) == (3, 6, 3)
    assert res.errors.tolist() == [SoftmaxStatus.BAD_LENGTH] * 3
    # each rejection is reported in the cycle its command is taken
    assert res.error_cycles.tolist() == res.cmd_cycles[[1, 3, 4]].tolist()


@pytest.mark.xdist_group("softmax_tiny")
def test_back_to_back_rows_of_mixed_lengths_and_the_first_row_has_the_documented_latency(request):
    """Rows of mixed lengths and dtypes, no stalls: bit-exact, pass A never waits while fewer
    than 8 rows are queued (here: for the first rows), and the first row's latency is
    ``SoftmaxUnit.row_latency``."""
    seed = _seed(request, 500)
    rng = np.random.default_rng(seed)
    rows = [_int8_row(rng, 1)] + [_int8_row(rng, int(n)) for n in rng.integers(1, LMAX + 1, 12)] + \
        [_bf16_row(rng, int(n)) for n in (LMAX, 1, 1, 2, LMAX, 3)]
    res = run_rows(rows, config="tiny", seed=seed)
    _check(rows, res)
    first = sum(-(-len(r["scores"]) // P) for r in rows[:4])
    assert np.all(np.diff(res.i_cycles[:first]) == 1)
    unit = SoftmaxUnit.from_config(TINY)
    assert res.o_cycles[0] - res.i_cycles[0] == unit.row_latency(1)


@pytest.mark.xdist_group("softmax_tiny")
def test_rows_of_non_increasing_length_leave_without_output_bubbles(request):
    """One beat per cycle out, across row boundaries and dtypes, and in while rows are equal.
    (A row longer than the one before it must wait for its own passes A and B, so only a
    longer-after-shorter row can open a gap in the output; bench/softmax.py measures rates.)"""
    seed = _seed(request, 550)
    rng = np.random.default_rng(seed)
    rows = [_int8_row(rng, LMAX) for _ in range(4)] + [_bf16_row(rng, 20) for _ in range(4)] + \
        [_int8_row(rng, 2) for _ in range(3)] + [_bf16_row(rng, 1) for _ in range(4)]
    res = run_rows(rows, config="tiny", seed=seed)
    _check(rows, res)
    assert np.all(np.diff(res.i_cycles[:4 * LMAX // P]) == 1)
    assert np.all(np.diff(res.o_cycles) == 1)
    unit = SoftmaxUnit.from_config(TINY)
    assert res.o_cycles[LMAX // P - 1] - res.i_cycles[0] == unit.row_latency(LMAX)


@pytest.mark.xdist_group("softmax_tiny")
def test_run_softmax_api_matches_golden_for_both_dtypes(request):
    seed = _seed(request, 600)
    rng = np.random.default_rng(seed)
    s = rng.integers(-(1 << 20), 1 << 20, (4, 13)).astype(np.int32)
    sq = golden.softmax_scale_int8(2e-5)
    res = run_softmax(s, sq, valid_len=[13, 4, 0, 13], causal_pos=[12, 12, 12, 3], config="tiny", seed=seed)
    p = res.output
    assert p.dtype == np.uint8 and np.array_equal(p, golden.softmax_int8(s, sq, [13, 4, 0, 13], [12, 12, 12, 3]))
    assert res.counters["rows_out"] == 4 and res.seed == seed and res.cycles > 0
    f = rng.normal(0, 5, (3, 6)).astype(np.float32)
    cf = golden.softmax_scale_bf16(0.5)
    pb = run_softmax(f[1], cf, dtype="bf16", config="tiny", seed=seed).output
    assert pb.shape == (6,) and np.array_equal(pb.view(np.uint16), golden.softmax_bf16(f[1], cf).view(np.uint16))


@pytest.mark.xdist_group("softmax_default")
@pytest.mark.parametrize("stalls", [pytest.param((0.2, 0.2), id="stalls")])
def test_default_config_rows_up_to_4096_are_bit_exact(request, stalls):
    cfg = get_config("default")
    seed = _seed(request, 700)
    rng = np.random.default_rng(seed)
    p = cfg.softmax.lanes
    rows = [_int8_row(rng, cfg.softmax.max_len, causal_pos=3000),
            _bf16_row(rng, cfg.softmax.max_len, spread=8.0)]
    for length in (1, p - 1, p, p + 1, 64, 200):
        rows.append(_int8_row(rng, length, **_random_mask(rng, length)))
        rows.append(_bf16_row(rng, length, **_random_mask(rng, length)))
    res = run_rows(rows, config="default", stall=stalls[0], backpressure=stalls[1], seed=seed)
    _check(rows, res, max_len=cfg.softmax.max_len)
    # the int8 rows against float64: the contract's accuracy target
    r0 = rows[0]
    real = r0["scale"][0] / 2.0 ** r0["scale"][1] / 2 ** gsm.FRAC_BITS / np.log2(np.e)
    ref = golden.softmax_reference(r0["scores"], real, causal_pos=3000)
    assert np.abs(res.output[0] / 255 - ref).max() <= 2 / 256


@pytest.mark.xdist_group("softmax_tiny")
def test_real_smollm2_attention_rows_are_bit_exact_and_within_the_accuracy_target(request, smollm2):
    """Attention rows of SmolLM2-135M layers 0 and 5 (48-token causal prefill of the fixed
    prompt, every query head) from golden.DecoderLayer in int8 and bf16 mode: the RTL equals the
    probabilities the layer used, and the int8 rows are within 2/256 of the float softmax."""
    from golden.layer import DecoderLayer, calibrate
    from golden.models import CALIBRATION_PROMPT, PROMPT
    seed = _seed(request, 800)
    rng = np.random.default_rng(seed)
    model = smollm2
    tokens, cal_tokens = model.tokenize(PROMPT)[:48], model.tokenize(CALIBRATION_PROMPT)[:48]
    rows, used, refs = [], [], []
    for index in (0, 5):
        w = model.layer_weights(index)
        x = model.hidden_states(tokens, index)
        cal = calibrate(w, model.hidden_states(cal_tokens, index))
        for mode in ("int8", "bf16"):
            layer = DecoderLayer(w, mode=mode, calibration=cal if mode == "int8" else None, trace=True)
            layer.prefill(layer.to_input(x))
            for rec in layer.trace:
                picks = np.concatenate([[len(rec["pos"]) - 1], rng.choice(len(rec["pos"]) - 1, 7, replace=False)])
                for t in picks:
                    cp = int(rec["pos"][t])
                    s = rec["scores"][t]
                    if mode == "int8":
                        rows.append(dict(scores=s.astype(np.int32), dtype="int8",
                                         scale=golden.softmax_scale_int8(rec["scale"]), causal_pos=cp))
                        used.append(np.round(rec["probs"][t] * 255).astype(np.uint16))
                        refs.append(golden.softmax_reference(s, rec["scale"], causal_pos=cp))
                    else:
                        rows.append(dict(scores=s.astype(np.float32), dtype="bf16",
                                         scale=golden.softmax_scale_bf16(rec["scale"]), causal_pos=cp))
                        used.append(rec["probs"][t].astype(np.float32).view(np.uint32) >> 16)
                        refs.append(None)
    res = run_rows(rows, config="tiny", seed=seed)
    _check(rows, res)
    worst = 0.0
    for got, want, ref in zip(res.output, used, refs, strict=True):
        assert np.array_equal(bits(got), want.astype(np.uint16))
        if ref is not None:
            worst = max(worst, float(np.abs(got / 255 - ref).max()))
    print(f"real rows: {len(rows)}, int8 max |p - p_float| = {worst * 256:.3f}/256")
    assert worst <= 2 / 256
