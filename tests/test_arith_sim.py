# amaranth: UnusedElaboratable=no
"""Fast amaranth.sim tests of the arithmetic cores and stream units (hdl/arith.py) against golden.

Every random test is seeded; the seed is in the test id and printed on failure.
"""

import random

import numpy as np
import pytest
from amaranth.hdl import Fragment
from amaranth.sim import Simulator

from hdl import arith
from hdl.config import get_config
from hdl.tops import elaborate_top
from sim.amaranth_streams import random_pause, stream_sink, stream_source
from sim.tb.arith import UNITS, expected, pack_inputs, random_vectors, special_vectors

CORES = {unit: getattr(arith, UNITS[unit][0]) for unit in UNITS}
STREAMS = {unit: getattr(arith, UNITS[unit][1]) for unit in UNITS}


def _subset(v, idx):
    return {k: np.asarray(x)[idx] for k, x in v.items()}


def _concat(*vs):
    return {k: np.concatenate([v[k] for v in vs]) for k in vs[0]}


def run_core(unit, core, v, *, en_gap=0.0, seed=0):
    """Feed the vectors ``v`` through ``core`` (``en`` low at random cycles with probability
    ``en_gap``) and return its outputs, matched to the inputs by the core's latency."""
    fields = UNITS[unit][2]
    n = len(next(iter(v.values())))
    cols = {name: [int(x) for x in v[name]] for name in fields}
    out = []

    async def testbench(ctx):
        rand = random.Random(seed)
        edges = sent = 0
        while len(out) < n:
            en = not (en_gap and rand.random() < en_gap)
            ctx.set(core.en, en)
            if en and sent < n:
                for name in fields:
                    ctx.set(getattr(core, name), cols[name][sent])
            if edges - core.latency == len(out):
                out.append(ctx.get(core.y))
            await ctx.tick()
            if en:
                edges += 1
                sent += 1

    sim = Simulator(core)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    return np.array(out, dtype=np.uint64)


def check(unit, v, got, seed=None):
    want = expected(unit, v).astype(np.uint64)
    bad = np.flatnonzero(got != want)
    if bad.size:
        k = bad[0]
        operands = ", ".join(f"{name}=0x{int(v[name][k]):X}" for name in UNITS[unit][2])
        pytest.fail(f"{unit}: {bad.size} of {got.size} wrong (seed {seed}); first: {operands}: "
                    f"got 0x{int(got[k]):X}, want 0x{int(want[k]):X}")


def _special_sample(unit, n, seed):
    v = special_vectors(unit)
    total = len(next(iter(v.values())))
    rng = np.random.default_rng(seed)
    return _subset(v, np.sort(rng.choice(total, size=min(n, total), replace=False)))


SPECIAL_PAIRS = {
    # every pair of special values first (they lead special_vectors), then a sample of the rest
    "fp32_add": 29 * 29, "bf16_mul": 25 * 25, "fp32_to_bf16": 0, "int8_mac": 0,
}


@pytest.mark.parametrize("unit", list(UNITS))
def test_core_matches_golden_on_special_and_biased_random_vectors(unit):
    seed = 1234
    print(f"seed {seed}")
    specials = special_vectors(unit)
    head = _subset(specials, np.arange(SPECIAL_PAIRS[unit]))
    v = _concat(head, _special_sample(unit, 1500, seed), random_vectors(unit, 2500, seed))
    got = run_core(unit, CORES[unit](), v)
    check(unit, v, got, seed)


@pytest.mark.parametrize("unit", list(UNITS))
def test_core_every_pipeline_depth_matches_golden_with_en_gaps(unit):
    seed = 99
    print(f"seed {seed}")
    v = _concat(_special_sample(unit, 300, seed), random_vectors(unit, 300, seed))
    for stages in range(1, CORES[unit].max_stages() + 1):
        core = CORES[unit](stages=stages)
        assert core.latency == stages
        got = run_core(unit, core, v, en_gap=0.3, seed=seed + stages)
        check(unit, v, got, seed)


