# amaranth: UnusedElaboratable=no
"""Fast amaranth.sim tests of the softmax unit (hdl/softmax.py): a few rows of both paths
against golden, the command checks, the component's parameters and properties, and its
reciprocal part (hdl/softmax_rcp.py) alone."""

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

import golden
from hdl.config import get_config
from hdl.softmax import SoftmaxUnit
from hdl.softmax_rcp import Reciprocal
from hdl.standalone import Standalone
from hdl.tops import top_class
from sim.amaranth_streams import random_pause, stream_sink, stream_source
from sim.softmax_api import decode_rows, encode_rows, softmax_golden
from spec import softmax as spec
from spec.codes import SoftmaxStatus

SEED = 7


def _simulate(unit, rows, *, stall=0.0, backpressure=0.0, seed=SEED):
    """Drive ``rows`` (dicts: scores, dtype, scale, valid_len, causal_pos) through ``unit`` in
    amaranth.sim with sim.softmax_api's encoding; return (outputs per row, the event counts,
    (cycle, code) of every rejected command)."""
    job = encode_rows(*_args(rows), dtype=[r["dtype"] for r in rows], lanes=unit.lanes, max_len=unit.max_len)
    top = Standalone(unit)
    words, errors, counts, cycle = [], [], {}, [0]

    async def watch(ctx):  # the error port, every cycle, and the counts at the end
        async for _clk, _rst, err, now in ctx.tick().sample(top.error, top.counts):
            if err:
                errors.append((cycle[0], err))
            cycle[0] += 1
            counts.update({name: int(getattr(now, name)) for name in top.counter_names})

    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(stream_source(top.cmd, job.cmds, pause=random_pause(stall, seed)), background=True)
    sim.add_testbench(stream_source(top.i, job.beats, pause=random_pause(stall, seed + 1)), background=True)
    sim.add_process(watch)
    sim.add_testbench(stream_sink(top.o, job.out_beats, words, pause=random_pause(backpressure, seed + 2),
                                  timeout_cycles=1000, extra_cycles=20))
    sim.run()
    outputs, _ = decode_rows(job, words)
    return outputs, counts, errors


def _args(rows):
    return ([r["scores"] for r in rows], [r["scale"] for r in rows], [r.get("valid_len") for r in rows],
            [r.get("causal_pos") for r in rows])


def _rows(rng, lengths):
    rows = []
    for i, length in enumerate(lengths):
        if i % 2 == 0:
            s = rng.integers(-(1 << 20), 1 << 20, length).astype(np.int32)
            sq = golden.softmax_scale_int8(float(rng.uniform(1e-6, 2e-5)))
            rows.append({"scores": s, "dtype": "int8", "scale": sq,
                         "valid_len": int(rng.integers(0, length + 1)), "causal_pos": int(rng.integers(0, length))})
        else:
            s = rng.normal(0, 4, length).astype(np.float32)
            rows.append({"scores": s, "dtype": "bf16", "scale": golden.softmax_scale_bf16(float(rng.uniform(0.2, 2))),
                         "valid_len": int(rng.integers(1, length + 1))})
    return rows


def _check(rows, outputs, max_len):
    want = softmax_golden(*_args(rows), dtype=[r["dtype"] for r in rows], max_len=max_len)
    for i, (got, exp) in enumerate(zip(outputs, want, strict=True)):
        assert (got is None) == (exp is None), f"row {i}"
        if exp is not None:
            assert np.array_equal(got.view(np.uint8 if got.dtype == np.uint8 else np.uint16),
                                  exp.view(np.uint8 if exp.dtype == np.uint8 else np.uint16)), f"row {i}"


