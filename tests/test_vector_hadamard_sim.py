# amaranth: UnusedElaboratable=no
"""The Hadamard front end (hdl/vector_hadamard.py) in amaranth.sim against golden.hadamard_fp32.

The front computes five butterfly stages and emits the operands of the sixth; the test adds them
with golden.fp32_add (what the lanes do) and compares every block with golden, for V = 1 (six
cross-beat stages) and V = 2 (an in-beat stage, then cross-beat ones), with random input gaps
and output backpressure, and measures the latency and the rate without them. Seeds are printed.
V = 8 (three in-beat stages) runs in the unit on `default` (tests/test_vector_real_rows.py, the
vector bench); V = 64, whose last stage is in-beat, takes a minute of amaranth.sim and is left
out.
"""

import numpy as np
import pytest
from amaranth.sim import Simulator

import golden
from golden.fp import as_fp32_bits, bf16_from_bits, fp32_add
from hdl.vector_hadamard import HadamardFront
from spec.vector import HADAMARD_BLOCK

SPECIAL = [0, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0x00000001, 0x807FFFFF, 0x7F7FFFFF,
           0xFF7FFFFF, 0x3F800000, 0xBF800000, 0x00800000]


def _blocks(rng, n, fp32):
    """n blocks of random data (uint32 words of the stream) with special values in block 0."""
    x = (rng.normal(0, 3, (n, HADAMARD_BLOCK)) * rng.choice([1, 1, 1, 1e3], (n, HADAMARD_BLOCK))).astype(np.float32)
    bits = as_fp32_bits(x).reshape(x.shape)
    if fp32:
        bits[0, :len(SPECIAL)] = SPECIAL
        return bits, golden.fp.fp32_from_bits(bits).reshape(bits.shape)
    b16 = (bits >> 16).astype(np.uint16)
    b16[0, :len(SPECIAL)] = [s >> 16 for s in SPECIAL]
    return b16.astype(np.uint32), bf16_from_bits(b16).reshape(b16.shape)


def _run(lanes, words, fp32, *, stall, backpressure, seed):
    """Stream ``words`` [n, 64] through the front; returns (result bits [n, 64], take cycles,
    output cycles)."""
    dut = HadamardFront(lanes=lanes, total_width=16)
    beats = words.reshape(-1, lanes)
    out, o_cyc, a_cyc = [], [], []

    async def bench(ctx):
        rng = np.random.default_rng(seed)
        ctx.set(dut.total, len(beats))
        ctx.set(dut.fp32, fp32)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        i, cycle = 0, 0
        while len(out) < len(beats):
            assert cycle < 40 * len(beats) + 500, "hang"
            a_valid = i < len(beats) and rng.random() >= stall
            ctx.set(dut.a.valid, a_valid)
            if i < len(beats):
                for j in range(lanes):
                    ctx.set(dut.a.payload[j], int(beats[i][j]))
            ctx.set(dut.o.ready, rng.random() >= backpressure)
            if a_valid and ctx.get(dut.a.ready):
                a_cyc.append(cycle)
                i += 1
            if ctx.get(dut.o.valid) and ctx.get(dut.o.ready):
                a = np.array([ctx.get(dut.o.payload.a[j]) for j in range(lanes)], np.uint32)
                b = np.array([ctx.get(dut.o.payload.b[j]) for j in range(lanes)], np.uint32)
                out.append(fp32_add(a, b))
                o_cyc.append(cycle)
            await ctx.tick()
            cycle += 1

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return np.concatenate(out).reshape(words.shape), a_cyc, o_cyc


@pytest.mark.parametrize("lanes", [1, 2])
@pytest.mark.parametrize("stalls", [(0.0, 0.0), (0.3, 0.4)], ids=["no_stalls", "stalls"])
def test_hadamard_front_plus_the_lanes_add_equals_golden_hadamard_fp32(lanes, stalls):
    seed = 40 + lanes + int(10 * stalls[0])
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    n = 3 if lanes > 1 else 2
    for fp32 in (1, 0):
        words, x = _blocks(rng, n, fp32)
        got, a_cyc, o_cyc = _run(lanes, words, fp32, stall=stalls[0], backpressure=stalls[1], seed=seed)
        want = as_fp32_bits(golden.hadamard_fp32(x)).reshape(words.shape)
        bad = np.argwhere(got != want)
        assert not len(bad), (fp32, bad[:4].tolist())
        if stalls == (0.0, 0.0):
            dut = HadamardFront(lanes=lanes, total_width=16)
            assert o_cyc[0] - a_cyc[0] == dut.latency
            assert o_cyc[-1] - o_cyc[0] == len(o_cyc) - 1     # one beat per cycle
