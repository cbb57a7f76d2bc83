# amaranth: UnusedElaboratable=no
"""amaranth.sim tests of hdl.requant.Requantizer alone: bit-exact against golden.requantize
(edges, saturation, out-of-contract parameters clamped), the pass-through, the fixed latency of
every beat and its tag, and the parameter checks."""

import numpy as np
import pytest
from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator

import golden
from hdl.requant import (
    PASS_MULTIPLIER,
    PASS_SHIFT,
    Requantizer,
    requant_params_bad,
)

LANES = 3


def _vectors(rng, n):
    """[n, LANES] acc, multiplier, shift: random, the int32 and multiplier extremes, every shift
    1..62, and out-of-contract parameters (multiplier bit 31, shift 0 and 63..255)."""
    acc = rng.integers(-2**31, 2**31, (n, LANES), dtype=np.int64)
    mult = rng.integers(0, 2**31, (n, LANES), dtype=np.int64)
    shift = rng.integers(1, 63, (n, LANES), dtype=np.int64)
    edges_acc = np.array([-2**31, 2**31 - 1, 0, -1, 1, 127, -128, 2**30])
    edges_mult = np.array([0, 1, 2**31 - 1, 2**30, 2**31 + 5, 2**32 - 1])
    k = 0
    for a in edges_acc:
        for mu in edges_mult:
            acc[k % n, k % LANES], mult[k % n, k % LANES] = a, mu
            k += 1
    shift[:62, 0] = np.arange(1, 63)
    shift[62:70, 1] = [0, 63, 64, 100, 200, 255, 0, 63]
    shift[100:200, 2] = rng.integers(20, 40, 100)     # results that do not all saturate
    return acc, mult, shift


def _expected(acc, mult, shift):
    """golden.requantize with the parameters the hardware reads: multiplier bit 31 ignored,
    shift clamped into 1..62."""
    m = mult & ((1 << 31) - 1)
    s = np.clip(shift, 1, 62)
    return np.stack([golden.requantize(acc[i], m[i], s[i]) for i in range(len(acc))])


def _run(dut, beats, gap_rate, seed):
    """Feed beats (list of (acc, mult, shift, tag) rows) with random gaps; return
    [(cycle in, cycle out, q, passthrough, early, tag)] per beat."""
    rng = np.random.default_rng(seed)
    sent, got, early_seen = [], [], {}

    async def bench(ctx):
        cycle, i = 0, 0
        while i < len(beats) or len(got) < len(beats):
            if i < len(beats) and rng.random() >= gap_rate:
                acc, mult, shift, tag = beats[i]
                ctx.set(dut.i.valid, 1)
                ctx.set(dut.i.payload.acc, [int(x) for x in acc])
                ctx.set(dut.i.payload.multiplier, [int(x) for x in mult])
                ctx.set(dut.i.payload.shift, [int(x) for x in shift])
                ctx.set(dut.i.payload.tag, tag)
                sent.append(cycle)
                i += 1
            else:
                ctx.set(dut.i.valid, 0)
                ctx.set(dut.i.payload.acc, [12345] * LANES)     # garbage while not valid
            early_seen[cycle] = [ctx.get(dut.early[c]) for c in range(LANES)]
            if ctx.get(dut.o.valid):
                p = dut.o.payload
                got.append((cycle, [ctx.get(p.q[c]) for c in range(LANES)],
                            [ctx.get(p.passthrough[c]) for c in range(LANES)], ctx.get(p.tag)))
            await ctx.tick()
            cycle += 1
            assert cycle < 20 * len(beats) + 100, "results missing"

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return sent, got, early_seen


@pytest.mark.parametrize("gap_rate", [0.0, 0.4], ids=["back_to_back", "valid_gaps"])
def test_requantizer_matches_golden_with_clamped_parameters_at_fixed_latency(gap_rate):
    seed = 5201
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    acc, mult, shift = _vectors(rng, 240)
    dut = Requantizer(lanes=LANES, tag_width=8)
    beats = [(acc[i], mult[i], shift[i], i & 0xFF) for i in range(len(acc))]
    sent, got, _ = _run(dut, beats, gap_rate, seed)
    assert len(got) == len(beats)
    expect = _expected(acc, mult, shift)
    for i, (cycle, q, _, tag) in enumerate(got):
        assert cycle - sent[i] == dut.latency, f"beat {i}"
        assert tag == i & 0xFF, f"beat {i}"
        np.testing.assert_array_equal(np.array(q, np.int8), expect[i], err_msg=f"beat {i}: acc {acc[i]}, "
                                      f"multiplier {mult[i]}, shift {shift[i]}")


def test_pass_through_multiplier_256_shift_8_returns_the_accumulator_on_o_and_early():
    seed = 5202
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    acc = rng.integers(-2**31, 2**31, (64, LANES), dtype=np.int64)
    acc[0] = [-2**31, 2**31 - 1, -1]
    dut = Requantizer(lanes=LANES, tag_width=8)
    ones = np.ones(LANES, np.int64)
    beats = [(acc[i], PASS_MULTIPLIER * ones, PASS_SHIFT * ones, i) for i in range(len(acc))]
    sent, got, early = _run(dut, beats, 0.3, seed)
    for i, (cycle, _, raw, _) in enumerate(got):
        want = [int(x) & 0xFFFFFFFF for x in acc[i]]
        assert raw == want, f"beat {i}"
        assert early[cycle - dut.early_lead] == want, f"beat {i}: early"


def test_requant_params_bad_flags_multiplier_bit_31_and_shift_outside_1_to_62():
    m = Module()
    mult, shift, bad = Signal(32), Signal(8), Signal()
    m.d.comb += bad.eq(requant_params_bad(mult, shift))
    cases = [((1 << 31) - 1, 1, 0), (0, 62, 0), (1 << 31, 5, 1), (5, 0, 1), (5, 63, 1), (5, 255, 1)]
    seen = []

    async def bench(ctx):
        for mu, s, _ in cases:
            ctx.set(mult, mu)
            ctx.set(shift, s)
            seen.append(ctx.get(bad))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    assert seen == [want for _, _, want in cases]


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(lanes=0), ValueError, "lanes must be in 1..64"),
    (dict(lanes=65), ValueError, "lanes must be in 1..64"),
    (dict(lanes=2.0), TypeError, "lanes must be an int"),
    (dict(lanes=2, tag_width=-1), ValueError, "tag_width must be in 0..64"),
    (dict(lanes=2, dsp="xilinx"), ValueError, "dsp must be one of"),
])
def test_requantizer_rejects_bad_parameters(kwargs, error, message):
    with pytest.raises(error, match=message):
        Requantizer(**kwargs)