@pytest.mark.parametrize("stalls", [(0.0, 0.0), (0.3, 0.4)], ids=["no_stalls", "stalls"])
def test_rows_of_both_paths_match_golden_in_amaranth_sim(stalls):
    print(f"seed {SEED}")
    rng = np.random.default_rng(SEED)
    unit = SoftmaxUnit(lanes=2, max_len=8)
    rows = _rows(rng, [1, 2, 3, 8, 5, 8, 1, 7])
    outputs, counts, errors = _simulate(unit, rows, stall=stalls[0], backpressure=stalls[1])
    _check(rows, outputs, 8)
    assert counts["rows_out"] == counts["cmds"] == len(rows) and not errors
    assert counts["beats_in"] == counts["beats_out"] == sum(-(-len(r["scores"]) // 2) for r in rows)


def test_a_bad_length_command_shows_its_code_on_error_and_is_dropped():
    rng = np.random.default_rng(SEED + 1)
    unit = SoftmaxUnit(lanes=4, max_len=8)
    good = _rows(rng, [3, 8])
    rows = [good[0], dict(scores=np.zeros(9, np.int32), dtype="int8", scale=(1, 1)),
            dict(scores=np.zeros(0, np.float32), dtype="bf16", scale=np.float32(1)), good[1]]
    outputs, counts, errors = _simulate(unit, rows)
    _check(rows, outputs, 8)
    assert [o is None for o in outputs] == [False, True, True, False]
    assert counts["cmds_rejected"] == 2 and counts["cmds"] == 4 and counts["rows_out"] == 2
    assert [code for _, code in errors] == [SoftmaxStatus.BAD_LENGTH] * 2


@pytest.mark.parametrize("call, exc, message", [
    (lambda: sim_softmax(np.zeros((2, 4), np.int32), (1, 1), valid_len=99), ValueError, "valid_len must be in"),
    (lambda: sim_softmax(np.zeros((2, 4), np.int32), (1, 1), dtype="fp8"), ValueError,
     "dtype must be 'int8' or 'bf16'"),
    (lambda: sim_softmax(np.zeros(4, np.int32), (1, 1), stall=1.0), ValueError,
     r"stall must be a probability in \[0, 1\)"),
    (lambda: sim_softmax(np.zeros(4, np.int32), (1, 1), backpressure=-0.1), ValueError,
     r"backpressure must be a probability in \[0, 1\)"),
    (lambda: sim_softmax(np.zeros((1, 65), np.int32), (1, 1)), ValueError, "takes at most 64"),
    (lambda: sim_softmax([np.zeros(3, np.int32), np.zeros(4, np.int32)], (1, 1), valid_len=[1, 9]), ValueError,
     "row 1: valid_len must be in"),
    (lambda: sim_softmax([np.zeros(3, np.int32)], [(1, 1)], dtype=["int8", "bf16"]), ValueError,
     "dtype has 2 entries for 1 rows"),
    (lambda: sim_softmax("scores", 1.0, dtype="bf16"), TypeError, "scores must be a numpy array or a list"),
])
def test_run_softmax_rejects_bad_arguments_before_simulating(call, exc, message):
    with pytest.raises(exc, match=message):
        call()


def sim_softmax(*args, **kwargs):
    from sim import run_softmax
    return run_softmax(*args, config="tiny", **kwargs)


def test_from_config_and_properties():
    cfg = get_config("default")
    unit = SoftmaxUnit.from_config(cfg)
    assert (unit.lanes, unit.max_len, unit.throughput) == (cfg.softmax.lanes, cfg.softmax.max_len,
                                                           cfg.softmax.lanes)
    assert unit.row_latency(64) == 3 * 16 + unit.latency
    assert top_class("softmax_unit") is SoftmaxUnit
    with pytest.raises(TypeError, match="config must be a ChipConfig"):
        SoftmaxUnit.from_config("tiny")


@pytest.mark.parametrize("kwargs, exc, message", [
    (dict(lanes=3, max_len=64), ValueError, "lanes must be a power of two in 1..64"),
    (dict(lanes=128, max_len=256), ValueError, "lanes must be a power of two in 1..64"),
    (dict(lanes=4, max_len=2), ValueError, r"max_len \(2\) must be ≥ lanes \(4\)"),
    (dict(lanes=4, max_len=1 << 17), ValueError, "max_len must be a power of two in 1..65536"),
    (dict(lanes=4.0, max_len=64), TypeError, "lanes must be an int"),
    (dict(lanes=True, max_len=64), TypeError, "lanes must be an int"),
])
def test_illegal_parameters_raise_naming_the_parameter(kwargs, exc, message):
    with pytest.raises(exc, match=message):
        SoftmaxUnit(**kwargs)


def test_reciprocal_part_gives_the_golden_reciprocal_and_tag_after_its_latency():
    """The unit's reciprocal alone (hdl/softmax_rcp.py), a new sum every cycle: ``rcp`` is
    ``2**(RCP_IN_BITS − 1 + RCP_BITS) // St`` of the sum's top RCP_IN_BITS bits (docs/numerics.md
    "Softmax", step 4), ``z`` its top bit, the tag unchanged, ``latency`` cycles after the sum;
    sums below 2**(RCP_IN_BITS − 1) give all ones."""
    seed = 991
    print(f"seed {seed}")
    rng = random.Random(seed)
    ri, rb, sw = spec.RCP_IN_BITS, spec.RCP_BITS, 30
    sums = [rng.randrange(1 << rng.randint(ri - 1, sw - 1), 1 << sw) for _ in range(200)]
    sums += [1 << (ri - 1), (1 << ri) - 1, (1 << sw) - 1, 5, 0]
    dut = Reciprocal(sum_bits=sw, tag_bits=8)
    assert dut.latency == 1 + dut.stages == 1 + SoftmaxUnit(lanes=2, max_len=8).div_stages

    def want(s):
        if s < 1 << (ri - 1):
            return (1 << (rb + 1)) - 1, max(s.bit_length() - 1, 0)
        z = s.bit_length() - 1
        return (1 << (ri - 1 + rb)) // (s >> (z + 1 - ri)), z

    got = []

    async def bench(ctx):
        for n in range(len(sums) + dut.latency):
            if n < len(sums):
                ctx.set(dut.i_valid, 1)
                ctx.set(dut.i_sum, sums[n])
                ctx.set(dut.i_tag, n & 0xFF)
            else:
                ctx.set(dut.i_valid, 0)
            if ctx.get(dut.o_valid):
                got.append((n, ctx.get(dut.o_rcp), ctx.get(dut.o_z), ctx.get(dut.o_tag)))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert got == [(n + dut.latency, *want(s), n & 0xFF) for n, s in enumerate(sums)]
