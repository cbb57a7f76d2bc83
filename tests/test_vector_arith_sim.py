# amaranth: UnusedElaboratable=no
"""The vector unit's arithmetic cores (hdl/vector_arith.py) in amaranth.sim against golden.

Each core gets edge cases plus seeded random inputs, one per cycle with ``en`` held high, and
one run with ``en`` toggling (the results must not change). The SiLU table is checked against
golden over all 65536 inputs in Python (spec.vector's lookup rules), and the SiLU core on a
sample of inputs from every region of the table and its rules.
"""

import numpy as np
import pytest
from amaranth.sim import Simulator

import golden
from golden.layer import dequantize_acc
from golden.vector import fp32_mul, rsqrt_fp32_bits
from hdl.vector_arith import Fp32MulCore, Fp32ToInt8Core, IntScaleCore, RsqrtCore, RsqrtSeq, SiluCore
from spec import vector as spec

SPECIAL32 = [0, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0x00000001, 0x807FFFFF,
             0x00800000, 0x80800000, 0x3F800000, 0xBF800000, 0x7F7FFFFF, 0xFF7FFFFF, 0x3F800001,
             0x1F800000, 0x20000000, 0x5F800000, 0x60000000, 0x00FFFFFF, 0x4B000000]


def _run(core, inputs, outputs, *, toggle=False, seed=0):
    """Present each dict of ``inputs`` for one en-cycle; return the outputs' values per input."""
    results = []
    # flush inputs: repeat the last input `latency` times
    inputs = list(inputs) + [inputs[-1]] * core.latency
    n_want = len(inputs) - core.latency
    sim = Simulator(core)
    sim.add_clock(1e-6)

    async def bench2(ctx):
        rng2 = np.random.default_rng(seed)
        i = 0
        while len(results) < n_want:
            en = 1 if not toggle else int(rng2.random() < 0.6)
            for k, v in inputs[min(i, len(inputs) - 1)].items():
                ctx.set(getattr(core, k), v)
            ctx.set(core.en, en)
            await ctx.tick()
            if en:
                i += 1
                if i >= core.latency:
                    results.append({k: ctx.get(getattr(core, k)) for k in outputs})

    sim.add_testbench(bench2)
    sim.run()
    return results[:n_want]


def _u32(v):
    return int(v) & 0xFFFFFFFF


@pytest.mark.parametrize("toggle", [False, True], ids=["en_high", "en_toggling"])
def test_fp32_mul_core_equals_golden_fp32_mul(toggle):
    seed = 11
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    a = SPECIAL32 + rng.integers(0, 1 << 32, 150, dtype=np.uint64).tolist()
    b = SPECIAL32[::-1] + rng.integers(0, 1 << 32, 150, dtype=np.uint64).tolist()
    # products near the underflow and overflow boundaries
    near = rng.integers(0x3F000000, 0x40000000, 40, dtype=np.uint64).tolist()
    a += [0x00800000 | (x & 0x7FFFFF) for x in near] + [0x7F000000 | (x & 0x7FFFFF) for x in near]
    b += [(x & 0x807FFFFF) | (126 << 23) for x in near] + [(x & 0x807FFFFF) | (128 << 23) for x in near]
    got = _run(Fp32MulCore(), [{"a": int(x), "b": int(y)} for x, y in zip(a, b, strict=True)], ["y"],
               toggle=toggle, seed=seed)
    want = fp32_mul(np.array(a, np.uint32), np.array(b, np.uint32))
    assert [_u32(r["y"]) for r in got] == want.tolist()


def test_fp32_mul_core_with_a_bf16_b_equals_golden_fp32_mul_of_the_widened_bf16():
    """b_frac = 7 (RMSNORM_FP32's gain product, 24 × 8 bits) on bf16 values widened to fp32,
    including bf16 subnormals, Inf, NaN and products that round, underflow and overflow."""
    seed = 12
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    a = SPECIAL32 + rng.integers(0, 1 << 32, 200, dtype=np.uint64).tolist()
    b16 = [x >> 16 for x in SPECIAL32[::-1]] + rng.integers(0, 1 << 16, 200).tolist()
    near = rng.integers(0x3F000000, 0x40000000, 40, dtype=np.uint64).tolist()
    a += [0x00800000 | (x & 0x7FFFFF) for x in near] + [0x7F000000 | (x & 0x7FFFFF) for x in near]
    b16 += [((x & 0x807F0000) | (126 << 23)) >> 16 for x in near] + [((x & 0x807F0000) | (128 << 23)) >> 16
                                                                      for x in near]
    b = [int(x) << 16 for x in b16]
    got = _run(Fp32MulCore(b_frac=7), [{"a": int(x), "b": y} for x, y in zip(a, b, strict=True)], ["y"])
    want = fp32_mul(np.array(a, np.uint32), np.array(b, np.uint32))
    assert [_u32(r["y"]) for r in got] == want.tolist()