@pytest.mark.parametrize("stages", range(1, arith.Fp32AddCore.max_stages() + 1))
def test_fp32_add_core_each_pipeline_depth_on_thousands_of_vectors(stages):
    # the adder has the most steps and register placements: each depth on its own, with every
    # pair of special values, a special-vector sample and biased random vectors
    seed = 4321 + stages
    print(f"seed {seed}")
    specials = special_vectors("fp32_add")
    head = _subset(specials, np.arange(SPECIAL_PAIRS["fp32_add"]))
    v = _concat(head, _special_sample("fp32_add", 1000, seed), random_vectors("fp32_add", 2000, seed))
    core = arith.Fp32AddCore(stages=stages)
    assert core.latency == arith.Fp32AddCore.latency_for(stages) == stages
    got = run_core("fp32_add", core, v, en_gap=0.2, seed=seed)
    check("fp32_add", v, got, seed)


def run_stream(dut, words, *, stall, backpressure, seed):
    """Send packed payloads through a stream unit with random valid gaps and ready
    backpressure; return the received payloads. Fails if a beat is lost, duplicated or late."""
    out = []
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(stream_source(dut.i, words, pause=random_pause(stall, seed)), background=True)
    sim.add_testbench(stream_sink(dut.o, len(words), out, pause=random_pause(backpressure, seed + 1),
                                  timeout_cycles=200, extra_cycles=20))
    sim.run()
    return np.array(out, dtype=np.uint64)


@pytest.mark.parametrize("unit", list(UNITS))
@pytest.mark.parametrize("stall, backpressure", [(0.0, 0.0), (0.4, 0.5)])
def test_stream_unit_matches_golden_under_valid_gaps_and_backpressure(unit, stall, backpressure):
    seed = 7
    print(f"seed {seed}")
    v = _concat(_special_sample(unit, 150, seed), random_vectors(unit, 250, seed))
    got = run_stream(STREAMS[unit](), pack_inputs(unit, v), stall=stall, backpressure=backpressure, seed=seed)
    check(unit, v, got, seed)


def test_stream_unit_full_throughput_and_latency_without_stalls():
    # one beat per cycle: the first result appears `latency` cycles after the first input
    dut = arith.Fp32Adder()
    seen = []

    async def testbench(ctx):
        ctx.set(dut.o.ready, 1)
        for k in range(20):
            ctx.set(dut.i.valid, k < 10)
            ctx.set(dut.i.payload.as_value(), 0x3F800000 | (0x3F800000 << 32))
            assert ctx.get(dut.i.ready)
            seen.append(ctx.get(dut.o.valid))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    lat = dut.latency
    assert seen == [0] * lat + [1] * 10 + [0] * (10 - lat)


@pytest.mark.parametrize("unit", list(UNITS))
def test_stream_unit_holds_valid_and_payload_and_refuses_input_while_output_is_stalled(unit):
    dut = STREAMS[unit]()
    v = random_vectors(unit, 4, 3)
    words = [int(x) for x in pack_inputs(unit, v)]
    want = [int(x) for x in expected(unit, v)]

    async def testbench(ctx):
        ctx.set(dut.o.ready, 0)
        accepted = 0
        for _ in range(dut.latency + 12):          # fill the pipeline, then keep offering
            ctx.set(dut.i.valid, 1)
            ctx.set(dut.i.payload.as_value(), words[min(accepted, 3)])
            if ctx.get(dut.i.ready):
                accepted += 1
            await ctx.tick()
        # a stalled unit holds exactly `latency` beats; the first one waits on the output
        assert accepted == dut.latency
        assert ctx.get(dut.o.valid) and ctx.get(dut.o.payload.as_value()) == want[0]
        ctx.set(dut.i.valid, 0)
        for _ in range(5):
            await ctx.tick()
            assert ctx.get(dut.o.valid) and ctx.get(dut.o.payload.as_value()) == want[0]
        ctx.set(dut.o.ready, 1)
        got = []
        for _ in range(dut.latency + 3):
            if ctx.get(dut.o.valid):
                got.append(ctx.get(dut.o.payload.as_value()))
            await ctx.tick()
        assert got == want[:dut.latency]

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()