def _fp32_to_int8_ref(bits):
    x = np.array(bits, np.uint32).view(np.float32).astype(np.float64)
    x = np.where(np.abs(x) < 2.0 ** -126, 0.0, x)
    q = np.where(np.isnan(x), 0, np.clip(np.rint(np.nan_to_num(x, posinf=1e9, neginf=-1e9)), -127, 127))
    return q.astype(np.int64)


def test_fp32_to_int8_core_rounds_to_nearest_even_and_saturates():
    seed = 12
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    vals = [0.5, 1.5, 2.5, -0.5, -1.5, 126.5, 127.4, 127.5, 128.0, -127.5, -128.0, 1e9, 0.49999997,
            3.0, -3.0, 100.25]
    bits = np.array(vals, np.float32).view(np.uint32).tolist() + SPECIAL32
    bits += (rng.normal(0, 60, 200).astype(np.float32).view(np.uint32)).tolist()
    inputs = []
    for b in bits:
        e, f = (b >> 23) & 0xFF, b & 0x7FFFFF
        inputs.append({"sign": b >> 31, "exp": e, "sig": f | (1 << 23), "zero": int(e == 0),
                       "nan": int(e == 255 and f != 0), "inf": int(e == 255 and f == 0)})
    got = _run(Fp32ToInt8Core(), inputs, ["y"])
    assert [int(np.int8(np.uint8(r["y"]))) for r in got] == _fp32_to_int8_ref(bits).tolist()


def test_int_scale_core_equals_dequantize_acc_and_requantize():
    seed = 13
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    n = 200
    acc = np.concatenate([[0, 1, -1, 2**31 - 1, -2**31, 12345, -7], rng.integers(-2**31, 2**31, n)]).astype(np.int32)
    mult = rng.integers(0, 2**31, acc.size).astype(np.int64)
    mult[:3] = [2**31 - 1, 1 << 30, 0]
    shift = rng.integers(1, 63, acc.size).astype(np.int64)
    adj = rng.integers(-300, 200, acc.size).astype(np.int64)
    adj[:4] = [-200, 0, 100, 160]
    inputs = [{"acc": int(a), "m": int(mm), "adj": int(d), "sh": int(s)}
              for a, mm, d, s in zip(acc, mult, adj, shift, strict=True)]
    got = _run(IntScaleCore(), inputs, ["yf", "yq"])
    # dequantize_acc: acc·m·2**(e − s); with s = 0 the exponent adjust is adj
    want_f = golden.fp.as_fp32_bits(dequantize_acc(acc[:, None], mult[:, None], -adj[:, None]).ravel())
    want_q = np.array([golden.requantize(np.int32(a), int(mm), int(s)) for a, mm, s in
                       zip(acc, mult, shift, strict=True)], np.int64)
    assert [_u32(r["yf"]) for r in got] == want_f.tolist()
    assert [int(np.int8(np.uint8(r["yq"]))) for r in got] == want_q.tolist()


def test_rsqrt_core_equals_golden_rsqrt_on_specials_and_random_values():
    seed = 14
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    vals = SPECIAL32 + [0x3F800000 + i for i in range(4)] + [0x40000000, 0x40800000]
    vals += rng.integers(0x00800000, 0x7F800000, 120, dtype=np.uint64).tolist()
    got = _run(RsqrtCore(), [{"a": int(v)} for v in vals], ["y"])
    assert [_u32(r["y"]) for r in got] == rsqrt_fp32_bits(np.array(vals, np.uint32)).tolist()


@pytest.mark.parametrize("steps", [1, 2, 3, 8])
def test_sequential_rsqrt_equals_golden_rsqrt_after_its_documented_latency_with_starts_while_busy_ignored(steps):
    """RsqrtSeq: each input's result on ``y`` with ``valid`` exactly ``latency`` cycles after its
    ``start``, ``ready`` again in that cycle; a ``start`` while busy (with another value) is
    ignored; random idle gaps between inputs."""
    seed = 16 + steps
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    vals = SPECIAL32 + [0x3F800000 + i for i in range(4)] + [0x40000000, 0x40800000]
    vals += rng.integers(0x00800000, 0x7F800000, 40, dtype=np.uint64).tolist()
    core = RsqrtSeq(steps=steps)
    assert core.latency == 2 + -(-25 // steps) + -(-39 // steps)
    got, lat = [], []
    sim = Simulator(core)
    sim.add_clock(1e-6)

    async def bench(ctx):
        for v in vals:
            for _ in range(int(rng.integers(0, 3))):
                await ctx.tick()
            assert ctx.get(core.ready)
            ctx.set(core.a, int(v))
            ctx.set(core.start, 1)
            await ctx.tick()
            ctx.set(core.a, 0x3F800000)        # a start while busy: ignored
            cycles = 1
            while not ctx.get(core.valid):
                assert not ctx.get(core.ready)
                await ctx.tick()
                cycles += 1
            ctx.set(core.start, 0)
            assert ctx.get(core.ready)
            got.append(_u32(ctx.get(core.y)))
            lat.append(cycles)

    sim.add_testbench(bench)
    sim.run()
    assert got == rsqrt_fp32_bits(np.array(vals, np.uint32)).tolist()
    assert set(lat) == {core.latency}


def test_silu_table_and_rules_equal_golden_silu_bf16_on_all_65536_inputs():
    table = spec.silu_bf16_table()
    assert len(table) == spec.SILU_ENTRIES == 3328
    x = np.arange(1 << 16, dtype=np.uint16)
    want = golden.fp.as_bf16_bits(golden.silu_bf16(golden.fp.bf16_from_bits(x)))
    got = np.array([spec.silu_bf16_lookup(int(b), table) for b in x], np.uint16)
    assert np.array_equal(got, want)


def test_silu_core_equals_the_table_lookup_in_every_region():
    seed = 15
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    table = spec.silu_bf16_table()
    exps = list(range(0, 256))
    bits = [(s << 15) | (e << 7) | int(rng.integers(0, 128)) for s in (0, 1) for e in exps]
    bits += [0x7F80, 0xFF80, 0x7FC0, 0x0000, 0x8000, 0x3B80, 0xBB80, 0x3B7F, 0x4100, 0xC300, 0xC2FF]
    got = _run(SiluCore(table), [{"a": b} for b in bits], ["y"], toggle=True, seed=seed)
    assert [r["y"] for r in got] == [spec.silu_bf16_lookup(b, table) for b in bits]


@pytest.mark.parametrize("kw, exc, text", [
    (dict(lanes=3, max_len=64), ValueError, "lanes must be a power of two"),
    (dict(lanes=128, max_len=64), ValueError, r"lanes must be in 1\.\.64"),
    (dict(lanes=8, max_len=0), ValueError, r"max_len must be in 1\.\.65536"),
    (dict(lanes=8.0, max_len=64), TypeError, "lanes must be an int"),
])
def test_vector_unit_parameters_are_refused_naming_the_parameter(kw, exc, text):
    from hdl.vector import VectorUnit
    with pytest.raises(exc, match=text):
        VectorUnit(**kw)


@pytest.mark.parametrize("make, exc, text", [
    (lambda: Fp32MulCore(b_frac=6), ValueError, r"b_frac must be in 7\.\.23, not 6"),
    (lambda: Fp32MulCore(b_frac=7.0), TypeError, "b_frac must be an int"),
    (lambda: RsqrtCore(steps_per_stage=0), ValueError, r"steps_per_stage must be in 1\.\.8, not 0"),
    (lambda: RsqrtCore(steps_per_stage=True), TypeError, "steps_per_stage must be an int"),
    (lambda: RsqrtSeq(steps=9), ValueError, r"steps must be in 1\.\.8, not 9"),
    (lambda: RsqrtSeq(steps=2.0), TypeError, "steps must be an int"),
])
def test_core_parameters_are_refused_naming_the_parameter(make, exc, text):
    with pytest.raises(exc, match=text):
        make()