@pytest.mark.parametrize("cls", [*CORES.values(), *STREAMS.values()])
@pytest.mark.parametrize("stages, error, message", [
    (0, ValueError, r"stages must be in 1\.\.\d"),
    (9, ValueError, r"stages must be in 1\.\.\d"),
    ("2", TypeError, "stages must be an int"),
    (True, TypeError, "stages must be an int"),
])
def test_bad_stages_are_rejected_naming_the_parameter(cls, stages, error, message):
    with pytest.raises(error, match=message):
        cls(stages=stages)


@pytest.mark.parametrize("cls", list(CORES.values()))
def test_latency_for_matches_built_cores_and_rejects_bad_stages(cls):
    assert cls.latency_for() == cls().latency
    for stages in range(1, cls.max_stages() + 1):
        assert cls.latency_for(stages) == cls(stages=stages).latency == stages
    with pytest.raises(ValueError, match="stages must be in"):
        cls.latency_for(cls.max_stages() + 1)


@pytest.mark.parametrize("cls", list(CORES.values()))
def test_registered_steps_name_every_step_and_register_exactly_stages_of_them(cls):
    for stages in range(1, cls.max_stages() + 1):
        flags = cls.registered_steps(stages)
        assert len(flags) == cls.max_stages()
        assert sum(flags.values()) == stages
        # a deeper pipeline keeps every register of a shallower one
        if stages > 1:
            shallower = cls.registered_steps(stages - 1)
            assert all(flags[name] for name in flags if shallower[name])
    assert cls.registered_steps() == cls.registered_steps(cls.latency_for())
    with pytest.raises(ValueError, match="stages must be in"):
        cls.registered_steps(cls.max_stages() + 1)


def test_parameters_are_keyword_only():
    with pytest.raises(TypeError):
        arith.Fp32AddCore(3)


@pytest.mark.parametrize("unit", list(UNITS))
def test_from_config_builds_the_default_unit_and_rejects_non_configs(unit):
    cls = STREAMS[unit]
    dut = cls.from_config(get_config("tiny"))
    assert dut.latency == CORES[unit]().latency == dut.stages
    assert dut.throughput == 1
    Fragment.get(dut, None)  # elaborates
    with pytest.raises(TypeError, match="config must be a ChipConfig"):
        cls.from_config("tiny")


@pytest.mark.parametrize("top, cls", [("int8_mac", arith.Int8Mac), ("bf16_mul", arith.Bf16Multiplier),
                                      ("fp32_add", arith.Fp32Adder), ("fp32_to_bf16", arith.Fp32ToBf16)])
def test_tops_registry_builds_the_arithmetic_units(top, cls):
    dut = elaborate_top(top, "default")
    assert isinstance(dut, cls)
    Fragment.get(dut, None)


@pytest.mark.parametrize("width", [4, 8, 32])
def test_leading_zero_tree_counts_every_value_up_to_8_bits_and_seeded_32_bit_values(width):
    """The leading-zero tree (4-bit leaves, merged by halves) against a count in Python: every
    value for widths 4 and 8; for 32 bits zero, every power of two, and 2,000 seeded values of
    random length (an all-zero value counts width − 1)."""
    from amaranth.hdl import Module, Signal

    seed = 20261128 + width
    print(f"seed {seed}")
    rng = random.Random(seed)
    if width <= 8:
        values = list(range(1 << width))
    else:
        values = [0] + [1 << k for k in range(width)] + [rng.getrandbits(rng.randint(1, width)) for _ in range(2000)]
    m = Module()
    x = Signal(width)
    count = Signal(range(width))
    m.d.comb += count.eq(arith.leading_zeros(x))
    got = []

    async def testbench(ctx):
        for v in values:
            ctx.set(x, v)
            got.append(ctx.get(count))

    sim = Simulator(m)
    sim.add_testbench(testbench)
    sim.run()
    for v, c in zip(values, got, strict=True):
        want = width - v.bit_length() if v else width - 1
        assert c == want, f"seed {seed}: leading zeros of {v:#x} ({width} bits): {c}, not {want}"
